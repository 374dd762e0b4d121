"""The endpoint runner: drive a running OpenAI-compatible server with the plan's workload.

Requests go to `/v1/completions` with `stream: true` and a prompt of `isl` token ids, asking for
exactly `osl` tokens (`max_tokens`, `min_tokens` and vLLM/SGLang's `ignore_eos`), greedy. Each
streamed `data:` chunk that carries text is a token arrival; the final usage block, when the
server sends one, gives the true token count. A closed loop runs `concurrency` client threads,
each sending its next request when the last ends; an open loop sends at seeded Poisson times.
At most `requests` requests are sent and none is started after `time_limit_s`.

Deadlines are hard: a request ends at `request_timeout_s` after it was sent and every request ends
at the run's `time_limit_s`, however the server trickles bytes (each read waits only for the time
left). A line longer than MAX_LINE_BYTES or a stream longer than MAX_BODY_BYTES ends the request,
so a server cannot grow the runner's memory. The server's token count (its usage block) is held
against what was streamed: more tokens than were asked for (`max_tokens`), fewer than the chunks
that carried text, or more than the text could hold (one byte a token at least, one token a
chunk for those that carried none) is not believed: the request counts its streamed chunks
instead, and the run's notes say how many requests that was.

Failures are counted by kind and leave the other requests' measurements intact: `dropped` (the
connection closed or reset before `data: [DONE]`), `malformed` (a chunk that is not JSON, or not
a completion), `http_<status>`, `timeout` (the request's own deadline), `time_limit` (still running
at the run's), `oversized`, `refused`. Only stdlib (http.client, threads): the runner needs no
extra and no torch.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import random
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

from costmodel.workload import Workload
from hardware.errors import PlannerInputError
from planner.verify.measured import Measured, Timed, summarize

PATH = "/v1/completions"
MAX_LINE_BYTES = 1 << 20  # one server-sent event line; a token's chunk is a few hundred bytes
MAX_BODY_BYTES = 64 << 20  # one streamed response


@dataclass(frozen=True)
class Endpoint:
    url: str  # http://host:port (a path prefix is kept)
    model: str  # the served model name the server expects

    def parts(self) -> tuple[str, int, str]:
        u = urlsplit(self.url if "://" in self.url else f"http://{self.url}")
        if u.scheme != "http" or not u.hostname:
            raise PlannerInputError(f"endpoint '{self.url}' must be an http://host:port URL of an OpenAI-compatible "
                                    "server (https is not supported)")
        return u.hostname, u.port or 80, u.path.rstrip("/")


@dataclass
class Outcome:
    timed: Timed | None
    failure: str = ""
    miscounted: bool = False  # the server's token count did not fit what it streamed (chunks counted instead)


def plausible_count(claimed: int, asked: int, text_chunks: int, empty_chunks: int, text_bytes: int) -> bool:
    """Whether a server's completion_tokens fits the stream: no more than asked for, at least one a chunk
    that carried text, and no more than the text could hold (a token decodes to a byte or more, or to
    nothing in a chunk of its own)."""
    return text_chunks <= claimed <= min(asked, text_bytes + empty_chunks)


def prompt(seed: int, isl: int, vocab: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(100, max(vocab, 101)) for _ in range(isl)]


def _text(chunk: object) -> str | None:
    """The streamed text of a completion (or chat) chunk; None when the chunk is not one."""
    if not isinstance(chunk, dict):
        return None
    choices = chunk.get("choices")
    if choices == [] and "usage" in chunk:
        return ""
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    c = choices[0]
    if "text" in c:
        return c["text"] or ""
    delta = c.get("delta")
    return (delta.get("content") or "") if isinstance(delta, dict) else None


def one_request(ep: Endpoint, body: dict[str, object], client: int, timeout_s: float,
                run_deadline: float = math.inf) -> Outcome:
    """Send one streaming request and time its chunks; every failure becomes an Outcome."""
    host, port, prefix = ep.parts()
    sent = time.perf_counter()
    own_deadline = sent + timeout_s
    deadline = min(own_deadline, run_deadline)
    late = "timeout" if own_deadline <= run_deadline else "time_limit"
    if deadline <= sent:
        return Outcome(None, late)
    conn = http.client.HTTPConnection(host, port, timeout=deadline - sent)
    watchdog: threading.Timer | None = None
    times: list[float] = []
    count, empty, text_bytes, body_bytes = 0, 0, 0, 0
    malformed = False

    def failed(kind: str) -> Outcome:
        return Outcome(None, late if time.perf_counter() >= deadline else kind)

    try:
        conn.connect()  # bounded by the socket timeout
        # the watchdog shuts the socket at the deadline: a socket timeout restarts with every byte, so a
        # server trickling a byte a second would hold a read (and the run) for as long as it liked
        watchdog = threading.Timer(max(deadline - time.perf_counter(), 0.0), _shut, args=(conn.sock,))
        watchdog.daemon = True
        watchdog.start()
        conn.request("POST", prefix + PATH, body=json.dumps(body), headers={"Content-Type": "application/json",
                                                                           "Accept": "text/event-stream"})
        resp = conn.getresponse()
        if resp.status != 200:
            return failed(f"http_{resp.status}")
        while True:
            line = resp.readline(MAX_LINE_BYTES + 1)
            body_bytes += len(line)
            if time.perf_counter() >= deadline:  # keep-alive lines alone never end a stream
                return failed(late)
            if len(line) > MAX_LINE_BYTES or body_bytes > MAX_BODY_BYTES:
                return failed("oversized")
            if not line:
                return failed("dropped")  # the stream ended without [DONE]
            text = line.decode("utf-8", "replace").strip()
            if not text.startswith("data:"):
                continue
            data = text[5:].strip()
            if data == "[DONE]":
                break
            now = time.perf_counter()
            try:
                chunk = json.loads(data)
            except json.JSONDecodeError:
                malformed = True
                continue
            piece = _text(chunk)
            if piece is None:
                malformed = True
                continue
            usage = chunk.get("usage") if isinstance(chunk, dict) else None
            if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                count = usage["completion_tokens"]
            if piece:
                times.append(now)
                text_bytes += len(piece.encode())
            elif usage is None:
                empty += 1
    except (ConnectionResetError, BrokenPipeError, http.client.IncompleteRead, http.client.RemoteDisconnected):
        return failed("dropped")
    except ConnectionRefusedError:
        return failed("refused")
    except TimeoutError:
        return failed("timeout")
    except (OSError, http.client.HTTPException, ValueError):  # ValueError: reading a connection the watchdog shut
        return failed("dropped")
    finally:
        if watchdog is not None:
            watchdog.cancel()
        conn.close()
    if malformed:
        return Outcome(None, "malformed")
    if not times:
        return Outcome(None, "empty")
    asked = body.get("max_tokens")
    if count and not plausible_count(count, asked if isinstance(asked, int) else count, len(times), empty,
                                     text_bytes):
        return Outcome(Timed(client, sent, tuple(times)), miscounted=True)
    return Outcome(Timed(client, sent, tuple(times), count))


def _shut(sock: socket.socket) -> None:
    """End a request at its deadline: shutting the socket wakes the read blocked on it."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def run_endpoint(ep: Endpoint, wl: Workload, requests: int = 64, time_limit_s: float = 120.0,
                 request_timeout_s: float = 60.0, vocab: int = 32000, seed: int = 0) -> Measured:
    """Serve `wl` against `ep` and measure it (see module doc)."""
    ep.parts()
    if requests < 1:
        raise PlannerInputError(f"requests={requests} must be at least 1")
    deadline = time.perf_counter() + time_limit_s
    lock = threading.Lock()
    issued = [0]
    outcomes: list[Outcome] = []

    def body(n: int) -> dict[str, object]:
        return {"model": ep.model, "prompt": prompt(seed * 1_000_003 + n, wl.isl, vocab), "max_tokens": wl.osl,
                "min_tokens": wl.osl, "ignore_eos": True, "temperature": 0.0, "stream": True,
                "stream_options": {"include_usage": True}}

    def take() -> int | None:
        with lock:
            if issued[0] >= requests or time.perf_counter() > deadline:
                return None
            issued[0] += 1
            return issued[0] - 1

    def record(o: Outcome) -> None:
        with lock:
            outcomes.append(o)

    if wl.concurrency is not None:
        def client(c: int) -> None:
            while (n := take()) is not None:
                record(one_request(ep, body(n), c, request_timeout_s, deadline))

        threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(wl.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        rng = random.Random(seed)
        start = time.perf_counter()
        at = 0.0
        with ThreadPoolExecutor(max_workers=min(requests, 256)) as pool:
            while (n := take()) is not None:
                wait = start + at - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                pool.submit(lambda n=n: record(one_request(ep, body(n), n, request_timeout_s, deadline)))
                at += rng.expovariate(wl.rate_rps or 1.0)
    fails = Counter(o.failure for o in outcomes if o.failure)
    good = [o.timed for o in outcomes if o.timed is not None]
    miscounted = sum(o.miscounted for o in outcomes)
    notes = [f"warning: {miscounted} of {len(good)} requests reported a token count (usage.completion_tokens) that "
             "the streamed text cannot hold; their streamed chunks were counted instead"] if miscounted else []
    return summarize(good, closed_loop=wl.concurrency is not None, failures=dict(fails), notes=notes)
