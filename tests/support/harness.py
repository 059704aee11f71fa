"""The scenario harness: the CDS service and a FHIR server, both really serving on loopback.

A scenario runs through the HTTP API like an EHR would call it, in one of these modes:
  prefetch  the EHR resolves the service's discovery templates against the chart (a strict
            CDS Hooks 2.0 client: it knows no other token)
  fetch     no prefetch; the service fetches from the FHIR server with the bearer token
  broad     prefetch holding more than asked: every search key gets all the patient's
            resources of its type (no code, status or date filter)
`chart` replaces the scenario's chart (e.g. medications rewritten as medicationReference);
`includes` puts the Medications the records reference into each prefetched Bundle, and
makes the FHIR server's searches answer them as _include entries; `server_too` sends
fhirServer and the token along with the prefetch (Medications are then read from it).
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import requests
from werkzeug.serving import make_server

from cds_service import scenarios
from cds_service.scenarios import Scenario, load_library  # noqa: F401 - the harness's scenario API

from .ehr import build_prefetch
from .fhir_server import FhirServer, InProcess

SCENARIOS = scenarios.DEFAULT_FOLDER
# The site directories the bundled scenarios are written for (tests/scenarios/_settings.yaml).
SITE_DIRS = scenarios.folder_site_dirs(SCENARIOS)
EXAMPLE_SITE = Path(SITE_DIRS[0])


def card_problems(scenario: Scenario, cards: list[dict]) -> list[str]:
    """What is wrong with the cards a scenario got: scenarios.check (the set of codes, the
    details, the suggestions, the card count and bundles), and the list of codes compared as
    a list, so a recommendation answered with two cards (or listed by two bundles) is a
    failure, not one code seen twice. A bundled card counts as the members it lists."""
    problems = list(scenarios.check(scenario, cards).problems)
    codes = sorted(code for c in cards for code in scenarios.card_codes(c))
    twice = sorted(code for code, n in Counter(codes).items() if n > 1)
    if twice:
        problems.append(f"cards {codes}: more than one card for {twice} (each expected code once: "
                        f"{sorted(scenario.expect)})")
    return problems


class MutableClock:
    def __init__(self) -> None:
        self.now = dt.datetime(2026, 6, 15, 12, 0, tzinfo=dt.timezone.utc)

    def __call__(self) -> dt.datetime:
        return self.now


class Harness:
    """Both servers, started once per test session. `in_process`: the service fetches from
    the FHIR server's app through fhir_server.InProcess (the same answers, no socket: for
    matrices of every scenario; the scenario suite's own fetch mode goes over HTTP)."""

    def __init__(self, in_process: bool = False) -> None:
        from cds_service import create_app

        self.clock = MutableClock()
        self.fhir = FhirServer().__enter__()
        self.app = create_app({"explain_enabled": True, "fetch_timeout": 5.0, "site_dirs": SITE_DIRS,
                               "repeat_suppression": False}, clock=self.clock,
                              transport=InProcess(self.fhir) if in_process else None)
        self._server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.base = f"http://127.0.0.1:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.session = requests.Session()
        self.discovery = {s["id"]: s for s in self.session.get(f"{self.base}/cds-services").json()["services"]}
        self.lock = threading.Lock()

    def close(self) -> None:
        self._server.shutdown()
        self.fhir.__exit__()

    def service_for(self, hook: str) -> dict:
        matches = [s for s in self.discovery.values() if s["hook"] == hook]
        assert len(matches) == 1, f"expected one service for {hook}, found {[s['id'] for s in matches]}"
        return matches[0]

    def run(self, scenario: Scenario, mode: str, explain: bool = False, chart: list[dict] | None = None,
            includes: bool = False, server_too: bool = False, ignore_include: bool = False) -> dict:
        with self.lock:  # the clock and the FHIR server's chart are shared
            self.clock.now = scenario.now
            self.fhir.reset(scenario.chart if chart is None else chart)
            self.fhir.include_medications = includes
            self.fhir.ignore_include = ignore_include
            service = self.service_for(scenario.hook)
            body: dict[str, Any] = {"hook": scenario.hook, "hookInstance": str(uuid.uuid4()), "context": scenario.context()}
            if mode in ("prefetch", "broad"):
                templates = service.get("prefetch", {})
                if mode == "prefetch":
                    body["prefetch"] = build_prefetch(templates, body["context"], self.fhir.store, scenario.now.date(),
                                                      include=not ignore_include)
                else:
                    body["prefetch"] = broad_prefetch(templates, body["context"], self.fhir.store)
                if includes:
                    for value in body["prefetch"].values():
                        if isinstance(value, dict) and value.get("resourceType") == "Bundle":
                            value["entry"] = value.get("entry", []) + [
                                {"resource": m, "search": {"mode": "include"}}
                                for m in self.fhir.store.referenced_medications([e["resource"] for e in value.get("entry", [])])]
            if mode == "fetch" or server_too:
                body["fhirServer"] = self.fhir.base
                body["fhirAuthorization"] = {"access_token": self.fhir.token, "token_type": "Bearer",
                                             "expires_in": 300, "scope": "user/*.read", "subject": "mm-cds"}
            url = f"{self.base}/cds-services/{service['id']}" + ("?explain=1" if explain else "")
            response = self.session.post(url, json=body, timeout=30)
            assert response.status_code == 200, f"HTTP {response.status_code}: {response.text}"
            result = response.json()
            result["_fetched"] = len(self.fhir.requests)
            # reads (Medication/<id>) and searches of several (Medication?_id=...)
            result["_medication_reads"] = sum(1 for r in self.fhir.requests if r.path.startswith("/fhir/Medication/")
                                              or (r.path == "/fhir/Medication" and "_id=" in r.query))
            return result


def broad_prefetch(templates: dict[str, str], context: dict, store) -> dict:
    """Each search key answered with every resource of its type for the patient; reads as asked."""
    prefetch: dict[str, Any] = {}
    for key, template in templates.items():
        path, _, search = template.partition("?")
        kind = path.split("/")[0]
        if not search:
            rid = context.get("patientId") if kind == "Patient" else context.get("encounterId")
            found = store.read(kind, rid) if isinstance(rid, str) else None
            if found is not None or kind == "Patient":
                prefetch[key] = found
            continue
        matches = store.search(kind, [("patient", context["patientId"])])
        prefetch[key] = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in matches]}
    return prefetch
