"""SIGTERM's drain without a server: requests in flight finish, new ones are refused,
and a cut ends every open one with ShuttingDown."""

from __future__ import annotations

import asyncio

import pytest

from entropy_serve.server.api.drain import Drain, ShuttingDown


async def ticking(num_items: int, every_s: float):
    for i in range(num_items):
        await asyncio.sleep(every_s)
        yield i


def test_a_drain_completes_when_the_last_request_ends_and_refuses_new_ones():
    async def scenario():
        drain = Drain(timeout_s=5)
        ticket = drain.enter()
        draining = asyncio.create_task(drain.run())
        await asyncio.sleep(0.05)
        assert drain.draining and not draining.done()
        with pytest.raises(ShuttingDown, match="shutting down"):
            drain.enter()
        ticket.release()
        ticket.release()  # once only
        assert await asyncio.wait_for(draining, 1) is True
        assert not drain.cut and drain.num_in_flight == 0

    asyncio.run(scenario())


def test_a_cut_ends_waiting_work_and_open_streams_with_a_503():
    async def scenario():
        drain = Drain(timeout_s=0.2)
        work_ticket, stream_ticket = drain.enter(), drain.enter()
        cancelled = asyncio.Event()

        async def slow_work():
            try:
                await asyncio.sleep(30)
            finally:
                cancelled.set()

        async def waiting():
            try:
                return await drain.until_cut(slow_work())
            finally:
                work_ticket.release()

        async def streaming():
            items = []
            try:
                async for item in drain.cut_short(ticking(1000, 0.05)):
                    items.append(item)
            finally:
                stream_ticket.release()
            return items

        work, stream = asyncio.create_task(waiting()), asyncio.create_task(streaming())
        await asyncio.sleep(0.1)
        assert await asyncio.wait_for(drain.run(), 2) is False
        assert drain.cut
        with pytest.raises(ShuttingDown, match="drain of 0.2 s ran out") as raised:
            await work
        assert raised.value.status_code == 503 and cancelled.is_set()
        with pytest.raises(ShuttingDown):
            await stream
        assert drain.num_in_flight == 0

    asyncio.run(scenario())


def test_work_and_streams_that_finish_pass_through_and_a_second_signal_cuts_at_once():
    async def scenario():
        drain = Drain(timeout_s=60)
        assert await drain.until_cut(asyncio.sleep(0, result="answer")) == "answer"
        assert [i async for i in drain.cut_short(ticking(3, 0))] == [0, 1, 2]
        ticket = drain.enter()
        draining = asyncio.create_task(drain.run())
        await asyncio.sleep(0.05)
        drain.hurry()
        await asyncio.sleep(0.05)
        ticket.release()  # the cut's grace: the request's 503 went out
        assert await asyncio.wait_for(draining, 1) is False

    asyncio.run(scenario())


def test_a_client_that_leaves_cancels_the_work_and_closes_the_stream_beneath():
    """Leaving early (the response task cancelled, or the stream closed) reaches the work
    and the generator beneath, whose cleanup aborts the request in the engine."""

    async def scenario():
        drain = Drain(timeout_s=60)
        cleaned: list[str] = []

        async def work():
            try:
                await asyncio.sleep(30)
            finally:
                cleaned.append("work")

        async def chunks():
            try:
                for i in range(1000):
                    await asyncio.sleep(0.01)
                    yield i
            finally:
                cleaned.append("chunks")

        waiting = asyncio.create_task(drain.until_cut(work()))
        await asyncio.sleep(0.05)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)

        async def read_some():
            async for item in drain.cut_short(chunks()):
                if item == 3:
                    await asyncio.sleep(30)  # the client stops reading here and leaves

        reading = asyncio.create_task(read_some())
        await asyncio.sleep(0.2)
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)

        stream = drain.cut_short(chunks())
        assert await anext(stream) == 0
        await stream.aclose()  # a stream closed between steps
        assert cleaned == ["work", "chunks", "chunks"]

    asyncio.run(scenario())
