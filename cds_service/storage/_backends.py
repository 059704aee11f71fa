"""The two backends. The same SQL runs on both (only the parameter marker differs)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager as ContextManager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from cds_service.errors import ConfigurationError

PG_MIGRATION_LOCK = 7_114_2024  # any constant: the advisory lock replicas share
SQLITE_FILE = "feedback.sqlite3"  # the service's database file in data_dir (its historic name)


class Database(Protocol):
    """One backend: how to connect, run a transaction and write parameters."""

    name: str

    def connect(self, timeout: float | None = None) -> Any:
        """A new connection; `timeout`: seconds to wait for a lock or the server (default: the database's)."""
        ...

    def sql(self, text: str) -> str: ...

    def transaction(self, conn: Any, schema_lock: bool = False, write: bool = True) -> ContextManager[Any]: ...

    def transient(self, exc: Exception) -> bool:
        """True when the failure is the database's state (down, busy), not the data's."""
        ...


class SqliteDatabase:
    name = "sqlite"

    def __init__(self, path: Path, timeout: float = 10.0, durable: bool = True):
        self.path = path
        self.timeout = timeout
        self.durable = durable

    def connect(self, timeout: float | None = None) -> sqlite3.Connection:
        # isolation_level None: we issue BEGIN IMMEDIATE ourselves (DDL included);
        # WAL lets the report read while a replica writes; FULL sync: a 200 means on disk.
        # durable=False (NORMAL): survives a crash of the process, not of the machine.
        conn = sqlite3.connect(self.path, timeout=self.timeout if timeout is None else timeout,
                               isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL" if self.durable else "PRAGMA synchronous=NORMAL")
        return conn

    def sql(self, text: str) -> str:
        return text

    def transient(self, exc: Exception) -> bool:
        return isinstance(exc, (sqlite3.OperationalError, OSError))  # locked, disk full, I/O

    @contextlib.contextmanager
    def transaction(self, conn: sqlite3.Connection, schema_lock: bool = False,
                    write: bool = True) -> Iterator[sqlite3.Cursor]:
        cur = conn.cursor()
        # IMMEDIATE takes the write lock at once (which also serialises migrations).
        cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield cur
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")

    def __str__(self) -> str:
        return f"SQLite {self.path}"


class PostgresDatabase:
    name = "postgresql"

    def __init__(self, url: str, timeout: float = 10.0):
        self.url = url
        self.timeout = timeout

    def connect(self, timeout: float | None = None) -> Any:
        import psycopg  # only needed when PostgreSQL is configured

        timeout = self.timeout if timeout is None else timeout
        conn = psycopg.connect(self.url, connect_timeout=max(1, round(timeout)))
        # A statement that waits (a lock, a stalled server) ends at the same bound.
        conn.execute(f"SET statement_timeout = {max(1, int(timeout * 1000))}")
        conn.commit()
        return conn

    def sql(self, text: str) -> str:
        return text.replace("?", "%s")

    def transient(self, exc: Exception) -> bool:
        import psycopg

        return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError, OSError))

    @contextlib.contextmanager
    def transaction(self, conn: Any, schema_lock: bool = False, write: bool = True) -> Iterator[Any]:
        with conn.transaction(), conn.cursor() as cur:
            if schema_lock:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (PG_MIGRATION_LOCK,))
            yield cur

    def __str__(self) -> str:
        # Never the password: only where the database is.
        parts = urlsplit(self.url)
        return f"PostgreSQL {parts.hostname or '(socket)'}:{parts.port or 5432}{parts.path}"


def open_database(database_url: str, data_dir: str, *, timeout: float = 10.0, durable: bool = True) -> Database:
    """The configured database. `timeout`: seconds to connect, or to wait for a lock."""
    if database_url:
        if urlsplit(database_url).scheme not in ("postgresql", "postgres"):
            raise ConfigurationError("database_url: must start with postgresql:// (or leave it empty for SQLite)")
        return PostgresDatabase(database_url, timeout)
    directory = Path(data_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(f"data_dir: cannot create {directory}: {exc.strerror}") from None
    return SqliteDatabase(directory / SQLITE_FILE, timeout, durable)
