"""Medications as EHRs send them: every scenario agrees when the chart's medications are
medicationReference (contained; the Medication in the Bundle, unasked or as the searches'
`_include` asked; only on the FHIR server, which ignores `_include`),
in both data modes, and when prefetch holds more than the templates asked.

The loopback FHIR server searches like a real one: `code` never follows a reference, an
unknown parameter is a 400, pages of 20. The EHR side fills prefetch from the discovery
templates with CDS Hooks 2.0 tokens only (tests/support/ehr.py refuses any other).
"""

from __future__ import annotations

import copy
import hashlib
import json
import time

import pytest
from werkzeug.wrappers import Response

from cds_service import create_app, scenarios
from cds_service.data import IncludeRefusals
from cds_service.knowledge import MEDICATION_RECORD_TYPES

from .conftest import NOW
from .support.fhir_server import FhirServer
from .support.harness import Harness
from .support.requests_ import RXNORM, order_sign
from .test_fetch import PATIENT, SIGN, codes, trace, with_server

SCENARIOS = [s for path in sorted(scenarios.DEFAULT_FOLDER.glob("*.yaml")) if not path.name.startswith("_")
             for s in scenarios.load_file(path)]


def medication_id(concept: dict) -> str:
    return "med-" + hashlib.sha1(json.dumps(concept, sort_keys=True).encode()).hexdigest()[:12]


def as_references(chart: list[dict], form: str) -> tuple[list[dict], int]:
    """The chart with every medicationCodeableConcept turned into a medicationReference:
    `contained` (#m), or `Medication/{id}` with the Medication added to the chart (the
    server holds it; the harness may also put it in prefetched Bundles)."""
    out: list[dict] = []
    medications: dict[str, dict] = {}
    rewritten = 0
    for resource in copy.deepcopy(chart):
        concept = resource.get("medicationCodeableConcept") if resource.get("resourceType") in MEDICATION_RECORD_TYPES else None
        if concept is None:
            out.append(resource)
            continue
        rewritten += 1
        del resource["medicationCodeableConcept"]
        if form == "contained":
            resource["contained"] = [*resource.get("contained", []), {"resourceType": "Medication", "id": "m", "code": concept}]
            resource["medicationReference"] = {"reference": "#m"}
        else:
            mid = medication_id(concept)
            medications[mid] = {"resourceType": "Medication", "id": mid, "code": concept}
            resource["medicationReference"] = {"reference": f"Medication/{mid}"}
        out.append(resource)
    return out + list(medications.values()), rewritten


# form -> harness options; modes each form runs in
FORMS = {
    "inline": {},
    "contained": {},
    "bundle": {"includes": True},  # the EHR includes them unasked, in every Bundle
    "included": {"server_too": True},  # the medication searches' _include answered
    "server": {"server_too": True, "ignore_include": True},  # only on the server: read one by one
}


def run_all(live: Harness, form: str, mode: str) -> tuple[int, int, list[str], list[int]]:
    """(scenarios run, agreeing, problems, Medication reads per call)."""
    run = agree = 0
    problems: list[str] = []
    reads: list[int] = []
    for scenario in SCENARIOS:
        base_mode = "prefetch" if mode == "broad" else mode
        if base_mode not in scenario.modes:
            continue
        chart, rewritten = (scenario.chart, 0) if form == "inline" else as_references(scenario.chart, form)
        run += 1
        response = live.run(scenario, mode, chart=chart, **FORMS[form])
        found = scenarios.check(scenario, response["cards"]).problems
        if found:
            problems.append(f"{scenario.name}: {'; '.join(found)}")
        else:
            agree += 1
        if rewritten:
            reads.append(response["_medication_reads"])
    return run, agree, problems, reads


