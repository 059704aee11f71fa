"""bench/transport.py's one-thread client (the event-loop floor it prints beside the
service's transport): it reads every answer whole, the same bytes the service's transport
reads, and keeps its connections alive from one round to the next."""

from __future__ import annotations

import json

from cds_service.data import HttpTransport

from .support.bench import bench_module
from .support.fhir_server import FhirServer, FhirStore

CODES = [f"{n}-{n % 7}" for n in range(1000, 1006)]


def _chart() -> list[dict]:
    patient = {"resourceType": "Patient", "id": "p1"}
    observations = [{"resourceType": "Observation", "id": f"o{i}", "status": "final",
                     "subject": {"reference": "Patient/p1"},
                     "code": {"coding": [{"system": "http://loinc.org", "code": CODES[i % len(CODES)]}]},
                     "valueString": "x" * (i * 500)}  # answers of different sizes, some over one recv
                    for i in range(60)]
    return [patient, *observations]


def test_the_one_thread_client_reads_every_answer_whole_on_kept_alive_connections(no_proxy_env):
    with FhirServer(FhirStore(_chart()), token=None, page_size=50) as fhir:
        urls = [f"{fhir.base}/Observation?patient=p1&code=http://loinc.org%7C{code}" for code in CODES]
        expected = sorted(json.dumps(json.loads(HttpTransport().get(url, {}, 5.0).body)["entry"]) for url in urls)
        before = fhir.accepted
        with bench_module("transport") as transport:
            client = transport._Multiplexed(int(fhir.base.split(":")[2].split("/")[0]))
            for _ in range(2):
                bodies = client(urls)
                assert sorted(json.dumps(json.loads(body)["entry"]) for body in bodies) == expected
        assert fhir.accepted - before == len(urls)  # one connection per GET in flight, reused by the second round
