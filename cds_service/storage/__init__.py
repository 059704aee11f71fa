"""The service's database, shared by every worker and replica: SQLite (a file in
data_dir) by default, PostgreSQL when database_url is set. Only how to reach it lives
here (connect, transactions, parameter markers, which failures are the database's state);
the tables belong to their owners: feedback/ (issued cards, feedback) and security/ (the
jti replay store). Below both, so neither imports the other.

Public API:
    open_database(database_url, data_dir, *, timeout, durable) -> Database
    Database                             the protocol both backends follow
    SqliteDatabase, PostgresDatabase
"""

from cds_service.storage._backends import Database, PostgresDatabase, SqliteDatabase, open_database

__all__ = ["Database", "PostgresDatabase", "SqliteDatabase", "open_database"]
