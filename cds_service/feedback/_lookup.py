"""The repeat-suppression look-up: a query or two per call, bounded by suppression_timeout.

A look-up that does not answer within the timeout, or fails, raises StoreUnavailable at
once: the caller fails open (R-7). Every thread reads on a connection of its own, so a
read never waits behind the writer's queue. Two ways to hold the bound, by database:

    PooledHistory  PostgreSQL (a server across a network, which can go quiet with a query
                   in flight): the query runs on a small pool of threads and the call waits
                   for it at most the timeout. While every pool thread is stuck, a look-up
                   does not queue: it fails open at once too.
    LocalHistory   SQLite (a file on this machine): the query runs on the calling thread,
                   which saves each call two thread hand-offs (issue 12). The bound is
                   SQLite's own: a lock waits at most the timeout (busy timeout), and a
                   query still running at its deadline is interrupted (progress handler).

history_for(db, timeout) picks the one for the database.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from cds_service.errors import StoreUnavailable
from cds_service.feedback import _db as feedback_db
from cds_service.feedback._db import Database

THREADS = 4
# SQLite calls the deadline check every this many virtual-machine instructions: a look-up of
# one patient's cards runs a few thousand, so it costs a handful of calls.
_CHECK_EVERY = 200


class History:
    """What both ways share: the rows, read on this thread's own connection (dropped when it fails)."""

    def __init__(self, db: Database, timeout: float):
        self.db = db
        self.timeout = timeout
        self._local = threading.local()

    def rows(self, patient_key: str, since: dt.datetime, user_key: str | None = None,
             codes: tuple[str, ...] = (), *, hook: str | None = None,
             encounter_key: str | None = None) -> list[dict[str, Any]]:
        """feedback_db.history's rows (`hook`, `encounter_key`: the O-1 look-up); StoreUnavailable
        when the store does not answer within the timeout, or fails."""
        raise NotImplementedError

    def _late(self) -> str:
        return f"suppression store did not answer within {self.timeout:g} s"

    def _query(self, patient_key: str, since: dt.datetime, user_key: str | None, codes: tuple[str, ...],
               hook: str | None, encounter_key: str | None) -> list[dict[str, Any]]:
        conn = getattr(self._local, "conn", None)
        try:
            if conn is None:
                conn = self._local.conn = self._connect()
            return feedback_db.history(self.db, conn, patient_key, since, user_key, codes, hook=hook,
                                       encounter_key=encounter_key)
        except Exception:
            self._local.conn = None
            if conn is not None:
                try:
                    conn.close()
                except Exception:  # a broken connection may fail to close; it is dropped either way
                    pass
            raise

    def _connect(self) -> Any:
        return self.db.connect()

    def close(self) -> None:
        """Nothing to stop (PooledHistory: its threads)."""


class PooledHistory(History):
    """The look-up on a pool of threads, for a database server (see the module's docstring)."""

    def __init__(self, db: Database, timeout: float):
        super().__init__(db, timeout)
        self._pool = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="suppression")
        self._free = threading.BoundedSemaphore(THREADS)

    def rows(self, patient_key: str, since: dt.datetime, user_key: str | None = None,
             codes: tuple[str, ...] = (), *, hook: str | None = None,
             encounter_key: str | None = None) -> list[dict[str, Any]]:
        if not self._free.acquire(blocking=False):
            raise StoreUnavailable("suppression store busy")
        try:
            future = self._pool.submit(self._query, patient_key, since, user_key, codes, hook, encounter_key)
        except RuntimeError:
            self._free.release()
            raise StoreUnavailable("suppression store closed") from None
        future.add_done_callback(lambda _: self._free.release())
        try:
            return future.result(timeout=self.timeout)
        except FutureTimeout:
            raise StoreUnavailable(self._late()) from None
        except Exception as exc:
            raise StoreUnavailable(f"suppression store failed: {type(exc).__name__}") from None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class LocalHistory(History):
    """The look-up on the calling thread, for SQLite (see the module's docstring)."""

    def rows(self, patient_key: str, since: dt.datetime, user_key: str | None = None,
             codes: tuple[str, ...] = (), *, hook: str | None = None,
             encounter_key: str | None = None) -> list[dict[str, Any]]:
        self._local.deadline = time.monotonic() + self.timeout
        try:
            return self._query(patient_key, since, user_key, codes, hook, encounter_key)
        except sqlite3.OperationalError as exc:
            # SQLITE_INTERRUPT: the deadline passed; SQLITE_BUSY / SQLITE_LOCKED: the busy timeout did
            late = getattr(exc, "sqlite_errorname", "").startswith(("SQLITE_INTERRUPT", "SQLITE_BUSY", "SQLITE_LOCKED"))
            raise StoreUnavailable(self._late() if late else "suppression store failed: OperationalError") from None
        except Exception as exc:
            raise StoreUnavailable(f"suppression store failed: {type(exc).__name__}") from None

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection = self.db.connect(timeout=self.timeout)  # SQLite's busy timeout
        local = self._local
        # True aborts the statement: sqlite3 raises OperationalError("interrupted")
        conn.set_progress_handler(lambda: time.monotonic() > local.deadline, _CHECK_EVERY)
        return conn


def history_for(db: Database, timeout: float) -> History:
    """The look-up for this database, bounded by `timeout` seconds (the module's docstring)."""
    return LocalHistory(db, timeout) if db.name == "sqlite" else PooledHistory(db, timeout)
