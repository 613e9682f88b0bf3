"""DiffAdapt routing: classify the prompt with the difficulty probe, then generate once
with its class's strategy.

Order: plan the request as sent (prompt tokens, and its resolved max_tokens) ->
the router's class for those tokens (probes/router.py) -> the request rewritten with
the class's instruction, temperature, top_p and budget_fraction x max_tokens
(probes/table.py) -> an ordinary generation, streamed or not, with the `difficulty`
field (streams: the `x-entropy-serve-difficulty*` headers, app.py).
"""

from __future__ import annotations

from entropy_serve.probes.router import Classification
from entropy_serve.probes.table import ClassStrategy
from entropy_serve.server import metrics
from entropy_serve.server.core.answering import Reply, StrategyContext
from entropy_serve.server.errors import BadRequest
from entropy_serve.server.protocol.messages import ChatMessage
from entropy_serve.server.protocol.requests import ChatCompletionRequest, SamplingRequest
from entropy_serve.server.strategies.leaves import check_single_prompt


def difficulty_extension(classification: Classification, max_tokens: int) -> dict:
    """The response's `difficulty` field."""
    return {
        "class": classification.name,
        "fallback": classification.fallback,
        "probabilities": classification.probabilities,
        "strategy": {**classification.strategy.model_dump(), "max_tokens": max_tokens},
        "probe_latency_s": round(classification.latency_s, 4),
    }


async def answer(ctx: StrategyContext, request: SamplingRequest) -> Reply:
    if ctx.router is None:
        raise BadRequest(
            "strategy: 'difficulty' needs a difficulty probe, and this server has none; train one with "
            "`entropy-serve train-probe --out DIR` and serve with `--probe DIR`",
            param="strategy",
        )
    as_sent = ctx.planner.plan(request)
    check_single_prompt(as_sent)
    job = as_sent.jobs[0]
    classification = await ctx.router.classify(job.token_ids)
    max_tokens = classification.strategy.max_tokens(job.params.max_tokens)
    metrics.DIFFICULTY_REQUESTS.labels(difficulty=classification.name).inc()
    metrics.PROBE_LATENCY_S.observe(classification.latency_s)
    steered = with_class_strategy(request, classification.strategy, max_tokens, ctx.engine.tokenizer)
    return await ctx.reply(ctx.planner.plan(steered), {"difficulty": difficulty_extension(classification, max_tokens)})


def with_class_strategy(
    request: SamplingRequest, strategy: ClassStrategy, max_tokens: int, tokenizer
) -> SamplingRequest:
    """The request as its class answers it: instruction first, then the class's sampling."""
    update = {"strategy": None, "temperature": strategy.temperature, "top_p": strategy.top_p, "max_tokens": max_tokens}
    instruction = strategy.instruction
    if isinstance(request, ChatCompletionRequest):
        update["max_completion_tokens"] = None
        if instruction:
            messages = list(request.messages)
            if messages[0].role in ("system", "developer"):  # one system message: templates may insist
                instruction = f"{instruction}\n\n{messages.pop(0).text()}"
            update["messages"] = [ChatMessage(role="system", content=instruction), *messages]
    elif instruction:
        prompt = request.prompt
        if isinstance(prompt, list):  # a single prompt here: [str] or token ids, or [[ids]]
            prompt = prompt[0] if not isinstance(prompt[0], int) else prompt
        if isinstance(prompt, str):
            update["prompt"] = f"{instruction}\n\n{prompt}"
        else:
            update["prompt"] = tokenizer.encode(f"{instruction}\n\n", add_special_tokens=False) + list(prompt)
    return request.model_copy(update=update)
