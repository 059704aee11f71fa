"""The repeat-suppression look-up: one query per call, bounded by suppression_timeout.

Runs on a small pool of threads with their own connections (a read never waits behind the
writer's queue). A look-up that does not answer within the timeout, or fails, raises
StoreUnavailable at once: the caller fails open (R-7). While every thread is busy (a stuck
database) a look-up does not queue: it fails open at once too.
"""

from __future__ import annotations

import datetime as dt
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from cds_service.errors import StoreUnavailable
from cds_service.feedback import _db as feedback_db
from cds_service.feedback._db import Database

THREADS = 4


class History:
    def __init__(self, db: Database, timeout: float):
        self.db = db
        self.timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="suppression")
        self._free = threading.BoundedSemaphore(THREADS)
        self._local = threading.local()

    def rows(self, patient_key: str, since: dt.datetime, user_key: str | None = None,
             codes: tuple[str, ...] = (), *, hook: str | None = None,
             encounter_key: str | None = None) -> list[dict[str, Any]]:
        """feedback_db.history's rows (`hook`, `encounter_key`: the O-1 look-up)."""
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
            raise StoreUnavailable(f"suppression store did not answer within {self.timeout:g} s") from None
        except Exception as exc:
            raise StoreUnavailable(f"suppression store failed: {type(exc).__name__}") from None

    def _query(self, patient_key: str, since: dt.datetime, user_key: str | None, codes: tuple[str, ...],
               hook: str | None, encounter_key: str | None) -> list[dict[str, Any]]:
        conn = getattr(self._local, "conn", None)
        try:
            if conn is None:
                conn = self._local.conn = self.db.connect()
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

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
