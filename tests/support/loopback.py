"""Serve a WSGI app over real HTTP on a free loopback port, in a background thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests
from werkzeug.serving import make_server


@contextmanager
def serving(app) -> Iterator[str]:
    """The base URL while the block runs; the server (and the service's feedback writer,
    if the app is the service) stops after it."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    # A short poll interval: shutdown() waits for it.
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        state = getattr(app, "extensions", {}).get("mm_cds")
        if state is not None:
            state.feedback.close()


def first_answer(url: str, process, log_path, within: float = 90.0):
    """The first HTTP answer of a service `process` is starting (polled every 0.3 s). Fails,
    with the end of its log, if the process exits or nothing answers `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            return requests.get(url, timeout=5)
        except requests.RequestException:
            assert process.poll() is None, Path(log_path).read_text()[-3000:]
            assert time.monotonic() < deadline, f"nothing answered {url} within {within:.0f} s"
            time.sleep(0.3)
