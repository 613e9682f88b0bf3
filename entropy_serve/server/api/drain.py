"""SIGTERM's drain: in-flight requests finish, new ones are turned away, and when the
drain time runs out nobody's request ends without a word.

Order of operations (commands/serve.py wires the signals to it):
1. the first SIGTERM or SIGINT: `run` starts. `/health` answers 503 "draining" from then
   on (load balancers take the replica out), new /v1 requests get a 503, in-flight ones
   go on, and the listener stays open so both can be said;
2. when the last in-flight request ends, the drain is complete; when `timeout_s` passes
   first, it is cut: every open stream ends with an error event (as when the engine
   dies) and every waiting non-streamed request gets a 503, each aborted in the engine;
3. the server then exits: 0 for a complete drain, DRAIN_CUT_EXIT for a cut one, so a
   supervisor's log says which. A second signal cuts the drain at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable

import uvicorn

from entropy_serve.server.errors import APIError

DRAIN_CUT_EXIT = 3  # the exit status when the drain ran out with requests in flight (1: the engine died)
CUT_GRACE_S = 5.0  # after a cut: time for the error events and 503s to reach their clients


class ShuttingDown(APIError):
    status_code = 503
    error_type = "service_unavailable"


class Ticket:
    """One in-flight request's place in the drain; `release` once, when it is answered."""

    def __init__(self, drain: Drain):
        self._drain = drain
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._drain._leave()


class Drain:
    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.draining = False
        self.cut = False  # the drain ran out with requests in flight
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._expired = asyncio.Event()
        self._hurried = asyncio.Event()

    @property
    def num_in_flight(self) -> int:
        return self._in_flight

    def enter(self) -> Ticket:
        """A new request's ticket; ShuttingDown (503) once the drain has begun."""
        if self.draining:
            raise ShuttingDown("the server is shutting down; retry on another replica")
        self._in_flight += 1
        self._idle.clear()
        return Ticket(self)

    def _leave(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    def hurry(self) -> None:
        """Cut the drain now (a second signal)."""
        self._hurried.set()

    async def run(self) -> bool:
        """Drain (the module doc); True when every request finished within `timeout_s`."""
        self.draining = True
        idle = asyncio.ensure_future(self._idle.wait())
        hurried = asyncio.ensure_future(self._hurried.wait())
        await asyncio.wait({idle, hurried}, timeout=self.timeout_s, return_when=asyncio.FIRST_COMPLETED)
        hurried.cancel()
        idle.cancel()
        if self._in_flight == 0:
            return True
        self.cut = True
        self._expired.set()
        try:
            await asyncio.wait_for(self._idle.wait(), CUT_GRACE_S)
        except TimeoutError:
            pass
        return False

    def _cut_error(self) -> ShuttingDown:
        return ShuttingDown(
            f"the server shut down before this request finished (its drain of {self.timeout_s:g} s ran out)"
        )

    async def until_cut(self, work: Awaitable):
        """`work`'s result, or ShuttingDown if the drain is cut first. However this ends
        early (a cut, or the caller cancelled: the client left), `work` is cancelled and
        awaited, so the engine aborts what it was generating."""
        work_task = asyncio.ensure_future(work)
        expired = asyncio.ensure_future(self._expired.wait())
        try:
            await asyncio.wait({work_task, expired}, return_when=asyncio.FIRST_COMPLETED)
            if work_task.done():
                return work_task.result()
            raise self._cut_error()
        finally:
            expired.cancel()
            await _cancelled(work_task)

    async def cut_short(self, items: AsyncIterable) -> AsyncIterator:
        """`items`, ending in ShuttingDown if the drain is cut. However this ends early (a
        cut, or the consumer closed or cancelled: the client left), the pending step is
        cancelled and `items` closed, so the engine aborts what it was generating."""
        iterator = aiter(items)
        expired = asyncio.ensure_future(self._expired.wait())
        step: asyncio.Future | None = None
        try:
            while True:
                step = asyncio.ensure_future(anext(iterator))
                await asyncio.wait({step, expired}, return_when=asyncio.FIRST_COMPLETED)
                if not step.done():
                    raise self._cut_error()
                try:
                    item = step.result()
                except StopAsyncIteration:
                    return
                yield item
        finally:
            expired.cancel()
            if step is not None:
                await _cancelled(step)
            if hasattr(iterator, "aclose"):
                await iterator.aclose()


async def _cancelled(task: asyncio.Future) -> None:
    """Cancel `task` unless it is done, and wait until it is (its own cleanup included)."""
    if not task.done():
        task.cancel()
    try:
        await task
    except BaseException:  # its result or error belongs to nobody now: its caller is leaving
        pass


class DrainingServer(uvicorn.Server):
    """uvicorn, where the first SIGTERM/SIGINT starts `drain` instead of closing the
    listener, and the server exits when the drain ends. A second signal cuts the drain."""

    def __init__(self, config: uvicorn.Config, drain: Drain):
        super().__init__(config)
        self.drain = drain
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_started = False
        self._draining: asyncio.Task | None = None  # held: a task nobody holds may be collected

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame) -> None:
        if self._loop is None or self.should_exit:
            super().handle_exit(sig, frame)
            return
        if self._drain_started:
            self._loop.call_soon_threadsafe(self.drain.hurry)
            return
        self._drain_started = True
        self._loop.call_soon_threadsafe(self._start_drain)  # a signal handler: hand over to the loop

    def _start_drain(self) -> None:
        async def drain_then_exit() -> None:
            await self.drain.run()
            self.should_exit = True

        self._draining = asyncio.ensure_future(drain_then_exit())