@pytest.mark.slow
@pytest.mark.native  # the compiled medication resolver and fetch layer, on every form
# inline + fetch is every scenario as written, fetched: tests/scenarios already runs exactly
# that (the scenario collector's fetch mode), so the matrix does not repeat it (30 s).
@pytest.mark.parametrize("form, mode", [(form, mode) for form in FORMS for mode in ("prefetch", "fetch")
                                        if (form, mode) != ("inline", "fetch")]
                         + [("inline", "broad"), ("server", "broad")])
def test_every_scenario_agrees_whatever_the_medication_form(request, form, mode):
    # In fetch mode the service reads the loopback FHIR server's app in process (the harness's
    # `live_in_process`): the same searches, pages, _include entries and Medication reads,
    # without the socket that made each form cost 30 s. Fetching every scenario over HTTP is
    # the scenario suite's own fetch mode; Medication reads over HTTP for every scenario are
    # the server forms here in prefetch and broad modes, and the direct cases below.
    live = request.getfixturevalue("live_in_process" if mode == "fetch" else "live")
    run, agree, problems, reads = run_all(live, form, mode)
    print(f"\n{form:>9} {mode:>8}: {agree}/{run} scenarios agree; Medication reads per call with "
          f"medications: max {max(reads, default=0)}, mean {sum(reads) / max(len(reads), 1):.1f}")
    assert run > 100
    assert not problems, "\n".join(problems[:20])
    if form == "server":
        assert reads and max(reads) > 0  # the Medications were read from the server
    elif form != "inline":
        assert reads and max(reads) == 0  # contained or in the Bundle: nothing read


# -- direct cases -----------------------------------------------------------------------------
TEC = {"system": RXNORM, "code": "2619432"}  # teclistamab (the shipped value set holds it)
ACYCLOVIR = {"system": RXNORM, "code": "281"}  # acyclovir, in the HSV/VZV prophylaxis value set


def administration(rid: str, reference: str, **extra) -> dict:
    return {"resourceType": "MedicationAdministration", "id": rid, "status": "completed",
            "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2026-06-01",
            "medicationReference": {"reference": reference}, **extra}


@pytest.fixture()
def fhir():
    with FhirServer() as server:
        yield server


def test_medications_are_read_once_each_concurrently_with_the_bearer_token(kb, fhir):
    app = create_app({"explain_enabled": True, "fetch_timeout": 2.0}, kb=kb, clock=lambda: NOW)
    teclistamab = {"resourceType": "Medication", "id": "tec", "code": {"coding": [TEC]}}
    fhir.reset([PATIENT, teclistamab] + [administration(f"a{i}", "Medication/tec") for i in range(30)])
    fhir.ignore_include = True  # a server without _include: the references are read
    response = app.test_client().post(SIGN + "?explain=1", json=with_server(order_sign(), fhir))
    assert response.status_code == 200, response.get_data(as_text=True)
    medication_reads = [r for r in fhir.requests if r.path.startswith("/fhir/Medication/")]
    assert [r.path for r in medication_reads] == ["/fhir/Medication/tec"]  # 30 records, one read
    assert {r.authorization for r in medication_reads} == {"Bearer test-token"}
    # the administrations are seen as teclistamab: a prior exposure, so no first-dose cards
    note = trace(response)["dataRequirements"]["bsabAdministrations"]["note"]
    assert "30 resolved (0 contained, 0 in the Bundles (prefetched or fetched), 30 read from fhirServer)" in note
    assert trace(response)["dataRequirements"]["tecAdministrations"]["count"] == 30


def _medication_searches(fhir) -> list[tuple[str, str]]:
    return [(r.path, r.query) for r in fhir.requests
            if r.path.rsplit("/", 1)[-1] in MEDICATION_RECORD_TYPES and "_offset" not in r.query]


