"""What the voting strategies share: leaves (whole completions of one prompt), the
vote over their answers, and the reply with its `strategy` field.

Order: extract each leaf's answer (tasks/answers.py; under a structured-output
constraint the whole output, JSON by value: voting.constrained_answer) -> vote (tasks/voting.py; weights from
the leaves' mean token entropy when the vote is entropy_weighted) -> the reply is the
first leaf, in leaf order, whose answer won (leaf 0 when no leaf had an answer).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from entropy_serve.server import metrics
from entropy_serve.server.config import ServerConfig
from entropy_serve.server.core.answering import Reply
from entropy_serve.server.core.planning import RequestPlan
from entropy_serve.server.core.sampler_plan import is_greedy
from entropy_serve.server.core.submission import Generated
from entropy_serve.server.errors import BadRequest
from entropy_serve.server.protocol import responses
from entropy_serve.server.protocol.extensions import EarlyStop
from entropy_serve.server.protocol.requests import SamplingRequest
from entropy_serve.tasks.answers import equivalent, extract_answer
from entropy_serve.tasks.voting import EXACT, VoteResult, constrained_answer, vote


@dataclass
class Leaf:
    choice: Generated  # the whole completion, from the prompt on (entropies per token, [] when not measured)
    num_shared_tokens: int = 0  # leading tokens shared with the tree it forked from, not generated again
    stopped: bool = False  # stopped in the engine before it finished (deepconf): it casts no vote

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
        raise BadRequest(f"{penalties[0]}: penalties cannot be combined with a voting strategy", param=penalties[0])
    if strategy.num_leaves > config.max_leaves:
        raise BadRequest(
            f"strategy: {strategy.num_leaves} leaves is more than the {config.max_leaves} this server allows "
            "(--max-leaves)",
            param="strategy",
        )


def early_stop_report(
    rule: EarlyStop,
    *,
    strategy: str,
    leaf_budget: int,
    num_leaves: int,
    num_waves: int,
    reason: str | None,
    estimated_tokens_saved: int,
) -> dict:
    """The reply's `strategy.early_stop`: what was sampled against the budget, and why it
    stopped; Prometheus counts the savings."""
    num_saved = leaf_budget - num_leaves
    metrics.STRATEGY_LEAVES_SAVED.labels(strategy=strategy).inc(num_saved)
    metrics.STRATEGY_TOKENS_SAVED.labels(strategy=strategy).inc(estimated_tokens_saved)
    return {
        **rule.model_dump(),
        "leaf_budget": leaf_budget,
        "waves": num_waves,
        "stopped_early": num_saved > 0,
        "reason": reason if num_saved > 0 else "the leaf budget was spent",
        "leaves_saved": num_saved,
        "estimated_tokens_saved": estimated_tokens_saved,
    }


def check_single_prompt(plan: RequestPlan) -> None:
    if plan.num_prompts != 1:
        raise BadRequest("strategy: needs a single prompt", param="prompt")


def leaf_answers(plan: RequestPlan, leaves: list[Leaf]) -> list[str | None]:
    """Each leaf's answer: extracted, or under a structured-output constraint the whole
    output (JSON by value); None for a leaf stopped before it finished."""
    if plan.constraint is None:
        answers = [extract_answer(leaf.choice.text) for leaf in leaves]
    else:
        answers = [constrained_answer(leaf.choice.text, plan.constraint.params) for leaf in leaves]
    return [None if leaf.stopped else answer for leaf, answer in zip(leaves, answers)]


def answers_agree(plan: RequestPlan) -> Callable[[str, str], bool]:
    """When two leaves' answers are one vote: equivalent, or equal under a constraint
    (the whole output is the answer)."""
    return equivalent if plan.constraint is None else EXACT


def decide(
    request: SamplingRequest,
    plan: RequestPlan,
    num_prompt_tokens: int,
    leaves: list[Leaf],
    details: dict,
    weights: list[float] | None = None,
) -> StrategyOutcome:
    """Extract, vote (by `weights` when given, else by the strategy's vote mode), pick the
    reply; feed Prometheus."""
    strategy = request.strategy
    answers = leaf_answers(plan, leaves)
    same = answers_agree(plan)
    if weights is not None:
        votes = vote(answers, weights=weights, same=same)
    else:
        mean_entropies = [leaf.mean_entropy_nats() for leaf in leaves] if strategy.vote == "entropy_weighted" else None
        votes = vote(answers, mean_entropies, strategy.vote, same=same)
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
