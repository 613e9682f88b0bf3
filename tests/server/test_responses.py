"""Response building from hand-made generated choices."""

from __future__ import annotations

import asyncio
import math

from vllm.logprobs import Logprob

from entropy_serve.server.api.answer import SSE_DONE, sse_events
from entropy_serve.server.core.answering import ChunkStream
from entropy_serve.server.core.submission import Generated
from entropy_serve.server.protocol import logprobs, responses


def output(index=0, finish_reason="length") -> Generated:
    # Two generated tokens; position 1 sampled the second-ranked token.
    logprobs = [
        {5: Logprob(-0.1, 1, "He"), 6: Logprob(-2.5, 2, "We"), 7: Logprob(-3.0, 3, "I")},
        {9: Logprob(-1.2, 2, "llo"), 8: Logprob(-0.5, 1, "y")},
    ]
    return Generated(
        index=index, prompt_index=0, text="Hello", token_ids=[5, 9], logprobs=logprobs, finish_reason=finish_reason
    )


def test_completion_logprobs_top_k_by_rank_and_offsets():
    formatted = logprobs.completion_logprobs(output(), num_top=1)
    assert formatted.tokens == ["He", "llo"]
    assert formatted.token_logprobs == [-0.1, -1.2]
    assert formatted.top_logprobs == [{"He": -0.1}, {"y": -0.5}]
    assert formatted.text_offset == [0, 2]


def test_chat_logprobs_carry_bytes_and_sorted_top():
    content = logprobs.chat_logprobs(output(), num_top=2)
    assert [c.token for c in content] == ["He", "llo"]
    assert content[0].bytes == list(b"He")
    assert [t.token for t in content[0].top_logprobs] == ["He", "We"]
    assert [t.token for t in content[1].top_logprobs] == ["y", "llo"]
    assert all(math.isclose(c.logprob, lp) for c, lp in zip(content, [-0.1, -1.2]))


def test_finish_reasons_in_openai_vocabulary():
    assert responses.finish_reason(output(finish_reason="stop")) == "stop"
    assert responses.finish_reason(output(finish_reason="length")) == "length"
    assert responses.finish_reason(output(finish_reason="abort")) == "stop"
    assert responses.finish_reason(output(finish_reason=None)) is None


def test_usage_totals():
    usage = responses.usage(7, 5)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (7, 5, 12)


def test_chat_completion_response_shape():
    response = responses.chat_completion_response(
        request_id="id-1",
        model="m",
        created=123,
        choices=[output(0), output(1, "stop")],
        num_top_logprobs=None,
        usage=responses.usage(3, 4),
    )
    body = response.model_dump(exclude_unset=True)
    assert body["object"] == "chat.completion"
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert body["choices"][1]["finish_reason"] == "stop"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello"}
    assert body["choices"][0]["logprobs"] is None


def test_sse_event_format():
    chunk = responses.chat_chunk(
        request_id="id",
        model="m",
        created=1,
        choices=[responses.chat_delta_choice(choice=output(), num_top_logprobs=None, first=True)],
    )

    async def events() -> list[str]:
        async def nothing_more():
            return
            yield

        return [event async for event in sse_events(ChunkStream(chunk, nothing_more()))]

    event, done = asyncio.run(events())
    assert event.startswith("data: {") and event.endswith("}\n\n")
    assert '"role":"assistant"' in event
    assert done == SSE_DONE == "data: [DONE]\n\n"
