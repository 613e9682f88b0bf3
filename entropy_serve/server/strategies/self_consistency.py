"""Self-consistency: n independent samples, answers extracted, one vote, one reply.

Order: validate (a single prompt; n leaves within --max-leaves) -> sample the leaves
(with per-token entropies when the vote weighs by them): all n as one engine batch, or,
with `early_stop`, in waves, asking the rule after each whether the vote is decided
(stopping.py) -> vote and reply (leaves.py). A wave's samples are seeded as the same
samples of one n-sample request would be (seed + leaf index), so stopping early only
drops leaves, never changes them. `usage.completion_tokens` counts every sampled
leaf's tokens: all of them were really generated.
"""

from __future__ import annotations

from entropy_serve.server.core.answering import Reply, StrategyContext
from entropy_serve.server.protocol.requests import SamplingRequest
from entropy_serve.server.strategies.leaves import (
    Leaf,
    StrategyOutcome,
    answers_agree,
    check_single_prompt,
    check_strategy_request,
    decide,
    early_stop_report,
    leaf_answers,
)
from entropy_serve.server.strategies.stopping import vote_decided


async def run_self_consistency(ctx: StrategyContext, request: SamplingRequest) -> StrategyOutcome:
    strategy = request.strategy
    rule = strategy.early_stop
    check_strategy_request(request, ctx.config)
    wave = strategy.n if rule is None else rule.leaves_per_wave
    leaves: list[Leaf] = []
    answers: list[str | None] = []
    first_plan, num_waves, reason = None, 0, None
    while len(leaves) < strategy.n and reason is None:
        seed = None if request.seed is None else request.seed + len(leaves)
        plan = ctx.planner.plan(
            request.model_copy(update={"n": min(wave, strategy.n - len(leaves)), "seed": seed}),
            measure_entropy=strategy.vote == "entropy_weighted",  # the vote weighs by entropy
        )
        check_single_prompt(plan)
        result = await ctx.run(plan)
        new = [Leaf(choice) for choice in result.choices]
        leaves += new
        answers += leaf_answers(plan, new)
        first_plan, num_waves = first_plan or plan, num_waves + 1
        if rule is not None:
            reason = vote_decided(rule, answers, answers_agree(plan))
    details = {}
    if rule is not None:
        mean_tokens = sum(leaf.num_new_tokens for leaf in leaves) / len(leaves)
        saved = round((strategy.n - len(leaves)) * mean_tokens)
        details["early_stop"] = early_stop_report(
            rule,
            strategy=strategy.name,
            leaf_budget=strategy.n,
            num_leaves=len(leaves),
            num_waves=num_waves,
            reason=reason,
            estimated_tokens_saved=saved,
        )
    return decide(request, first_plan, len(first_plan.prompt_token_ids(0)), leaves, details)


async def answer(ctx: StrategyContext, request: SamplingRequest) -> Reply:
    return (await run_self_consistency(ctx, request)).reply()
