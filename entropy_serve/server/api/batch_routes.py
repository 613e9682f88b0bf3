"""OpenAI's Files and Batch routes over the store (store.py); batches.py runs the jobs.

Objects are the `openai` package's own (FileObject, Batch), built from the store's
fields, so their shape is OpenAI's by construction. Every route sees only its caller's
files and batches (`owner`: the API key's digest); another owner's id is a 404, as an
id that does not exist.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import Response
from openai.types import Batch, FileObject
from pydantic import BaseModel, ConfigDict, Field

from entropy_serve.offline.batch import ENDPOINTS
from entropy_serve.server.api.request_body import json_body
from entropy_serve.server.core.batches import COMPLETION_WINDOWS_S, new_batch, with_live_counts
from entropy_serve.server.core.service import parse_body
from entropy_serve.server.core.store import Store
from entropy_serve.server.errors import BadRequest, NotFound

MAX_METADATA_PAIRS = 16  # OpenAI's: 16 pairs, keys up to 64 characters, values up to 512
CANCELLABLE = ("validating", "in_progress")


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    input_file_id: str
    endpoint: Literal[tuple(ENDPOINTS)]  # type: ignore[valid-type]
    completion_window: Literal[tuple(COMPLETION_WINDOWS_S)]  # type: ignore[valid-type]
    metadata: dict[str, str] | None = Field(None, max_length=MAX_METADATA_PAIRS)


def owner_of(request: Request) -> str:
    """The caller, as app.api_key_checker identified it."""
    return request.state.owner


def batch_router(store: Store) -> APIRouter:
    router = APIRouter()

    # -- files -------------------------------------------------------------------------

    @router.post("/files")
    async def create_file(
        request: Request, file: Annotated[UploadFile, File()], purpose: Annotated[str, Form()]
    ) -> dict:
        if purpose != "batch":
            raise BadRequest(f"purpose: only 'batch' is supported, got {purpose!r}", param="purpose")
        content = await file.read()
        fields = await asyncio.to_thread(
            store.add_file,
            owner_of(request),
            filename=file.filename or "upload.jsonl",
            purpose=purpose,
            content=content,
        )
        return FileObject(**fields).model_dump()

    @router.get("/files")
    async def list_files(request: Request, purpose: str | None = None) -> dict:
        found = await asyncio.to_thread(store.files, owner_of(request), purpose)
        return {"object": "list", "data": [FileObject(**fields).model_dump() for fields in found], "has_more": False}

    @router.get("/files/{file_id}")
    async def retrieve_file(request: Request, file_id: str) -> dict:
        fields = await asyncio.to_thread(store.file, owner_of(request), file_id)
        if fields is None:
            raise _no_file(file_id)
        return FileObject(**fields).model_dump()

    @router.get("/files/{file_id}/content")
    async def file_content(request: Request, file_id: str) -> Response:
        content = await asyncio.to_thread(store.file_content, file_id, owner_of(request))
        if content is None:
            raise _no_file(file_id)
        return Response(content, media_type="application/octet-stream")

    @router.delete("/files/{file_id}")
    async def delete_file(request: Request, file_id: str) -> dict:
        if not await asyncio.to_thread(store.delete_file, owner_of(request), file_id):
            raise _no_file(file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    # -- batches -----------------------------------------------------------------------

    @router.post("/batches")
    async def create_batch(request: Request) -> dict:
        asked = parse_body(await json_body(request), BatchRequest)
        owner = owner_of(request)
        input_file = await asyncio.to_thread(store.file, owner, asked.input_file_id)
        if input_file is None or input_file["purpose"] != "batch":
            raise BadRequest(
                f"input_file_id: {asked.input_file_id!r} is not a file of purpose 'batch' uploaded by this key",
                param="input_file_id",
            )
        fields = new_batch(
            input_file_id=asked.input_file_id,
            endpoint=asked.endpoint,
            completion_window=asked.completion_window,
            metadata=asked.metadata,
        )
        return Batch(**await asyncio.to_thread(store.add_batch, owner, fields)).model_dump()

    @router.get("/batches")
    async def list_batches(request: Request, after: str | None = None, limit: int = Query(20, ge=1, le=100)) -> dict:
        found = await asyncio.to_thread(store.batches, owner_of(request), after=after, limit=limit + 1)
        page = [
            Batch(**await asyncio.to_thread(with_live_counts, store, fields)).model_dump() for fields in found[:limit]
        ]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(found) > limit,
        }

    @router.get("/batches/{batch_id}")
    async def retrieve_batch(request: Request, batch_id: str) -> dict:
        fields = await asyncio.to_thread(store.batch, batch_id, owner_of(request))
        if fields is None:
            raise _no_batch(batch_id)
        return Batch(**await asyncio.to_thread(with_live_counts, store, fields)).model_dump()

    @router.post("/batches/{batch_id}/cancel")
    async def cancel_batch(request: Request, batch_id: str) -> dict:
        fields = await asyncio.to_thread(store.batch, batch_id, owner_of(request))
        if fields is None:
            raise _no_batch(batch_id)
        if fields["status"] in CANCELLABLE:
            fields = await asyncio.to_thread(
                store.update_batch, batch_id, expect=CANCELLABLE, status="cancelling", cancelling_at=int(time.time())
            ) or await asyncio.to_thread(store.batch, batch_id, None)
        elif fields["status"] != "cancelling":  # asked twice: the same answer
            raise BadRequest(
                f"batch {batch_id} is {fields['status']}; only a validating or in-progress batch can be cancelled"
            )
        return Batch(**await asyncio.to_thread(with_live_counts, store, fields)).model_dump()

    return router


def _no_file(file_id: str) -> NotFound:
    return NotFound(f"No such File object: {file_id}", param="file_id")


def _no_batch(batch_id: str) -> NotFound:
    return NotFound(f"No such Batch object: {batch_id}", param="batch_id")
