"""Serve a chart (a JSON list of resources) from the tests' loopback FHIR server, in a
process of its own, so its CPU does not compete with the service under measurement.

    python bench/fhir_stub.py CHART.json DELAY_SECONDS [keepalive|close]
                                                 (prints the base URL, then serves)

The search logic is the tests' (tests/support/fhir_server.py: token, reads, searches,
paging). How it is served differs, so that the stub measures the service, not itself:

* keepalive (the default): HTTP/1.1 keep-alive with TCP_NODELAY, as FHIR servers answer,
  and each distinct request answered once and then from memory (the chart never changes).
  The tests' werkzeug server closes every connection and runs every search again, in
  Python, under one GIL, on the bench's 2 cores: about 40 ms of CPU per fetch-path call,
  in a burst just when the service's Medication reads arrive, so it delayed those reads
  by tens of ms (its accept loop waiting for the GIL), whatever the service did.
* close: the tests' werkzeug server as it is (every answer "Connection: close"), for
  comparison with the runs made before (docs/operations.md says which stub a row used).

DELAY_SECONDS is added to every request, reads included, before it is answered.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from werkzeug.test import Client  # noqa: E402

from tests.support.fhir_server import FhirServer, FhirStore  # noqa: E402


def keepalive_server(fhir: FhirServer, delay: float) -> ThreadingHTTPServer:
    client = Client(fhir._wsgi)  # the tests' FHIR logic, called in process
    answers: dict[tuple[str, str], tuple[int, bytes]] = {}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body in separate writes: no 40 ms delayed-ACK stall

        def log_message(self, *args) -> None:  # no access log on the bench's screen
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if delay:
                time.sleep(delay)
            key = (self.path, self.headers.get("Authorization") or "")
            with lock:
                answer = answers.get(key)
            if answer is None:
                response = client.get(self.path, headers={"Authorization": key[1]})
                answer = (response.status_code, response.get_data())
                with lock:
                    answers[key] = answer
            status, body = answer
            self.send_response(status)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 256  # a call opens dozens of connections at once

    return Server(("127.0.0.1", 0), Handler)


if __name__ == "__main__":
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log on the bench's screen
    fhir = FhirServer(FhirStore(json.loads(Path(sys.argv[1]).read_text())), page_size=1000)
    fhir.delay = float(sys.argv[2])
    mode = sys.argv[3] if len(sys.argv) > 3 else "keepalive"
    if mode == "close":
        with fhir:
            print(fhir.base, flush=True)
            while True:
                time.sleep(3600)
    elif mode == "keepalive":
        delay, fhir.delay = fhir.delay, 0.0  # added by the handler, before the answer is looked up
        server = keepalive_server(fhir, delay)
        print(f"http://127.0.0.1:{server.server_port}/fhir", flush=True)
        server.serve_forever()
    else:
        raise SystemExit(f"fhir_stub.py: mode {mode!r}: keepalive or close")
