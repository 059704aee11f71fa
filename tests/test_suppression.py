"""Repeat suppression of chart cards (RECOMMENDATIONS-v2 2.4, R-1 to R-9), the
order-select/order-sign rule (2.5, O-1 to O-3) and the keyed issued-card record (B-0.7).
Time is the app's injected clock; every test touching the database runs on SQLite and
PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sqlite3
import threading
import time
import uuid

import pytest

from cds_service import create_app, feedback, web
from cds_service.engine import EXPLAIN_KEY
from cds_service.errors import StoreUnavailable
from cds_service.feedback import _db as feedback_db
from cds_service.feedback._db import MIGRATIONS
from cds_service.scenarios import RECOMMENDATIONS_KEY, find
from cds_service.service import SUPPRESSION_UNAVAILABLE, scenario_request

from .conftest import NOW
from .support.requests_ import empty_prefetch, order_sign, teclistamab_order

SCENARIOS = __import__("pathlib").Path(__file__).parent / "scenarios"
CHART = "/cds-services/mm-tcell-chart?explain=1"
DAY = dt.timedelta(days=1)
HOUR = dt.timedelta(hours=1)


class Clock:
    def __init__(self, moment: dt.datetime):
        self.moment = moment

    def __call__(self) -> dt.datetime:
        return self.moment


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend(request, tmp_path) -> dict:
    if request.param == "sqlite":
        return {"data_dir": str(tmp_path / "data")}
    return {"database_url": request.getfixturevalue("postgres").new_database(), "data_dir": str(tmp_path / "data")}


@pytest.fixture()
def make_app(kb):
    made = []

    def make(settings: dict, clock: Clock):
        app = create_app({"explain_enabled": True, **settings}, kb=kb, clock=clock)
        made.append(app)
        return app

    yield make
    for app in made:
        web.state_of(app).feedback.close()


def chart_call(app, scenario, extra: list[dict] = ()) -> tuple[dict[str, dict], dict]:
    """One chart open: cards by each code they report, and the trace's suppression part."""
    kb = web.state_of(app).kb
    if extra:
        scenario = type(scenario)(**{**scenario.__dict__, "chart": [*scenario.chart, *extra]})
    body = scenario_request(scenario, kb.services["mm-tcell-chart"].prefetch)
    response = app.test_client().post(CHART, json=body)
    assert response.status_code == 200, response.get_json()
    web.state_of(app).feedback.flush()
    answer = response.get_json()
    cards = {code: c for c in answer["cards"] for code in c["extension"][RECOMMENDATIONS_KEY]}
    trace = answer.get("extension", {}).get(EXPLAIN_KEY, {}).get("suppression", {})
    return cards, trace


def give(app, card: dict, outcome: str, when: dt.datetime, reason: str | None = None,
         suggestions: list[str] | None = None, path: str = "/cds-services/mm-tcell-chart/feedback") -> None:
    item: dict = {"card": card["uuid"], "outcome": outcome, "outcomeTimestamp": when.isoformat().replace("+00:00", "Z")}
    if outcome == "accepted":
        item["acceptedSuggestions"] = [{"id": s} for s in (suggestions if suggestions is not None
                                                            else [s["uuid"] for s in card["suggestions"]])]
    if reason:
        item["overrideReason"] = {"reason": {"system": "https://myeloma-cds.example.org/fhir/CodeSystem/mm-override-reasons",
                                             "code": reason}}
    response = app.test_client().post(path, json={"feedback": [item]})
    assert response.status_code == 200, response.get_json()


def scenario(file: str, name: str):
    return find(SCENARIOS / file, name)


# -- (1) suppressed, (2) fingerprint changed ----------------------------------------------------

