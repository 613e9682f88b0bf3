"""Self-consistency: n independent samples, answers extracted, one vote, one reply.

Order: validate (a single prompt; n leaves within --max-leaves) -> sample n completions
as one engine batch (with per-token entropies when the vote weighs by them) -> vote and
reply (leaves.py). `usage.completion_tokens` counts every leaf's tokens: all of them
were really generated.
"""

from __future__ import annotations

from entropy_serve.server import submission
from entropy_serve.server.generation import Generator
from entropy_serve.server.protocol import SamplingRequest
from entropy_serve.server.strategies.leaves import Leaf, StrategyOutcome, check_strategy_request, check_single_prompt, decide


async def run_self_consistency(holder, generator: Generator, request: SamplingRequest) -> StrategyOutcome:
    strategy = request.strategy
    check_strategy_request(request, generator.config)
    sampled = request.model_copy(
        update={
            "n": strategy.n,
            "return_entropy": request.return_entropy or strategy.vote == "entropy_weighted",
        }
    )
    prepared = generator.prepare(sampled)
    check_single_prompt(prepared)
    (result,) = await submission.run(holder, prepared)
    leaves = [Leaf(output, result.entropies.get(output.index, [])) for output in result.output.outputs]
    return decide(request, prepared, len(result.output.prompt_token_ids or ()), leaves, {})
