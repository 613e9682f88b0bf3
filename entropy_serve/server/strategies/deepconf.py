"""DeepConf online (Fu et al. 2025): stop the traces the model is unsure of while they
are generated, and weigh the vote by confidence.

Order:
0. the fields the client left out take the model's learned settings (defaults.py);
1. plan the n traces (one engine job each, so each can be stopped alone), with
   per-token entropies, and the top_k log-probabilities when confidence is `topk`;
2. warm-up: the first `warmup` traces, whole; the threshold is the percentile of
   their lowest group confidences that keeps a share `keep` of them (stopping.py);
3. waves of `wave` traces: every streamed token's confidence goes to its trace's
   TraceWatch; a trace whose group confidence falls below the threshold is aborted in
   the engine at once. After each wave, sampling ends when the confidence-weighted vote
   reaches `consensus` (or the n traces are spent);
4. vote over the finished traces (stopped ones cast no vote), each weighted by its
   lowest group confidence; the reply is the first winning trace.

Why the abort comes from outside the engine: DeepConf's own code forces EOS from a
logits processor. This server already receives every token's entropy and
log-probabilities as it streams, so the strategy decides with the whole trace in view,
keeps the sampler adapters (v1 and v2 runners alike) free of strategy state, and
vLLM's abort frees the trace's slot and KV blocks. The price is latency: the abort
lands an engine step or so after the token that triggered it, and those tokens were
generated: `usage` counts every token each trace really produced, stopped or not.
"""

from __future__ import annotations

import copy
import dataclasses

from entropy_serve.server import metrics
from entropy_serve.server.core.answering import Reply, StrategyContext
from entropy_serve.server.core.planning import EngineJob
from entropy_serve.server.core.submission import Generated, Step
from entropy_serve.server.protocol.extensions import DeepConf
from entropy_serve.server.protocol.requests import SamplingRequest
from entropy_serve.server.strategies.leaves import (
    Leaf,
    StrategyOutcome,
    answers_agree,
    check_single_prompt,
    check_strategy_request,
    decide,
    leaf_answers,
)
from entropy_serve.server.strategies.stopping import (
    TraceWatch,
    consensus_decided,
    lowest_group_confidence,
    stop_threshold,
    topk_confidence,
    trace_weights,
)
from entropy_serve.tasks.voting import vote


def token_confidences(choice: Generated, measure: str, top_k: int) -> list[float]:
    """Per token of `choice` (whole, or a streamed piece): the DeepConf confidence."""
    if measure == "entropy":
        return [-token.model_entropy_nats for token in choice.entropies]
    return [topk_confidence([lp.logprob for lp in position.values()], top_k) for position in choice.logprobs or ()]


def with_top_logprobs(job: EngineJob, top_k: int) -> EngineJob:
    params = copy.copy(job.params)  # SamplingParams is a msgspec Struct: copy, then set
    params.logprobs = max(params.logprobs or 0, top_k)
    return dataclasses.replace(job, params=params)


class WaveWatch:
    """One wave's traces, watched token by token as they stream (submission.run's
    `watch`): a trace whose group confidence falls below the threshold is aborted."""

    def __init__(self, ctx: StrategyContext, strategy: DeepConf, job_keys: list[str], threshold: float):
        self.ctx = ctx
        self.strategy = strategy
        self.traces = {key: TraceWatch(strategy.window, threshold) for key in job_keys}
        self.stopped: set[str] = set()

    async def __call__(self, step: Step) -> None:
        if step.job_key in self.stopped:  # tokens already on their way when it was stopped
            return
        for piece in step.choices:
            confidences = token_confidences(piece, self.strategy.confidence, self.strategy.top_k)
            if self.traces[step.job_key].add(confidences):
                self.stopped.add(step.job_key)
                await self.ctx.stop(step.job_key)
                return


