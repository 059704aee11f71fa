"""The feedback database: SQLite (a file in data_dir) by default, PostgreSQL when
database_url is set. The connection and the backends are storage/'s (the
replay store shares the database).

    issued_cards   one row per card the service sent: what the card was (recommendation
                   code, PlanDefinition url and version, suggestion uuids), for which call
                   (service, hookInstance) and when. Any replica can then link feedback
                   for a card another replica issued.
    issued_card_members, issued_suggestions   the codes a card reports (a bundle: its fired
                   members) and the member each suggestion is for; the views card_members
                   and feedback_members give the report its per-member counts.
    feedback       one row per distinct feedback item (see idempotency_key), as received.
    (issued_cards rows older than issued_card_days are deleted by the writer: retention)
    feedback_linked  a view: each feedback row with its card's facts, linked = 0 when the
                   card is unknown (yet): linking happens when read, so a card record still
                   on its way from another replica links as soon as it lands.

Timestamps are ISO 8601 UTC text in both databases, so they sort and compare the same.
The schema is created and migrated at start-up, under a lock, by whichever replica
starts first; schema_migrations records the versions applied.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cds_service.engine import IssuedCard
from cds_service.storage import Database, open_database  # noqa: F401  # re-exported by feedback/

# Each entry is one schema version: statements applied in one transaction.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE issued_cards (
            card_uuid      TEXT PRIMARY KEY,
            service_id     TEXT NOT NULL,
            hook_instance  TEXT NOT NULL,
            code           TEXT NOT NULL,
            plan_url       TEXT NOT NULL,
            plan_version   TEXT,
            suggestions    TEXT NOT NULL,
            issued_at      TEXT NOT NULL)""",
        "CREATE INDEX issued_cards_code ON issued_cards (code)",
        """CREATE TABLE feedback (
            idempotency_key       TEXT PRIMARY KEY,
            service_id            TEXT NOT NULL,
            card_uuid             TEXT NOT NULL,
            outcome               TEXT NOT NULL CHECK (outcome IN ('accepted', 'overridden')),
            outcome_timestamp     TEXT NOT NULL,
            accepted_suggestions  TEXT NOT NULL,
            override_system       TEXT,
            override_code         TEXT,
            override_display      TEXT,
            user_comment          TEXT,
            received_at           TEXT NOT NULL)""",
        "CREATE INDEX feedback_card ON feedback (card_uuid)",
        """CREATE VIEW feedback_linked AS
            SELECT f.*, c.code, c.plan_url, c.plan_version, c.hook_instance, c.service_id AS issued_by,
                   c.issued_at, CASE WHEN c.card_uuid IS NULL THEN 0 ELSE 1 END AS linked
            FROM feedback f LEFT JOIN issued_cards c ON c.card_uuid = f.card_uuid""",
    ),
    ("CREATE INDEX issued_cards_issued_at ON issued_cards (issued_at)",),  # retention (issued_card_days)
    (  # bundled cards: the member codes a card reports, and which member each suggestion is for
        """CREATE TABLE issued_card_members (
            card_uuid      TEXT NOT NULL,
            member_code    TEXT NOT NULL,
            PRIMARY KEY (card_uuid, member_code))""",
        "CREATE INDEX issued_card_members_code ON issued_card_members (member_code)",
        """CREATE TABLE issued_suggestions (
            card_uuid        TEXT NOT NULL,
            suggestion_uuid  TEXT NOT NULL,
            member_code      TEXT NOT NULL,
            PRIMARY KEY (card_uuid, suggestion_uuid))""",
        # A card recorded without member rows (before this version, or by a replica not yet
        # upgraded) reports its one code: no row is rewritten, none is lost.
        """CREATE VIEW card_members AS
            SELECT m.card_uuid, m.member_code AS code
            FROM issued_card_members m JOIN issued_cards c ON c.card_uuid = m.card_uuid
            UNION ALL
            SELECT c.card_uuid, c.code FROM issued_cards c
            WHERE NOT EXISTS (SELECT 1 FROM issued_card_members m WHERE m.card_uuid = c.card_uuid)""",
        # Feedback per member (B-0.8): overridden counts for every member of the card;
        # accepted for the members whose suggestions were accepted (a card of one member:
        # that member). accepted_suggestions is a JSON list of quoted ids, so a quoted uuid
        # matches exactly; the same LIKE runs on SQLite and PostgreSQL.
        """CREATE VIEW feedback_members AS
            SELECT f.idempotency_key, f.card_uuid, f.outcome, f.override_system, f.override_code,
                   f.override_display, m.code
            FROM feedback f JOIN card_members m ON m.card_uuid = f.card_uuid
            WHERE f.outcome = 'overridden'
               OR (SELECT COUNT(*) FROM card_members o WHERE o.card_uuid = f.card_uuid) = 1
               OR EXISTS (SELECT 1 FROM issued_suggestions s
                          WHERE s.card_uuid = f.card_uuid AND s.member_code = m.code
                            AND f.accepted_suggestions LIKE '%"' || s.suggestion_uuid || '"%')""",
    ),
    (  # version 4, B-0.7: for whom (keyed hashes, never the identifiers), on which hook, with which
        # data fingerprint and indicator per member: what repeat suppression reads. Rows of
        # version 3 keep working (NULL keys: never matched, so never suppress anything).
        "ALTER TABLE issued_cards ADD COLUMN hook TEXT",
        "ALTER TABLE issued_cards ADD COLUMN patient_key TEXT",
        "ALTER TABLE issued_cards ADD COLUMN user_key TEXT",
        "ALTER TABLE issued_cards ADD COLUMN encounter_key TEXT",
        "ALTER TABLE issued_cards ADD COLUMN trigger_orders TEXT",  # JSON list of keyed draft order ids
        "ALTER TABLE issued_cards ADD COLUMN indicator TEXT",
        "ALTER TABLE issued_card_members ADD COLUMN fingerprint TEXT",
        "ALTER TABLE issued_card_members ADD COLUMN indicator TEXT",
        "CREATE INDEX issued_cards_patient ON issued_cards (patient_key, issued_at)",
    ),
    (  # version 5: the O-1 look-up of an order-sign call reads one hook's cards (order-select) of
        # the patient: without the hook in the index it walked every card of the patient in the
        # window, its own order-sign cards included (a patient signed often: thousands of rows).
        # The new index replaces (patient_key, issued_at): its leading column serves the chart
        # look-up as well, and every index costs each of the ~10 card rows a call writes.
        "CREATE INDEX issued_cards_patient_hook ON issued_cards (patient_key, hook, issued_at)",
        "DROP INDEX issued_cards_patient",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True)