def test_a_server_that_answers_include_brings_the_medications_with_the_searches(kb, fhir):
    """The medication searches ask for the Medications their records reference (_include):
    a server that answers it needs no read per reference, so a call costs one round trip."""
    app = create_app({"explain_enabled": True, "fetch_timeout": 2.0}, kb=kb, clock=lambda: NOW)
    teclistamab = {"resourceType": "Medication", "id": "tec", "code": {"coding": [TEC]}}
    fhir.reset([PATIENT, teclistamab] + [administration(f"a{i}", "Medication/tec") for i in range(30)])
    response = app.test_client().post(SIGN + "?explain=1", json=with_server(order_sign(), fhir))
    assert response.status_code == 200, response.get_data(as_text=True)
    searches = _medication_searches(fhir)
    assert searches and all(query.endswith(f"&_include={path.rsplit('/', 1)[-1]}:medication")
                            for path, query in searches)
    assert not [r.path for r in fhir.requests if r.path.startswith("/fhir/Medication/")]
    report = trace(response)["dataRequirements"]["bsabAdministrations"]
    assert "30 resolved (0 contained, 30 in the Bundles (prefetched or fetched), 0 read from fhirServer)" in report["note"]
    # the Medication each page included is counted apart from the key's own records
    assert (report["received"], report["count"], report["otherResourceTypes"]) == (32, 30, 2)
    assert trace(response)["dataRequirements"]["tecAdministrations"]["count"] == 30


def test_a_server_that_refuses_include_is_asked_again_without_it(kb, fhir):
    """A server that refuses what it does not support (400) gets each medication search
    again without _include; the references are then read, and the cards are the same."""
    app = create_app({"explain_enabled": True, "fetch_timeout": 2.0}, kb=kb, clock=lambda: NOW)
    teclistamab = {"resourceType": "Medication", "id": "tec", "code": {"coding": [TEC]}}
    chart = [PATIENT, teclistamab] + [administration(f"a{i}", "Medication/tec") for i in range(30)]
    fhir.reset(chart)
    expected = codes(app.test_client().post(SIGN, json=with_server(order_sign(), fhir)))
    fhir.reset(chart)
    fhir.refuse_include = True
    response = app.test_client().post(SIGN + "?explain=1", json=with_server(order_sign(), fhir))
    assert response.status_code == 200, response.get_data(as_text=True)
    searches = _medication_searches(fhir)
    asked = [path for path, query in searches if "_include=" in query]
    plain = [path for path, query in searches if "_include=" not in query]
    # every type searched once without it; those that asked first were refused (a search that
    # started after the first refusal leaves it out at once: the refusal is remembered)
    assert asked and set(asked) <= set(plain) and len(plain) == len(set(plain))
    assert [r.path for r in fhir.requests if r.path.startswith("/fhir/Medication/")] == ["/fhir/Medication/tec"]
    assert trace(response)["dataRequirements"]["tecAdministrations"]["count"] == 30
    assert codes(response) == expected


def test_a_server_that_refused_include_gets_later_searches_without_it(kb, fhir, caplog):
    """Remembered per process: the second call's medication searches leave _include out at
    once (one round trip each, not a refusal and a second try), and it is logged once."""
    app = create_app({"fetch_timeout": 2.0}, kb=kb, clock=lambda: NOW)
    fhir.reset([PATIENT, {"resourceType": "Medication", "id": "tec", "code": {"coding": [TEC]}},
                administration("a1", "Medication/tec")])
    fhir.refuse_include = True
    with caplog.at_level("INFO", logger="cds_service.data._fetch"):
        first = app.test_client().post(SIGN, json=with_server(order_sign(), fhir))
        assert first.status_code == 200
        assert any("_include=" in q for _, q in _medication_searches(fhir))
        fhir.requests.clear()
        second = app.test_client().post(SIGN, json=with_server(order_sign(), fhir))
    assert second.status_code == 200 and codes(second) == codes(first)
    searches = _medication_searches(fhir)
    assert searches and not [q for _, q in searches if "_include=" in q]
    assert len({path for path, _ in searches}) == len(searches)  # each type searched once
    refused = [r for r in caplog.records if getattr(r, "event", None) == "fhir_include_refused"]
    assert len(refused) == 1 and refused[0].fhir_server == fhir.base


