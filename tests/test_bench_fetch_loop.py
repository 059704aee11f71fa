"""bench/fetch_loop.py's one-thread fetch path: against the tests' FHIR server (which pages),
it sends the GETs the service's own fetch path sends (searches, next pages; the Medications
come with the medication searches, `_include`)
and its call answers the same cards, so the latency and CPU it prints compare like with like."""

from __future__ import annotations

from collections import Counter

from cds_service.service import call as call_hook

from .support.bench import bench_module
from .support.fhir_server import FhirServer, FhirStore


def _summaries(outcome) -> list[str]:
    return [card["summary"] for card in outcome.response["cards"]]


def test_the_one_thread_fetch_path_sends_the_services_gets_and_answers_its_cards(app, no_proxy_env):
    state = app.extensions["mm_cds"]
    with bench_module("fetch_loop") as fetch_loop, bench_module("workloads") as workloads:
        service = next(s for s in state.kb.services.values() if s.hook == "order-sign")
        ctx = workloads.context("a")
        with FhirServer(FhirStore(workloads.chart("a", 300)), page_size=20) as fhir:
            services = call_hook(state.kb, service, fetch_loop.threaded_body(ctx, fhir.base), workloads.NOW, state.fetch)
            sent_by_service = Counter((r.path, r.query) for r in fhir.requests)
            fhir.requests.clear()
            one_thread = fetch_loop.FetchLoopCall(state, service, ctx, fhir.base)()
            sent_by_loop = Counter((r.path, r.query) for r in fhir.requests)
    assert _summaries(one_thread) == _summaries(services) and len(services.response["cards"]) == 9
    # the medication searches asked for their Medications (_include): none is read on its own
    assert not [path for path, _ in sent_by_service if path.startswith("/fhir/Medication/")]
    assert all("_include=" in query for path, query in sent_by_service if path.startswith("/fhir/Medication"))
    assert {path for path, _ in sent_by_loop} == {path for path, _ in sent_by_service}
    # the same searches, next pages included: fewer than the 41 keys it fetches, searches merged
    assert sent_by_loop == sent_by_service and 12 < sum(sent_by_service.values()) < 41