def test_an_overridden_tox2_is_suppressed_for_30_days_with_suppressed_until_in_the_trace(backend, make_app):
    patient = scenario("tox-2.yaml", "TOX-2 fires after cilta-cel 318 days ago, with its neurotoxicity warning")
    clock = Clock(patient.now)
    app = make_app(backend, clock)
    cards, _ = chart_call(app, patient)
    give(app, cards["TOX-2"], "overridden", clock.moment)
    clock.moment = patient.now + 10 * DAY
    cards, trace = chart_call(app, patient)
    assert "TOX-2" not in cards
    entry = next(e for e in trace["suppressed"] if e["code"] == "TOX-2")
    until = (patient.now + 30 * DAY).isoformat(timespec="seconds").replace("+00:00", "Z")
    assert entry == {"code": "TOX-2", "rule": "R-2", "feedbackTime": entry["feedbackTime"], "outcome": "overridden",
                     "reason": "(no reason given)", "suppressedUntil": until}


def test_seq4_is_issued_again_when_new_relapse_evidence_changes_its_fingerprint(backend, make_app):
    patient = scenario("seq-4.yaml", "SEQ-4 fires for relapsed myeloma (C90.02) after a PI and an IMiD")
    pd = [r for r in scenario("seq-4.yaml", "SEQ-4 fires when the latest IMWG response is progressive disease").chart
          if r["resourceType"] == "Observation" and "PD" in json.dumps(r.get("valueCodeableConcept"))][0]
    clock = Clock(patient.now)
    app = make_app(backend, clock)
    cards, _ = chart_call(app, patient)
    give(app, cards["SEQ-4"], "overridden", clock.moment, reason="car-t-declined")
    clock.moment = patient.now + 10 * DAY
    assert "SEQ-4" not in chart_call(app, patient)[0]  # 180 days for this reason
    new_pd = {**pd, "id": "pd-new", "effectiveDateTime": (patient.now + 9 * DAY).date().isoformat()}
    cards, trace = chart_call(app, patient, [new_pd])
    assert "SEQ-4" in cards
    assert all(e["code"] != "SEQ-4" for e in trace["suppressed"])


# -- (3) the 30-day boundary and the season -------------------------------------------------------

INF8 = "INF-8 fires in season with no influenza vaccine since 1 August, with no suggestion"


def test_inf8_the_30_day_boundary(backend, make_app):
    patient = scenario("inf-8.yaml", INF8)
    clock = Clock(patient.now)
    app = make_app(backend, clock)
    cards, _ = chart_call(app, patient)
    give(app, cards["INF-8"], "overridden", clock.moment)
    clock.moment = patient.now + 29 * DAY + 23 * HOUR
    assert "INF-8" not in chart_call(app, patient)[0]
    clock.moment = patient.now + 30 * DAY
    assert "INF-8" in chart_call(app, patient)[0]


def test_inf8_overridden_20_days_before_the_season_ends_stays_away_this_season_and_returns_next(backend, make_app):
    base = scenario("inf-8.yaml", INF8)
    march = base.as_of(dt.date(2027, 3, 11))  # the season 2026-27 ends on 31 March
    clock = Clock(march.now)
    app = make_app(backend, clock)
    cards, _ = chart_call(app, march)
    give(app, cards["INF-8"], "overridden", clock.moment)
    late = march.as_of(dt.date(2027, 3, 31))
    clock.moment = late.now
    cards, trace = chart_call(app, late)
    assert "INF-8" not in cards
    entry = next(e for e in trace["suppressed"] if e["code"] == "INF-8")
    assert entry["suppressedUntil"] == "2027-04-01T00:00:00Z"  # never beyond the season's end
    autumn = march.as_of(dt.date(2027, 9, 2))  # season 2027-28: another fingerprint
    clock.moment = autumn.now
    assert "INF-8" in chart_call(app, autumn)[0]


# -- (4) an ignored card comes back once a day --------------------------------------------------------

