"""Log-probabilities as OpenAI's replies carry them, from vLLM's Logprob records.

Completions' legacy form (parallel lists: tokens, token_logprobs, top_logprobs,
text_offset) and chat's (one entry per token, with its bytes and top alternatives);
completions' `echo` (the prompt's tokens first, the first one's logprob null) and
vLLM's `prompt_logprobs` extension. With `return_entropy`, each token's entry carries
its entropies too (`token_entropy`), for clients that keep only per-token data.
"""

from __future__ import annotations

from openai.types.chat.chat_completion_token_logprob import ChatCompletionTokenLogprob, TopLogprob
from openai.types.completion_choice import Logprobs as CompletionLogprobs
from vllm.logprobs import Logprob

from entropy_serve.server.core.rendering import PromptEcho
from entropy_serve.server.core.submission import Generated
from entropy_serve.server.engine.adapters.channel import TokenEntropy


def _token_text(token_id: int, logprob) -> str:
    return logprob.decoded_token if logprob.decoded_token is not None else f"<{token_id}>"


def _positions(choice: Generated, num_top: int):
    """(token id, its Logprob, top-k (id, Logprob) by rank) per token (an echoed prompt's
    first token has a Logprob whose logprob is None: nothing precedes it)."""
    for token_id, position in zip(choice.token_ids, choice.logprobs or (), strict=False):
        top = sorted(
            ((tid, lp) for tid, lp in position.items() if lp.rank is not None and lp.rank <= num_top),
            key=lambda item: item[1].rank,
        )
        yield token_id, position[token_id], top[:num_top]


def token_entropy(entropy: TokenEntropy | None) -> dict | None:
    """One token's entropies, as its log-probability entry carries them (frameworks that
    keep only per-token data, e.g. langchain's `response_metadata["logprobs"]`, keep these)."""
    if entropy is None:
        return None
    return {
        "model_entropy_nats": entropy.model_entropy_nats,
        "sampled_entropy_nats": entropy.sampled_entropy_nats,
        "temperature": entropy.temperature,
        "self_certainty_nats": entropy.self_certainty_nats,
    }


def _aligned_entropies(choice: Generated, num_tokens: int) -> list[TokenEntropy | None]:
    """The choice's entropies, one per logprob entry: an echoed prompt's tokens (first) have none."""
    return [None] * (num_tokens - len(choice.entropies)) + list(choice.entropies)


def completion_logprobs(
    choice: Generated, num_top: int, text_offset_start: int = 0, with_entropy: bool = False
) -> CompletionLogprobs:
    """`with_entropy`: an `entropy` field beside the token lists, one entry per token
    (null for an echoed prompt's tokens)."""
    tokens, token_logprobs, top_logprobs, text_offsets = [], [], [], []
    offset = text_offset_start
    for token_id, sampled, top in _positions(choice, num_top):
        text = _token_text(token_id, sampled)
        tokens.append(text)
        token_logprobs.append(sampled.logprob)
        top_logprobs.append(None if sampled.logprob is None else {_token_text(tid, lp): lp.logprob for tid, lp in top})
        text_offsets.append(offset)
        offset += len(text)
    entropy = {}
    if with_entropy:
        entropy["entropy"] = [token_entropy(e) for e in _aligned_entropies(choice, len(tokens))]
    # model_construct: an echoed prompt's first token has null logprobs, as on OpenAI's
    # wire, though the SDK type declares floats.
    return CompletionLogprobs.model_construct(
        tokens=tokens, token_logprobs=token_logprobs, top_logprobs=top_logprobs, text_offset=text_offsets, **entropy
    )


def with_prompt(
    choice: Generated,
    *,
    echo: PromptEcho,
    prompt_ids: list[int],
    prompt_logprobs: list[dict | None] | None,
    echo_only: bool,
) -> Generated:
    """`choice` (whole, or its first streamed piece) as completions' `echo` returns it: the
    prompt's text, tokens and logprobs first; with `echo_only` (max_tokens 0) nothing else."""
    logprobs = None
    if choice.logprobs is not None:
        positions = list(prompt_logprobs or [None] * len(prompt_ids))
        first = prompt_ids[0]
        positions[0] = {first: Logprob(logprob=None, rank=None, decoded_token=echo.first_token)}
        logprobs = positions + ([] if echo_only else list(choice.logprobs))
    finished = choice.finish_reason is not None
    return Generated(
        index=choice.index,
        prompt_index=choice.prompt_index,
        text=echo.text + ("" if echo_only else choice.text),
        token_ids=list(prompt_ids) + ([] if echo_only else choice.token_ids),
        logprobs=logprobs,
        finish_reason=("length" if finished else None) if echo_only else choice.finish_reason,
        stop_reason=None if echo_only else choice.stop_reason,
        entropies=[] if echo_only else choice.entropies,
    )


def prompt_logprobs_field(positions: list[dict | None] | None) -> list[dict | None] | None:
    """vLLM's `prompt_logprobs` extension: per prompt token, {token id: {logprob, rank,
    decoded_token}} for the token and the top k (null for the first token)."""
    if positions is None:
        return None
    return [
        None
        if position is None
        else {
            str(tid): {"logprob": lp.logprob, "rank": lp.rank, "decoded_token": lp.decoded_token}
            for tid, lp in position.items()
        }
        for position in positions
    ]


def chat_logprobs(choice: Generated, num_top: int, with_entropy: bool = False) -> list[ChatCompletionTokenLogprob]:
    """`with_entropy`: each entry also carries its token's `entropy` (token_entropy)."""
    content = []
    positions = list(_positions(choice, num_top))
    entropies = _aligned_entropies(choice, len(positions)) if with_entropy else [None] * len(positions)
    for (token_id, sampled, top), entropy in zip(positions, entropies):
        text = _token_text(token_id, sampled)
        content.append(
            ChatCompletionTokenLogprob(
                token=text,
                bytes=list(text.encode()),
                logprob=sampled.logprob,
                top_logprobs=[
                    TopLogprob(
                        token=_token_text(tid, lp),
                        bytes=list(_token_text(tid, lp).encode()),
                        logprob=lp.logprob,
                    )
                    for tid, lp in top
                ],
                **({"entropy": token_entropy(entropy)} if with_entropy else {}),
            )
        )
    return content
