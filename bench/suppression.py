"""The repeat-suppression look-up's cost per call (RECOMMENDATIONS-v2 2.4): the one query a
patient-view call makes, against a database holding many patients' cards and feedback.

    .venv/bin/python bench/suppression.py [--patients 2000] [--calls 2000] [--postgres]

--postgres starts a throwaway PostgreSQL cluster (tests/support/postgres.py; needs its
binaries). Prints the median and p95 of the look-up (History.rows: on the calling thread for
SQLite, with the hand-off to its pool's thread for PostgreSQL) in milliseconds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cds_service import feedback  # noqa: E402
from cds_service.feedback import _db  # noqa: E402

NOW = dt.datetime(2026, 6, 15, 12, tzinfo=dt.timezone.utc)
CODES = ("TOX-2", "SEQ-4", "MON-2", "INF-8", "MON-1", "INF-1", "INF-2")


def fill(db, patients: int) -> list[str]:
    keys = feedback.Keys(b"bench-secret-0123456789")
    conn = db.connect()
    _db.migrate(db, conn)
    patient_keys = [keys.patient("https://ehr.example", f"p{i}") for i in range(patients)]
    rows, answers = [], []
    for n, pk in enumerate(patient_keys):
        for day in range(0, 60, 3):  # a chart opened every third day for two months
            card = str(uuid.uuid4())
            issued = NOW - dt.timedelta(days=day)
            rows.append(_db.CardRow(card_uuid=card, service_id="mm-tcell-chart", hook_instance="h", code=CODES[day % 7],
                                    plan_url="u", plan_version="1", suggestions=(), issued_at=_db.timestamp(issued),
                                    members=(CODES[day % 7],), hook="patient-view", patient_key=pk,
                                    user_key=keys.user("u"), indicator="info",
                                    member_facts=((CODES[day % 7], '["x"]', "info"),)))
            if (n + day) % 4 == 0:
                answers.append(_db.FeedbackRow("mm-tcell-chart", card, "overridden", _db.timestamp(issued), (),
                                               None, None, None, None, _db.timestamp(issued)))
    with db.transaction(conn) as cur:
        _db.insert_cards(db, cur, rows)
        _db.insert_feedback(db, cur, answers)
    conn.close()
    return patient_keys


def measure(db, patient_keys: list[str], calls: int) -> tuple[float, float, int]:
    history = feedback.history_for(db, timeout=5.0)
    since = NOW - dt.timedelta(days=180)
    history.rows(patient_keys[0], since, None, CODES)  # connect once
    times = []
    for i in range(calls):
        started = time.perf_counter()
        history.rows(patient_keys[i % len(patient_keys)], since, None, CODES)
        times.append((time.perf_counter() - started) * 1000)
    history.close()
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95)], len(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        backends = [("SQLite", feedback.open_database("", tmp))]
        cluster = None
        if args.postgres:
            from tests.support.postgres import PostgresCluster, require_binaries  # the tests' throwaway cluster

            cluster = PostgresCluster(require_binaries()).start()
            backends.append(("PostgreSQL", feedback.open_database(cluster.new_database(), tmp)))
        try:
            for name, db in backends:
                keys = fill(db, args.patients)
                median, p95, n = measure(db, keys, args.calls)
                print(f"{name:10}  {args.patients} patients x 20 cards: look-up per call median {median:.2f} ms,"
                      f" p95 {p95:.2f} ms ({n} calls)")
        finally:
            if cluster is not None:
                cluster.stop()


if __name__ == "__main__":
    main()