def test_a_remembered_refusal_expires_and_the_oldest_is_forgotten_first() -> None:
    now = [0.0]
    refusals = IncludeRefusals(ttl=60.0, size=2, clock=lambda: now[0])
    refusals.refused("https://a.example/fhir")
    assert refusals.refuses("https://a.example/fhir") and not refusals.refuses("https://b.example/fhir")
    now[0] = 59.0
    assert refusals.refuses("https://a.example/fhir")
    now[0] = 60.0  # a server upgraded meanwhile is asked again
    assert not refusals.refuses("https://a.example/fhir")
    for base in ("https://a.example/fhir", "https://b.example/fhir", "https://c.example/fhir"):
        refusals.refused(base)
    assert [refusals.refuses(b) for b in ("https://a.example/fhir", "https://b.example/fhir",
                                          "https://c.example/fhir")] == [False, True, True]


def test_a_refused_search_without_include_is_not_sent_again(kb, fhir):
    """Only a refused _include is retried: another 400 is the key's failure (412), once."""
    app = create_app({"fetch_timeout": 2.0}, kb=kb, clock=lambda: NOW)
    fhir.reset([PATIENT])
    fhir.fault = lambda req: (Response(status=400) if req.path == "/fhir/MedicationAdministration"
                              and "_include" not in req.query_string.decode() else None)
    fhir.refuse_include = True
    response = app.test_client().post(SIGN, json=with_server(order_sign(), fhir))
    assert response.status_code == 412
    sent = [q for path, q in _medication_searches(fhir) if path == "/fhir/MedicationAdministration"]
    # with _include first (unless another search's refusal was remembered by then), then once without
    assert sent[-1] == "patient=p1" and sent.count("patient=p1") == 1
    assert sent[:-1] in ([], ["patient=p1&_include=MedicationAdministration:medication"])


def test_an_ingredient_code_counts_for_value_set_membership(kb, fhir):
    app = create_app({"explain_enabled": True, "fetch_timeout": 2.0}, kb=kb, clock=lambda: NOW)
    kit = {"resourceType": "Medication", "id": "kit", "code": {"text": "local kit, no standard code"},
           "ingredient": [{"itemCodeableConcept": {"coding": [TEC]}}]}
    fhir.reset([PATIENT, kit, administration("a1", "Medication/kit")])
    response = app.test_client().post(SIGN + "?explain=1", json=with_server(order_sign(), fhir))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert trace(response)["dataRequirements"]["tecAdministrations"]["count"] == 1


ELRANATAMAB = {"system": RXNORM, "code": "2650269"}  # any code: these Medications resolve, whatever they are


def _several_referenced(fhir) -> list[dict]:
    """A chart whose administrations reference three Medications, on a server without _include."""
    meds = [{"resourceType": "Medication", "id": f"m{i}", "code": {"coding": [TEC if i == 0 else ELRANATAMAB]}}
            for i in range(3)]
    chart = [PATIENT, *meds] + [administration(f"a{i}", f"Medication/m{i % 3}") for i in range(9)]
    fhir.reset(chart)
    fhir.ignore_include = True
    return chart


def _medication_gets(fhir) -> list[str]:
    return [f"{r.path}?{r.query}" for r in fhir.requests if r.path.startswith("/fhir/Medication/")
            or r.path == "/fhir/Medication"]