async def run_deepconf(ctx: StrategyContext, request: SamplingRequest) -> StrategyOutcome:
    request = ctx.resolved(request)
    strategy = request.strategy
    check_strategy_request(request, ctx.config)
    # 1. every trace's job, planned once.
    plan = ctx.planner.plan(request.model_copy(update={"n": strategy.n}), measure_entropy=True)
    check_single_prompt(plan)
    if strategy.confidence == "topk":
        plan = dataclasses.replace(plan, jobs=[with_top_logprobs(job, strategy.top_k) for job in plan.jobs])
    jobs = plan.jobs
    same = answers_agree(plan)

    def lowest(choice: Generated) -> float | None:
        return lowest_group_confidence(token_confidences(choice, strategy.confidence, strategy.top_k), strategy.window)

    # 2. warm-up, whole.
    warmup = await ctx.run(dataclasses.replace(plan, jobs=jobs[: strategy.warmup]))
    leaves = [Leaf(choice) for choice in warmup.choices]
    lowest_of = [lowest(choice) for choice in warmup.choices]
    threshold = stop_threshold([c for c in lowest_of if c is not None] or [0.0], strategy.keep)
    # 3. waves, stopping traces that fall below the threshold.
    num_sampled, num_waves, reason = strategy.warmup, 0, None
    while num_sampled < strategy.n and reason is None:
        wave = jobs[num_sampled : num_sampled + strategy.wave]
        watch = WaveWatch(ctx, strategy, [job.key for job in wave], threshold)
        result = await ctx.run(dataclasses.replace(plan, jobs=wave), watch)
        for job, choice in zip(wave, result.choices, strict=True):  # one choice per job, in job order
            leaves.append(Leaf(choice, stopped=job.key in watch.stopped))
            lowest_of.append(None if job.key in watch.stopped else lowest(choice))
        metrics.STRATEGY_TRACES_STOPPED.inc(len(watch.stopped))
        num_sampled, num_waves = num_sampled + len(wave), num_waves + 1
        votes = vote(leaf_answers(plan, leaves), weights=trace_weights(lowest_of, strategy.confidence), same=same)
        reason = consensus_decided(votes.table, strategy.consensus)
    # 4. the confidence-weighted vote.
    details = {"deepconf": _report(strategy, threshold, leaves, num_waves, reason)}
    return decide(
        request, plan, len(plan.prompt_token_ids(0)), leaves, details, trace_weights(lowest_of, strategy.confidence)
    )


def _report(strategy: DeepConf, threshold: float, leaves: list[Leaf], num_waves: int, reason: str | None) -> dict:
    """The reply's `strategy.deepconf`: the threshold, what was stopped and saved, and why sampling ended."""
    finished = [leaf for leaf in leaves if not leaf.stopped]
    mean_finished = sum(leaf.num_new_tokens for leaf in finished) / len(finished) if finished else 0.0
    num_stopped = sum(leaf.stopped for leaf in leaves)
    num_unsampled = strategy.n - len(leaves)
    # A stopped trace would have run about as long as the finished ones; an unsampled one too.
    saved = round(
        sum(max(0.0, mean_finished - leaf.num_new_tokens) for leaf in leaves if leaf.stopped)
        + num_unsampled * mean_finished
    )
    metrics.STRATEGY_LEAVES_SAVED.labels(strategy=strategy.name).inc(num_unsampled)
    metrics.STRATEGY_TOKENS_SAVED.labels(strategy=strategy.name).inc(saved)
    return {
        "threshold": threshold,
        "confidence": strategy.confidence,
        "waves": num_waves,
        "traces_sampled": len(leaves),
        "traces_stopped": num_stopped,
        "stopped_traces": [i for i, leaf in enumerate(leaves) if leaf.stopped],
        "trace_tokens": [leaf.num_new_tokens for leaf in leaves],
        "traces_saved": num_unsampled,
        "reason": reason or "the trace budget was spent",
        "estimated_tokens_saved": saved,
    }


async def answer(ctx: StrategyContext, request: SamplingRequest) -> Reply:
    return (await run_deepconf(ctx, request)).reply()
