"""Self-consistency: n independent samples, answers extracted, one vote, one reply.

Order: validate (a single prompt; n within the server's bound) -> sample n completions
as one engine batch (with per-token entropies when the vote weighs by them) -> extract
each leaf's answer (tasks/answers.py) -> vote (voting.py) -> reply with the first leaf
whose answer won (leaf 0 when no leaf had an answer). `usage.completion_tokens` counts
every leaf's tokens: all of them were really generated.
"""

from __future__ import annotations

from dataclasses import dataclass

from entropy_serve.server import metrics, submission
from entropy_serve.server.errors import BadRequest
from entropy_serve.server.generation import Generator, PreparedRequest
from entropy_serve.server.protocol import ChatCompletionRequest, SamplingRequest
from entropy_serve.server.strategies.voting import VoteResult, vote
from entropy_serve.tasks.answers import extract_answer


@dataclass
class StrategyOutcome:
    request: SamplingRequest  # as the client sent it
    prepared: PreparedRequest  # the n-sample request that ran
    result: submission.PromptResult  # its outputs: every leaf, by leaf index
    votes: VoteResult
    winner_leaf: int
    answers: list[str | None]

    def extension(self) -> dict:
        """The response's `strategy` field."""
        strategy = self.request.strategy
        return {
            "name": strategy.name,
            "vote": strategy.vote,
            "num_leaves": self.votes.num_leaves,
            "answers": self.answers,
            "votes": self.votes.table,
            "winner": self.votes.winner,
            "winner_leaf": self.winner_leaf,
            "agreement": self.votes.agreement,
            "generated_tokens": sum(len(c.token_ids) for c in self.result.output.outputs),
            "shared_prefix_tokens": 0,  # independent samples share only the prompt
        }


async def run_self_consistency(holder, generator: Generator, request: SamplingRequest) -> StrategyOutcome:
    strategy = request.strategy
    if strategy.n > generator.config.max_n:
        raise BadRequest(f"strategy.n: at most {generator.config.max_n} is allowed, got {strategy.n}", param="strategy")
    sampled = request.model_copy(
        update={
            "n": strategy.n,
            "strategy": None,
            "return_entropy": request.return_entropy or strategy.vote == "entropy_weighted",
        }
    )
    if isinstance(sampled, ChatCompletionRequest):
        prepared = generator.prepare_chat(sampled)
    else:
        prepared = generator.prepare_completion(sampled)
    if prepared.num_prompts != 1:
        raise BadRequest("strategy: needs a single prompt", param="prompt")
    (result,) = await submission.run(holder, prepared)
    leaves = result.output.outputs
    answers = [extract_answer(leaf.text) for leaf in leaves]
    mean_entropies = None
    if strategy.vote == "entropy_weighted":
        mean_entropies = [_mean([t.model_entropy_nats for t in result.entropies.get(leaf.index, [])]) for leaf in leaves]
    votes = vote(answers, mean_entropies, strategy.vote)
    winner_leaf = votes.winner_leaves[0] if votes.winner_leaves else 0
    metrics.STRATEGY_LEAVES.labels(strategy=strategy.name).observe(len(leaves))
    metrics.STRATEGY_AGREEMENT.labels(strategy=strategy.name).observe(votes.agreement)
    return StrategyOutcome(request, prepared, result, votes, winner_leaf, answers)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