class CardRow:
    card_uuid: str
    service_id: str
    hook_instance: str
    code: str
    plan_url: str
    plan_version: str | None
    suggestions: tuple[str, ...]
    issued_at: str
    members: tuple[str, ...] = ()  # the codes the card reports (a bundle: its fired members)
    suggestion_members: tuple[tuple[str, str], ...] = ()  # (suggestion uuid, member code)
    hook: str | None = None
    patient_key: str | None = None  # HMAC keys (feedback/_keys.py), never the identifiers
    user_key: str | None = None
    encounter_key: str | None = None
    trigger_orders: tuple[str, ...] = ()  # keyed draft order ids that triggered the card (O-1)
    indicator: str | None = None
    member_facts: tuple[tuple[str, str, str], ...] = ()  # (member code, fingerprint, indicator)


@dataclass(frozen=True)
class CallKeys:
    """Who a call is for, as keyed hashes (B-0.7)."""

    hook: str
    patient: str
    user: str
    encounter: str | None
    trigger_orders: tuple[str, ...] = ()


@dataclass(frozen=True)
class FeedbackRow:
    service_id: str
    card_uuid: str
    outcome: str
    outcome_timestamp: str
    accepted_suggestions: tuple[str, ...]
    override_system: str | None
    override_code: str | None
    override_display: str | None
    user_comment: str | None
    received_at: str

    @property
    def idempotency_key(self) -> str:
        """Same card, outcome, outcomeTimestamp, accepted suggestion ids (in any order) and
        override reason and comment: the same feedback, stored once however often it is
        posted. The endpoint it was posted to and the arrival time are not part of it."""
        identity = [self.card_uuid, self.outcome, self.outcome_timestamp, sorted(self.accepted_suggestions),
                    self.override_system, self.override_code, self.user_comment]
        return hashlib.sha256(json.dumps(identity).encode()).hexdigest()


def timestamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def card_rows(service_id: str, hook_instance: str, issued: Sequence[IssuedCard], now: dt.datetime,
              keys: CallKeys | None = None) -> list[CardRow]:
    issued_at = timestamp(now)
    return [CardRow(card_uuid=c.uuid, service_id=service_id, hook_instance=hook_instance, code=c.code,
                    plan_url=c.plan_url, plan_version=c.plan_version, suggestions=c.suggestions,
                    issued_at=issued_at, members=c.members, suggestion_members=c.suggestion_members,
                    hook=keys.hook if keys else None, patient_key=keys.patient if keys else None,
                    user_key=keys.user if keys else None, encounter_key=keys.encounter if keys else None,
                    trigger_orders=keys.trigger_orders if keys else (), indicator=c.indicator,
                    member_facts=c.member_facts)
            for c in issued]


def feedback_rows(body: dict[str, Any], service_id: str, now: dt.datetime) -> list[FeedbackRow]:
    rows = []
    for item in body["feedback"]:
        override = item.get("overrideReason") or {}
        reason = override.get("reason") or {}
        rows.append(FeedbackRow(
            service_id=service_id, card_uuid=item["card"], outcome=item["outcome"],
            outcome_timestamp=item["outcomeTimestamp"],
            accepted_suggestions=tuple(s["id"] for s in item.get("acceptedSuggestions", [])),
            override_system=reason.get("system"), override_code=reason.get("code"),
            override_display=reason.get("display"), user_comment=override.get("userComment"),
            received_at=timestamp(now)))
    return rows


def migrate(db: Database, conn: Any) -> int:
    """Bring the schema to the newest version; returns it. Safe for replicas starting at once."""
    with db.transaction(conn, schema_lock=True) as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
        cur.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        current = cur.fetchone()[0]
        for version, statements in enumerate(MIGRATIONS[current:], start=current + 1):
            for statement in statements:
                cur.execute(statement)
            cur.execute(db.sql("INSERT INTO schema_migrations (version, applied_at) VALUES (?, CURRENT_TIMESTAMP)"),
                        (version,))
    return len(MIGRATIONS)


def insert_cards(db: Database, cur: Any, rows: Sequence[CardRow]) -> None:
    statement = db.sql(
        "INSERT INTO issued_cards (card_uuid, service_id, hook_instance, code, plan_url, plan_version, suggestions,"
        " issued_at, hook, patient_key, user_key, encounter_key, trigger_orders, indicator)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (card_uuid) DO NOTHING")
    members = db.sql("INSERT INTO issued_card_members (card_uuid, member_code, fingerprint, indicator)"
                     " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING")
    owners = db.sql("INSERT INTO issued_suggestions (card_uuid, suggestion_uuid, member_code) VALUES (?, ?, ?)"
                    " ON CONFLICT DO NOTHING")
    cards: list[tuple[Any, ...]] = []
    card_members: list[tuple[Any, ...]] = []
    suggestions: list[tuple[Any, ...]] = []
    for r in rows:
        cards.append((r.card_uuid, r.service_id, r.hook_instance, r.code, r.plan_url, r.plan_version,
                      json.dumps(list(r.suggestions)), r.issued_at, r.hook, r.patient_key, r.user_key,
                      r.encounter_key, json.dumps(list(r.trigger_orders)), r.indicator))
        facts = {code: (fingerprint, indicator) for code, fingerprint, indicator in r.member_facts}
        for code in dict.fromkeys(r.members or (r.code,)):
            fingerprint, indicator = facts.get(code, (None, r.indicator))
            card_members.append((r.card_uuid, code, fingerprint, indicator))
        suggestions.extend((r.card_uuid, suggestion, code) for suggestion, code in r.suggestion_members)
    # One statement per table for the whole batch (the writer's rows of many calls at once).
    for text, params in ((statement, cards), (members, card_members), (owners, suggestions)):
        if params:
            cur.executemany(text, params)


def insert_feedback(db: Database, cur: Any, rows: Sequence[FeedbackRow]) -> int:
    """Stores the rows not stored before; returns how many were new."""
    statement = db.sql(
        "INSERT INTO feedback (idempotency_key, service_id, card_uuid, outcome, outcome_timestamp,"
        " accepted_suggestions, override_system, override_code, override_display, user_comment, received_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (idempotency_key) DO NOTHING")
    new = 0
    for r in rows:
        cur.execute(statement, (r.idempotency_key, r.service_id, r.card_uuid, r.outcome, r.outcome_timestamp,
                                json.dumps(sorted(r.accepted_suggestions)), r.override_system, r.override_code,
                                r.override_display, r.user_comment, r.received_at))
        new += max(cur.rowcount, 0)
    return new


