"""Entropy-fork tree rollouts (ETTRL's ETMR, Liu et al. 2025): fork where the model is
least sure, vote over every leaf.

Order:
1. trees: M samples of the prompt, as one engine batch, with per-token entropies;
2. fork points: in each tree, the N positions whose model entropy is highest
   (`fork_positions`; or, with fork_rule savings, whose entropy x shared prefix is;
   none before min_prefix); forking at position t keeps the tree's tokens [0, t) and
   samples token t anew;
3. branches: B continuations from each fork point, one engine batch, each from the
   prompt plus its tree's prefix, with what the prefix left of max_tokens. vLLM's
   prefix caching serves the shared prompt and prefix from the KV cache in whole blocks
   (`cached_prompt_tokens` in the reply shows the hits). With `early_stop`, the trees'
   vote is asked first, then the forks are branched in waves (about `wave` leaves
   each), the vote asked after each, until it is decided (stopping.py);
4. leaves: the M trees, then each tree's branches (prefix + continuation), in fork
   order; all are answer-extracted and voted, and the reply is the first leaf whose
   answer won (leaves.py).

Token accounting: a branch's prefix was generated once, by its tree; the branch counts
only its own new tokens (`generated_tokens`, `usage.completion_tokens`), and its
prefix goes to `shared_prefix_tokens`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import get_args

from entropy_serve.server import metrics
from entropy_serve.server.core.answering import Reply, StrategyContext
from entropy_serve.server.core.planning import RequestPlan
from entropy_serve.server.core.submission import Generated
from entropy_serve.server.protocol.extensions import EntropyFork
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

FORK_RULES = get_args(EntropyFork.model_fields["fork_rule"].annotation)  # the request field's values


def fork_positions(
    entropies_nats: Sequence[float], num_forks: int, rule: str = "entropy", min_prefix: int = 0
) -> list[int]:
    """The `num_forks` best fork positions, ascending; ties go to the earlier position.
    Fewer when the sample has fewer than `num_forks` tokens at or after `min_prefix`.
    - entropy (ETTRL): the highest-entropy tokens;
    - savings: entropy x position, the prefix tokens each branch shares instead of
      generating again: on short answers the most uncertain token often comes first,
      where a fork shares nothing."""
    if rule not in FORK_RULES:
        raise ValueError(f"unknown fork rule {rule!r}; one of {FORK_RULES}")

    def score(t: int) -> float:
        return entropies_nats[t] * t if rule == "savings" else entropies_nats[t]

    candidates = sorted(range(min_prefix, len(entropies_nats)), key=lambda t: (-score(t), t))
    return sorted(candidates[:num_forks])


@dataclass(frozen=True)
class ForkPoint:
    tree: int
    position: int  # tokens [0, position) of the tree are the shared prefix
    entropy_nats: float


async def run_entropy_fork(ctx: StrategyContext, request: SamplingRequest) -> StrategyOutcome:
    strategy = request.strategy
    rule = strategy.early_stop
    check_strategy_request(request, ctx.config)
    # 1. trees, always with entropies: they choose the fork points.
    plan = ctx.planner.plan(request.model_copy(update={"n": strategy.trees}), measure_entropy=True)
    check_single_prompt(plan)
    trees = await ctx.run(plan)
    tree_leaves = [Leaf(choice) for choice in trees.choices]
    answers = leaf_answers(plan, tree_leaves)
    reason = None if rule is None else vote_decided(rule, answers, answers_agree(plan))
    # 2. fork points.
    forks = [
        ForkPoint(tree, position, leaf.choice.entropies[position].model_entropy_nats)
        for tree, leaf in enumerate(tree_leaves)
        for position in fork_positions(
            [t.model_entropy_nats for t in leaf.choice.entropies],
            strategy.forks,
            strategy.fork_rule,
            strategy.min_prefix,
        )
    ]
    (prompt_ids,) = trees.prompt_token_ids
    # 3. branches: every fork's at once, or with early_stop in waves of forks, until decided.
    forks_per_wave = len(forks) if rule is None else max(1, rule.leaves_per_wave // strategy.branches)
    branch_leaves, num_cached_tokens, num_branched, num_waves = [], 0, 0, 1
    while num_branched < len(forks) and reason is None:
        wave = range(num_branched, min(num_branched + forks_per_wave, len(forks)))
        new, num_cached = await _branch(
            ctx, request, plan=plan, prompt_ids=prompt_ids, tree_leaves=tree_leaves, forks=forks, wave=wave
        )
        branch_leaves += new
        answers += leaf_answers(plan, new)
        num_cached_tokens += num_cached
        num_branched, num_waves = wave.stop, num_waves + 1
        if rule is not None:
            reason = vote_decided(rule, answers, answers_agree(plan))
    metrics.STRATEGY_FORKS.inc(num_branched)
    # 4. leaves: trees first, then branches in fork order.
    leaves = tree_leaves + branch_leaves
    details = {
        "num_trees": len(tree_leaves),
        "forks": [
            {
                "tree": f.tree,
                "position": f.position,
                "entropy_nats": f.entropy_nats,
                "leaves": [len(tree_leaves) + i * strategy.branches + b for b in range(strategy.branches)],
            }
            for i, f in enumerate(forks[:num_branched])
        ],
        "cached_prompt_tokens": num_cached_tokens,
    }
    if rule is not None:
        # The budget the trees allowed (a short tree has fewer fork points); an unsampled
        # branch would have continued its fork as its tree did.
        budget = len(tree_leaves) + len(forks) * strategy.branches
        saved = sum(
            strategy.branches * (len(tree_leaves[f.tree].choice.token_ids) - f.position) for f in forks[num_branched:]
        )
        details["early_stop"] = early_stop_report(
            rule,
            strategy=strategy.name,
            leaf_budget=budget,
            num_leaves=len(leaves),
            num_waves=num_waves,
            reason=reason,
            estimated_tokens_saved=saved,
        )
    return decide(request, plan, len(prompt_ids), leaves, details)


async def _branch(
    ctx: StrategyContext,
    request: SamplingRequest,
    *,
    plan: RequestPlan,
    prompt_ids: list[int],
    tree_leaves: list[Leaf],
    forks: list[ForkPoint],
    wave: range,
) -> tuple[list[Leaf], int]:
    """Forks `wave` (indices into `forks`), B continuations each, as one engine batch:
    their leaves in fork order, and the prompt tokens the prefix cache served. Fork i's
    branches are seeded seed + trees + i x B + b, as if every fork were branched at once."""
    strategy = request.strategy
    branches_request = request.model_copy(update={"n": strategy.branches})
    first_seed = None if request.seed is None else request.seed + strategy.trees
    mine = [forks[i] for i in wave]
    continuations = ctx.planner.plan_continuations(
        branches_request,
        prompt_ids,
        [tree_leaves[f.tree].choice.token_ids[: f.position] for f in mine],
        max_tokens=plan.jobs[0].params.max_tokens,
        seeds=[None if first_seed is None else first_seed + i * strategy.branches for i in wave],
        measure_entropy=strategy.vote == "entropy_weighted",  # the vote weighs by entropy
    )
    branches = await ctx.run(continuations)
    tokenizer = ctx.engine.tokenizer
    prefix_texts = [
        tokenizer.decode(tree_leaves[f.tree].choice.token_ids[: f.position], skip_special_tokens=True) for f in mine
    ]
    leaves = []
    for branch in branches.choices:  # in choice-index order: fork by fork, B each
        fork = mine[branch.prompt_index]
        leaves.append(_grafted(tree_leaves[fork.tree], fork.position, prefix_texts[branch.prompt_index], branch))
    return leaves, branches.num_cached_tokens


async def answer(ctx: StrategyContext, request: SamplingRequest) -> Reply:
    return (await run_entropy_fork(ctx, request)).reply()


def _grafted(tree: Leaf, position: int, prefix_text: str, branch: Generated) -> Leaf:
    """A branch as a whole completion: the tree's first `position` tokens, then its own."""
    logprobs = None
    if tree.choice.logprobs is not None and branch.logprobs is not None:
        logprobs = tree.choice.logprobs[:position] + branch.logprobs
    choice = Generated(
        index=branch.index,
        prompt_index=0,
        text=prefix_text + branch.text,
        token_ids=tree.choice.token_ids[:position] + branch.token_ids,
        logprobs=logprobs,
        finish_reason=branch.finish_reason,
        stop_reason=branch.stop_reason,
        entropies=tree.choice.entropies[:position] + branch.entropies if branch.entropies else [],
    )
    return Leaf(choice, num_shared_tokens=position)
