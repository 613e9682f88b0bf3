"""The OpenAI surface, driven through the official `openai` client against a real server."""

from __future__ import annotations

import math

import openai
import pytest
from conftest import MODEL

pytestmark = pytest.mark.e2e  # drives a real server process

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def test_models_lists_the_served_model(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].max_model_len == 8192


def test_models_retrieve_answers_as_openai_does(client):
    model = client.models.retrieve(MODEL)
    assert (model.id, model.object, model.owned_by) == (MODEL, "model", "entropy-serve")
    with pytest.raises(openai.NotFoundError) as raised:
        client.models.retrieve("gpt-nothing")
    assert raised.value.body["code"] == "model_not_found"


def test_logprob_entries_carry_each_tokens_entropy(client):
    """Frameworks that keep only per-token data (langchain) still see the entropies."""
    extra = {"return_entropy": True}
    reply = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=6, logprobs=True, top_logprobs=1, seed=2, extra_body=extra
    )
    entropy = reply.choices[0].model_extra["entropy"]
    entries = reply.choices[0].logprobs.content
    assert [e.model_extra["entropy"]["model_entropy_nats"] for e in entries] == entropy["model_entropy_nats"]
    assert [e.model_extra["entropy"]["sampled_entropy_nats"] for e in entries] == entropy["sampled_entropy_nats"]
    streamed = [
        entry.model_extra["entropy"]["model_entropy_nats"]
        for chunk in client.chat.completions.create(
            model=MODEL, messages=CHAT, max_tokens=6, logprobs=True, seed=2, extra_body=extra, stream=True
        )
        for choice in chunk.choices
        for entry in (choice.logprobs.content if choice.logprobs else [])
    ]
    assert streamed == pytest.approx(entropy["model_entropy_nats"], abs=1e-5)
    # Without return_entropy the entries are OpenAI's, nothing added.
    plain = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2, logprobs=True)
    assert all("entropy" not in (e.model_extra or {}) for e in plain.choices[0].logprobs.content)
    # Completions: one entry per token, null for the echoed prompt's tokens.
    echoed = client.completions.create(
        model=MODEL, prompt="The sky is", max_tokens=3, logprobs=0, echo=True, extra_body=extra
    ).choices[0]
    per_token = echoed.logprobs.model_extra["entropy"]
    assert len(per_token) == len(echoed.logprobs.tokens)
    assert per_token[-3:] and all(e is not None for e in per_token[-3:]) and all(e is None for e in per_token[:-3])
    assert [e["model_entropy_nats"] for e in per_token[-3:]] == echoed.model_extra["entropy"]["model_entropy_nats"]


def test_chat_completion_greedy(client, tokenizer):
    response = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=12, temperature=0)
    choice = response.choices[0]
    assert response.object == "chat.completion"
    assert response.model == MODEL
    assert choice.message.role == "assistant"
    # Chat is the model's chat template, then an ordinary greedy generation: the same
    # text as a completion of the rendered prompt's tokens. (Which city a 135M model
    # names is not the contract.)
    rendered = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer.encode(rendered, add_special_tokens=False)
    as_completion = client.completions.create(model=MODEL, prompt=prompt_ids, max_tokens=12, temperature=0)
    assert choice.message.content == as_completion.choices[0].text != ""
    assert choice.finish_reason == as_completion.choices[0].finish_reason
    assert response.usage.prompt_tokens == len(prompt_ids)
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    assert 0 < response.usage.completion_tokens <= 12


def test_chat_accepts_content_parts_like_strings(client):
    parts = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "What is the capital "}, {"type": "text", "text": "of France?"}],
        }
    ]
    plain = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=8, temperature=0)
    split = client.chat.completions.create(model=MODEL, messages=parts, max_tokens=8, temperature=0)
    assert split.choices[0].message.content == plain.choices[0].message.content
    assert split.usage.prompt_tokens == plain.usage.prompt_tokens


def test_max_tokens_gives_finish_reason_length(client):
    response = client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=5, temperature=0, extra_body={"ignore_eos": True}
    )
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 5


def test_max_completion_tokens_is_honoured(client):
    response = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_completion_tokens=3, extra_body={"ignore_eos": True}
    )
    assert response.usage.completion_tokens == 3


def test_completion_prompt_list_and_n(client):
    prompts = ["Once upon a time", "The capital of France is"]
    response = client.completions.create(model=MODEL, prompt=prompts, n=3, max_tokens=6, seed=11)
    assert [c.index for c in response.choices] == list(range(6))
    assert all(c.text for c in response.choices)
    single = [client.completions.create(model=MODEL, prompt=p, max_tokens=1) for p in prompts]
    assert response.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in single)
    # Usage counts every generated token of every choice.
    total = client.completions.create(model=MODEL, prompt=prompts, n=3, max_tokens=6, seed=11, logprobs=0)
    assert total.usage.completion_tokens == sum(len(c.logprobs.tokens) for c in total.choices)


