"""Feedback (CDS Hooks 2.0): stored durably, linked to the card the service issued (also
across replicas sharing the database), idempotent, reported per recommendation. Every
test that touches the database runs on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import datetime
import json
import uuid

import pytest

from cds_service import cli, create_app, feedback, web
from cds_service.errors import ConfigurationError
from cds_service.feedback import Writer

from .conftest import NOW
from .support.requests_ import empty_prefetch, order_sign

SIGN = "/cds-services/mm-tcell-order-sign"
FEEDBACK = SIGN + "/feedback"
WHEN = "2026-06-15T12:05:31Z"
REASON = {"code": "not-eligible", "system": "https://myeloma-cds.example.org/fhir/CodeSystem/override",
          "display": "Not eligible for CAR-T"}


@pytest.fixture()
def make_app(kb):
    made = []

    def make(settings: dict):
        app = create_app({"explain_enabled": True, **settings}, kb=kb, clock=lambda: NOW)
        made.append(app)
        return app

    yield make
    for app in made:
        web.state_of(app).feedback.close()


def issue(client, kb) -> tuple[dict, dict[str, dict]]:
    """One order-sign call; the request and its cards by recommendation code (a bundled card
    under each of its members' codes)."""
    prefetch = empty_prefetch(kb.services["mm-tcell-order-sign"].discovery(), {"resourceType": "Patient", "id": "p1"})
    body = order_sign(prefetch=prefetch)
    response = client.post(SIGN, json=body)
    assert response.status_code == 200
    cards = response.get_json()["cards"]
    return body, {code: c for c in cards for code in c["extension"]["myeloma-cds.recommendations"]}


def accepted(card: dict, when: str = WHEN) -> dict:
    return {"card": card["uuid"], "outcome": "accepted", "outcomeTimestamp": when,
            "acceptedSuggestions": [{"id": s["uuid"]} for s in card["suggestions"]]}


def overridden(card_uuid: str, reason: dict | None = REASON, comment: str | None = None) -> dict:
    item = {"card": card_uuid, "outcome": "overridden", "outcomeTimestamp": WHEN}
    if reason or comment:
        item["overrideReason"] = {k: v for k, v in (("reason", reason), ("userComment", comment)) if v}
    return item


def post(client, *items: dict, path: str = FEEDBACK):
    return client.post(path, json={"feedback": list(items)})


def stored(app) -> list[dict]:
    writer = web.state_of(app).feedback
    conn = writer.db.connect()
    try:
        return feedback.query(writer.db, conn, "SELECT * FROM feedback_linked ORDER BY outcome, card_uuid")
    finally:
        conn.close()


def test_accepted_and_overridden_feedback_is_stored_with_its_links(backend, make_app, kb, caplog):
    app = make_app(backend)
    client = app.test_client()
    request, cards = issue(client, kb)
    seq1, scr1 = cards["SEQ-1"], cards["SCR-1"]
    comment = "Patient Zebedee declined"  # free text may name the patient: never logged
    response = post(client, accepted(seq1), overridden(scr1["uuid"], comment=comment))
    assert response.status_code == 200 and response.get_json() == {"stored": 2, "duplicates": 0}
    plan = kb.plans["https://myeloma-cds.example.org/fhir/PlanDefinition/mm-tcell"]
    rows = stored(app)
    assert [r["outcome"] for r in rows] == ["accepted", "overridden"]
    for row, card, code in zip(rows, (seq1, scr1), ("SEQ-1", "SCR"), strict=False):  # SCR-1 is in the SCR checklist
        assert row["card_uuid"] == card["uuid"] and row["linked"] == 1
        assert row["code"] == code
        assert (row["plan_url"], row["plan_version"]) == (plan.url, plan.version)
        assert row["hook_instance"] == request["hookInstance"]
        assert row["service_id"] == row["issued_by"] == "mm-tcell-order-sign"
        assert row["outcome_timestamp"] == WHEN
        assert row["received_at"].startswith("2026-06-15T12:00:00") and row["issued_at"].startswith("2026-06-15T12:00")
    assert json.loads(rows[0]["accepted_suggestions"]) == [seq1["suggestions"][0]["uuid"]]
    assert (rows[1]["override_code"], rows[1]["override_system"], rows[1]["override_display"],
            rows[1]["user_comment"]) == (REASON["code"], REASON["system"], REASON["display"], comment)
    assert "Zebedee" not in caplog.text


def test_a_repeated_post_is_stored_once(backend, make_app, kb):
    app = make_app(backend)
    client = app.test_client()
    _, cards = issue(client, kb)
    item = accepted(cards["SEQ-1"])
    assert post(client, item).get_json() == {"stored": 1, "duplicates": 0}
    assert post(client, item, item).get_json() == {"stored": 0, "duplicates": 2}
    assert post(client, accepted(cards["SEQ-1"], when="2026-06-15T12:09:00Z")).get_json()["stored"] == 1
    assert len(stored(app)) == 2


def test_feedback_sent_to_another_replica_links_to_the_card(backend, make_app, kb):
    issuer, other = make_app(backend), make_app(backend)  # two replicas, one database
    request, cards = issue(issuer.test_client(), kb)
    response = post(other.test_client(), overridden(cards["SEQ-1"]["uuid"]))
    assert response.status_code == 200
    web.state_of(issuer).feedback.flush()  # the issuing replica's writer catches up
    [row] = stored(other)
    assert row["linked"] == 1 and row["code"] == "SEQ-1" and row["hook_instance"] == request["hookInstance"]


def test_feedback_right_after_the_call_links_though_the_card_record_was_queued(backend, make_app, kb):
    app = make_app(backend)
    client = app.test_client()
    _, cards = issue(client, kb)
    assert post(client, overridden(cards["SCR-3"]["uuid"], reason=None)).status_code == 200
    [row] = stored(app)
    assert row["linked"] == 1 and row["code"] == "SCR" and row["override_code"] is None  # the checklist holding SCR-3


def test_feedback_for_an_unknown_card_is_stored_unlinked(backend, make_app):
    app = make_app(backend)
    unknown = str(uuid.uuid4())
    assert post(app.test_client(), overridden(unknown)).status_code == 200
    [row] = stored(app)
    assert row["card_uuid"] == unknown and row["linked"] == 0 and row["code"] is None


def test_the_report_counts_cards_per_recommendation(backend, make_app, kb, capsys):
    app = make_app(backend)
    client = app.test_client()
    _, first = issue(client, kb)
    _, second = issue(client, kb)
    other_reason = {"code": "already-done", "system": REASON["system"], "display": "Already done elsewhere"}
    post(client, accepted(first["SEQ-1"]), accepted(first["SEQ-1"]),  # the repeat counts once
         overridden(second["SEQ-1"]["uuid"]),
         overridden(first["SCR-1"]["uuid"]), overridden(second["SCR-1"]["uuid"], reason=other_reason),
         overridden(str(uuid.uuid4()), reason=None))
    where = ["--database-url", backend["database_url"]] if "database_url" in backend else ["--data-dir", backend["data_dir"]]
    assert cli.main(["feedback-report", "--json", *where]) == 0
    report = {r["code"]: r for r in json.loads(capsys.readouterr().out)["recommendations"]}
    assert list(report)[-1] == "(unlinked)" and list(report)[:-1] == sorted(list(report)[:-1])
    assert {"SCR-1", "SCR-3", "SEQ-1"} <= set(report)
    counts = {c: (r["shown"], r["accepted"], r["overridden"]) for c, r in report.items()}
    # overriding the SCR checklist overrides every member it listed (RECOMMENDATIONS-v2 B-0.8)
    checklist = ("SCR-1", "SCR-2", "SCR-3", "SCR-4")
    assert {c: counts[c] for c in ("SEQ-1", *checklist, "(unlinked)")} == {
        "SEQ-1": (2, 1, 1), **{c: (2, 0, 2) for c in checklist}, "(unlinked)": (0, 0, 1)}
    assert all(counts[c] == (2, 0, 0) for c in report if c not in ("SEQ-1", *checklist, "(unlinked)"))
    assert report["SCR-3"]["reasons"] == report["SCR-1"]["reasons"]
    assert report["SCR-1"]["reasons"] == [
        {"system": REASON["system"], "code": "already-done", "display": "Already done elsewhere", "count": 1},
        {"system": REASON["system"], "code": "not-eligible", "display": "Not eligible for CAR-T", "count": 1}]
    assert report["(unlinked)"]["reasons"][0]["code"] is None
    assert cli.main(["feedback-report", *where]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["recommendation", "shown", "accepted", "overridden", "override", "reasons"]
    scr1 = next(i for i, line in enumerate(table) if line.startswith("SCR-1"))
    assert table[scr1].split() == ["SCR-1", "2", "0", "2", "1", "x", "Already", "done", "elsewhere", "(already-done)"]
    assert table[scr1 + 1].split() == ["1", "x", "Not", "eligible", "for", "CAR-T", "(not-eligible)"]
    assert table[-1].split() == ["(unlinked)", "0", "0", "1", "1", "x", "(no", "reason", "given)"]


class Outage:
    """The app's database, refusing everything while `down`."""

    def __init__(self, db):
        self.db, self.name, self.down = db, db.name, True

    def connect(self):
        if self.down:
            raise OSError("database down")
        return self.db.connect()

    def sql(self, text):
        return self.db.sql(text)

    def transaction(self, conn, **kwargs):
        if self.down:
            raise OSError("database down")
        return self.db.transaction(conn, **kwargs)

    def transient(self, exc):
        return self.db.transient(exc)


def test_an_outage_answers_503_and_loses_nothing(backend, make_app, kb):
    app = make_app({**backend, "feedback_wait": 0.3})
    writer = web.state_of(app).feedback
    writer.db = outage = Outage(writer.db)
    client = app.test_client()
    _, cards = issue(client, kb)  # the hook call does not wait for the database
    item = overridden(cards["SEQ-1"]["uuid"])
    response = post(client, item)
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert "send it again" in response.get_json()["issue"][0]["diagnostics"]
    outage.down = False
    assert writer.flush(10)
    # Whether the 503'd POST stayed queued (committed after the outage) or was refused before
    # queuing (the writer already knew the database was down) depends on how the writer
    # batched it with the card record; either way the client's retry leaves it stored once.
    assert post(client, item).get_json() in ({"stored": 1, "duplicates": 0}, {"stored": 0, "duplicates": 1})
    assert post(client, item).get_json() == {"stored": 0, "duplicates": 1}
    [row] = stored(app)
    assert row["linked"] == 1 and row["code"] == "SEQ-1"


def test_rows_the_database_refuses_do_not_block_the_ones_after(backend, make_app, kb, caplog):
    app = make_app(backend)
    client = app.test_client()
    # JSON bodies cannot carry such text (a lone surrogate is refused as invalid JSON), so the
    # poisoned record goes straight to the writer, as a future bug upstream might send it.
    from cds_service.engine import IssuedCard
    from cds_service.feedback import card_rows

    poison = IssuedCard(str(uuid.uuid4()), "SEQ-1", "https://x/PlanDefinition/p", "1", ())
    web.state_of(app).feedback.record_cards(
        card_rows("mm-tcell-order-sign", "x\ud800\u0000", [poison], datetime.datetime.now(datetime.timezone.utc)))
    _, cards = issue(client, kb)
    assert post(client, overridden(cards["SEQ-1"]["uuid"])).status_code == 200
    [row] = stored(app)
    assert row["linked"] == 1
    assert any(getattr(r, "event", None) == "feedback_rows_refused" for r in caplog.records)


@pytest.mark.parametrize("body, field", [
    ({}, "feedback"),
    ({"feedback": []}, "feedback"),
    ({"feedback": [{"outcome": "accepted", "outcomeTimestamp": WHEN, "acceptedSuggestions": [{"id": "s"}]}]},
     "feedback[0].card"),
    ({"feedback": [{"card": "c", "outcome": "accepted", "outcomeTimestamp": WHEN}]},
     "feedback[0].acceptedSuggestions"),
    ({"feedback": [{"card": "c", "outcome": "ignored", "outcomeTimestamp": WHEN}]}, "feedback[0].outcome"),
    ({"feedback": [{"card": "c", "outcome": "overridden", "outcomeTimestamp": "yesterday"}]},
     "feedback[0].outcomeTimestamp"),
    ({"feedback": [{"card": "c", "outcome": "overridden", "outcomeTimestamp": WHEN,
                    "overrideReason": {"reason": {"display": "no code"}}}]}, "feedback[0].overrideReason.reason.code"),
    ([1, 2], "(body)"),
    ({"feedback": [{"card": "c", "outcome": "overridden", "outcomeTimestamp": WHEN,
                    "overrideReason": {"userComment": "nul \u0000 here"}}]}, "feedback[0].overrideReason.userComment"),
    ({"feedback": [{"card": "c\ud800", "outcome": "overridden", "outcomeTimestamp": WHEN}]}, "(body)"),
])
def test_bad_feedback_is_400_naming_the_field(client, body, field):
    response = client.post(FEEDBACK, json=body)
    assert response.status_code == 400
    issue_ = response.get_json()["issue"][0]
    assert issue_["diagnostics"].startswith(f"{field}:") and issue_["expression"] == [field]


def test_feedback_that_is_not_json_is_400(client):
    response = client.post(FEEDBACK, data="{", content_type="application/json")
    assert response.status_code == 400 and "not valid JSON" in response.get_json()["issue"][0]["diagnostics"]


def test_feedback_to_an_unknown_service_is_404(client):
    response = post(client, overridden("c"), path="/cds-services/no-such-service/feedback")
    assert response.status_code == 404
    assert response.get_json()["issue"][0]["diagnostics"] == "no CDS service 'no-such-service'"


def test_feedback_to_a_plan_definition_id_is_accepted(make_app, kb, tmp_path):
    app = make_app({"data_dir": str(tmp_path / "data")})
    client = app.test_client()
    request, cards = issue(client, kb)
    response = post(client, overridden(cards["SEQ-1"]["uuid"]), path="/cds-services/mm-tcell/feedback")
    assert response.status_code == 200 and response.get_json() == {"stored": 1, "duplicates": 0}
    [row] = stored(app)
    assert (row["card_uuid"], row["linked"], row["code"]) == (cards["SEQ-1"]["uuid"], 1, "SEQ-1")
    assert row["hook_instance"] == request["hookInstance"] and row["issued_by"] == "mm-tcell-order-sign"
    assert row["service_id"] == "mm-tcell"  # the path it was sent to


def test_the_data_dir_is_created_and_the_schema_versioned(make_app, tmp_path):
    app = make_app({"data_dir": str(tmp_path / "nested" / "data")})
    assert (tmp_path / "nested" / "data" / "feedback.sqlite3").is_file()
    writer = web.state_of(app).feedback
    conn = writer.db.connect()
    assert [r["version"] for r in feedback.query(writer.db, conn, "SELECT version FROM schema_migrations")] == [1, 2, 3, 4, 5]
    conn.close()


def test_an_unreachable_database_stops_startup_without_showing_the_password(kb):
    with pytest.raises(ConfigurationError, match=r"feedback database \(PostgreSQL 127.0.0.1:1/x\) unusable") as refused:
        create_app({"database_url": "postgresql://u:s3cret@127.0.0.1:1/x"}, kb=kb)
    assert "s3cret" not in str(refused.value)


def _card(uuid_: str, issued_at: datetime.datetime) -> feedback.CardRow:
    return feedback.CardRow(card_uuid=uuid_, service_id="mm-tcell-order-sign", hook_instance="h", code="SEQ-1",
                            plan_url="u", plan_version=None, suggestions=(), issued_at=issued_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


def test_issued_cards_older_than_the_retention_are_deleted_in_bounded_batches(tmp_path):
    db = feedback.open_database("", str(tmp_path))
    writer = Writer(db, issued_card_days=1).start()
    now = datetime.datetime.now(datetime.timezone.utc)
    old = [_card(f"old-{i}", now - datetime.timedelta(days=2)) for i in range(2500)]
    fresh = [_card(f"new-{i}", now) for i in range(10)]
    writer.record_cards(old[:900])
    assert writer.flush()
    writer.record_cards(old[900:])  # 2500 since the last delete: one delete of at most 5000 old rows
    writer.record_cards(fresh)
    assert writer.flush()
    conn = db.connect()
    left = feedback.query(db, conn, "SELECT card_uuid FROM issued_cards")
    conn.close()
    writer.close()
    assert sorted(r["card_uuid"] for r in left) == sorted(c.card_uuid for c in fresh)
    assert writer.purged_cards == 2500


def test_without_retention_issued_cards_are_kept(tmp_path):
    db = feedback.open_database("", str(tmp_path))
    writer = Writer(db, issued_card_days=0).start()
    writer.record_cards([_card(f"old-{i}", datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc))
                         for i in range(1500)])
    assert writer.flush()
    writer.close()
    assert writer.purged_cards == 0
