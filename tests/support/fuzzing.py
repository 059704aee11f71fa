"""Fuzzing support: what every answer must satisfy, a network-free FHIR transport, the
scenario bodies the mutation fuzzer starts from, and the tally printed after the run."""

from __future__ import annotations

import collections
import copy
import json
from collections.abc import Iterator
from typing import Any

import yaml
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

from cds_service.data import ByteBudget, Response

from .ehr import build_prefetch
from .fhir_server import FhirStore
from .harness import SCENARIOS, Scenario, load_library


# Bounded and deterministic: the same examples on every run and machine, no example database.
def bounded(examples: int) -> settings:
    return settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                    suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])


# (fuzzer, operation, status) -> requests; printed by conftest.pytest_terminal_summary
TALLY: collections.Counter = collections.Counter()


def summary() -> list[str]:
    if not TALLY:
        return []
    lines = []
    for fuzzer in sorted({k[0] for k in TALLY}):
        mine = {k: v for k, v in TALLY.items() if k[0] == fuzzer}
        statuses = collections.Counter()
        for (_, _, status), count in mine.items():
            statuses[status] += count
        operations = len({k[1] for k in mine})
        answers = ", ".join(f"{status} x{count}" for status, count in sorted(statuses.items()))
        lines.append(f"fuzz {fuzzer}: {sum(mine.values())} requests over {operations} operation(s); {answers}")
    return lines


def problems(status: int, content_type: str, text: str) -> list[str]:
    """What a user must never see: a 5xx, a stack trace, a 4xx that is not an OperationOutcome."""
    found = []
    if status >= 500:
        found.append(f"HTTP {status}")
    if "Traceback" in text or 'File "' in text:
        found.append("a stack trace in the body")
    if 400 <= status < 500:
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        if not content_type.startswith("application/json") or not isinstance(body, dict):
            found.append(f"HTTP {status} without a JSON body")
        elif body.get("resourceType") != "OperationOutcome" or not body.get("issue"):
            found.append(f"HTTP {status} whose body is not an OperationOutcome")
    return found


class CannedTransport:
    """Answers every FHIR GET with `body`, whatever the URL: the fuzzers pick fhirServer
    values at random, and nothing may ever be sent to them."""

    def __init__(self, body: bytes = b'{"resourceType": "Bundle", "type": "searchset"}') -> None:
        self.body = body
        self.calls = 0

    def get(self, url: str, headers: dict[str, str], timeout: float, budget: ByteBudget) -> Response:
        self.calls += 1
        budget.spend(len(self.body))
        return Response(200, self.body)


# -- the mutation fuzzer's material ---------------------------------------------------------
AUTHORIZATION = {"access_token": "t", "token_type": "Bearer", "expires_in": 300, "scope": "user/*.read",
                 "subject": "mm-cds"}


def seeds(discovery: dict[str, dict]) -> list[tuple[str, dict, Any]]:
    """(service id, body, chart Bundle the FHIR server answers) for every scenario, twice:
    with prefetch as an EHR builds it, and with nothing prefetched and a fhirServer."""
    library = load_library()
    out = []
    for path in sorted(SCENARIOS.glob("[!_]*.yaml")):
        raw = yaml.safe_load(path.read_text()) or {}
        for entry in raw.get("scenarios") or []:
            scenario = Scenario.from_yaml(entry, raw.get("defaults") or {}, library)
            service = discovery[scenario.hook]
            context = scenario.context()
            prefetch = build_prefetch(service.get("prefetch", {}), context, FhirStore(scenario.chart), scenario.now.date())
            out.append((service["id"], {"hook": scenario.hook, "hookInstance": "fuzz", "context": context,
                                        "prefetch": prefetch}, None))
            chart = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in scenario.chart]}
            out.append((service["id"], {"hook": scenario.hook, "hookInstance": "fuzz", "context": context,
                                        "fhirServer": "http://127.0.0.1:9/fhir", "fhirAuthorization": AUTHORIZATION},
                        chart))
    return out


# FHIR element names the engine reads, so inserted keys land where they matter.
KEYS = ("coding", "code", "system", "display", "valueQuantity", "value", "unit", "reference", "medicationReference",
        "medicationCodeableConcept", "contained", "effectiveDateTime", "effectivePeriod", "status", "link", "entry",
        "resource", "resourceType", "subject", "patient", "id", "url", "relation", "valueCodeableConcept", "issued",
        "start", "authoredOn", "occurrenceDateTime", "performedDateTime", "birthDate", "extension", "category")
_SCALARS = (st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False) | st.text(max_size=12)
            | st.sampled_from(["2026-06-01", "2026-13-45", "", "Patient/p1", "#med1", "g/L", "mg/dL", "10*9/L",
                               "http://loinc.org", "2465-3", "Bundle", "OperationOutcome", "final", "next"]))
VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(KEYS), inner, max_size=3), max_leaves=8)


def paths(node: Any, prefix: tuple = ()) -> Iterator[tuple]:
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from paths(value, prefix + (index,))


@st.composite
def mutated(draw, seed_list: list[tuple[str, dict, Any]]) -> tuple[str, Any, Any]:
    """A seed with one to four edits anywhere in its body or chart: a value replaced by any
    JSON, a member or item deleted, or one added."""
    service_id, body, chart = draw(st.sampled_from(seed_list))
    doc = copy.deepcopy({"body": body, "chart": chart})
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from([p for p in paths(doc) if len(p) >= 2]))
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(("replace", "delete", "add")))
        if action == "replace":
            parent[path[-1]] = draw(VALUES)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent[path[-1]], dict):
            parent[path[-1]][draw(st.sampled_from(KEYS))] = draw(VALUES)
        elif isinstance(parent[path[-1]], list):
            parent[path[-1]].append(draw(VALUES))
    return service_id, doc.get("body"), doc.get("chart")
