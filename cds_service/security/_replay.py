"""Remembering token ids (jti) until their token expires, so a captured token cannot be
sent twice: not to this worker, not to another worker, not to another replica.

The store is the service's database (storage/: the SQLite file in data_dir, or PostgreSQL
when database_url is set), table `replay_jti`, one row per (iss, jti) with the moment it
may be forgotten (the token's exp plus the leeway). A token is accepted when its row is
inserted: `INSERT ... ON CONFLICT (iss, jti) DO NOTHING` is atomic in both databases, so
of two workers racing with the same token exactly one inserts and wins. Rows of expired
tokens are deleted, at most PURGE_BATCH at a time, every `purge_every` accepted tokens
(and a row for this (iss, jti) that has expired is deleted before the insert).

If the store cannot answer (database down, locked beyond `timeout`), the token is refused
("replay check unavailable", a 401): fail closed. Accepting would let a captured token be
replayed for as long as the outage lasts; the outage is visible in the log and the
client's next call, with a fresh token, succeeds once the database is back.

Cost: one short write transaction per authenticated call (about a millisecond on SQLite in
WAL mode with synchronous=NORMAL, one round trip on PostgreSQL). Each thread keeps its own
connection, opened on first use in the process that uses it (never inherited over a fork).

Without a database (ReplayGuard() with no argument: in-process tools and unit tests) the
memory is this process's only.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from cds_service.config import Settings
from cds_service.errors import ConfigurationError, Unauthenticated
from cds_service.storage import Database, open_database

log = logging.getLogger(__name__)
TIMEOUT = 0.5  # seconds to connect or wait for the lock before refusing the token: a refusal answers within 1 s
PURGE_BATCH = 1000
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS replay_jti (iss TEXT NOT NULL, jti TEXT NOT NULL,"
    " expires_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (iss, jti))",
    "CREATE INDEX IF NOT EXISTS replay_jti_expires ON replay_jti (expires_at)",
)


class ReplayGuard:
    def __init__(self, db: Database | None = None, clock: Callable[[], float] = time.time, purge_every: int = 256):
        self.db = db
        self.clock = clock
        self.purge_every = max(purge_every, 1)
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._inserts = 0
        self._local = threading.local()

    def create_schema(self) -> ReplayGuard:
        """Creates the table if missing (raising if the database is unusable)."""
        if self.db is not None:
            conn = self.db.connect()
            try:
                with self.db.transaction(conn, schema_lock=True) as cur:
                    for statement in SCHEMA:
                        cur.execute(statement)
            finally:
                conn.close()  # a forked worker opens its own
        return self

    def first_use(self, iss: str, jti: str, expires: float) -> bool:
        """True the first time (iss, jti) is presented before `expires`; False on a replay.
        Raises Unauthenticated("replay check unavailable") when the store cannot answer."""
        now = self.clock()
        if self.db is None:
            return self._first_use_in_memory(iss, jti, expires, now)
        with self._lock:
            self._inserts += 1
            purge = self._inserts % self.purge_every == 0
        try:
            return self._first_use_in_db(iss, jti, expires, now, purge)
        except Exception as exc:
            self._drop_connection()
            # The error's type only: never the token, its jti or the database's password.
            log.error("replay store unavailable: token refused", extra={"event": "replay_store_error",
                                                                         "error": type(exc).__name__})
            raise Unauthenticated("replay check unavailable") from None

    def _first_use_in_db(self, iss: str, jti: str, expires: float, now: float, purge: bool) -> bool:
        db = self._db()
        conn = self._connection()
        with db.transaction(conn) as cur:
            cur.execute(db.sql("DELETE FROM replay_jti WHERE iss = ? AND jti = ? AND expires_at <= ?"), (iss, jti, now))
            cur.execute(db.sql("INSERT INTO replay_jti (iss, jti, expires_at) VALUES (?, ?, ?)"
                               " ON CONFLICT (iss, jti) DO NOTHING"), (iss, jti, expires))
            first = cur.rowcount == 1
            if purge:
                cur.execute(db.sql(
                    "DELETE FROM replay_jti WHERE (iss, jti) IN"
                    f" (SELECT iss, jti FROM replay_jti WHERE expires_at <= ? LIMIT {PURGE_BATCH})"), (now,))
        return first

    def _first_use_in_memory(self, iss: str, jti: str, expires: float, now: float) -> bool:
        with self._lock:
            key = (iss, jti)
            if self._seen.get(key, 0) > now:
                return False
            self._seen[key] = expires
            self._inserts += 1
            if self._inserts % self.purge_every == 0:
                self._seen = {k: v for k, v in self._seen.items() if v > now}
            return True

    def _db(self) -> Database:
        assert self.db is not None
        return self.db

    def _connection(self) -> Any:
        local = self._local
        if getattr(local, "pid", None) != os.getpid() or local.conn is None:
            local.conn, local.pid = self._db().connect(), os.getpid()
        return local.conn

    def _drop_connection(self) -> None:
        conn, self._local.conn = getattr(self._local, "conn", None), None
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            try:
                conn.close()
            except Exception:  # a broken connection may fail to close; it is dropped either way
                pass

    def stored(self) -> int:
        """How many (iss, jti) are remembered (expired rows not yet purged included)."""
        if self.db is None:
            return len(self._seen)
        conn = self._db().connect()
        try:
            with self._db().transaction(conn, write=False) as cur:
                cur.execute("SELECT COUNT(*) FROM replay_jti")
                return int(cur.fetchone()[0])
        finally:
            conn.close()


def open_replay_guard(settings: Settings, clock: Callable[[], float] = time.time) -> ReplayGuard:
    """The replay store in the service's database, its table created."""
    db = open_database(settings.database_url, settings.data_dir, timeout=TIMEOUT, durable=False)
    try:
        return ReplayGuard(db, clock).create_schema()
    except Exception as exc:  # unreachable server, bad credentials, unwritable file...
        raise ConfigurationError(f"replay store ({db}) unusable: {type(exc).__name__}") from None
