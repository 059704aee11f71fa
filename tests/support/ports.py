"""Free loopback ports for the servers the tests start as other processes (gunicorn, nginx,
PostgreSQL, `mm-cds serve`), or for an address nothing listens on.

Such a port is found by binding port 0 and closing the socket; the server binds it a moment
later. Under pytest-xdist (`make test`) another worker could be handed the same port in
that moment, so each worker takes only its share of the ports: those whose half (port // 2:
Linux hands out odd ports to bind(0), even ones to connect()) is its number modulo the
number of workers (PYTEST_XDIST_WORKER gwN, PYTEST_XDIST_WORKER_COUNT). Two workers never
share one.
Servers a test runs in its own process bind port 0 themselves and need none of this.
"""

from __future__ import annotations

import os
import socket


def _worker() -> tuple[int, int]:
    """(this worker's number, the number of workers); (0, 1) without pytest-xdist."""
    name, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if name.startswith("gw") and name[2:].isdigit() and count.isdigit() and int(count) > 1:
        return int(name[2:]) % int(count), int(count)
    return 0, 1


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports of this worker (all bound at once while looking,
    so never the same one twice)."""
    worker, workers = _worker()
    socks: list[socket.socket] = []
    found: list[int] = []
    try:
        while len(found) < count:
            if len(socks) >= 64 * workers * count:
                raise RuntimeError(f"no free loopback port found for worker {worker} of {workers}")
            sock = socket.socket()
            socks.append(sock)
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            if port // 2 % workers == worker:
                found.append(port)
        return found
    finally:
        for sock in socks:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]
