"""DiffAdapt routing: classify the prompt with the difficulty probe, then generate once
with its class's strategy.

Order: render the request as sent (prompt tokens, and its resolved max_tokens) ->
features of those tokens from the pooling engine (probes/features.py) -> the probe's
class probabilities -> the class with the highest probability -> the request rewritten
with the class's instruction, temperature, top_p and budget_fraction x max_tokens
(probes/table.py) -> an ordinary generation, streamed or not.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from entropy_serve.probes.table import ClassStrategy
from entropy_serve.server import metrics
from entropy_serve.server.errors import BadRequest
from entropy_serve.server.generation import Generator, PreparedRequest
from entropy_serve.server.protocol import ChatCompletionRequest, ChatMessage, SamplingRequest
from entropy_serve.server.strategies.leaves import check_single_prompt


@dataclass(frozen=True)
class Classification:
    name: str
    probabilities: dict[str, float]
    strategy: ClassStrategy
    max_tokens: int
    latency_s: float

    def extension(self) -> dict:
        """The response's `difficulty` field."""
        return {
            "class": self.name,
            "probabilities": self.probabilities,
            "strategy": {**self.strategy.model_dump(), "max_tokens": self.max_tokens},
            "probe_latency_s": round(self.latency_s, 4),
        }


async def prepare_difficulty(holder, generator: Generator, request: SamplingRequest) -> tuple[PreparedRequest, Classification]:
    if holder.probe is None:
        raise BadRequest(
            "strategy: 'difficulty' needs a difficulty probe, and this server has none; train one with "
            "`entropy-serve train-probe --out DIR` and serve with `--probe DIR`",
            param="strategy",
        )
    as_sent = generator.prepare(request)
    check_single_prompt(as_sent)
    job = as_sent.jobs[0]
    started = time.perf_counter()
    features = await holder.features.features([job.token_ids])
    probabilities = holder.probe.probabilities(features)[0]
    latency_s = time.perf_counter() - started
    name = holder.probe.classes[int(probabilities.argmax())]
    strategy = holder.difficulty_table.for_class(name)
    max_tokens = strategy.max_tokens(job.params.max_tokens)
    metrics.DIFFICULTY_REQUESTS.labels(difficulty=name).inc()
    metrics.PROBE_LATENCY_S.observe(latency_s)
    classification = Classification(
        name, {c: float(p) for c, p in zip(holder.probe.classes, probabilities)}, strategy, max_tokens, latency_s
    )
    steered = with_class_strategy(request, strategy, max_tokens, holder.tokenizer)
    return generator.prepare(steered), classification


def with_class_strategy(request: SamplingRequest, strategy: ClassStrategy, max_tokens: int, tokenizer) -> SamplingRequest:
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
