"""The endpoint runner: drive a running OpenAI-compatible server with the plan's workload.

Requests go to `/v1/completions` with `stream: true` and a prompt of `isl` token ids, asking for
exactly `osl` tokens (`max_tokens`, `min_tokens` and vLLM/SGLang's `ignore_eos`), greedy. Each
streamed `data:` chunk that carries text is a token arrival; the final usage block, when the
server sends one, gives the true token count. A closed loop runs `concurrency` client threads,
each sending its next request when the last ends; an open loop sends at seeded Poisson times.
At most `requests` requests are sent and none is started after `time_limit_s`.

Failures are counted by kind and leave the other requests' measurements intact: `dropped` (the
connection closed or reset before `data: [DONE]`), `malformed` (a chunk that is not JSON, or not
a completion), `http_<status>`, `timeout`, `refused`. Only stdlib (http.client, threads): the
runner needs no extra and no torch.
"""

from __future__ import annotations

import http.client
import json
import random
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


def one_request(ep: Endpoint, body: dict[str, object], client: int, timeout_s: float) -> Outcome:
    """Send one streaming request and time its chunks; every failure becomes an Outcome."""
    host, port, prefix = ep.parts()
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    sent = time.perf_counter()
    times: list[float] = []
    count = 0
    malformed = False
    try:
        conn.request("POST", prefix + PATH, body=json.dumps(body), headers={"Content-Type": "application/json",
                                                                           "Accept": "text/event-stream"})
        resp = conn.getresponse()
        if resp.status != 200:
            return Outcome(None, f"http_{resp.status}")
        while True:
            line = resp.readline()
            if not line:
                return Outcome(None, "dropped")  # the stream ended without [DONE]
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
    except (ConnectionResetError, BrokenPipeError, http.client.IncompleteRead, http.client.RemoteDisconnected):
        return Outcome(None, "dropped")
    except ConnectionRefusedError:
        return Outcome(None, "refused")
    except TimeoutError:
        return Outcome(None, "timeout")
    except (OSError, http.client.HTTPException):
        return Outcome(None, "dropped")
    finally:
        conn.close()
    if malformed:
        return Outcome(None, "malformed")
    if not times:
        return Outcome(None, "empty")
    return Outcome(Timed(client, sent, tuple(times), count))


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
                record(one_request(ep, body(n), c, request_timeout_s))

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
                pool.submit(lambda n=n: record(one_request(ep, body(n), n, request_timeout_s)))
                at += rng.expovariate(wl.rate_rps or 1.0)
    fails = Counter(o.failure for o in outcomes if o.failure)
    good = [o.timed for o in outcomes if o.timed is not None]
    return summarize(good, closed_loop=wl.concurrency is not None, failures=dict(fails))
