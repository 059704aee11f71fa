"""Feedback and issued cards, stored durably (SQLite by default, PostgreSQL by URL).

Public API:
    open_writer(settings) -> Writer      the background writer (cards issued, feedback)
    open_worker_writer(settings, fds)    a gunicorn worker's: the same Writer in a child process
                                         (ProcessWriter, Writer's interface), fds closed in the child
    Writer                .record_cards, .record_feedback, .flush, .close
    open_database(url) -> Database       SqliteDatabase or PostgresDatabase, migrated
    card_rows(...), feedback_rows(...)   rows from an issued card / a feedback body
    CardRow, FeedbackRow, query(db, sql)
    Keys(secret), service_secret(settings, production)   HMAC keys of patient, user, encounter, orders
    CallKeys                             a call's keys, stored with its cards (B-0.7)
    open_history(settings) -> History    repeat suppression's look-up (.rows), with its timeout
    history_for(db, timeout) -> History  the same for a database: LocalHistory (SQLite, on the
                                         calling thread) or PooledHistory (PostgreSQL, its threads)
    build_report(db), report_json(reports), report_table(reports)   the feedback report
"""

from cds_service.feedback._db import (
    SCHEMA_VERSION,
    CallKeys,
    CardRow,
    Database,
    FeedbackRow,
    card_rows,
    feedback_rows,
    open_database,
    query,
)
from cds_service.feedback._keys import Keys, service_secret
from cds_service.feedback._lookup import History, LocalHistory, PooledHistory, history_for
from cds_service.feedback._process import ProcessWriter, open_worker_writer
from cds_service.feedback._report import as_json as report_json
from cds_service.feedback._report import as_table as report_table
from cds_service.feedback._report import build as build_report
from cds_service.feedback._writer import Writer, open_history, open_writer

__all__ = [
    "SCHEMA_VERSION", "CallKeys", "History", "LocalHistory", "PooledHistory", "history_for", "Keys", "open_history", "service_secret",
    "CardRow", "Database", "FeedbackRow", "Writer", "build_report", "card_rows", "feedback_rows", "open_database",
    "open_worker_writer", "open_writer", "ProcessWriter", "query", "report_json", "report_table",
]