def test_several_references_are_read_by_one_search_of_their_ids(kb, fhir):
    app = create_app({"explain_enabled": True, "fetch_timeout": 2.0}, kb=kb, clock=lambda: NOW)
    _several_referenced(fhir)
    response = app.test_client().post(SIGN + "?explain=1", json=with_server(order_sign(), fhir))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert _medication_gets(fhir) == ["/fhir/Medication?_id=m0,m1,m2"]
    note = trace(response)["dataRequirements"]["bsabAdministrations"]["note"]
    assert "9 resolved (0 contained, 0 in the Bundles (prefetched or fetched), 9 read from fhirServer)" in note
    assert trace(response)["dataRequirements"]["tecAdministrations"]["count"] == 3
    one_by_one = create_app({"explain_enabled": True, "fetch_timeout": 2.0, "fetch_merge_max_chars": 0}, kb=kb,
                            clock=lambda: NOW)
    fhir.requests.clear()
    alone = one_by_one.test_client().post(SIGN + "?explain=1", json=with_server(order_sign(), fhir))
    assert sorted(_medication_gets(fhir)) == [f"/fhir/Medication/m{i}?" for i in range(3)]
    assert codes(alone) == codes(response)


def test_a_medication_absent_from_the_search_is_unresolved_as_a_read_would_leave_it(kb, fhir):
    app = create_app({"fetch_timeout": 2.0}, kb=kb, clock=lambda: NOW)
    chart = _several_referenced(fhir)
    fhir.reset([r for r in chart if r.get("id") != "m2"])
    fhir.ignore_include = True  # reset forgets it
    response = app.test_client().post(SIGN, json=with_server(order_sign(), fhir))
    assert response.status_code == 412
    assert "Medication/m2 could not be resolved" in response.get_json()["issue"][0]["diagnostics"]
    assert _medication_gets(fhir) == ["/fhir/Medication?_id=m0,m1,m2"]


def test_a_server_refusing_the_id_search_gets_each_read_and_is_remembered(kb, fhir, caplog):
    app = create_app({"fetch_timeout": 2.0}, kb=kb, clock=lambda: NOW)
    _several_referenced(fhir)
    expected = codes(app.test_client().post(SIGN, json=with_server(order_sign(), fhir)))
    refusing = create_app({"fetch_timeout": 2.0}, kb=kb, clock=lambda: NOW)
    fhir.fault = lambda req: (Response("_id not supported", status=400)
                              if req.path == "/fhir/Medication" and "_id=" in req.query_string.decode() else None)
    fhir.requests.clear()
    with caplog.at_level("INFO", logger="cds_service.data._fetch"):
        first = refusing.test_client().post(SIGN, json=with_server(order_sign(), fhir))
        first_gets = _medication_gets(fhir)
        fhir.requests.clear()
        second = refusing.test_client().post(SIGN, json=with_server(order_sign(), fhir))
    assert first.status_code == second.status_code == 200, first.get_data(as_text=True)
    assert codes(first) == codes(second) == expected
    reads = sorted(f"/fhir/Medication/m{i}?" for i in range(3))
    assert first_gets[0] == "/fhir/Medication?_id=m0,m1,m2" and sorted(first_gets[1:]) == reads
    assert sorted(_medication_gets(fhir)) == reads  # the refusal remembered: read one by one at once
    assert len([r for r in caplog.records if getattr(r, "event", None) == "fhir_merged_search_refused"]) == 1


def test_an_unresolvable_reference_is_412_naming_the_key_and_the_reference(kb, fhir):
    app = create_app({"fetch_timeout": 2.0}, kb=kb, clock=lambda: NOW)
    fhir.reset([PATIENT, administration("a1", "Medication/gone")])
    response = app.test_client().post(SIGN, json=with_server(order_sign(), fhir))
    assert response.status_code == 412
    issue = response.get_json()["issue"][0]
    assert "Medication/gone could not be resolved" in issue["diagnostics"]
    assert issue["expression"] == ["bsabAdministrations"]


