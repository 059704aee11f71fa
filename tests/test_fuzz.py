"""Fuzzing the HTTP API through its WSGI interface, bounded and deterministic.

1. Schema-driven (schemathesis): every operation in the served OpenAPI description,
   including routes other modules add later (feedback), with bodies valid per the
   description and, where there is input to break, invalid ones.
2. Mutation (hypothesis): the scenario patients' real requests and charts, edited at
   random depth (codings that are numbers, references that are lists, links that are
   not URLs...), sent with prefetch and through the fetch path.

Every answer: no 5xx, no stack trace, every 4xx a JSON OperationOutcome; answers to
valid requests also conform to the description. Deterministic for a given selection of
tests: Hypothesis and schemathesis also draw values from literals of the project's loaded
modules, so running this file alone explores other (equally many) examples than `make test`. The number of requests is printed at
the end of the run (conftest.pytest_terminal_summary). Nothing leaves the process: FHIR
fetches are answered by a canned transport, whatever fhirServer the fuzzer invents.
"""

from __future__ import annotations

import json
import logging

import pytest
import schemathesis
from hypothesis import given
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cds_service import create_app, web

from .conftest import NOW
from .support.fuzzing import TALLY, CannedTransport, bounded, mutated, problems, seeds
from .support.harness import EXAMPLE_SITE

pytestmark = pytest.mark.fuzz

SCHEMA_EXAMPLES = 25  # per operation and generation mode
MUTATION_EXAMPLES = 800
CONFORMANCE = [status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture()
def fuzz_app(kb, caplog, tmp_path):
    caplog.set_level(logging.CRITICAL)  # thousands of request lines are not worth keeping
    transport = CannedTransport()
    # The example site maps talquetamab, not linvoseltamab: accepted explicitly, or /ready is a 503
    # (the go-live gate, docs/terminology.md) that the fuzzer would rightly report.
    app = create_app({"explain_enabled": True, "fetch_timeout": 1.0, "site_dirs": (str(EXAMPLE_SITE),),
                      "data_dir": str(tmp_path / "data"), "accept_unverified_treatment_codes": ("linvoseltamab",)},
                     transport=transport, clock=lambda: NOW)
    yield app, transport
    web.state_of(app).feedback.close()


def _has_input(operation) -> bool:
    """A body, query or header to break (a string path parameter has no invalid form in a URL)."""
    return operation.body or any(p.location != "path" for p in operation.iter_parameters())


def test_every_described_operation_survives_schema_driven_fuzzing(fuzz_app):
    app, _ = fuzz_app
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    operations = [op for op in (result.ok() for result in schema.get_all_operations())
                  if "x-no-fuzz" not in op.definition.raw]  # e.g. /admin/reload: each call reloads
    assert len(operations) >= 16  # the description was read
    for operation in operations:
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if _has_input(operation) else [])
        for mode in modes:

            @bounded(SCHEMA_EXAMPLES)
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case) -> None:
                response = case.call()
                TALLY["schema-driven", operation.label, response.status_code] += 1
                content_type = ";".join(response.headers.get("content-type", []))  # lower-case keys, list values
                found = problems(response.status_code, content_type, response.text)
                assert not found, f"{operation.label} ({mode.value}): {found}\n{case.as_curl_command()}"
                if mode is GenerationMode.POSITIVE:
                    case.validate_response(response, checks=CONFORMANCE)

            try:
                run()
            except Exception as exc:
                raise AssertionError(f"{operation.label} ({mode.value}): {type(exc).__name__}") from exc


@pytest.mark.native  # mutated charts reach the compiled FHIRPath closures, readers and resolver
def test_mutated_scenario_requests_and_charts_never_crash_the_service(fuzz_app):
    app, transport = fuzz_app
    client = app.test_client()
    discovery = {s["hook"]: s for s in client.get("/cds-services").get_json()["services"]}
    seed_list = seeds(discovery)
    assert len(seed_list) >= 20

    @bounded(MUTATION_EXAMPLES)
    @given(example=mutated(seed_list))
    def run(example) -> None:
        service_id, body, chart = example
        transport.body = json.dumps(chart).encode()
        response = client.post(f"/cds-services/{service_id}?explain=1", json=body)
        TALLY["mutation", f"POST /cds-services/{service_id}", response.status_code] += 1
        found = problems(response.status_code, response.content_type or "", response.get_data(as_text=True))
        assert not found, f"{found} for {body!r:.2000} with chart {chart!r:.1000}"

    run()
    statuses = {status for (fuzzer, _, status) in TALLY if fuzzer == "mutation"}
    assert {200, 400} <= statuses  # the edits reached evaluation, not only the request schema
    assert transport.calls > 0  # and the fetch path
