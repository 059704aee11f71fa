"""One search for several missing keys (data/_searches.py): the planner's cases as data
(tests/cases/merged_searches.yaml, with the batching of Medication reads), then the fetch path against the tests' FHIR server,
which applies every parameter itself: the merged searches must give every key the records
its own search would have (the same counts after the retrieves, the same cards), stay
within fetch_merge_max_chars, fail all their keys together, and be sent again one key at a
time by a server that refuses them."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml
from werkzeug.wrappers import Response

from cds_service import create_app, web
from cds_service.data._http import sent_length
from cds_service.data._medications import _batched
from cds_service.data._searches import Search, plan
from cds_service.errors import ConfigurationError

from .conftest import NOW
from .support.bench import bench_module
from .support.cards import member_codes
from .support.fhir_server import FhirServer, FhirStore
from .test_fetch import with_server

TABLE = yaml.safe_load((Path(__file__).parent / "cases" / "merged_searches.yaml").read_text())
CASES, READS = TABLE["cases"], TABLE["medication_reads"]
SIGN = "/cds-services/mm-tcell-order-sign"
SEARCHED = ("Observation", "Condition", "ServiceRequest", "Procedure")  # the types with code-filtered keys


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_which_keys_one_search_answers(case):
    params = {key: frozenset(names) for key, names in case["params"].items()}
    searches = plan(case["fetch"], params, case["max_chars"])
    assert searches == [Search(tuple(s["keys"]), s["target"]) for s in case["expect"]]


@pytest.mark.parametrize("case", READS, ids=[c["name"] for c in READS])
def test_which_medication_references_one_search_reads(case):
    singles, batches = _batched(case["refs"], case["max_chars"])
    assert (singles, batches) == (case["singles"], [(kind, ids) for kind, ids in case["batches"]])


def test_the_compiler_marks_the_searches_it_built_as_mergeable(kb):
    service = kb.services["mm-tcell-order-sign"]
    by_key = {r.key: r for r in service.plan.requirements if r.template is not None}
    assert by_key["igg"].merge_params == frozenset({"code", "status"})
    assert by_key["bsabAdministrations"].merge_params == frozenset()  # no code at the server: _include only
    assert by_key["patient"].merge_params is None  # a read
    assert by_key["encounter"].merge_params is None  # a cqf-fhirQueryPattern: its parameters are not re-applied


@pytest.fixture()
def workload():
    """Workload (a) of the benchmark: a first bispecific order, 300 resources, nine cards."""
    with bench_module("workloads") as workloads:
        yield workloads.chart("a", 300), workloads.context("a")


def _call(app, fhir: FhirServer, ctx: dict):
    body = {"hook": "order-sign", "hookInstance": "9f3c1f1e-5d0f-4a57-9a55-0d8b8a3e2c11", "context": ctx}
    return app.test_client().post(SIGN + "?explain=1", json=with_server(body, fhir))


def _app(kb, **settings):
    return create_app({"explain_enabled": True, "repeat_suppression": False, "fetch_timeout": 5.0, **settings},
                      kb=kb, clock=lambda: NOW)


def _searches(fhir: FhirServer) -> list[str]:
    return [f"{r.path}?{unquote(r.query)}" for r in fhir.requests
            if r.path.removeprefix("/fhir/") in SEARCHED and "_offset" not in r.query]


def _counts(response) -> dict[str, int]:
    trace = response.get_json()["extension"]["org.myeloma-cds.explain"]
    return {key: report["count"] for key, report in trace["dataRequirements"].items()}


def test_merged_searches_give_every_key_what_its_own_search_gives(kb, workload, no_proxy_env):
    chart, ctx = workload
    apps = {"merged": _app(kb), "one per key": _app(kb, fetch_merge_max_chars=0)}
    answers, sent = {}, {}
    with FhirServer(FhirStore(chart), page_size=20) as fhir:
        for name, app in apps.items():
            fhir.requests.clear()
            answers[name] = _call(app, fhir, ctx)
            assert answers[name].status_code == 200, answers[name].get_data(as_text=True)
            sent[name] = _searches(fhir)
    merged, alone = answers["merged"], answers["one per key"]
    assert member_codes(merged.get_json()["cards"]) == member_codes(alone.get_json()["cards"])
    assert len(merged.get_json()["cards"]) == 9
    assert _counts(merged) == _counts(alone) and sum(_counts(alone).values()) > 0
    # 35 code-filtered searches of four types are a handful, each within the limit
    assert len(sent["one per key"]) == 35 and len(sent["merged"]) <= 8, sent["merged"]
    assert all(sent_length(s.split("/fhir/", 1)[1]) <= 2000 for s in sent["merged"])  # as sent, encoded
    notes = [r.get("note", "") for r in merged.get_json()["extension"]["org.myeloma-cds.explain"]["dataRequirements"].values()]
    assert any(note.startswith("one search with ") for note in notes)
    for app in apps.values():
        web.state_of(app).feedback.close()


def test_a_merged_search_that_fails_fails_each_of_its_keys(kb, workload, no_proxy_env):
    chart, ctx = workload
    app = _app(kb)
    conditions = [r.key for r in kb.services["mm-tcell-order-sign"].plan.requirements
                  if r.type == "Condition" and r.template is not None]
    with FhirServer(FhirStore(chart), page_size=20) as fhir:
        fhir.fail_on("/fhir/Condition", "", Response("down", status=503))
        response = _call(app, fhir, ctx)
        assert sum(1 for s in _searches(fhir) if s.startswith("/fhir/Condition")) == 1  # one search for them all
    assert response.status_code == 412
    assert sorted(response.get_json()["issue"][0]["expression"]) == sorted(conditions) and len(conditions) > 3
    web.state_of(app).feedback.close()


def test_a_server_that_refuses_a_merged_search_gets_each_key_alone_from_then_on(kb, workload, no_proxy_env, caplog):
    """A server with a short query-string limit (414 beyond it): the merged searches it
    refuses are sent again one key at a time, the cards are the same, and the next call
    sends no merged search at all (remembered for the server, logged once)."""
    chart, ctx = workload
    app = _app(kb)
    own = plan({r.key: r.template for r in kb.services["mm-tcell-order-sign"].plan.requirements if r.template}, {}, 0)
    # every key's own search passes (as sent; its token is longer than the patient id it becomes)
    limit = max(sent_length(s.target.split("?", 1)[-1]) for s in own)
    with FhirServer(FhirStore(chart), page_size=20) as fhir:
        expected = member_codes(_call(app, fhir, ctx).get_json()["cards"])
        refused_app = _app(kb)
        too_long: list[bytes] = []

        def short_urls_only(req):
            if len(req.query_string) <= limit:
                return None
            too_long.append(req.query_string)
            return Response("URI too long", status=414)

        fhir.fault = short_urls_only
        fhir.requests.clear()
        with caplog.at_level("INFO", logger="cds_service.data._fetch"):
            first = _call(refused_app, fhir, ctx)
            refused_first = len(too_long)
            fhir.requests.clear()
            second = _call(refused_app, fhir, ctx)
            second_sent = _searches(fhir)
    assert first.status_code == second.status_code == 200, first.get_data(as_text=True)
    assert member_codes(first.get_json()["cards"]) == member_codes(second.get_json()["cards"]) == expected
    assert refused_first > 0 and len(too_long) == refused_first  # merged and refused; the next call sends none
    assert len(second_sent) == len([s for s in own if s.target.split("?", 1)[0] in SEARCHED])
    refusals = [r for r in caplog.records if getattr(r, "event", None) == "fhir_merged_search_refused"]
    assert len(refusals) == 1 and refusals[0].fhir_server == fhir.base
    for used in (app, refused_app):
        web.state_of(used).feedback.close()


def test_a_negative_merge_length_stops_start_up_naming_the_setting(kb):
    with pytest.raises(ConfigurationError, match="fetch_merge_max_chars"):
        create_app({"fetch_merge_max_chars": -1}, kb=kb)