def test_an_ignored_mon2_is_suppressed_3_hours_later_and_issued_25_hours_later(backend, make_app):
    patient = scenario("mon-2.yaml", "MON-2 fires with no serum IgG in the last 8 weeks")
    clock = Clock(patient.now)
    app = make_app(backend, clock)
    assert "MON-2" in chart_call(app, patient)[0]
    clock.moment = patient.now + 3 * HOUR
    cards, trace = chart_call(app, patient)
    assert "MON-2" not in cards
    assert next(e for e in trace["suppressed"] if e["code"] == "MON-2")["rule"] == "R-4"
    clock.moment = patient.now + 25 * HOUR
    assert "MON-2" in chart_call(app, patient)[0]


# -- (5) bundled members --------------------------------------------------------------------------------

def test_inf_sc_members_are_suppressed_one_by_one_and_the_card_keeps_the_rest(backend, make_app):
    patient = scenario("mon-2.yaml", "MON-2 fires with no serum IgG in the last 8 weeks")
    patient = type(patient)(**{**patient.__dict__, "chart": [  # no antiviral, no PJP agent: INF-1 and INF-2
        r for r in patient.chart if "valacyclovir" not in r["id"] and "tmp-smx" not in r["id"]]})
    clock = Clock(patient.now)
    app = make_app(backend, clock)
    cards, _ = chart_call(app, patient)
    card = cards["INF-1"]
    assert card["extension"][RECOMMENDATIONS_KEY] == ["INF-1", "INF-2"]
    inf1 = [s["uuid"] for s in card["suggestions"] if s["label"].endswith("(INF-1)")]
    give(app, card, "accepted", patient.now + 23 * HOUR, suggestions=inf1)  # INF-1 only (B-0.8)
    clock.moment = patient.now + 25 * HOUR  # INF-2 ignored 25 h ago: back; INF-1 accepted 2 h ago: not
    cards, trace = chart_call(app, patient)
    assert "INF-1" not in cards
    assert cards["INF-2"]["extension"][RECOMMENDATIONS_KEY] == ["INF-2"]
    assert "[INF-1]" not in cards["INF-2"]["detail"] and "[INF-2]" in cards["INF-2"]["detail"]
    assert all(s["label"].endswith("(INF-2)") for s in cards["INF-2"]["suggestions"])
    assert next(e for e in trace["suppressed"] if e["code"] == "INF-1")["rule"] == "R-3"
    writer = web.state_of(app).feedback
    conn = writer.db.connect()
    try:
        members = feedback.query(writer.db, conn, "SELECT member_code, fingerprint, indicator FROM issued_card_members"
                                 " WHERE member_code IN ('INF-1', 'INF-2') ORDER BY member_code")
    finally:
        conn.close()
    assert {m["member_code"] for m in members} == {"INF-1", "INF-2"}
    assert all(m["fingerprint"] and m["indicator"] for m in members)


# -- fail open --------------------------------------------------------------------------------------

class _StuckDatabase:
    """A database that does not answer (a lock held, a server gone quiet)."""

    name = "stuck"

    def connect(self):
        time.sleep(2)
        raise OSError("no answer")


def test_a_slow_store_fails_open_within_the_timeout(backend, make_app):
    patient = scenario("mon-2.yaml", "MON-2 fires with no serum IgG in the last 8 weeks")
    clock = Clock(patient.now)
    app = make_app(backend, clock)
    chart_call(app, patient)
    web.state_of(app).history = feedback.PooledHistory(_StuckDatabase(), 0.05)  # type: ignore[arg-type]
    clock.moment = patient.now + 3 * HOUR
    started = time.perf_counter()
    cards, trace = chart_call(app, patient)
    assert "MON-2" in cards  # would be suppressed if the store had answered
    assert trace["note"] == SUPPRESSION_UNAVAILABLE
    assert time.perf_counter() - started < 1.0
    started = time.perf_counter()
    cards, trace = chart_call(app, patient)  # the pool's threads are stuck: fails open at once
    assert "MON-2" in cards and trace["note"] == SUPPRESSION_UNAVAILABLE
    assert time.perf_counter() - started < 1.0


