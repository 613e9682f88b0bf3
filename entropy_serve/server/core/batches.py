"""Online batches: OpenAI's Batch API, answered in the background by the same code as
`entropy-serve batch` (offline/batch.py), state in the store (store.py).

A batch's status moves as OpenAI's does: `validating` (its input file is read: not a
batch file, too many lines or a repeated custom_id -> `failed`, with `errors`) ->
`in_progress` (lines answered, each record written once as it finishes) -> `finalizing`
(the output file of 200 answers and the error file of the rest are written) ->
`completed`. A cancel moves it to `cancelling`, then `cancelled` with the files of what
was answered; a batch still open past its window ends `expired` the same way.

Interactive requests come first: a server answers at most `max_in_flight` batch lines
at a time, so the engine's other sequences stay free for its clients. Batches survive a
restart: the runner that works on a batch holds a lease on it (renewed every poll), and
a runner that finds an active batch whose lease has lapsed (its server died) or was
released (its server stopped) takes it over and answers only its unanswered lines.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
import uuid

from entropy_serve.offline.batch import answer_line
from entropy_serve.offline.records import InputLine, RecordsError, parse_lines
from entropy_serve.server.core.service import Service
from entropy_serve.server.core.store import ACTIVE_BATCH_STATES, Store, new_id

logger = logging.getLogger(__name__)

COMPLETION_WINDOWS_S = {"24h": 24 * 3600}
LEASE_S = 30.0  # a dead server's batches are taken over this long after its last renewal
POLL_S = 1.0  # how often a runner claims batches, renews its leases and reads cancels
# What an active batch found in a status that ends its work becomes.
FINAL_STATUS = {"cancelling": "cancelled", "finalizing": "completed"}


def new_batch(*, input_file_id: str, endpoint: str, completion_window: str, metadata: dict | None) -> dict:
    """A new batch's fields: OpenAI's Batch object, `validating`."""
    created_at = int(time.time())
    return {
        "id": new_id("batch"),
        "object": "batch",
        "endpoint": endpoint,
        "errors": None,
        "input_file_id": input_file_id,
        "completion_window": completion_window,
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": created_at,
        "in_progress_at": None,
        "expires_at": created_at + COMPLETION_WINDOWS_S[completion_window],
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": metadata,
    }


def with_live_counts(store: Store, fields: dict) -> dict:
    """An active batch's fields with its request counts as they stand now."""
    if fields["status"] not in ("in_progress", "cancelling", "finalizing"):
        return fields
    completed, failed = store.line_counts(fields["id"])
    return {**fields, "request_counts": {**fields["request_counts"], "completed": completed, "failed": failed}}


