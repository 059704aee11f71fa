"""Stored size of one issued card in PostgreSQL: 500 calls of
examples/requests/order-sign-teclistamab.json (8 cards each) in process against a
throwaway cluster, then VACUUM FULL and pg_total_relation_size(issued_cards) / rows
(the table and its three indexes). `.venv/bin/python bench/card_size.py`
"""
import json
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402

from cds_service import create_app, web  # noqa: E402
from tests.support.postgres import PostgresCluster, binaries  # noqa: E402

cluster = PostgresCluster(binaries()).start()
try:
    url = cluster.new_database()
    app = create_app({"database_url": url})
    client = app.test_client()
    body = json.loads((Path(__file__).resolve().parent.parent / "examples/requests/order-sign-teclistamab.json").read_text())
    cards = 0
    for _i in range(500):
        r = client.post("/cds-services/mm-tcell-order-sign", json={**body, "hookInstance": str(uuid.uuid4())})
        cards += len(r.get_json()["cards"])
    web.state_of(app).feedback.flush()
    web.state_of(app).feedback.close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM FULL ANALYZE issued_cards")
        n, size = conn.execute("SELECT COUNT(*), pg_total_relation_size('issued_cards') FROM issued_cards").fetchone()
        print(f"calls 500, cards {cards}, rows {n}, issued_cards total (with indexes) {size} B = {size/n:.0f} B per card")
finally:
    cluster.stop()
