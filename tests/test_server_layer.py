"""What a hook call costs around `service.call()` (issue 12), held by behaviour, never by time:
the O-1 look-up of order-sign reads only the rows that rule decides on, through its index;
issued cards written in batches of many calls all arrive, card records wait to share a
transaction but feedback never waits for them, and close writes what lingers; the metrics
count every call and code; a keep-alive connection is closed after `keepalive_requests`
answers; the production server's processes allocate from at most two malloc arenas."""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import os
import subprocess
import sys
import threading

import pytest

from cds_service import create_app, feedback, web
from cds_service.feedback import _db as feedback_db

from .conftest import NOW
from .support.cards import member_codes
from .support.gunicorn import Gunicorn
from .support.requests_ import empty_prefetch, order_sign
from .support.scrape import sample

SIGN = "/cds-services/mm-tcell-order-sign"


@pytest.fixture()
def app(kb, tmp_path):
    made = create_app({"data_dir": str(tmp_path / "data")}, kb=kb, clock=lambda: NOW)
    yield made
    web.state_of(made).feedback.close()


def _sign(app, encounter: str = "enc-1") -> list[dict]:
    state = web.state_of(app)
    prefetch = empty_prefetch(state.kb.services["mm-tcell-order-sign"].discovery(), {"resourceType": "Patient", "id": "p1"})
    body = order_sign(prefetch=prefetch)
    body["context"]["encounterId"] = encounter
    response = app.test_client().post(SIGN, json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["cards"]


def _count(app, table: str) -> int:
    writer = web.state_of(app).feedback
    conn = writer.db.connect()
    try:
        return feedback.query(writer.db, conn, f"SELECT COUNT(*) AS n FROM {table}")[0]["n"]
    finally:
        conn.close()


def test_the_order_sign_look_up_reads_only_order_select_cards_of_the_encounter(app):
    """The patient's own order-sign cards pile up (a chart signed often, or a benchmark):
    O-1 never reads them, so the look-up does not grow with them."""
    state = web.state_of(app)
    for _ in range(4):
        assert _sign(app)
    state.feedback.flush()
    assert _count(app, "issued_cards") >= 4  # the order-sign cards are stored ...
    looked_up: list[tuple[dict, int]] = []
    real = state.history.rows

    def rows(*args, **kwargs):
        found = real(*args, **kwargs)
        looked_up.append((kwargs, len(found)))
        return found

    state.history.rows = rows  # type: ignore[method-assign]
    assert _sign(app)
    # ... and not one of them is read: only this encounter's order-select cards would be
    assert [(kwargs["hook"], found) for kwargs, found in looked_up] == [("order-select", 0)]
    assert looked_up[0][0]["encounter_key"] == state.keys.encounter(None, "enc-1")


def test_the_o1_look_up_is_an_index_search_on_patient_hook_and_time(tmp_path):
    db = feedback.open_database("", str(tmp_path))
    conn = db.connect()
    feedback_db.migrate(db, conn)
    plans: list[str] = []
    real = feedback_db.query

    def explained(db_, conn_, text, params=()):
        plans.extend(row[3] for row in conn_.execute("EXPLAIN QUERY PLAN " + text, tuple(params)).fetchall())
        return real(db_, conn_, text, params)

    feedback_db.query = explained  # type: ignore[assignment]
    try:
        feedback_db.history(db, conn, "p", NOW - dt.timedelta(hours=12), hook="order-select", encounter_key="e")
    finally:
        feedback_db.query = real  # type: ignore[assignment]
        conn.close()
    assert any("issued_cards_patient_hook (patient_key=? AND hook=? AND issued_at>?)" in p for p in plans), plans


def test_cards_of_many_calls_written_in_one_batch_all_arrive(app):
    """The writer takes every job queued since its last commit into one transaction (one
    INSERT per table for all of them): hold its first commit until a burst of calls has
    queued, then every card, member and suggestion row of every call is in the database."""
    state = web.state_of(app)
    db = state.feedback.db
    real_transaction = db.transaction
    queued, first = threading.Event(), [True]

    @contextlib.contextmanager
    def held(conn, *args, **kwargs):
        if first[0]:
            first[0] = False
            assert queued.wait(30)  # the burst below is queued behind this transaction
        with real_transaction(conn, *args, **kwargs) as cur:
            yield cur

    db.transaction = held  # type: ignore[method-assign]
    try:
        issued = [_sign(app, encounter=f"enc-{i}") for i in range(8)]
        queued.set()
        assert state.feedback.flush(30)
    finally:
        db.transaction = real_transaction  # type: ignore[method-assign]
    cards = [c for answer in issued for c in answer]
    members = sum(len(member_codes([c])) for c in cards)
    suggestions = sum(len(c.get("suggestions", [])) for c in cards)
    assert cards and suggestions
    assert (_count(app, "issued_cards"), _count(app, "issued_card_members"), _count(app, "issued_suggestions")) \
        == (len(cards), members, suggestions)


def _card_row(uuid_: str) -> feedback.CardRow:
    return feedback.CardRow(card_uuid=uuid_, service_id="mm-tcell-order-sign", hook_instance="h", code="SEQ-1",
                            plan_url="u", plan_version=None, suggestions=(), issued_at=feedback_db.timestamp(NOW))


def test_card_records_wait_to_share_a_transaction_but_feedback_never_waits(tmp_path):
    db = feedback.open_database("", str(tmp_path))
    writer = feedback.Writer(db, linger=60.0).start()  # a linger no test run reaches
    commits = []
    real_transaction = db.transaction

    def counted(conn, *args, **kwargs):
        commits.append(kwargs.get("write", True))
        return real_transaction(conn, *args, **kwargs)

    db.transaction = counted  # type: ignore[method-assign]
    try:
        for i in range(5):
            writer.record_cards([_card_row(f"c{i}")])
        item = feedback.FeedbackRow(service_id="mm-tcell-order-sign", card_uuid="c0", outcome="overridden",
                                    outcome_timestamp="2026-06-15T12:01:00Z", accepted_suggestions=(),
                                    override_system=None, override_code=None, override_display=None,
                                    user_comment=None, received_at=feedback_db.timestamp(NOW))
        # committed at once, with the cards queued before it: not after the 60 s linger
        assert writer.store_feedback([item], timeout=20) == 1
        assert commits == [True]  # one transaction: five calls' cards and the feedback
    finally:
        db.transaction = real_transaction  # type: ignore[method-assign]
        writer.close()
    conn = db.connect()
    try:
        assert feedback.query(db, conn, "SELECT COUNT(*) AS n FROM issued_cards")[0]["n"] == 5
    finally:
        conn.close()


def test_lingering_card_records_arrive_without_a_flush_and_close_writes_the_rest(tmp_path):
    db = feedback.open_database("", str(tmp_path))
    writer = feedback.Writer(db, linger=0.2).start()
    writer.record_cards([_card_row("soon")])
    conn = db.connect()
    try:
        for _ in range(200):  # the linger ends on its own (bounded wait; no timing asserted)
            if feedback.query(db, conn, "SELECT COUNT(*) AS n FROM issued_cards")[0]["n"]:
                break
            threading.Event().wait(0.05)
        assert feedback.query(db, conn, "SELECT card_uuid FROM issued_cards") == [{"card_uuid": "soon"}]
        slow = feedback.Writer(db, linger=60.0).start()
        slow.record_cards([_card_row("at-close")])
        slow.close()  # a worker exiting: what lingers is written
        assert feedback.query(db, conn, "SELECT COUNT(*) AS n FROM issued_cards")[0]["n"] == 2
    finally:
        conn.close()
        writer.close()


def test_every_call_and_code_is_counted(app):
    client = app.test_client()
    before = client.get("/metrics").get_data(as_text=True)
    first, second = _sign(app), _sign(app)
    after = client.get("/metrics").get_data(as_text=True)
    assert member_codes(first) == member_codes(second)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("mm_cds_requests_total", endpoint="/cds-services/<service_id>", service="mm-tcell-order-sign",
                 status="200") == 2
    for code in member_codes(first):
        assert delta("mm_cds_cards_total", service="mm-tcell-order-sign", code=code) == 2


@pytest.mark.gunicorn
def test_a_keep_alive_connection_is_closed_after_keepalive_requests_answers(tmp_path):
    server = Gunicorn(tmp_path, workers="1", keepalive_requests="3")
    server.wait_ready()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        said = []
        for _ in range(3):
            conn.request("GET", "/health")
            response = conn.getresponse()
            response.read()
            said.append(response.getheader("Connection"))
        assert said == ["keep-alive", "keep-alive", "close"]
        conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)  # a new connection counts anew
        conn.request("GET", "/health")
        response = conn.getresponse()
        response.read()
        assert response.getheader("Connection") == "keep-alive"
        conn.close()
    finally:
        server.stop()


ARENAS = """
import ctypes, sys, threading
if sys.argv[1] == "production":
    import cds_service.gunicorn_conf  # what gunicorn imports first, in the master
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, (ctypes.c_void_p,)
def churn():  # malloc and free through ctypes: the GIL is released, the threads contend
    for _ in range(20000):
        libc.free(libc.malloc(700))
threads = [threading.Thread(target=churn) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
libc.malloc_stats()  # one "Arena N:" paragraph per arena, on stderr
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc arenas")
def test_the_production_settings_keep_malloc_to_two_arenas(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "metrics")

    def arenas(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", ARENAS, mode], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return sum(1 for line in done.stderr.splitlines() if line.startswith("Arena "))

    assert arenas("production") <= 2 < arenas("plain")  # eight allocating threads would get more