def test_n_samples_differ(client):
    response = client.completions.create(
        model=MODEL, prompt="My favourite animal is", n=4, max_tokens=12, temperature=1.0, seed=5
    )
    assert len({c.text for c in response.choices}) > 1


def test_completion_prompt_as_token_ids(client, tokenizer):
    by_text = client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, temperature=0, logprobs=0)
    token_ids = tokenizer.encode("Hello")
    by_ids = client.completions.create(model=MODEL, prompt=token_ids, max_tokens=4, temperature=0)
    assert by_ids.usage.prompt_tokens == len(token_ids) == by_text.usage.prompt_tokens
    assert by_ids.choices[0].text == by_text.choices[0].text


@pytest.mark.parametrize("stop", ["\n", ["\n", "."]])
def test_stop_sequences_end_and_are_excluded(client, stop):
    prompt = "List three fruits:\n1."
    free = client.completions.create(model=MODEL, prompt=prompt, max_tokens=30, temperature=0)
    stopped = client.completions.create(model=MODEL, prompt=prompt, max_tokens=30, temperature=0, stop=stop)
    stops = [stop] if isinstance(stop, str) else stop
    first = min(free.choices[0].text.find(s) for s in stops if s in free.choices[0].text)
    assert stopped.choices[0].text == free.choices[0].text[:first]
    assert stopped.choices[0].finish_reason == "stop"


def test_completion_logprobs(client):
    response = client.completions.create(
        model=MODEL, prompt="The sky is", max_tokens=5, temperature=0, logprobs=3, extra_body={"ignore_eos": True}
    )
    logprobs = response.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 5
    assert "".join(logprobs.tokens) == response.choices[0].text
    assert logprobs.text_offset == [sum(len(t) for t in logprobs.tokens[:i]) for i in range(5)]
    for token, logprob, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs):
        assert len(top) == 3
        assert logprob <= 0
        # Greedy: the sampled token is the most likely one.
        assert math.isclose(logprob, max(top.values()), abs_tol=1e-4)
        assert token in top


def test_chat_logprobs(client):
    response = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2
    )
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens
    for entry in content:
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        assert bytes(entry.bytes).decode() == entry.token
    no_top = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2, logprobs=True)
    assert all(entry.top_logprobs == [] for entry in no_top.choices[0].logprobs.content)


def test_seed_reproduces_output(client):
    kwargs = dict(model=MODEL, prompt="Write a word:", max_tokens=16, temperature=1.0, n=2)
    first = client.completions.create(seed=1234, **kwargs)
    second = client.completions.create(seed=1234, **kwargs)
    other = client.completions.create(seed=4321, **kwargs)
    texts = lambda r: [c.text for c in r.choices]  # noqa: E731
    assert texts(first) == texts(second)
    assert texts(first) != texts(other)


def test_penalties_and_vllm_extras_are_accepted(client):
    response = client.completions.create(
        model=MODEL,
        prompt="a a a a a",
        max_tokens=8,
        presence_penalty=1.5,
        frequency_penalty=1.0,
        user="tester",
        extra_body={
            "top_k": 5,
            "min_p": 0.05,
            "repetition_penalty": 1.3,
            "vllm_xargs": {"note": "x"},
            "ignore_eos": True,
        },
    )
    assert response.usage.completion_tokens == 8


def test_chat_streaming_matches_non_streaming(client):
    kwargs = dict(model=MODEL, messages=CHAT, max_tokens=16, temperature=0)
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    content_chunks = [c for c in chunks if c.choices]
    assert content_chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in content_chunks)
    assert text == whole.choices[0].message.content
    assert content_chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage.model_dump() == whole.usage.model_dump()


def test_completion_streaming_with_n_and_logprobs(client):
    kwargs = dict(model=MODEL, prompt="Once upon a time", max_tokens=8, n=2, seed=7, logprobs=1)
    whole = client.completions.create(**kwargs)
    texts, tokens = {0: "", 1: ""}, {0: 0, 1: 0}
    finish = {}
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    for chunk in chunks:
        for choice in chunk.choices:
            # Offsets count from the start of the whole completion, across chunks.
            assert choice.logprobs.text_offset[:1] in ([], [len(texts[choice.index])])
            texts[choice.index] += choice.text
            tokens[choice.index] += len(choice.logprobs.tokens)
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
    assert texts == {c.index: c.text for c in whole.choices}
    assert finish == {c.index: c.finish_reason for c in whole.choices}
    assert chunks[-1].usage.completion_tokens == sum(tokens.values()) == whole.usage.completion_tokens


def test_streaming_without_usage_sends_no_usage_chunk(client):
    chunks = list(client.completions.create(model=MODEL, prompt="Hi", max_tokens=3, stream=True))
    assert chunks and all(c.choices and c.usage is None for c in chunks)


def test_streaming_errors_before_the_first_chunk_keep_their_status(client):
    import openai

    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=10**6, stream=True)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=CHAT, stream=True)
