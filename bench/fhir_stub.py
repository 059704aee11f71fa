"""Serve a chart (a JSON list of resources) from the tests' loopback FHIR server, in a
process of its own, so its CPU does not compete with the service under measurement.

    python bench/fhir_stub.py CHART.json DELAY_SECONDS [keepalive|close] [include|ignore] [PAGE_SIZE]
                                                 (prints the base URL, then serves)

The search logic and the HTTP/1.1 keep-alive serving are the tests'
(tests/support/fhir_server.py: token, reads, searches, paging). What differs, so that the
stub measures the service, not itself:

* keepalive (the default): each distinct request is answered once and then from memory
  (the chart never changes). Run again for every request, in Python, under one GIL, on
  the bench's 2 cores, the searches cost about 40 ms of CPU per fetch-path call, in a
  burst just when the service's Medication reads arrive, and delayed those reads by tens
  of ms (the accept loop waiting for the GIL), whatever the service did.
* close: served by werkzeug's development server (every answer "Connection: close") and
  every search run again: how the tests' server served before keep-alive, for comparison
  with the runs made then (docs/operations.md says which stub a row used).

DELAY_SECONDS is added to every request, reads included, before it is answered. `include`
(the default): a search's `_include` is answered, as the service's medication searches ask;
`ignore`: left out, as a server without it does, so every referenced Medication is read.
PAGE_SIZE (1000 by default): entries per page of a search, next links beyond.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from werkzeug.serving import make_server  # noqa: E402
from werkzeug.wrappers import Request, Response  # noqa: E402

from tests.support.fhir_server import FhirServer, FhirStore  # noqa: E402


class RememberingFhirServer(FhirServer):
    """The tests' server, each distinct (path, query, token) answered from memory after the first time."""

    def __init__(self, store: FhirStore, page_size: int = 1000) -> None:
        super().__init__(store, page_size=page_size)
        self._answers: dict[tuple[str, str, str], Response] = {}
        self._answers_lock = threading.Lock()

    def _handle(self, request: Request) -> Response:
        key = (request.path, request.query_string.decode(), request.headers.get("Authorization") or "")
        with self._answers_lock:
            answer = self._answers.get(key)
        if answer is None:
            answer = super()._handle(request)
            answer.freeze()  # its body read once, into bytes, served as often as asked
            with self._answers_lock:
                self._answers[key] = answer
        elif self.delay:
            time.sleep(self.delay)  # the first time, FhirServer._handle slept it
        return answer


@contextmanager
def running(chart: list[dict], delay: float, mode: str = "keepalive", include: bool = True,
            page_size: int = 1000) -> Iterator[str]:
    """This stub in a process of its own, serving `chart` (written to a file it reads): its
    base URL. `include`: `_include` answered (False: ignored, so every referenced Medication is read)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chart.json"
        path.write_text(json.dumps(chart))
        stub = subprocess.Popen([sys.executable, __file__, str(path), str(delay), mode, "include" if include else "ignore",
                                 str(page_size)], stdout=subprocess.PIPE, text=True)
        try:
            yield stub.stdout.readline().strip()  # type: ignore[union-attr]
        finally:
            stub.terminate()
            stub.wait(10)


def serve(chart: list[dict], delay: float, mode: str, include: bool = True, page_size: int = 1000) -> None:
    if mode == "keepalive":
        fhir: FhirServer = RememberingFhirServer(FhirStore(chart), page_size)
        fhir.delay = delay
        fhir.ignore_include = not include
        with fhir:
            print(fhir.base, flush=True)
            while True:
                time.sleep(3600)
    elif mode == "close":
        fhir = FhirServer(FhirStore(chart), page_size=page_size)
        fhir.delay = delay
        fhir.ignore_include = not include
        server = make_server("127.0.0.1", 0, fhir._wsgi, threaded=True)
        print(f"http://127.0.0.1:{server.server_port}/fhir", flush=True)
        server.serve_forever()
    else:
        raise SystemExit(f"fhir_stub.py: mode {mode!r}: keepalive or close")


if __name__ == "__main__":
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log on the bench's screen
    if len(sys.argv) > 4 and sys.argv[4] not in ("include", "ignore"):
        raise SystemExit(f"fhir_stub.py: {sys.argv[4]!r}: include or ignore")
    serve(json.loads(Path(sys.argv[1]).read_text()), float(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "keepalive",
          include=len(sys.argv) <= 4 or sys.argv[4] == "include", page_size=int(sys.argv[5]) if len(sys.argv) > 5 else 1000)
