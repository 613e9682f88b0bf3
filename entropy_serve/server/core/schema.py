"""The store's tables (store.py): files with their bytes, batches with OpenAI's Batch
fields and their lease, each batch's answered lines (one row per line: written once),
and stored responses with their conversation. One schema for SQLite and PostgreSQL;
SQLite's connection settings (WAL, waiting on a busy database, write transactions that
take the lock when they begin) are here too."""

from __future__ import annotations

import sqlalchemy as sa

SQLITE_BUSY_TIMEOUT_MS = 10_000

metadata = sa.MetaData()

files = sa.Table(
    "files",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("owner", sa.String(80), nullable=False, index=True),
    sa.Column("filename", sa.Text, nullable=False),
    sa.Column("purpose", sa.String(32), nullable=False),
    sa.Column("num_bytes", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("content", sa.LargeBinary, nullable=False),
)

batches = sa.Table(
    "batches",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("owner", sa.String(80), nullable=False, index=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("fields", sa.JSON, nullable=False),  # the rest of OpenAI's Batch object
    sa.Column("lease_owner", sa.String(64)),
    sa.Column("lease_expires_at", sa.Float),
)

batch_lines = sa.Table(
    "batch_lines",
    metadata,
    sa.Column("batch_id", sa.String(64), primary_key=True),
    sa.Column("line_number", sa.Integer, primary_key=True),
    sa.Column("ok", sa.Boolean, nullable=False),
    sa.Column("record", sa.JSON, nullable=False),
)

stored_responses = sa.Table(
    "responses",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("owner", sa.String(80), nullable=False, index=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("response", sa.JSON, nullable=False),  # the Response object as returned
    sa.Column("conversation", sa.JSON, nullable=False),  # chat messages, the reply's included
)


def sqlite_settings(connection, _record) -> None:
    """WAL: readers never wait for the batch runner's writes; a busy database is waited
    for. The driver's own transaction handling is off: `begin_immediate` opens them."""
    connection.isolation_level = None
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()


def begin_immediate(connection) -> None:
    """A read-then-write transaction (update_batch, claim_batches) takes SQLite's write lock
    when it starts, so two writers wait for each other instead of failing to upgrade."""
    connection.exec_driver_sql("BEGIN IMMEDIATE")
