"""Rewards from an HTTP endpoint, against a real server on 127.0.0.1 that each test starts."""
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rlhf_ds.rewards import HTTPSource, RewardBatch, RewardSourceError


class _Handler(BaseHTTPRequestHandler):
    """Routes by path; every route scores a row as its `idx` column (so order is checkable)."""

    def log_message(self, *args):          # keep the test output clean
        pass

    def _send(self, status, body):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            server.requests.append(body)
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
            count = len(server.requests)
        try:
            self._route(body, count)
        finally:
            with server.lock:
                server.in_flight -= 1

    def _route(self, body, count):
        rewards = [float(i) for i in body["idx"]]
        path = self.path
        if path == "/score":
            # Later chunks answer first, so the client must put answers back in row order.
            time.sleep(self.server.delay * (1 + 1 / (1 + min(body["idx"]))))
            self._send(200, json.dumps({"rewards": rewards}))
        elif path == "/bare":
            self._send(200, json.dumps([None if i % 2 else r for i, r in zip(body["idx"], rewards)]))
        elif path == "/flaky":
            if count <= self.server.fail_first:
                self._send(503, "busy")
            else:
                self._send(200, json.dumps({"rewards": rewards}))
        elif path == "/slow":
            time.sleep(3.0)
            self._send(200, json.dumps({"rewards": rewards}))
        elif path == "/nan":
            self._send(200, '{"rewards": [0, NaN, 1]}')
        elif path == "/short":
            self._send(200, json.dumps({"rewards": rewards[:-1]}))
        elif path == "/text":
            self._send(200, "Internal oops, not JSON")
        elif path == "/nokey":
            self._send(200, json.dumps({"scores": rewards}))
        elif path == "/string":
            self._send(200, json.dumps({"rewards": ["high"] * len(rewards)}))
        elif path == "/bad":
            self._send(400, "bad request: column 'answer' missing")
        else:
            self._send(404, "no such route")


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.lock, srv.requests, srv.in_flight, srv.max_in_flight = threading.Lock(), [], 0, 0
    srv.delay, srv.fail_first = 0.0, 0
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def _batch(n=3):
    return RewardBatch([f"p{i}" for i in range(n)], [f"c{i}" for i in range(n)],
                       {"idx": list(range(n)), "answer": [str(i) for i in range(n)]})


def _source(server, route, **kw):
    kw = {"timeout_s": 5.0, "retries": 0, "backoff_s": 0.01, **kw}
    return HTTPSource("judge", server.url + route, **kw)


def test_values_in_row_order_and_every_column_sent(server):
    server.delay = 0.02
    s = _source(server, "/score", chunk_size=4, max_in_flight=3)(_batch(10))
    assert s.values.tolist() == [float(i) for i in range(10)] and s.applies.all()
    assert sorted(len(r["prompts"]) for r in server.requests) == [2, 4, 4]
    first = min(server.requests, key=lambda r: r["idx"][0])
    assert first == {"prompts": ["p0", "p1", "p2", "p3"], "completions": ["c0", "c1", "c2", "c3"],
                     "idx": [0, 1, 2, 3], "answer": ["0", "1", "2", "3"]}


def test_a_bare_list_with_nulls(server):
    s = _source(server, "/bare")(_batch(4))
    assert s.values.tolist() == [0.0, 0.0, 2.0, 0.0] and s.applies.tolist() == [True, False, True, False]


@pytest.mark.parametrize("limit", [1, 2])
def test_requests_in_flight_are_bounded(server, limit):
    server.delay = 0.05
    _source(server, "/score", chunk_size=2, max_in_flight=limit)(_batch(12))
    assert len(server.requests) == 6
    assert server.max_in_flight == limit


def test_retries_with_backoff_then_success(server):
    server.fail_first = 2
    start = time.monotonic()
    s = _source(server, "/flaky", retries=2, backoff_s=0.1)(_batch())
    assert s.values.tolist() == [0.0, 1.0, 2.0]
    assert len(server.requests) == 3
    assert time.monotonic() - start >= 0.1 + 0.2          # waited backoff_s, then twice as long


def test_still_failing_after_the_retries(server):
    server.fail_first = 10
    with pytest.raises(RewardSourceError) as e:
        _source(server, "/flaky", retries=2)(_batch())
    assert str(e.value) == (f"reward source 'judge' (row 0): POST {server.url}/flaky for rows 0-2 failed 3 time(s), "
                            "the last: HTTP 503 Service Unavailable: 'busy' (raise rewards.sources[].retries or "
                            "timeout_s if the server is slow)")
    assert len(server.requests) == 3


def test_timeout(server):
    start = time.monotonic()
    with pytest.raises(RewardSourceError) as e:
        _source(server, "/slow", timeout_s=0.2, retries=1)(_batch())
    assert "/slow for rows 0-2 failed 2 time(s), the last: no answer within timeout_s=0.2 s" in str(e.value)
    assert time.monotonic() - start < 2.5        # 2 x 0.2 s, far from the server's 3 s


def test_server_down():
    with socket.socket() as s:            # a port nothing listens on once this socket is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    source = HTTPSource("judge", f"http://127.0.0.1:{port}/score", timeout_s=1.0, retries=2, backoff_s=0.01)
    with pytest.raises(RewardSourceError) as e:
        source(_batch())
    msg = str(e.value)
    assert msg.startswith(f"reward source 'judge' (row 0): POST http://127.0.0.1:{port}/score for rows 0-2 failed "
                          "3 time(s), the last: cannot connect: "), msg
    assert "refused" in msg.lower()


def test_a_client_error_is_not_retried(server):
    with pytest.raises(RewardSourceError) as e:
        _source(server, "/bad", retries=3)(_batch())
    assert "answered HTTP 400 Bad Request: \"bad request: column 'answer' missing\"" in str(e.value)
    assert len(server.requests) == 1


@pytest.mark.parametrize("route, message", [
    ("/nan", "reward source 'judge' (row 1): returned nan (not a finite number); prompt 'p1', completion 'c1'"),
    ("/short", "/short for rows 0-2: the answer holds 2 values for 3 completions"),
    ("/text", "/text for rows 0-2: the answer is not JSON"),
    ("/nokey", "/nokey for rows 0-2: the answer has no 'rewards' (keys: scores)"),
    ("/string", "reward source 'judge' (row 0): returned 'high' (str), expected a number or None"),
])
def test_bad_answers(server, route, message):
    with pytest.raises(RewardSourceError) as e:
        _source(server, route, retries=3)(_batch())
    assert message in str(e.value)
    assert len(server.requests) == 1


def test_a_bad_row_in_a_later_chunk_is_named_by_its_row_in_the_batch(server):
    # The 'nan' route answers [0, NaN, 1] to every chunk of 3: the first bad row is row 1.
    with pytest.raises(RewardSourceError, match=r"\(row 1\)"):
        _source(server, "/nan", chunk_size=3)(_batch(6))