# On SQLite the look-up runs on the request's own thread: SQLite itself holds the timeout.

def test_on_sqlite_a_held_lock_fails_open_within_the_timeout_and_the_look_up_recovers(tmp_path, make_app):
    patient = scenario("mon-2.yaml", "MON-2 fires with no serum IgG in the last 8 weeks")
    clock = Clock(patient.now)
    app = make_app({"data_dir": str(tmp_path / "data")}, clock)
    assert isinstance(web.state_of(app).history, feedback.LocalHistory)  # what SQLite settings give
    chart_call(app, patient)
    clock.moment = patient.now + 3 * HOUR
    store = feedback.open_database("", str(tmp_path / "held"))  # its own timeout: 10 s
    conn = store.connect()
    feedback_db.migrate(store, conn)
    conn.close()
    # An exclusive lock in exclusive locking mode: not even a WAL reader gets in, nor a new connection.
    blocker = sqlite3.connect(store.path, isolation_level=None)
    blocker.execute("PRAGMA locking_mode=EXCLUSIVE")
    blocker.execute("BEGIN EXCLUSIVE")
    web.state_of(app).history = held = feedback.history_for(store, 0.05)
    try:
        started = time.perf_counter()
        with pytest.raises(StoreUnavailable, match="did not answer within 0.05 s"):
            held.rows("pk", patient.now - DAY)
        assert time.perf_counter() - started < 0.5
        started = time.perf_counter()
        cards, trace = chart_call(app, patient)
        assert time.perf_counter() - started < 1.0
        assert "MON-2" in cards and trace["note"] == SUPPRESSION_UNAVAILABLE  # R-4 would suppress it
    finally:
        blocker.close()
    assert held.rows("pk", patient.now - DAY) == []  # the lock gone: it answers again


def test_on_sqlite_a_look_up_still_running_at_its_deadline_is_interrupted(tmp_path):
    db = feedback.open_database("", str(tmp_path))
    conn = db.connect()
    feedback_db.migrate(db, conn)
    cards = [feedback.CardRow(card_uuid=str(uuid.uuid4()), service_id="mm-tcell-chart", hook_instance="h", code="MON-2",
                              plan_url="u", plan_version="1", suggestions=(), issued_at=feedback_db.timestamp(NOW),
                              members=("MON-2",), hook="patient-view", patient_key="pk", indicator="info",
                              member_facts=(("MON-2", "[]", "info"),)) for _ in range(20_000)]
    with db.transaction(conn) as cur:  # a patient with a great many cards: a long look-up
        feedback_db.insert_cards(db, cur, cards)
    conn.close()
    assert len(feedback.history_for(db, timeout=30.0).rows("pk", NOW - DAY)) == 20_000
    quick = feedback.history_for(db, timeout=0.002)
    started = time.perf_counter()
    with pytest.raises(StoreUnavailable, match="did not answer within 0.002 s"):
        quick.rows("pk", NOW - DAY)
    assert time.perf_counter() - started < 0.5
    assert quick.rows("nobody", NOW - DAY) == []  # its connection, dropped, is opened again


def test_the_look_up_waits_on_a_pool_thread_only_for_a_database_server(tmp_path):
    db = feedback.open_database("", str(tmp_path))
    conn = db.connect()
    feedback_db.migrate(db, conn)
    conn.close()
    before = set(threading.enumerate())
    local = feedback.history_for(db, timeout=0.05)
    assert isinstance(local, feedback.LocalHistory)
    assert local.rows("pk", NOW - DAY) == []
    assert set(threading.enumerate()) <= before  # read on this thread: no pool started
    server = feedback.history_for(feedback.open_database("postgresql://db.invalid/cds", str(tmp_path)), timeout=0.05)
    try:
        assert isinstance(server, feedback.PooledHistory)  # nothing connects until the first look-up
    finally:
        server.close()


