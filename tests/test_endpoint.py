"""The endpoint runner against a real streaming HTTP server on loopback (started here, no mocks).

The server speaks the OpenAI completions streaming protocol (server-sent events over chunked
HTTP/1.1), waits FIRST_S before the first token and STEP_S between tokens, and misbehaves on
chosen requests: it drops the connection mid-stream, sends a chunk that is not JSON, or answers 500;
or it stalls (keep-alive lines, or one byte at a time, for DRIP_S), claims a token count its text cannot
hold, or sends a line longer than the runner reads.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from costmodel.workload import Workload
from planner.verify.endpoint import MAX_LINE_BYTES, Endpoint, plausible_count, run_endpoint

FIRST_S, STEP_S = 0.03, 0.01
DRIP_S = 20.0  # how long a stalling server would keep a request open


class Streamer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def _chunk(self, text: str) -> None:
        data = text.encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        n = self.server.next_index()
        self.server.bodies.append(body)
        mode = self.server.modes.get(n, "ok")
        if mode == "http_500":
            msg = b'{"error": "overloaded"}'
            self.send_response(500)
            self.send_header("Content-Length", str(len(msg)))
            self.end_headers()
            self.wfile.write(msg)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        time.sleep(FIRST_S)
        osl = int(body["max_tokens"])
        if mode in ("keepalive", "trickle"):  # never a token: a comment line, or one byte, every 50 ms
            with contextlib.suppress(OSError):
                for _ in range(int(DRIP_S / 0.05)):
                    self._chunk(": keep-alive\n\n" if mode == "keepalive" else "d")
                    time.sleep(0.05)
            return
        if mode == "huge":
            self._chunk("data: " + "x" * (MAX_LINE_BYTES + 10) + "\n\n")
        for i in range(osl):
            if mode == "dropped" and i == 2:
                self.connection.shutdown(socket.SHUT_RDWR)  # mid-stream, no terminating chunk
                self.close_connection = True
                return
            if mode == "malformed" and i == 1:
                self._chunk("data: {\"choices\": [{\"text\": \n\n")
                continue
            self._chunk("data: " + json.dumps({"choices": [{"index": 0, "text": f" t{i}"}]}) + "\n\n")
            time.sleep(STEP_S)
        claimed = 10**6 if mode == "liar" else osl
        usage = {"prompt_tokens": len(body["prompt"]), "completion_tokens": claimed, "total_tokens": claimed}
        self._chunk("data: " + json.dumps({"choices": [], "usage": usage}) + "\n\n")
        self._chunk("data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, modes: dict[int, str]) -> None:
        super().__init__(("127.0.0.1", 0), Streamer)
        self.modes, self.count, self.bodies = modes, 0, []
        self.lock = threading.Lock()

    def next_index(self) -> int:
        with self.lock:
            self.count += 1
            return self.count

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    srv = Server(getattr(request, "param", {}))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("server", [{3: "dropped", 7: "malformed", 9: "dropped", 11: "http_500"}], indirect=True)
def test_failures_are_counted_and_the_rest_measured(server: Server) -> None:
    m = run_endpoint(Endpoint(server.url, "tiny"), Workload(isl=16, osl=6, concurrency=3), requests=15,
                     time_limit_s=30)
    assert m.failures == {"dropped": 2, "malformed": 1, "http_500": 1}
    assert m.completed == 11 and m.requests >= 1 and not m.error
    assert m.tpot_ms >= STEP_S * 1e3  # the server waits STEP_S between tokens
    assert m.ttft_ms >= FIRST_S * 1e3
    assert m.output_tok_s > 0
    body = server.bodies[0]
    assert body["stream"] is True and body["max_tokens"] == 6 and len(body["prompt"]) == 16
    assert body["ignore_eos"] is True and body["model"] == "tiny"


def test_open_loop_is_bounded(server: Server) -> None:
    m = run_endpoint(Endpoint(server.url, "tiny"), Workload(isl=8, osl=4, rate_rps=50.0), requests=6,
                     time_limit_s=30)
    assert server.count == 6 and m.completed == 6 and m.requests == 6 and not m.failures
    assert m.tpot_ms >= STEP_S * 1e3


def test_time_limit_stops_new_requests(server: Server) -> None:
    m = run_endpoint(Endpoint(server.url, "tiny"), Workload(isl=8, osl=20, concurrency=1), requests=1000,
                     time_limit_s=0.5)
    # each request takes > 0.2 s; the one still streaming at the limit is cut there
    assert server.count < 10 and m.completed + m.failures.get("time_limit", 0) == server.count


@pytest.mark.parametrize("server", [{1: "keepalive", 2: "trickle"}], indirect=True)
def test_a_stalling_server_cannot_outlast_the_run(server: Server) -> None:
    """Keep-alive lines or single bytes reset a socket timeout each time; the run still ends at its limit."""
    started = time.perf_counter()
    m = run_endpoint(Endpoint(server.url, "tiny"), Workload(isl=8, osl=4, concurrency=2), requests=2,
                     time_limit_s=1.0, request_timeout_s=60.0)
    assert time.perf_counter() - started < DRIP_S / 2
    assert m.failures == {"time_limit": 2} and not m.ok


@pytest.mark.parametrize("server", [{1: "keepalive", 2: "trickle"}], indirect=True)
def test_a_stalling_request_ends_at_its_own_deadline(server: Server) -> None:
    m = run_endpoint(Endpoint(server.url, "tiny"), Workload(isl=8, osl=4, concurrency=1), requests=3,
                     time_limit_s=60.0, request_timeout_s=0.5)
    assert m.failures == {"timeout": 2} and m.completed == 1


@pytest.mark.parametrize("server", [{1: "huge"}], indirect=True)
def test_a_line_longer_than_the_bound_ends_the_request(server: Server) -> None:
    m = run_endpoint(Endpoint(server.url, "tiny"), Workload(isl=8, osl=3, concurrency=1), requests=2,
                     time_limit_s=30)
    assert m.failures == {"oversized": 1} and m.completed == 1


@pytest.mark.parametrize("server", [{n: "liar" for n in range(1, 7)}], indirect=True)
def test_token_counts_the_text_cannot_hold_are_not_believed(server: Server) -> None:
    m = run_endpoint(Endpoint(server.url, "tiny"), Workload(isl=8, osl=4, concurrency=2), requests=6,
                     time_limit_s=30)
    assert m.completed == 6 and any("6 of 6 requests reported a token count" in n for n in m.notes)
    assert m.output_tok_s < 4 * 6 / (FIRST_S + 3 * STEP_S)  # the four streamed tokens counted, not 10^6


def test_plausible_token_counts() -> None:
    assert plausible_count(4, 4, 4, 0, 12)  # one chunk a token
    assert plausible_count(8, 8, 2, 0, 20)  # several tokens a chunk (SGLang batches them)
    assert plausible_count(5, 5, 4, 1, 4)  # a token that decoded to nothing came in a chunk of its own
    assert not plausible_count(10**6, 4, 4, 0, 12)  # more than asked for
    assert not plausible_count(3, 4, 4, 0, 12)  # fewer than the chunks that carried text
    assert not plausible_count(30, 64, 4, 0, 12)  # more than 12 bytes of text can hold


def test_nothing_listening_is_reported_not_raised() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the runner connects
    m = run_endpoint(Endpoint(f"http://127.0.0.1:{port}", "tiny"), Workload(isl=4, osl=2, concurrency=2),
                     requests=4, time_limit_s=10)
    assert not m.ok and m.failures == {"refused": 4} and "no request" in m.error


def test_verify_with_the_endpoint_runner(server: Server, tmp_path) -> None:
    from planner.api import plan
    from planner.cli import main

    r = plan("llama-3.1-8b", "dgx-h100", slo={"tpot_ms": 100}, workload={"isl": 32, "osl": 5, "concurrency": 2},
             modes=("agg",))  # the endpoint runner verifies aggregated plans
    r.save(tmp_path)
    code = main(["verify", str(tmp_path), "--top", "2", "--runner", "endpoint", "--endpoint",
                 f"{server.url},{server.url}", "--requests", "6", "--json"])
    assert code == 0
    rep = json.loads((tmp_path / "verify.json").read_text())
    assert [p["rank"] for p in rep["plans"]] == [1, 2] and rep["runner"] == "endpoint"
    for p in rep["plans"]:
        assert p["measured"]["tpot_ms"] >= STEP_S * 1e3 and p["error_pct"]["tpot_ms"] is not None
    assert server.bodies[0]["model"] == "meta-llama/Llama-3.1-8B"
    rows = (tmp_path / "runs.csv").read_text().splitlines()
    assert rows[0].startswith("model_path,system,backend") and len(rows) == 3 and ",h100_sxm," in rows[1]


def test_endpoint_runner_needs_one_url_per_plan(tmp_path, capsys) -> None:
    from planner.api import plan
    from planner.cli import main

    plan("llama-3.1-8b", "dgx-h100", workload={"isl": 32, "osl": 5, "concurrency": 2}, modes=("agg",)).save(tmp_path)
    code = main(["verify", str(tmp_path), "--top", "2", "--runner", "endpoint", "--endpoint", "http://127.0.0.1:1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "one --endpoint URL per verified plan" in err[0]