def test_a_reference_in_prefetch_without_a_fhir_server_is_412(client):
    keys = {s["id"]: s for s in client.get("/cds-services").get_json()["services"]}["mm-tcell-order-sign"]["prefetch"]
    prefetch: dict = {key: None for key in keys}
    prefetch["patient"] = PATIENT
    prefetch["bsabAdministrations"] = {"resourceType": "Bundle", "type": "searchset",
                                       "entry": [{"resource": administration("a1", "Medication/tec")}]}
    response = client.post(SIGN, json=order_sign(prefetch=prefetch))
    assert response.status_code == 412
    assert "no fhirServer to read them from" in response.get_json()["issue"][0]["diagnostics"]
    # the same Medication in the Bundle (an _include result): resolved, nothing to fetch
    prefetch["bsabAdministrations"]["entry"].append(
        {"resource": {"resourceType": "Medication", "id": "tec", "code": {"coding": [TEC]}}, "search": {"mode": "include"}})
    assert client.post(SIGN, json=order_sign(prefetch=prefetch)).status_code == 200


def test_an_administration_takes_the_medication_of_its_request(kb, fhir):
    app = create_app({"explain_enabled": True, "fetch_timeout": 2.0}, kb=kb, clock=lambda: NOW)
    request = {"resourceType": "MedicationRequest", "id": "r1", "status": "completed", "intent": "order",
               "subject": {"reference": "Patient/p1"}, "medicationReference": {"reference": "Medication/tec"}}
    given = {"resourceType": "MedicationAdministration", "id": "a1", "status": "completed",
             "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2026-06-01",
             "request": {"reference": "MedicationRequest/r1"}}
    fhir.reset([PATIENT, request, given, {"resourceType": "Medication", "id": "tec", "code": {"coding": [TEC]}}])
    fhir.ignore_include = True  # a server without _include: the references are read
    response = app.test_client().post(SIGN + "?explain=1", json=with_server(order_sign(), fhir))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert trace(response)["dataRequirements"]["tecAdministrations"]["count"] == 1
    assert [r.path for r in fhir.requests if r.path.startswith("/fhir/Medication/")] == ["/fhir/Medication/tec"]


def test_a_medication_read_that_times_out_is_412_within_the_deadline(kb, fhir):
    app = create_app({"fetch_timeout": 1.0}, kb=kb, clock=lambda: NOW)
    fhir.reset([PATIENT, administration("a1", "Medication/tec"),
                {"resourceType": "Medication", "id": "tec", "code": {"coding": [TEC]}}])
    fhir.ignore_include = True  # a server without _include: the Medication is read
    fhir.fault = lambda req: (time.sleep(3) or None) if req.path.startswith("/fhir/Medication/") else None
    started = time.monotonic()
    response = app.test_client().post(SIGN, json=with_server(order_sign(), fhir))
    assert response.status_code == 412
    assert time.monotonic() - started < 1.2
    assert "Medication/tec could not be resolved" in response.get_json()["issue"][0]["diagnostics"]


def test_cards_do_not_change_when_a_prophylaxis_order_is_a_reference(kb, fhir):
    """Prophylaxis already ordered, sent as a reference, is seen (the card stays quiet)."""
    app = create_app({"explain_enabled": True, "fetch_timeout": 2.0}, kb=kb, clock=lambda: NOW)
    order = {"resourceType": "MedicationRequest", "id": "acv", "status": "active", "intent": "order",
             "subject": {"reference": "Patient/p1"}, "authoredOn": "2026-06-01",
             "medicationReference": {"reference": "Medication/acv"}}
    inline = dict(order, medicationCodeableConcept={"coding": [ACYCLOVIR]})
    del inline["medicationReference"]
    fhir.reset([PATIENT])
    without = codes(app.test_client().post(SIGN, json=with_server(order_sign(), fhir)))
    fhir.reset([PATIENT, inline])
    expected = codes(app.test_client().post(SIGN, json=with_server(order_sign(), fhir)))
    fhir.reset([PATIENT, order, {"resourceType": "Medication", "id": "acv", "code": {"coding": [ACYCLOVIR]}}])
    assert codes(app.test_client().post(SIGN, json=with_server(order_sign(), fhir))) == expected
    assert expected != without  # the order matters: seen inline, and seen as a reference
