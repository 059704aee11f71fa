"""Serve a chart (a JSON list of resources) from the tests' loopback FHIR server, in a
process of its own, so its CPU does not compete with the service under measurement.

    python bench/fhir_stub.py CHART.json DELAY_SECONDS    (prints the base URL, then serves)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.fhir_server import FhirServer, FhirStore  # noqa: E402

if __name__ == "__main__":
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log on the bench's screen
    server = FhirServer(FhirStore(json.loads(Path(sys.argv[1]).read_text())), page_size=1000)
    server.delay = float(sys.argv[2])
    with server:
        print(server.base, flush=True)
        while True:
            time.sleep(3600)
