"""CPU per GET of the fetch transport, as the fetch path sends them: 42 searches in flight
at once from a pool of threads, against the bench's FHIR stub (bench/fhir_stub.py, its
own process, workload (a)'s chart at 300 resources), answering at once or after 50 ms.

    .venv/bin/python bench/transport.py [--rounds 40] [--delay 0.05]

Four clients send the same GETs, alternately, in the same process:
  HttpTransport   the service's (cds_service/data/_http.py): http.client, direct
  urllib3         a PoolManager GET streamed as the transport sent it before (the baseline)
  http.client     bare, no deadline watchdog, no byte budget, no decoding (the threads' floor)
  selectors       one thread, 42 non-blocking sockets, answers framed by Content-Length
                  only: what the same GETs cost without a thread each (an event loop's floor)
Numbers are the process's CPU (every thread), per GET and per round of 42.
"""

from __future__ import annotations

import argparse
import http.client
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # bench/, the script's own folder, is on sys.path already

import urllib3  # noqa: E402
from fhir_stub import running  # noqa: E402
from reference import machine, reference_now  # noqa: E402
from workloads import chart  # noqa: E402

from cds_service.data import HttpTransport  # noqa: E402

HEADERS = {"Accept": "application/fhir+json", "Authorization": "Bearer test-token",
           "User-Agent": "mm-cds", "Accept-Encoding": "gzip, deflate"}
IN_FLIGHT = 42  # the searches of workload (a)'s fetch path


def _clients(port: int, pool: ThreadPoolExecutor) -> dict[str, Callable[[list[str]], object]]:
    """Each client sends one round: the 42 GETs at once, returning when all are answered."""
    transport = HttpTransport()
    local = threading.local()

    def service(url: str) -> bytes:
        return transport.get(url, HEADERS, 10.0).body

    def pooled(url: str) -> bytes:
        if not hasattr(local, "manager"):
            local.manager = urllib3.PoolManager(maxsize=1)
        manager = local.manager
        response = manager.request("GET", url, headers=HEADERS, preload_content=False, redirect=False, retries=False,
                                   timeout=urllib3.Timeout(connect=10.0, read=10.0))
        try:
            return b"".join(response.stream(65536, decode_content=True))
        finally:
            response.release_conn()

    def bare(url: str) -> bytes:
        if not hasattr(local, "bare"):
            local.bare = http.client.HTTPConnection("127.0.0.1", port, timeout=10.0)
        connection = local.bare
        parts = urlsplit(url)
        connection.request("GET", f"{parts.path}?{parts.query}", headers=HEADERS)
        return connection.getresponse().read()

    def threaded(get: Callable[[str], bytes]) -> Callable[[list[str]], object]:
        return lambda urls: list(pool.map(get, urls))

    return {"HttpTransport": threaded(service), "urllib3": threaded(pooled), "http.client": threaded(bare),
            "selectors": _Multiplexed(port)}


class _Multiplexed:
    """The GETs of a round on one thread: a keep-alive socket each, one selector."""

    def __init__(self, port: int):
        self.port = port
        self.sockets: list[socket.socket] = []
        self.selector = selectors.DefaultSelector()

    def __call__(self, urls: list[str]) -> list[bytes]:
        while len(self.sockets) < len(urls):
            sock = socket.create_connection(("127.0.0.1", self.port))
            sock.setblocking(False)
            self.sockets.append(sock)
        lines = "".join(f"{name}: {value}\r\n" for name, value in HEADERS.items() if name != "Accept-Encoding")
        received: dict[socket.socket, bytearray] = {}
        for sock, url in zip(self.sockets, urls, strict=False):
            parts = urlsplit(url)
            sock.sendall(f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n{lines}\r\n"
                         .encode())
            self.selector.register(sock, selectors.EVENT_READ)
            received[sock] = bytearray()
        bodies = []
        while len(bodies) < len(urls):
            for key, _ in self.selector.select(10.0):
                sock = key.fileobj
                data = received[sock]
                data += sock.recv(262144)  # type: ignore[union-attr]
                end = data.find(b"\r\n\r\n")
                if end < 0:
                    continue
                length = int(bytes(data[:end]).lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(data) - end - 4 >= length:
                    bodies.append(bytes(data[end + 4:end + 4 + length]))
                    self.selector.unregister(sock)
        return bodies


def measure(base: str, port: int, rounds: int, chart_resources: list[dict]) -> dict[str, list[float]]:
    patient = next(r["id"] for r in chart_resources if r["resourceType"] == "Patient")
    codes = sorted({c["code"] for r in chart_resources if r["resourceType"] == "Observation"
                    for c in r.get("code", {}).get("coding", [])})
    urls = [f"{base}/Observation?patient={patient}&code=http://loinc.org%7C{codes[i % len(codes)]}&status=final"
            for i in range(IN_FLIGHT)]
    results: dict[str, list[float]] = {}
    with ThreadPoolExecutor(64) as pool:
        for _ in range(3):  # alternate, so a slower moment of the machine falls on all of them
            # new clients each turn: the stub closes connections left idle while the others ran
            for name, send_round in _clients(port, pool).items():
                for _ in range(3):
                    send_round(urls)  # connections open, stub answers remembered
                started = time.process_time()
                for _ in range(rounds):
                    send_round(urls)
                results.setdefault(name, []).append((time.process_time() - started) / rounds / IN_FLIGHT * 1e6)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--delay", type=float, default=0.05)
    args = parser.parse_args()
    start = reference_now()
    print(f"machine: {machine(start)}")
    resources = chart("a", 300)
    with running(resources, args.delay) as base:
        results = measure(base, urlsplit(base).port or 80, args.rounds, resources)
    print(f"\n{IN_FLIGHT} GETs in flight at once, {args.rounds} rounds x 3, stub delay {args.delay * 1000:.0f} ms")
    print(f"{'client':14s} {'CPU µs per GET (3 runs)':>28s} {'ms per 42':>10s}")
    for name, runs in results.items():
        print(f"{name:14s} {' '.join(f'{r:8.0f}' for r in runs):>28s} {min(runs) * IN_FLIGHT / 1000:10.1f}")
    print(f"\nreference task at the end: {reference_now():.2f} ms")


if __name__ == "__main__":
    main()
