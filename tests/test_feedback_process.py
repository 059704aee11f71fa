"""A gunicorn worker's feedback writer, in a child process (feedback/_process.py): every row
handed over reaches the database, however the worker or the child ends. On SQLite and on
a real PostgreSQL server; the production server's children are proved in
test_production_server.py."""

from __future__ import annotations

import datetime
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from cds_service import config, feedback
from cds_service.errors import StoreUnavailable
from cds_service.feedback import CardRow, FeedbackRow, ProcessWriter

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def settings(backend) -> config.Settings:
    made = config.load(backend)
    feedback.open_writer(made).close()  # the schema, as the gunicorn master migrates it before forking
    return made


@pytest.fixture()
def writer(settings):
    made = ProcessWriter(settings)
    yield made
    made.close()


def cards(count: int, comment: str = "") -> list[CardRow]:
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    return [CardRow(str(uuid.uuid4()), "mm-tcell-order-sign", "hook-" + comment, "SEQ-1", "https://x/PlanDefinition/p",
                    "1", (str(uuid.uuid4()),), now, members=("SEQ-1",)) for _ in range(count)]


def overridden(card: str, comment: str | None = None) -> FeedbackRow:
    return FeedbackRow("mm-tcell-order-sign", card, "overridden", "2026-06-15T12:05:31Z", (), None, None, None,
                       comment, "2026-06-15T12:05:32Z")


def stored(settings: config.Settings, table: str, column: str = "card_uuid") -> set:
    db = feedback.open_database(settings.database_url, settings.data_dir)
    conn = db.connect()
    try:
        return {r[column] for r in feedback.query(db, conn, f"SELECT {column} FROM {table}")}
    finally:
        conn.close()


def wait_for(predicate, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "not within the deadline"
        time.sleep(0.05)


def test_cards_and_feedback_are_written_by_a_child_process(settings, writer):
    assert writer.pid != os.getpid()
    wait_for(lambda: Path(f"/proc/{writer.pid}/comm").read_text().strip() == "mm-cds-writer")  # named once forked
    issued = cards(3)
    writer.record_cards(issued)
    # the feedback's commit comes after the cards handed over before it
    assert writer.store_feedback([overridden(issued[0].card_uuid)], timeout=5) == 1
    assert {c.card_uuid for c in issued} <= stored(settings, "issued_cards")
    assert writer.store_feedback([overridden(issued[0].card_uuid)], timeout=5) == 0  # idempotent
    assert stored(settings, "feedback") == {issued[0].card_uuid}


def test_rows_bigger_than_a_message_are_split_or_written_in_the_worker(settings, writer):
    many = cards(400)  # about 200 KB pickled: several messages
    writer.record_cards(many)
    huge = overridden(many[0].card_uuid, "x" * 200_000)  # one row over a message: the worker's own thread
    assert writer.store_feedback([huge], timeout=5) == 1
    assert {c.card_uuid for c in many} <= stored(settings, "issued_cards")  # the child's queue went first
    assert stored(settings, "feedback", "user_comment") == {"x" * 200_000}
    assert writer.flush(5)


def test_the_child_killed_the_worker_writes_in_its_own_thread(settings, writer, caplog):
    os.kill(writer.pid, signal.SIGKILL)
    with caplog.at_level(logging.ERROR, logger="cds_service.feedback._process"):
        wait_for(lambda: any(getattr(r, "event", "") == "feedback_writer_process_exited" for r in caplog.records))
    after = cards(5)
    writer.record_cards(after)
    assert writer.store_feedback([overridden(after[0].card_uuid)], timeout=5) == 1
    assert {c.card_uuid for c in after} <= stored(settings, "issued_cards")
    assert not Path(f"/proc/{writer.pid}").exists()  # reaped, no zombie


WORKER = textwrap.dedent("""
    import sys, time
    from cds_service import config
    from cds_service.feedback import _writer
    _writer.LINGER = 30.0  # the child holds its rows until the end of file makes it close
    from tests.test_feedback_process import cards
    from cds_service.feedback import ProcessWriter
    settings = config.load({key: value for key, value in (a.split("=", 1) for a in sys.argv[1:])})
    writer = ProcessWriter(settings)
    rows = cards(300)
    for i in range(0, 300, 10):
        writer.record_cards(rows[i:i + 10])
    print(writer.pid, " ".join(r.card_uuid for r in rows), flush=True)
    time.sleep(60)
""")


def test_a_worker_killed_with_sigkill_loses_none_of_the_rows_it_handed_over(settings, backend):
    """The end of file tells the child to write its queue and exit: the thread it replaces
    died with its worker, and its queued rows with it."""
    arguments = [f"{k}={v}" for k, v in backend.items()]
    worker = subprocess.Popen([sys.executable, "-c", WORKER, *arguments], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        child, *handed = worker.stdout.readline().split()
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        wait_for(lambda: set(handed) <= stored(settings, "issued_cards"))
        wait_for(lambda: not Path(f"/proc/{child}").exists() or "State:\tZ" in Path(f"/proc/{child}/status").read_text())
    finally:
        worker.kill()
        worker.wait()


def test_a_stuck_child_costs_a_hook_call_at_most_the_send_wait_and_close_ends_it(settings, caplog):
    writer = ProcessWriter(settings)
    os.kill(writer.pid, signal.SIGSTOP)  # taking nothing from the socket
    try:
        with caplog.at_level(logging.ERROR, logger="cds_service.feedback._process"):
            started = time.monotonic()
            while not any(getattr(r, "event", "") == "cards_dropped" for r in caplog.records):
                assert time.monotonic() - started < 30, "the socket never filled"
                call = time.monotonic()
                writer.record_cards(cards(10))  # a call's rows
                assert time.monotonic() - call < 0.5  # SEND_WAIT (0.1 s) and the pickling, not the child's pace
            with pytest.raises(StoreUnavailable):
                writer.store_feedback([overridden("c")], timeout=0.3)
            started = time.monotonic()
            writer.close(timeout=0.5)
            assert time.monotonic() - started < 5
        assert any(getattr(r, "event", "") == "feedback_writer_killed" for r in caplog.records)
        assert not Path(f"/proc/{writer.pid}").exists()
    finally:
        if Path(f"/proc/{writer.pid}").exists():
            os.kill(writer.pid, signal.SIGKILL)
