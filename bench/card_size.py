"""Stored size of what an issued card costs in PostgreSQL: 500 calls of
examples/requests/order-sign-teclistamab.json in process against a throwaway cluster,
then VACUUM FULL and pg_total_relation_size (table and indexes) of every table a hook
call writes: issued_cards (one row per card), issued_card_members (one per recommendation
a card reports: a bundle has several) and issued_suggestions (one per suggestion).
Printed per table, per call and per card, for the capacity model in docs/operations.md.

    .venv/bin/python bench/card_size.py [--calls 500]
"""
import argparse
import json
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402

from cds_service import create_app, web  # noqa: E402
from tests.support.postgres import PostgresCluster, binaries  # noqa: E402

TABLES = ("issued_cards", "issued_card_members", "issued_suggestions")


def stored(query: Callable[[str], list[tuple]]) -> list[tuple[str, int, int]]:
    """(table, rows, bytes with its indexes) of each table a hook call writes, after VACUUM
    FULL; `query(sql)` runs one statement and returns its rows (bench/replicas.py shares it)."""
    out = []
    for table in TABLES:
        query(f"VACUUM FULL ANALYZE {table}")
        rows, size = query(f"SELECT COUNT(*), pg_total_relation_size('{table}') FROM {table}")[0]
        out.append((table, rows, size))
    return out


def report(sizes: list[tuple[str, int, int]], cards: int, calls: int | None = None) -> str:
    """Per table and in all; per call only when every call's rows are still there (no retention)."""
    per_call = (lambda n: f" ({n / calls:.1f} per call)") if calls else (lambda n: "")
    lines = [f"  {table}: {rows} rows{per_call(rows)}, {size} B with its indexes, {size / max(rows, 1):.0f} B per row"
             for table, rows, size in sizes]
    total = sum(size for _, _, size in sizes)
    lines.append(f"all three tables: {total} B, {total / max(cards, 1):.0f} B per card"
                 + (f", {total / calls:.0f} B per call" if calls else ""))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=500)
    calls = parser.parse_args().calls
    cluster = PostgresCluster(binaries()).start()
    try:
        url = cluster.new_database()
        app = create_app({"database_url": url, "log_level": "WARNING"})
        client = app.test_client()
        body = json.loads((Path(__file__).resolve().parent.parent / "examples/requests/order-sign-teclistamab.json")
                          .read_text())
        cards = 0
        for _ in range(calls):
            r = client.post("/cds-services/mm-tcell-order-sign", json={**body, "hookInstance": str(uuid.uuid4())})
            cards += len(r.get_json()["cards"])
        web.state_of(app).feedback.flush()
        web.state_of(app).feedback.close()
        print(f"calls {calls}, cards {cards} ({cards / calls:.1f} per call)")
        with psycopg.connect(url, autocommit=True) as conn:
            def query(sql: str) -> list[tuple]:
                cursor = conn.execute(sql)
                return cursor.fetchall() if cursor.description else []

            print(report(stored(query), cards, calls))
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
