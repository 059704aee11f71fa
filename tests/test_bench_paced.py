"""bench/paced.py, the benchmark's paced clients: every answer counted once, an error status
counted as an error, a connection the server closes replaced, and the latency measured
from the request to its answer (the server's own time inside it)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support.bench import bench_module

SERVER_DELAY = 0.03


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.accepted = 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request, client_address) -> None:
        self.accepted += 1
        super().process_request(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's name)
        pass

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        time.sleep(SERVER_DELAY)
        with self.server.lock:
            self.server.bodies.append(body)
            count = len(self.server.bodies)
        answer = b'{"cards": []}'
        self.send_response(500 if count % 10 == 0 else 200)  # every tenth answer an error
        self.send_header("Content-Length", str(len(answer)))
        if count % 3 == 0:
            self.send_header("Connection", "close")  # as gunicorn does every keepalive_requests
            self.close_connection = True
        self.end_headers()
        self.wfile.write(answer)


@pytest.fixture()
def paced():
    with bench_module("paced") as module:
        yield module


def test_paced_clients_count_every_answer_and_reconnect_after_a_close(paced):
    server = _Server()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/cds-services/x"
        row = paced.paced_clients(url, {"hook": "order-sign"}, clients=4, seconds=1.5, think_ms=20)
    finally:
        server.shutdown()
        server.server_close()
    assert row["requests"] == len(server.bodies) > 12
    assert all(body == {"hook": "order-sign"} for body in server.bodies)
    assert row["errors"] == len(server.bodies) // 10
    assert server.accepted > 4  # the clients connected again after each "Connection: close"
    assert row["median_ms"] >= SERVER_DELAY * 1000  # the server's time is inside each latency
    assert row["driver"] == "paced, think 20 ms"