# -- 2.5: order-select then order-sign --------------------------------------------------------------------

def _order_call(app, hook: str, encounter: str = "enc-1") -> dict[str, dict]:
    kb = web.state_of(app).kb
    service = f"mm-tcell-{hook}"
    prefetch = empty_prefetch(kb.services[service].discovery(), {"resourceType": "Patient", "id": "p1"})
    body = order_sign(prefetch=prefetch)
    body["hook"] = hook
    body["context"]["encounterId"] = encounter
    if hook == "order-select":
        body["context"]["selections"] = ["MedicationRequest/tec1"]
    response = app.test_client().post(f"/cds-services/{service}", json=body)
    assert response.status_code == 200
    web.state_of(app).feedback.flush()
    return {c["source"]["topic"]["code"]: c for c in response.get_json()["cards"]}


def test_o1_a_card_overridden_at_order_select_is_not_repeated_at_order_sign(backend, make_app):
    clock = Clock(NOW)
    app = make_app(backend, clock)
    selected = _order_call(app, "order-select")
    assert "SEQ-1" in selected
    give(app, selected["SEQ-1"], "overridden", NOW, path="/cds-services/mm-tcell-order-select/feedback")
    clock.moment = NOW + 2 * HOUR
    signed = _order_call(app, "order-sign")
    assert "SEQ-1" not in signed
    assert "SCR" in signed  # O-2: no feedback at select, repeated at sign


def test_o2_order_sign_repeats_after_12_hours_or_in_another_encounter(backend, make_app):
    clock = Clock(NOW)
    app = make_app(backend, clock)
    selected = _order_call(app, "order-select")
    give(app, selected["SEQ-1"], "overridden", NOW, path="/cds-services/mm-tcell-order-select/feedback")
    clock.moment = NOW + HOUR
    assert "SEQ-1" in _order_call(app, "order-sign", encounter="enc-2")
    clock.moment = NOW + 12 * HOUR
    assert "SEQ-1" in _order_call(app, "order-sign")


# -- B-0.7: keys, never identifiers; the migration ------------------------------------------------------

def test_no_identifier_is_stored_or_logged_in_clear(backend, make_app, caplog):
    patient = scenario("mon-2.yaml", "MON-2 fires with no serum IgG in the last 8 weeks")
    ids = {"patient": f"pat-{uuid.uuid4().hex[:12]}", "user": f"Practitioner/u-{uuid.uuid4().hex[:12]}",
           "encounter": f"enc-{uuid.uuid4().hex[:12]}"}
    clock = Clock(patient.now)
    app = make_app(backend, clock)
    kb = web.state_of(app).kb
    with caplog.at_level(logging.DEBUG):
        body = scenario_request(patient, kb.services["mm-tcell-chart"].prefetch)
        text = json.dumps(body).replace(patient.context()["patientId"], ids["patient"])
        body = json.loads(text)
        body["context"].update(userId=ids["user"], encounterId=ids["encounter"])
        response = app.test_client().post(CHART, json=body)
        assert response.status_code == 200 and response.get_json()["cards"]
        give(app, response.get_json()["cards"][0], "overridden", clock.moment)
        kept = _order_call(app, "order-select")
        assert kept
    writer = web.state_of(app).feedback
    writer.flush()
    conn = writer.db.connect()
    try:
        dump = json.dumps([feedback.query(writer.db, conn, f"SELECT * FROM {t}")
                           for t in ("issued_cards", "issued_card_members", "issued_suggestions", "feedback")])
        keys = feedback.query(writer.db, conn, "SELECT patient_key, user_key, encounter_key FROM issued_cards"
                              " WHERE hook = 'patient-view'")
    finally:
        conn.close()
    logs = "\n".join(r.getMessage() + json.dumps(r.__dict__, default=str) for r in caplog.records)
    for value in [*ids.values(), ids["user"].split("/")[1], "tec1"]:
        assert value not in dump, value
        assert value not in logs, value
    assert keys and all(len(k["patient_key"]) == 64 and k["user_key"] and k["encounter_key"] for k in keys)


