"""Entropy-gated escalation (strategies `escalate` and `auto`): sample only where the
model is unsure.

Order:
1. resolve: the client's fields, the rest learned for the model at the request's
   temperature (defaults.py); `auto` is escalate with every field learned, at the
   learned temperature when the request sets none;
2. greedy: one greedy trace, with exact per-token entropies; its uncertainty by the
   `signal` (confidence.py: by default the mean entropy of the tokens that spell its
   answer). At or under `threshold_nats` with an answer, that is the reply;
3. escalation: waves of `wave` sampled traces (seeded as one n-sample request's would
   be), each voting with weight exp(-its highest window mean entropy), 1, or CISC's
   softmax of its mean self-certainty (`weighting`), the greedy trace included; after
   each wave, stop when the weighted vote is decided (P(leading answer is the majority)
   >= `stop_confidence`), futile (the traces left cannot overturn the leader) or
   scattered (the leader holds under `min_agreement`), else at `n` traces;
4. reply: the first trace of the winning answer; `strategy.escalation` says whether and
   why it escalated and what each part spent; `usage` counts every generated token.
"""

from __future__ import annotations

import dataclasses

from entropy_serve.server import metrics
from entropy_serve.server.core.answering import Reply, StrategyContext
from entropy_serve.server.protocol.extensions import Escalate
from entropy_serve.server.protocol.requests import SamplingRequest
from entropy_serve.server.strategies.confidence import answer_span, trace_score, uncertainty, weighted_vote
from entropy_serve.server.strategies.leaves import (
    Leaf,
    StrategyOutcome,
    answers_agree,
    check_single_prompt,
    check_strategy_request,
    decide,
    leaf_answers,
)


def leaf_entropies(leaf: Leaf) -> list[float]:
    return [token.model_entropy_nats for token in leaf.choice.entropies]


def vote_score(strategy: Escalate, leaf: Leaf) -> float:
    """What a trace brings to the weighted vote (confidence.WeightedVote)."""
    return trace_score(strategy, leaf_entropies(leaf), [t.self_certainty_nats for t in leaf.choice.entropies])


async def run_escalate(ctx: StrategyContext, request: SamplingRequest) -> StrategyOutcome:
    requested = request.strategy.name
    request = ctx.resolved(request)
    strategy: Escalate = request.strategy
    check_strategy_request(request, ctx.config)
    # 2. greedy.
    greedy_plan = ctx.planner.plan(request.model_copy(update={"n": 1, "temperature": 0.0}), measure_entropy=True)
    check_single_prompt(greedy_plan)
    greedy = Leaf((await ctx.run(greedy_plan)).choices[0])
    (answer,) = leaf_answers(greedy_plan, [greedy])
    span = None
    if strategy.signal == "answer":  # each token's own text: where the answer is spelled
        span = answer_span([ctx.engine.tokenizer.decode([token]) for token in greedy.choice.token_ids], answer)
    greedy_entropy = uncertainty(strategy.signal, leaf_entropies(greedy), span, strategy.window)
    if answer is None:
        why = "the greedy answer has no extractable answer"
    elif greedy_entropy > strategy.threshold_nats:
        why = f"the greedy answer's {strategy.signal} entropy {greedy_entropy:.4f} > {strategy.threshold_nats} nats"
    else:
        why = None
    leaves, reason = [greedy], None
    tally = weighted_vote(strategy, answers_agree(greedy_plan))
    tally.add(answer, vote_score(strategy, greedy))
    # 3. escalation, in waves.
    if why is not None:
        plan = ctx.planner.plan(request.model_copy(update={"n": strategy.n}), measure_entropy=True)
        while len(leaves) - 1 < strategy.n and reason is None:
            wave = plan.jobs[len(leaves) - 1 : len(leaves) - 1 + strategy.wave]
            result = await ctx.run(dataclasses.replace(plan, jobs=wave))
            new = [Leaf(choice) for choice in result.choices]
            for leaf, leaf_answer in zip(new, leaf_answers(plan, new), strict=True):
                tally.add(leaf_answer, vote_score(strategy, leaf))
            leaves += new
            reason = tally.decided(strategy.stop_confidence, strategy.n - (len(leaves) - 1), strategy.min_agreement)
    metrics.ESCALATIONS.labels(outcome="escalated" if why else "answered_greedily").inc()
    details = {
        "requested": requested,
        "escalation": _report(
            strategy,
            temperature=request.temperature,
            greedy_entropy=greedy_entropy,
            why=why,
            leaves=leaves,
            reason=reason,
        ),
    }
    return decide(request, greedy_plan, len(greedy_plan.prompt_token_ids(0)), leaves, details, tally.weights)


def _report(
    strategy: Escalate,
    *,
    temperature: float | None,
    greedy_entropy: float,
    why: str | None,
    leaves: list[Leaf],
    reason: str | None,
) -> dict:
    """The reply's `strategy.escalation`."""
    sampled = leaves[1:]
    return {
        **strategy.model_dump(exclude={"name"}),
        "temperature": temperature,
        "greedy_entropy_nats": greedy_entropy,
        "escalated": why is not None,
        "why": why or f"the greedy answer's {strategy.signal} entropy is at or under {strategy.threshold_nats} nats",
        "greedy_tokens": leaves[0].num_new_tokens,
        "traces_sampled": len(sampled),
        "sampled_tokens": sum(leaf.num_new_tokens for leaf in sampled),
        "stop_reason": (reason or "the trace budget was spent") if sampled else None,
    }


async def answer(ctx: StrategyContext, request: SamplingRequest) -> Reply:
    return (await run_escalate(ctx, request)).reply()
