"""`mm-cds feedback-report`: per recommendation code, how many cards were shown, how many
were accepted and overridden, and the override reasons with their counts. A bundled card
counts for each member it listed: shown and overridden for every one of them, accepted for
the members whose suggestions were accepted.

Counts are cards, not posts: a card accepted twice (the client repeating itself) counts
once. Feedback whose card the service never recorded is reported under "(unlinked)".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from cds_service.feedback import _db as feedback_db
from cds_service.feedback._db import Database

UNLINKED = "(unlinked)"
NO_REASON = "(no reason given)"

# Per member code (a bundled card counts for each member it listed: B-0.8), from the views
# card_members and feedback_members; feedback for a card never recorded counts as unlinked.
SHOWN = "SELECT code, COUNT(DISTINCT card_uuid) AS n FROM card_members GROUP BY code"
OUTCOMES = ("SELECT code, outcome, COUNT(DISTINCT card_uuid) AS n FROM feedback_members GROUP BY code, outcome"
            " UNION ALL SELECT CAST('(unlinked)' AS TEXT), outcome, COUNT(DISTINCT card_uuid)"
            " FROM feedback_linked WHERE linked = 0 GROUP BY outcome")
REASONS = ("SELECT code, override_system AS system, override_code AS reason, MAX(override_display) AS display,"
           " COUNT(DISTINCT card_uuid) AS n FROM feedback_members WHERE outcome = 'overridden'"
           " GROUP BY code, override_system, override_code"
           " UNION ALL SELECT CAST('(unlinked)' AS TEXT), override_system, override_code, MAX(override_display),"
           " COUNT(DISTINCT card_uuid) FROM feedback_linked WHERE linked = 0 AND outcome = 'overridden'"
           " GROUP BY override_system, override_code")


@dataclass
class Reason:
    system: str | None
    code: str | None
    display: str | None
    count: int

    @property
    def label(self) -> str:
        if self.code is None:
            return NO_REASON
        return f"{self.display} ({self.code})" if self.display else self.code


@dataclass
class CodeReport:
    code: str
    shown: int = 0
    accepted: int = 0
    overridden: int = 0
    reasons: list[Reason] = field(default_factory=list)


def build(db: Database) -> list[CodeReport]:
    conn = db.connect()
    try:
        feedback_db.migrate(db, conn)  # a fresh database reports zeros, not an error
        shown = feedback_db.query(db, conn, SHOWN)
        outcomes = feedback_db.query(db, conn, OUTCOMES)
        reasons = feedback_db.query(db, conn, REASONS)
    finally:
        conn.close()
    by_code: dict[str, CodeReport] = {}

    def entry(code: str) -> CodeReport:
        return by_code.setdefault(code, CodeReport(code))

    for row in shown:
        entry(row["code"]).shown = row["n"]
    for row in outcomes:
        setattr(entry(row["code"]), row["outcome"], row["n"])
    for row in reasons:
        entry(row["code"]).reasons.append(Reason(row["system"], row["reason"], row["display"], row["n"]))
    for report in by_code.values():
        report.reasons.sort(key=lambda r: (-r.count, r.label))
    # Recommendation codes in order, the unlinked feedback last.
    return sorted(by_code.values(), key=lambda r: (r.code == UNLINKED, r.code))


def as_json(reports: list[CodeReport]) -> dict[str, Any]:
    return {"recommendations": [asdict(r) for r in reports]}


def as_table(reports: list[CodeReport]) -> str:
    if not reports:
        return "no cards issued and no feedback received yet"
    header = ("recommendation", "shown", "accepted", "overridden", "override reasons")
    rows = []
    for r in reports:
        reasons = [f"{reason.count} x {reason.label}" for reason in r.reasons] or ["-"]
        rows.append((r.code, str(r.shown), str(r.accepted), str(r.overridden), reasons[0]))
        rows += [("", "", "", "", more) for more in reasons[1:]]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]

    def line(row: tuple[str, ...]) -> str:
        cells = [row[0].ljust(widths[0])] + [row[i].rjust(widths[i]) for i in range(1, 4)] + [row[4]]
        return "  ".join(cells).rstrip()

    return "\n".join([line(header), line(tuple("-" * w for w in widths) + ("-" * 16,)), *map(line, rows)])
