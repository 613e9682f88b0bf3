"""What the voting strategies share: leaves (whole completions of one prompt), the
vote over their answers, and the reply with its `strategy` field.

Order: extract each leaf's answer (tasks/answers.py; under a structured-output
constraint the whole output, JSON by value: voting.constrained_answer) -> vote (voting.py; weights from
the leaves' mean token entropy when the vote is entropy_weighted) -> the reply is the
first leaf, in leaf order, whose answer won (leaf 0 when no leaf had an answer).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from entropy_serve.server import metrics, responses
from entropy_serve.server.config import ServerConfig
from entropy_serve.server.errors import BadRequest
from entropy_serve.server.planning import RequestPlan, is_greedy
from entropy_serve.server.protocol import SamplingRequest
from entropy_serve.server.strategies.context import Reply
from entropy_serve.server.strategies.voting import EXACT, VoteResult, constrained_answer, vote
from entropy_serve.server.submission import Generated
from entropy_serve.tasks.answers import extract_answer


@dataclass
class Leaf:
    choice: Generated  # the whole completion, from the prompt on (entropies per token, [] when not measured)
    num_shared_tokens: int = 0  # leading tokens shared with the tree it forked from, not generated again

    @property
    def num_new_tokens(self) -> int:
        return len(self.choice.token_ids) - self.num_shared_tokens

    def mean_entropy_nats(self) -> float:
        values = [t.model_entropy_nats for t in self.choice.entropies]
        return sum(values) / len(values) if values else 0.0


@dataclass
class StrategyOutcome:
    request: SamplingRequest  # as the client sent it
    plan: RequestPlan  # the first round's: request id, model, logprobs
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

    def reply(self) -> Reply:
        """The reply: the winning leaf as choice 0, `usage` over every generated token."""
        return responses.whole_reply(
            plan=self.plan,
            choices=[dataclasses.replace(self.winner.choice, index=0)],
            usage=responses.usage(self.num_prompt_tokens, self.num_generated_tokens),
            return_entropy=self.request.return_entropy,  # the client's, not the sampling round's
            extensions={"strategy": self.extension()},
        )


def check_strategy_request(request: SamplingRequest, config: ServerConfig) -> None:
    strategy = request.strategy
    if is_greedy(request):
        raise BadRequest(
            "temperature: 0 (greedy) makes every leaf the same answer; a voting strategy needs temperature > 0",
            param="temperature",
        )
    penalties = request.penalties()
    if penalties:
        raise BadRequest(
            f"{penalties[0]}: penalties cannot be combined with a voting strategy", param=penalties[0]
        )
    if strategy.num_leaves > config.max_leaves:
        raise BadRequest(
            f"strategy: {strategy.num_leaves} leaves is more than the {config.max_leaves} this server allows "
            "(--max-leaves)",
            param="strategy",
        )


def check_single_prompt(plan: RequestPlan) -> None:
    if plan.num_prompts != 1:
        raise BadRequest("strategy: needs a single prompt", param="prompt")


def decide(
    request: SamplingRequest, plan: RequestPlan, num_prompt_tokens: int, leaves: list[Leaf], details: dict
) -> StrategyOutcome:
    """Extract, vote, pick the reply; feed Prometheus."""
    strategy = request.strategy
    mean_entropies = [leaf.mean_entropy_nats() for leaf in leaves] if strategy.vote == "entropy_weighted" else None
    if plan.constraint is None:
        answers = [extract_answer(leaf.choice.text) for leaf in leaves]
        votes = vote(answers, mean_entropies, strategy.vote)
    else:  # the whole output is the answer (JSON by value)
        answers = [constrained_answer(leaf.choice.text, plan.constraint.params) for leaf in leaves]
        votes = vote(answers, mean_entropies, strategy.vote, same=EXACT)
    winner_leaf = votes.winner_leaves[0] if votes.winner_leaves else 0
    metrics.STRATEGY_LEAVES.labels(strategy=strategy.name).observe(len(leaves))
    metrics.STRATEGY_AGREEMENT.labels(strategy=strategy.name).observe(votes.agreement)
    outcome = StrategyOutcome(
        request=request,
        plan=plan,
        num_prompt_tokens=num_prompt_tokens,
        leaves=leaves,
        answers=answers,
        votes=votes,
        winner_leaf=winner_leaf,
        details=details,
    )
    metrics.STRATEGY_TOKENS.labels(strategy=strategy.name, kind="generated").inc(outcome.num_generated_tokens)
    metrics.STRATEGY_TOKENS.labels(strategy=strategy.name, kind="shared_prefix").inc(outcome.num_shared_tokens)
    return outcome
