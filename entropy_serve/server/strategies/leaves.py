"""What the voting strategies share: leaves (whole completions of one prompt), the
vote over their answers, and the reply's `strategy` field.

Order: extract each leaf's answer (tasks/answers.py) -> vote (voting.py; weights from
the leaves' mean token entropy when the vote is entropy_weighted) -> the reply is the
first leaf, in leaf order, whose answer won (leaf 0 when no leaf had an answer).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vllm.outputs import CompletionOutput

from entropy_serve.server import metrics
from entropy_serve.server.adapters.channel import TokenEntropy
from entropy_serve.server.config import ServerConfig
from entropy_serve.server.errors import BadRequest
from entropy_serve.server.generation import PreparedRequest
from entropy_serve.server.protocol import SamplingRequest
from entropy_serve.server.sampling import GREEDY_EPS
from entropy_serve.server.strategies.voting import VoteResult, vote
from entropy_serve.tasks.answers import extract_answer


@dataclass
class Leaf:
    output: CompletionOutput  # the whole completion, from the prompt on
    entropies: list[TokenEntropy]  # per token of output.token_ids ([] when not collected)
    num_shared_tokens: int = 0  # leading tokens shared with the tree it forked from, not generated again

    @property
    def num_new_tokens(self) -> int:
        return len(self.output.token_ids) - self.num_shared_tokens

    def mean_entropy_nats(self) -> float:
        values = [t.model_entropy_nats for t in self.entropies]
        return sum(values) / len(values) if values else 0.0


@dataclass
class StrategyOutcome:
    request: SamplingRequest  # as the client sent it
    prepared: PreparedRequest  # the first round's: request id, model, logprobs
    num_prompt_tokens: int
    leaves: list[Leaf]
    answers: list[str | None]
    votes: VoteResult
    winner_leaf: int
    details: dict = field(default_factory=dict)  # strategy-specific fields of the extension

    @property
    def winner(self) -> Leaf:
        return self.leaves[self.winner_leaf]

    @property
    def num_generated_tokens(self) -> int:
        return sum(leaf.num_new_tokens for leaf in self.leaves)

    @property
    def num_shared_tokens(self) -> int:
        return sum(leaf.num_shared_tokens for leaf in self.leaves)

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
            "generated_tokens": self.num_generated_tokens,
            "shared_prefix_tokens": self.num_shared_tokens,
            **self.details,
        }


def check_strategy_request(request: SamplingRequest, config: ServerConfig) -> None:
    strategy = request.strategy
    if request.temperature is not None and request.temperature < GREEDY_EPS:
        raise BadRequest(
            "temperature: 0 (greedy) makes every leaf the same answer; a voting strategy needs temperature > 0",
            param="temperature",
        )
    if strategy.num_leaves > config.max_leaves:
        raise BadRequest(
            f"strategy: {strategy.num_leaves} leaves is more than the {config.max_leaves} this server allows "
            "(--max-leaves)",
            param="strategy",
        )


def check_single_prompt(prepared: PreparedRequest) -> None:
    if prepared.num_prompts != 1:
        raise BadRequest("strategy: needs a single prompt", param="prompt")


def decide(
    request: SamplingRequest, prepared: PreparedRequest, num_prompt_tokens: int, leaves: list[Leaf], details: dict
) -> StrategyOutcome:
    """Extract, vote, pick the reply; feed Prometheus."""
    strategy = request.strategy
    answers = [extract_answer(leaf.output.text) for leaf in leaves]
    mean_entropies = [leaf.mean_entropy_nats() for leaf in leaves] if strategy.vote == "entropy_weighted" else None
    votes = vote(answers, mean_entropies, strategy.vote)
    winner_leaf = votes.winner_leaves[0] if votes.winner_leaves else 0
    metrics.STRATEGY_LEAVES.labels(strategy=strategy.name).observe(len(leaves))
    metrics.STRATEGY_AGREEMENT.labels(strategy=strategy.name).observe(votes.agreement)
    outcome = StrategyOutcome(request, prepared, num_prompt_tokens, leaves, answers, votes, winner_leaf, details)
    metrics.STRATEGY_TOKENS.labels(strategy=strategy.name, kind="generated").inc(outcome.num_generated_tokens)
    metrics.STRATEGY_TOKENS.labels(strategy=strategy.name, kind="shared_prefix").inc(outcome.num_shared_tokens)
    return outcome