def test_a_database_of_schema_3_migrates_to_the_newest_keeping_its_rows(backend, make_app):
    db = feedback.open_database(backend.get("database_url", ""), backend["data_dir"])
    conn = db.connect()
    with db.transaction(conn, schema_lock=True) as cur:
        cur.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
        for version, statements in enumerate(MIGRATIONS[:3], start=1):
            for statement in statements:
                cur.execute(statement)
            cur.execute(db.sql("INSERT INTO schema_migrations (version, applied_at) VALUES (?, '2026-01-01')"), (version,))
        cur.execute(db.sql("INSERT INTO issued_cards VALUES ('c-old', 'mm-tcell-chart', 'h', 'MON-2', 'u', '1', '[]', ?)"),
                    ("2026-06-15T11:00:00.000000Z",))
        cur.execute("INSERT INTO issued_card_members VALUES ('c-old', 'MON-2')")
    conn.close()
    patient = scenario("mon-2.yaml", "MON-2 fires with no serum IgG in the last 8 weeks")
    app = make_app(backend, Clock(patient.now))
    assert "MON-2" in chart_call(app, patient)[0]  # an old row (no keys) never suppresses anything
    writer = web.state_of(app).feedback
    conn = writer.db.connect()
    try:
        versions = [r["version"] for r in feedback.query(writer.db, conn, "SELECT version FROM schema_migrations ORDER BY version")]
        old = feedback.query(writer.db, conn, "SELECT code, patient_key FROM issued_cards WHERE card_uuid = 'c-old'")
    finally:
        conn.close()
    assert versions == [1, 2, 3, 4, 5] == list(range(1, feedback.SCHEMA_VERSION + 1))
    assert old == [{"code": "MON-2", "patient_key": None}]


def test_the_production_server_needs_the_service_secret(kb):
    with pytest.raises(Exception, match="service_secret"):
        create_app({"accept_unverified_treatment_codes": ("all",)}, kb=kb, clock=lambda: NOW, production=True)


def test_teclistamab_order_helper_is_a_draft():  # keeps the import honest for the order tests
    assert teclistamab_order()["status"] == "draft"


def test_o3_a_critical_card_overridden_at_order_select_is_repeated_at_order_sign(backend, make_app):
    sign = scenario("adm-2.yaml", "ADM-2 fires for a first-ever teclistamab dose at 1.5 mg/kg")
    select = type(sign)(**{**sign.__dict__, "hook": "order-select"})
    clock = Clock(sign.now)
    app = make_app(backend, clock)
    kb = web.state_of(app).kb

    def run(s, hook):
        body = scenario_request(s, kb.services[f"mm-tcell-{hook}"].prefetch)
        body["context"]["encounterId"] = "enc-1"
        body["prefetch"]["encounter"] = {"resourceType": "Encounter", "id": "enc-1", "status": "in-progress",
                                         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                                   "code": "AMB"}}
        if hook == "order-select":
            body["context"]["selections"] = [f"{e['resource']['resourceType']}/{e['resource']['id']}"
                                             for e in body["context"]["draftOrders"]["entry"]]
        response = app.test_client().post(f"/cds-services/mm-tcell-{hook}", json=body)
        assert response.status_code == 200, response.get_json()
        web.state_of(app).feedback.flush()
        return {c["source"]["topic"]["code"]: c for c in response.get_json()["cards"]}

    selected = run(select, "order-select")
    assert selected["ADM-2"]["indicator"] == "critical"
    give(app, selected["ADM-2"], "overridden", clock.moment, path="/cds-services/mm-tcell-order-select/feedback")
    clock.moment = sign.now + HOUR
    assert "ADM-2" in run(sign, "order-sign")
