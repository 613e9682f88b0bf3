"""The server's durable state: uploaded files, batch jobs with their answered lines, and
stored responses (`/v1/responses` with `store`), in one database.

SQLite (WAL mode) in the cache folder by default; PostgreSQL when `--database-url`
names one (psycopg 3). SQLAlchemy Core gives both one schema and one set of queries.
Every read and write is scoped to an owner (the API key's digest), so a key sees only
its own files, batches and responses.

A batch is run by one server at a time: the runner that claims it holds a lease it
renews while it works (batches.py). A line's record is written once, keyed by (batch,
line number), so a runner that resumes a batch after a crash or a restart skips what is
already answered and can never write a line twice.

Methods are synchronous (short transactions); the HTTP layer calls them in a thread.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from entropy_serve import model_store
from entropy_serve.server.core.schema import (
    batch_lines,
    batches,
    begin_immediate,
    files,
    metadata,
    sqlite_settings,
    stored_responses,
)

DATABASE_FILE = "state.sqlite3"
ACTIVE_BATCH_STATES = ("validating", "in_progress", "finalizing", "cancelling")


def default_database_url() -> str:
    return f"sqlite:///{model_store.cache_dir() / DATABASE_FILE}"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class Store:
    def __init__(self, url: str | None = None):
        url = url or default_database_url()
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine = sa.create_engine(url)
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", sqlite_settings)
            sa.event.listen(self.engine, "begin", begin_immediate)
        metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # -- files -------------------------------------------------------------------------

    def add_file(self, owner: str, *, filename: str, purpose: str, content: bytes) -> dict:
        row = _file_row(owner, filename=filename, purpose=purpose, content=content)
        with self.engine.begin() as db:
            db.execute(files.insert().values(**row))
        return _file_fields(row)

    def file(self, owner: str, file_id: str) -> dict | None:
        """The file's fields (no content), or None where this owner has no such file."""
        columns = [c for c in files.c if c.name != "content"]
        with self.engine.connect() as db:
            row = (
                db.execute(sa.select(*columns).where(files.c.id == file_id, files.c.owner == owner)).mappings().first()
            )
        return _file_fields(row) if row else None

    def files(self, owner: str, purpose: str | None = None) -> list[dict]:
        columns = [c for c in files.c if c.name != "content"]
        query = sa.select(*columns).where(files.c.owner == owner).order_by(files.c.created_at.desc(), files.c.id)
        if purpose is not None:
            query = query.where(files.c.purpose == purpose)
        with self.engine.connect() as db:
            return [_file_fields(row) for row in db.execute(query).mappings()]

    def file_content(self, file_id: str, owner: str | None) -> bytes | None:
        """The file's bytes; `owner` None: whoever owns it (the batch runner's view)."""
        query = sa.select(files.c.content).where(files.c.id == file_id)
        if owner is not None:
            query = query.where(files.c.owner == owner)
        with self.engine.connect() as db:
            return db.execute(query).scalar()

    def delete_file(self, owner: str, file_id: str) -> bool:
        with self.engine.begin() as db:
            return db.execute(files.delete().where(files.c.id == file_id, files.c.owner == owner)).rowcount == 1

    # -- batches -----------------------------------------------------------------------

    def add_batch(self, owner: str, fields: dict) -> dict:
        """A new batch, `fields` being OpenAI's Batch object (id, status and created_at included)."""
        with self.engine.begin() as db:
            db.execute(
                batches.insert().values(
                    id=fields["id"],
                    owner=owner,
                    created_at=fields["created_at"],
                    status=fields["status"],
                    fields=fields,
                )
            )
        return fields

    def batch(self, batch_id: str, owner: str | None) -> dict | None:
        """The batch's fields; `owner` None: whoever owns it (the runner's view)."""
        query = sa.select(batches.c.fields).where(batches.c.id == batch_id)
        if owner is not None:
            query = query.where(batches.c.owner == owner)
        with self.engine.connect() as db:
            return db.execute(query).scalar()

    def batches(self, owner: str, *, after: str | None, limit: int) -> list[dict]:
        """The owner's batches, newest first, from the one after `after`."""
        query = sa.select(batches.c.fields).where(batches.c.owner == owner)
        with self.engine.connect() as db:
            if after is not None:
                cursor = db.execute(sa.select(batches.c.created_at).where(batches.c.id == after)).scalar()
                if cursor is not None:
                    query = query.where(
                        sa.or_(
                            batches.c.created_at < cursor, sa.and_(batches.c.created_at == cursor, batches.c.id > after)
                        )
                    )
            query = query.order_by(batches.c.created_at.desc(), batches.c.id).limit(limit)
            return list(db.execute(query).scalars())

    def update_batch(self, batch_id: str, *, expect: Iterable[str] | None = None, **changes) -> dict | None:
        """Apply `changes` to the batch's fields (status included) if its status is one of
        `expect` (any, when None); the new fields, or None when the status did not match."""
        with self.engine.begin() as db:
            fields = db.execute(sa.select(batches.c.fields).where(batches.c.id == batch_id).with_for_update()).scalar()
            if fields is None or (expect is not None and fields["status"] not in expect):
                return None
            fields = {**fields, **changes}
            db.execute(batches.update().where(batches.c.id == batch_id).values(status=fields["status"], fields=fields))
        return fields

    def claim_batches(self, runner: str, lease_s: float) -> list[str]:
        """Active batches whose lease is free, lapsed or `runner`'s own, now leased to
        `runner` for `lease_s` (a runner renews its leases by claiming again)."""
        now = time.time()
        free = sa.or_(
            batches.c.lease_owner.is_(None), batches.c.lease_expires_at < now, batches.c.lease_owner == runner
        )
        claimed = []
        with self.engine.begin() as db:
            candidates = db.execute(
                sa.select(batches.c.id)
                .where(batches.c.status.in_(ACTIVE_BATCH_STATES), free)
                .order_by(batches.c.created_at)
            ).scalars()
            for batch_id in list(candidates):
                taken = db.execute(
                    batches.update()
                    .where(batches.c.id == batch_id, free)
                    .values(lease_owner=runner, lease_expires_at=now + lease_s)
                )
                if taken.rowcount == 1:
                    claimed.append(batch_id)
        return claimed

    def release_leases(self, runner: str) -> None:
        with self.engine.begin() as db:
            db.execute(
                batches.update().where(batches.c.lease_owner == runner).values(lease_owner=None, lease_expires_at=None)
            )

    def finish_batch(
        self, batch_id: str, *, expect: Iterable[str], outputs: dict[str, bytes], **changes
    ) -> dict | None:
        """In one transaction: the batch's output files (`outputs`: name -> content, each
        `{batch_id}_{name}.jsonl`, its id in the fields as `{name}_file_id`) and its final
        fields, if its status is one of `expect`; None (nothing written) otherwise, so a
        batch is finished once however often a runner tries."""
        with self.engine.begin() as db:
            query = sa.select(batches.c.fields, batches.c.owner).where(batches.c.id == batch_id).with_for_update()
            row = db.execute(query).first()
            if row is None or row.fields["status"] not in expect:
                return None
            fields = {**row.fields, **changes}
            for name, content in outputs.items():
                file = _file_row(
                    row.owner, filename=f"{batch_id}_{name}.jsonl", purpose="batch_output", content=content
                )
                db.execute(files.insert().values(**file))
                fields[f"{name}_file_id"] = file["id"]
            db.execute(batches.update().where(batches.c.id == batch_id).values(status=fields["status"], fields=fields))
        return fields

    def add_line(self, batch_id: str, line_number: int, *, ok: bool, record: dict) -> bool:
        """Record a line's answer; False (nothing written) when it was already recorded."""
        try:
            with self.engine.begin() as db:
                db.execute(
                    batch_lines.insert().values(batch_id=batch_id, line_number=line_number, ok=ok, record=record)
                )
        except IntegrityError:
            return False
        return True

    def answered_lines(self, batch_id: str) -> set[int]:
        with self.engine.connect() as db:
            return set(
                db.execute(sa.select(batch_lines.c.line_number).where(batch_lines.c.batch_id == batch_id)).scalars()
            )

    def line_counts(self, batch_id: str) -> tuple[int, int]:
        """(answered with 200, answered with an error) so far."""
        with self.engine.connect() as db:
            rows = db.execute(
                sa.select(batch_lines.c.ok, sa.func.count())
                .where(batch_lines.c.batch_id == batch_id)
                .group_by(batch_lines.c.ok)
            ).all()
        counts = dict(rows)
        return counts.get(True, 0), counts.get(False, 0)

    def line_records(self, batch_id: str, ok: bool) -> list[dict]:
        """The batch's records of successes (or of errors), in input order."""
        query = (
            sa.select(batch_lines.c.record)
            .where(batch_lines.c.batch_id == batch_id, batch_lines.c.ok == ok)
            .order_by(batch_lines.c.line_number)
        )
        with self.engine.connect() as db:
            return list(db.execute(query).scalars())

    # -- stored responses --------------------------------------------------------------

    def add_response(self, owner: str, response: dict, conversation: list[dict]) -> None:
        with self.engine.begin() as db:
            db.execute(
                stored_responses.insert().values(
                    id=response["id"],
                    owner=owner,
                    created_at=response["created_at"],
                    response=response,
                    conversation=conversation,
                )
            )

    def response(self, owner: str, response_id: str) -> tuple[dict, list[dict]] | None:
        """(the Response as returned, the conversation up to and including it), or None."""
        query = sa.select(stored_responses.c.response, stored_responses.c.conversation).where(
            stored_responses.c.id == response_id, stored_responses.c.owner == owner
        )
        with self.engine.connect() as db:
            row = db.execute(query).first()
        return (row[0], row[1]) if row else None

    def delete_response(self, owner: str, response_id: str) -> bool:
        with self.engine.begin() as db:
            deleted = db.execute(
                stored_responses.delete().where(stored_responses.c.id == response_id, stored_responses.c.owner == owner)
            )
            return deleted.rowcount == 1


def _file_row(owner: str, *, filename: str, purpose: str, content: bytes) -> dict:
    return dict(
        id=new_id("file"),
        owner=owner,
        filename=filename,
        purpose=purpose,
        num_bytes=len(content),
        created_at=int(time.time()),
        content=content,
    )


def _file_fields(row) -> dict:
    """OpenAI's FileObject fields of a `files` row."""
    return {
        "id": row["id"],
        "object": "file",
        "bytes": row["num_bytes"],
        "created_at": row["created_at"],
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": "processed",
    }