class BatchRunner:
    """Claims active batches from the store and answers their lines through the service."""

    def __init__(self, store: Store, service: Service, *, max_in_flight: int, max_lines: int):
        self.store = store
        self.service = service
        self.max_in_flight = max_in_flight
        self.max_lines = max_lines
        self.runner_id = f"runner-{uuid.uuid4().hex}"
        self.running: dict[str, asyncio.Task] = {}
        self.given_up: set[str] = set()  # failed here (the engine died): left to a restart

    async def run(self) -> None:
        """Work until cancelled (the server stops); leases are released on the way out."""
        try:
            while True:
                if self.service.engine.ready:
                    await self._poll()
                await asyncio.sleep(POLL_S)
        finally:
            for task in self.running.values():
                task.cancel()
            await asyncio.gather(*self.running.values(), return_exceptions=True)
            self.store.release_leases(self.runner_id)

    async def _poll(self) -> None:
        for batch_id, task in list(self.running.items()):
            if task.done():
                del self.running[batch_id]
                if not task.cancelled() and task.exception() is not None:
                    logger.error("batch %s stopped: %s (a restart resumes it)", batch_id, task.exception())
                    self.given_up.add(batch_id)
        for batch_id in await asyncio.to_thread(self.store.claim_batches, self.runner_id, LEASE_S):
            if batch_id not in self.running and batch_id not in self.given_up:
                self.running[batch_id] = asyncio.create_task(self._run(batch_id))

    async def _run(self, batch_id: str) -> None:
        fields = await asyncio.to_thread(self.store.batch, batch_id, None)
        if fields["status"] == "validating":
            lines = await self._lines(fields)
            if lines is None:
                return
            fields = await self._update(
                batch_id,
                expect=("validating",),
                status="in_progress",
                in_progress_at=int(time.time()),
                request_counts={"total": len(lines), "completed": 0, "failed": 0},
            )
        elif fields["status"] == "in_progress":
            lines = await self._lines(fields)
        else:  # cancelling, or finalizing when the last server stopped: only the files are left
            lines = []
        if fields is None or lines is None:
            return
        final = FINAL_STATUS.get(fields["status"])
        if fields["status"] == "in_progress":
            final = await self._answer(fields, lines)
        if final is not None:
            await self._finish(batch_id, final)

    async def _lines(self, fields: dict) -> list[InputLine] | None:
        """The input file's lines; None when the batch cannot be answered (marked failed: a bad
        file, or, for a batch already running, its input file deleted since)."""
        content = await asyncio.to_thread(self.store.file_content, fields["input_file_id"], None)
        problem = None
        if content is None:
            problem = ("invalid_file", f"the input file {fields['input_file_id']} was deleted")
        else:
            try:
                lines = parse_lines(_text_lines(content), f"file {fields['input_file_id']}")
            except RecordsError as error:
                problem = ("duplicate_custom_id", str(error))
            else:
                if not lines:
                    problem = ("empty_file", "the input file has no lines")
                elif len(lines) > self.max_lines:
                    problem = ("too_many_requests", f"the input file has {len(lines)} lines; at most {self.max_lines}")
        if problem is None:
            return lines
        errors = {"object": "list", "data": [{"code": problem[0], "message": problem[1], "param": None, "line": None}]}
        await self._update(
            fields["id"],
            expect=("validating", "in_progress"),
            status="failed",
            failed_at=int(time.time()),
            errors=errors,
        )
        return None

    async def _answer(self, fields: dict, lines: list[InputLine]) -> str | None:
        """Answer the unanswered lines, at most max_in_flight at a time; the batch's final
        status (all answered, cancelled, or its window closed), or None when another
        status change ended the work."""
        batch_id, urls = fields["id"], (fields["endpoint"],)
        answered = await asyncio.to_thread(self.store.answered_lines, batch_id)
        pending = iter([line for line in lines if line.number not in answered])
        in_flight: set[asyncio.Task] = set()

        async def answer(line: InputLine) -> None:
            result = await answer_line(self.service, line, urls)
            await asyncio.to_thread(self.store.add_line, batch_id, line.number, ok=result.ok, record=result.record)

        try:
            while True:
                if time.time() > fields["expires_at"]:
                    return "expired"
                while len(in_flight) < self.max_in_flight and (line := next(pending, None)) is not None:
                    in_flight.add(asyncio.create_task(answer(line)))
                if not in_flight:
                    return "completed"
                done, in_flight = await asyncio.wait(in_flight, timeout=POLL_S, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # the service failed (the engine died): stop, a restart resumes
                status = (await asyncio.to_thread(self.store.batch, batch_id, None))["status"]
                if status != "in_progress":
                    return FINAL_STATUS.get(status)
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def _finish(self, batch_id: str, final: str) -> None:
        """Write the output file (200 answers) and the error file (the rest) with the final
        status, in one transaction; `completed` passes through `finalizing`, as OpenAI's does."""
        if final == "completed":
            await self._update(
                batch_id, expect=("in_progress", "finalizing"), status="finalizing", finalizing_at=int(time.time())
            )
        outputs = {}
        for ok, name in ((True, "output"), (False, "error")):
            records = await asyncio.to_thread(self.store.line_records, batch_id, ok)
            if records:
                outputs[name] = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
            if ok:
                usage = batch_usage(records)
        completed, failed = await asyncio.to_thread(self.store.line_counts, batch_id)
        fields = await asyncio.to_thread(self.store.batch, batch_id, None)
        await asyncio.to_thread(
            functools.partial(
                self.store.finish_batch,
                batch_id,
                expect=ACTIVE_BATCH_STATES,
                outputs=outputs,
                status=final,
                usage=usage,
                request_counts={**fields["request_counts"], "completed": completed, "failed": failed},
                **{f"{final}_at": int(time.time())},
            )
        )

    async def _update(self, batch_id: str, expect: tuple[str, ...] | None = None, **changes) -> dict | None:
        return await asyncio.to_thread(self.store.update_batch, batch_id, expect=expect, **changes)


def batch_usage(answered: list[dict]) -> dict:
    """OpenAI's Batch `usage`: the tokens of the batch's answered requests."""
    usages = [record["response"]["body"].get("usage") or {} for record in answered]
    input_tokens = sum(usage.get("prompt_tokens", 0) for usage in usages)
    output_tokens = sum(usage.get("completion_tokens", 0) for usage in usages)
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def _text_lines(content: bytes) -> list[str]:
    """A file's lines as text (only '\\n' ends a line: JSON strings may hold other breaks)."""
    return content.decode("utf-8", errors="replace").split("\n")
