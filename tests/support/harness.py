"""The scenario harness: the CDS service and a FHIR server, both really serving on loopback.

A scenario runs through the HTTP API like an EHR would call it, in one of two modes:
  prefetch  the EHR resolves the service's discovery templates against the chart
  fetch     no prefetch; the service fetches from the FHIR server with the bearer token
"""

from __future__ import annotations

import copy
import datetime as dt
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml
from werkzeug.serving import make_server

from .ehr import build_prefetch
from .fhir_server import FhirServer

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
EXAMPLE_SITE = Path(__file__).resolve().parent.parent.parent / "examples" / "site"
PATIENT_FIELD = {"Immunization": "patient", "AllergyIntolerance": "patient"}


class MutableClock:
    def __init__(self) -> None:
        self.now = dt.datetime(2026, 6, 15, 12, 0, tzinfo=dt.timezone.utc)

    def __call__(self) -> dt.datetime:
        return self.now


def load_library() -> dict[str, dict]:
    library: dict[str, dict] = {}
    for path in sorted(SCENARIOS.glob("_*.yaml")):
        library.update(yaml.safe_load(path.read_text()) or {})
    return library


@dataclass
class Scenario:
    name: str
    hook: str
    chart: list[dict]
    draft_orders: list[dict]
    expect: set[str]
    now: dt.datetime
    patient: str = "p1"
    selections: list[str] | None = None
    encounter: str | None = None
    expect_detail: dict[str, list[str]] = field(default_factory=dict)
    expect_suggestions: dict[str, list[str]] = field(default_factory=dict)
    modes: tuple[str, ...] = ("prefetch", "fetch")

    @classmethod
    def from_yaml(cls, raw: dict, defaults: dict, library: dict[str, Any]) -> Scenario:
        merged = {**defaults, **raw}
        patient = merged.get("patient", "p1")
        now = merged.get("now", "2026-06-15T12:00:00Z")
        if isinstance(now, str):
            now = dt.datetime.fromisoformat(now.replace("Z", "+00:00"))
        omit = set(defaults.get("omit") or []) | set(raw.get("omit") or [])
        unknown = omit - _baseline_names(merged.get("baseChart"), merged.get("baseDraftOrders"), library=library)
        if unknown:  # a typo here would quietly test nothing
            raise ValueError(f"scenario '{raw['name']}' omits {sorted(unknown)}, which the baseline does not hold")
        chart = _base(merged.get("baseChart"), library, omit) + (raw.get("chart") or [])
        drafts = _base(merged.get("baseDraftOrders"), library, omit) + (raw.get("draftOrders") or [])
        return cls(
            name=raw["name"],
            hook=merged["hook"],
            chart=[_resource(item, library, patient, i) for i, item in enumerate(chart)],
            draft_orders=[_resource(item, library, patient, i, "draft") for i, item in enumerate(drafts)],
            expect=set(raw.get("expect") or []),
            now=now if now.tzinfo else now.replace(tzinfo=dt.timezone.utc),
            patient=patient,
            selections=merged.get("selections"),
            encounter=merged.get("encounter"),
            expect_detail=raw.get("expectDetail") or {},
            expect_suggestions=raw.get("expectSuggestions") or {},
            modes=tuple(merged.get("modes") or ("prefetch", "fetch")),
        )

    def context(self) -> dict[str, Any]:
        context: dict[str, Any] = {"userId": "Practitioner/dr-1", "patientId": self.patient}
        if self.encounter:
            context["encounterId"] = self.encounter
        if self.hook in ("order-select", "order-sign"):
            context["draftOrders"] = {"resourceType": "Bundle", "type": "collection",
                                      "entry": [{"resource": r} for r in self.draft_orders]}
        if self.hook == "order-select":
            context["selections"] = self.selections or [f"{r['resourceType']}/{r['id']}" for r in self.draft_orders]
        return context


def _base(base: str | list | None, library: dict[str, Any], omit: set[str]) -> list[dict]:
    """A baseline: a list of items, or the name of a list kept in the library."""
    items = library[base] if isinstance(base, str) else (base or [])
    return [item for item in items if item.get("use") not in omit]


def _baseline_names(*bases: str | list | None, library: dict[str, Any]) -> set[str]:
    return {item.get("use") for base in bases for item in (library[base] if isinstance(base, str) else (base or []))}


def _resource(item: dict, library: dict[str, dict], patient: str, index: int, prefix: str = "r") -> dict:
    item = dict(item)
    name = item.pop("use", None)
    if name is not None:
        if name not in library:
            raise KeyError(f"no resource named '{name}' in tests/scenarios/_library.yaml")
        item = {**copy.deepcopy(library[name]), **item}
    kind = item.get("resourceType")
    item.setdefault("id", f"{prefix}-{(name or kind or 'x').lower()}-{index}")
    if kind == "Patient":
        item["id"] = patient
    elif kind not in ("Medication",):
        key = PATIENT_FIELD.get(kind, "subject")
        item.setdefault(key, {"reference": f"Patient/{patient}"})
    return item


class Harness:
    """Both servers, started once per test session."""

    def __init__(self) -> None:
        from cds_service import create_app

        self.clock = MutableClock()
        self.app = create_app({"explain_enabled": True, "fetch_timeout": 5.0, "site_dirs": (str(EXAMPLE_SITE),)}, clock=self.clock)
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
