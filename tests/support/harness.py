"""The scenario harness: the CDS service and a FHIR server, both really serving on loopback.

A scenario runs through the HTTP API like an EHR would call it, in one of two modes:
  prefetch  the EHR resolves the service's discovery templates against the chart
  fetch     no prefetch; the service fetches from the FHIR server with the bearer token
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
from .fhir_server import FhirServer

SCENARIOS = scenarios.DEFAULT_FOLDER
# The site directories the bundled scenarios are written for (tests/scenarios/_settings.yaml).
SITE_DIRS = scenarios.folder_site_dirs(SCENARIOS)
EXAMPLE_SITE = Path(SITE_DIRS[0])


def card_problems(scenario: Scenario, cards: list[dict]) -> list[str]:
    """What is wrong with the cards a scenario got: scenarios.check (the set of codes, the
    details, the suggestions), and the list of codes compared as a list, so a recommendation
    answered with two cards is a failure, not one code seen twice."""
    problems = list(scenarios.check(scenario, cards).problems)
    codes = sorted(scenarios.card_code(c) for c in cards)
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
    """Both servers, started once per test session."""

    def __init__(self) -> None:
        from cds_service import create_app

        self.clock = MutableClock()
        self.app = create_app({"explain_enabled": True, "fetch_timeout": 5.0, "site_dirs": SITE_DIRS}, clock=self.clock)
        self._server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.base = f"http://127.0.0.1:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.fhir = FhirServer().__enter__()
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

    def run(self, scenario: Scenario, mode: str, explain: bool = False) -> dict:
        with self.lock:  # the clock and the FHIR server's chart are shared
            self.clock.now = scenario.now
            self.fhir.reset(scenario.chart)
            service = self.service_for(scenario.hook)
            body: dict[str, Any] = {"hook": scenario.hook, "hookInstance": str(uuid.uuid4()), "context": scenario.context()}
            if mode == "prefetch":
                body["prefetch"] = build_prefetch(service.get("prefetch", {}), body["context"], self.fhir.store, scenario.now.date())
            else:
                body["fhirServer"] = self.fhir.base
                body["fhirAuthorization"] = {"access_token": self.fhir.token, "token_type": "Bearer",
                                             "expires_in": 300, "scope": "user/*.read", "subject": "mm-cds"}
            url = f"{self.base}/cds-services/{service['id']}" + ("?explain=1" if explain else "")
            response = self.session.post(url, json=body, timeout=30)
            assert response.status_code == 200, f"HTTP {response.status_code}: {response.text}"
            result = response.json()
            result["_fetched"] = len(self.fhir.requests)
            return result