def purge_cards(db: Database, cur: Any, before: str, limit: int) -> int:
    """Deletes at most `limit` issued-card records issued before `before` (a timestamp());
    returns how many. Their feedback rows stay (unlinked from then on)."""
    # The same ordered selection three times in one transaction: the same cards each time.
    oldest = f"(SELECT card_uuid FROM issued_cards WHERE issued_at < ? ORDER BY issued_at, card_uuid LIMIT {int(limit)})"
    for table in ("issued_card_members", "issued_suggestions"):
        cur.execute(db.sql(f"DELETE FROM {table} WHERE card_uuid IN {oldest}"), (before,))
    cur.execute(db.sql(f"DELETE FROM issued_cards WHERE card_uuid IN {oldest}"), (before,))
    return max(cur.rowcount, 0)


# Repeat suppression's one look-up per call (service/_suppression.py applies the rules): every
# member row of this patient's cards issued, or with feedback given, since the longest window,
# with the feedback per member (B-0.8, the view feedback_members) and its time.
HISTORY = (
    "SELECT m.member_code AS code, m.fingerprint, m.indicator, c.card_uuid, c.code AS card_code, c.hook,"
    " c.user_key, c.encounter_key, c.trigger_orders, c.issued_at, f.outcome, f.outcome_timestamp,"
    " f.override_system, f.override_code,"
    # B-0.8: an accept counts for the members whose suggestions were accepted (a card of one member: it)
    " CASE WHEN f.outcome = 'accepted' AND NOT EXISTS (SELECT 1 FROM issued_card_members o"
    "   WHERE o.card_uuid = c.card_uuid AND o.member_code <> m.member_code) THEN 1"
    " WHEN f.outcome = 'accepted' AND EXISTS (SELECT 1 FROM issued_suggestions s WHERE s.card_uuid = c.card_uuid"
    "   AND s.member_code = m.member_code AND f.accepted_suggestions LIKE ? || s.suggestion_uuid || ?)"
    " THEN 1 ELSE 0 END AS accepted_member"
    " FROM issued_cards c JOIN issued_card_members m ON m.card_uuid = c.card_uuid"
    " LEFT JOIN feedback f ON f.card_uuid = c.card_uuid"
    " WHERE c.patient_key = ?")  # history() adds the window (and the hook)


def history(db: Database, conn: Any, patient_key: str, since: dt.datetime, user_key: str | None = None,
            codes: Sequence[str] = (), *, hook: str | None = None,
            encounter_key: str | None = None) -> list[dict[str, Any]]:
    """The rows repeat suppression decides on, for one patient (and user, scope patient+user).

    With `hook` (the O-1 look-up of order-sign): only that hook's cards issued since `since`
    (not older ones answered since) in the encounter `encounter_key` (None: issued without
    one), the rows that rule reads, found through the (patient_key, hook, issued_at) index."""
    # the LIKE's quotes and wildcards as parameters: a literal % would be a marker to psycopg
    params: list[Any] = ['%"', '"%', patient_key]
    if hook is None:
        text = HISTORY + " AND (c.issued_at >= ? OR f.outcome_timestamp >= ?)"
        params += [timestamp(since), since.strftime("%Y-%m-%d")]
    else:
        text = HISTORY + " AND c.hook = ? AND c.issued_at >= ?"
        params += [hook, timestamp(since)]
        if encounter_key is None:
            text += " AND c.encounter_key IS NULL"
        else:
            text += " AND c.encounter_key = ?"
            params.append(encounter_key)
    if user_key is not None:
        text += " AND c.user_key = ?"
        params.append(user_key)
    if codes:
        text += f" AND m.member_code IN ({', '.join('?' for _ in codes)})"
        params.extend(codes)
    rows = query(db, conn, text, params)
    for row in rows:  # an accept of another member's suggestions is no feedback for this member
        if row["outcome"] == "accepted" and not row.pop("accepted_member"):
            row["outcome"] = row["outcome_timestamp"] = None
        row.pop("accepted_member", None)
    return rows


def query(db: Database, conn: Any, text: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """Rows as dicts (a read: its own short transaction)."""
    with db.transaction(conn, write=False) as cur:
        cur.execute(db.sql(text), tuple(params))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=False)) for row in cur.fetchall()]
