"""The one background thread that writes to the feedback database.

A hook call hands over its issued cards and returns at once: it never waits for the
database. A feedback POST queues its rows behind them and waits for its own commit, so
(the queue being first in, first out) any card this process issued before is in the
database by then, and a 200 means stored. Rows are written in batches, one transaction
each; card records wait up to LINGER (50 ms) for others to join theirs, a feedback POST,
a flush or close never waits for that. If the database fails, the batch is retried with back-off; a feedback POST that
waits longer than feedback_wait gets 503, its rows still queued, and the client's retry
is harmless (feedback is idempotent). If the queue is full, issued-card records are
dropped and logged rather than slowing the clinician's hook call; feedback arriving for
those cards is kept, unlinked.

Retention: after every PURGE_EVERY card records it writes, the writer deletes (in the same
transaction) up to twice as many records older than issued_card_days, so the table holds
about the cards of the retention window (plus PURGE_EVERY per process) however long the
service runs; the index on issued_at keeps that delete cheap.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cds_service.config import Settings
from cds_service.errors import ConfigurationError, StoreRejected, StoreUnavailable
from cds_service.feedback import _db as feedback_db
from cds_service.feedback._db import CardRow, Database, FeedbackRow
from cds_service.feedback._lookup import History, history_for

log = logging.getLogger(__name__)
BATCH = 500
MAX_BACKOFF = 5.0
PURGE_EVERY = 1000  # card records written between two retention deletes
# Card records (nobody waits for them) are held this long for more to join their transaction:
# a commit costs its own work (and, FULL sync, an fsync) besides the rows'. Feedback, a flush
# or close ends the wait at once.
LINGER = 0.05


@dataclass
class _Job:
    cards: Sequence[CardRow] = ()
    feedback: Sequence[FeedbackRow] = ()
    done: threading.Event = field(default_factory=threading.Event)
    waited: bool = False  # someone waits for the commit (feedback, a flush): no linger
    new: int = 0  # feedback rows not seen before, once written
    error: str | None = None  # the database refused these rows (see Writer._isolate)


class Flushing:
    """flush() for both writers (this module's thread, feedback/_process.py's child): an
    empty feedback write, which commits behind everything handed over before it."""

    def store_feedback(self, rows: Sequence[FeedbackRow], timeout: float, fail_fast: bool = True) -> int:
        raise NotImplementedError

    def flush(self, timeout: float = 10.0) -> bool:
        """True once everything handed over before this call is committed."""
        try:
            self.store_feedback((), timeout, fail_fast=False)
            return True
        except StoreUnavailable:
            return False


class Writer(Flushing):
    def __init__(self, db: Database, queue_size: int = 10000, issued_card_days: float = 0.0,
                 linger: float | None = None):
        self.db = db
        self.linger = LINGER if linger is None else linger  # read when made: a test may hold rows longer
        self.retention = dt.timedelta(days=issued_card_days) if issued_card_days > 0 else None
        self._cards_since_purge = 0
        self.purged_cards = 0
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max(queue_size, 1))
        self._conn: Any = None
        self._closing = threading.Event()
        self.dropped_cards = 0
        self._down = threading.Event()  # set while the database is failing, cleared by a commit
        self._thread = threading.Thread(target=self._run, name="feedback-writer", daemon=True)

    def start(self, migrate: bool = True) -> Writer:
        """Creates or migrates the schema (raising if the database is unusable), then runs.
        migrate=False (a gunicorn worker: the master migrated): runs at once, connecting on
        its first write, so a worker respawned during an outage boots (and answers 503)."""
        if migrate:
            self._conn = self.db.connect()
            feedback_db.migrate(self.db, self._conn)
        self._thread.start()
        return self

    def record_cards(self, rows: Sequence[CardRow]) -> None:
        if not rows:
            return
        try:
            self._queue.put_nowait(_Job(cards=rows))
        except queue.Full:
            self.dropped_cards += len(rows)
            log.error("feedback queue full: issued-card records dropped",
                      extra={"event": "cards_dropped", "count": len(rows), "total_dropped": self.dropped_cards})

    def store_feedback(self, rows: Sequence[FeedbackRow], timeout: float, fail_fast: bool = True) -> int:
        """Waits until the rows are committed; returns how many were new."""
        if fail_fast and self._down.is_set():
            raise StoreUnavailable("the feedback database is unavailable")
        job = _Job(feedback=rows, waited=True)
        deadline = time.monotonic() + timeout
        try:
            self._queue.put(job, timeout=timeout)
        except queue.Full:
            raise StoreUnavailable("the feedback queue is full") from None
        if not job.done.wait(max(deadline - time.monotonic(), 0)):
            self._down.set()  # the writer is stuck (a lock, a connect): the next POSTs answer at once
            raise StoreUnavailable(f"the feedback database did not commit within {timeout:g} s")
        if job.error:
            raise StoreRejected(f"the feedback database refused the rows: {job.error}")  # a 500: our bug
        return job.new

    def close(self, timeout: float = 10.0) -> None:
        """Writes what is queued (for up to `timeout` seconds), then stops the thread."""
        if self._closing.is_set() or not self._thread.is_alive():
            return
        flushed = self.flush(timeout)
        self._closing.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass  # the writer is stuck retrying; _closing makes it give up
        self._thread.join(timeout=1.0)
        if not flushed:
            log.error("feedback writer stopped with rows not written",
                      extra={"event": "feedback_unwritten", "queued": self._queue.qsize()})

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            # Card records only: wait up to `linger` for more; anything someone waits for
            # (feedback, a flush, close's flush) is written with the batch at once.
            until = None if first.waited else time.monotonic() + self.linger
            while len(batch) < BATCH:
                wait = 0.0 if until is None else until - time.monotonic()
                try:
                    job = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True  # write this batch, then stop
                    break
                batch.append(job)
                if job.waited:
                    until = None  # take what is queued already, then commit
            self._write(batch)
        if self._conn is not None:
            self._conn.close()

    def _write(self, batch: list[_Job]) -> None:
        delay = 0.2
        while True:
            try:
                self._commit(batch)
                return
            except Exception as exc:
                self._reset_connection()
                if not self.db.transient(exc):
                    self._isolate(batch, exc)
                    return
                # The database is down or busy: retry the same rows, never drop them.
                self._down.set()
                log.error("feedback database write failed; retrying",
                          extra={"event": "feedback_db_error", "error": type(exc).__name__, "jobs": len(batch)})
                if self._closing.is_set():
                    return
                time.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)

    def _commit(self, batch: list[_Job]) -> None:
        if self._conn is None:
            self._conn = self.db.connect()
        cards = [r for job in batch for r in job.cards]
        purge = self.retention is not None and self._cards_since_purge + len(cards) >= PURGE_EVERY
        with self.db.transaction(self._conn) as cur:
            feedback_db.insert_cards(self.db, cur, cards)
            news = [feedback_db.insert_feedback(self.db, cur, job.feedback) for job in batch]
            purged = self._purge(cur, 2 * (self._cards_since_purge + len(cards))) if purge else 0
        self._down.clear()
        self._cards_since_purge = 0 if purge else self._cards_since_purge + len(cards)
        self.purged_cards += purged
        for job, new in zip(batch, news, strict=False):
            job.new = new
            job.done.set()

    def _purge(self, cur: Any, limit: int) -> int:
        assert self.retention is not None
        before = feedback_db.timestamp(dt.datetime.now(dt.timezone.utc) - self.retention)
        return feedback_db.purge_cards(self.db, cur, before, limit)

    def _isolate(self, batch: list[_Job], exc: Exception) -> None:
        """Rows the database refuses for what they hold (not for being down) would block
        the queue forever if retried: write each job alone, and give up only the bad one."""
        if len(batch) > 1:
            for job in batch:
                self._write([job])
            return
        job = batch[0]
        job.error = type(exc).__name__
        job.done.set()
        log.error("rows refused by the feedback database; not stored",
                  extra={"event": "feedback_rows_refused", "error": job.error, "cards": len(job.cards),
                         "feedback": len(job.feedback)})

    def _reset_connection(self) -> None:
        try:
            if self._conn is not None:
                self._conn.close()
        except Exception:  # closing a broken connection may fail too; we drop it either way
            pass
        self._conn = None


def open_history(settings: Settings) -> History:
    """Repeat suppression's look-up: its own connections, bounded by suppression_timeout."""
    db = feedback_db.open_database(settings.database_url, settings.data_dir, timeout=1.0)
    return history_for(db, settings.suppression_timeout)


def open_writer(settings: Settings, migrate: bool = True) -> Writer:
    """The database from the settings, schema up to date, its writer thread running."""
    db = feedback_db.open_database(settings.database_url, settings.data_dir)
    try:
        return Writer(db, settings.feedback_queue_size, settings.issued_card_days).start(migrate)
    except Exception as exc:  # unreachable server, bad credentials, unwritable file...
        raise ConfigurationError(f"feedback database ({db}) unusable: {type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
