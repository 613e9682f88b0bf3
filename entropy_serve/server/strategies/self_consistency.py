"""Self-consistency: n independent samples, answers extracted, one vote, one reply.

Order: validate (a single prompt; n leaves within --max-leaves) -> sample n completions
as one engine batch (with per-token entropies when the vote weighs by them) -> vote and
reply (leaves.py). `usage.completion_tokens` counts every leaf's tokens: all of them
were really generated.
"""

from __future__ import annotations

from entropy_serve.server.protocol import SamplingRequest
from entropy_serve.server.strategies.context import Reply, StrategyContext
from entropy_serve.server.strategies.leaves import Leaf, StrategyOutcome, check_single_prompt, check_strategy_request, decide


async def run_self_consistency(ctx: StrategyContext, request: SamplingRequest) -> StrategyOutcome:
    strategy = request.strategy
    check_strategy_request(request, ctx.config)
    sampled = request.model_copy(
        update={"n": strategy.n, "return_entropy": request.return_entropy or strategy.vote == "entropy_weighted"}
    )
    plan = ctx.planner.plan(sampled)
    check_single_prompt(plan)
    result = await ctx.run(plan)
    leaves = [Leaf(choice) for choice in result.choices]
    return decide(request, plan, result.num_prompt_tokens, leaves, {})


async def answer(ctx: StrategyContext, request: SamplingRequest) -> Reply:
    return (await run_self_consistency(ctx, request)).reply()
