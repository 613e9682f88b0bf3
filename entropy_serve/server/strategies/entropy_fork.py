"""Entropy-fork tree rollouts (ETTRL's ETMR, Liu et al. 2025): fork where the model is
least sure, vote over every leaf.

Order:
1. trees: M samples of the prompt, as one engine batch, with per-token entropies;
2. fork points: in each tree, the N positions whose model entropy is highest
   (`fork_positions`); forking at position t keeps the tree's tokens [0, t) and samples
   token t anew;
3. branches: B continuations from each fork point, one engine batch, each from the
   prompt plus its tree's prefix, with what the prefix left of max_tokens. vLLM's
   prefix caching serves the shared prompt and prefix from the KV cache in whole blocks
   (`cached_prompt_tokens` in the reply shows the hits);
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

from entropy_serve.server import metrics
from entropy_serve.server.protocol import SamplingRequest
from entropy_serve.server.strategies.context import Reply, StrategyContext
from entropy_serve.server.strategies.leaves import Leaf, StrategyOutcome, check_single_prompt, check_strategy_request, decide
from entropy_serve.server.submission import Generated


def fork_positions(entropies_nats: Sequence[float], num_forks: int) -> list[int]:
    """The positions of the `num_forks` highest entropies, ascending; ties go to the
    earlier position. Fewer when the sample is shorter than `num_forks` tokens."""
    by_entropy = sorted(range(len(entropies_nats)), key=lambda t: (-entropies_nats[t], t))
    return sorted(by_entropy[:num_forks])


@dataclass(frozen=True)
class ForkPoint:
    tree: int
    position: int  # tokens [0, position) of the tree are the shared prefix
    entropy_nats: float


async def run_entropy_fork(ctx: StrategyContext, request: SamplingRequest) -> StrategyOutcome:
    strategy = request.strategy
    check_strategy_request(request, ctx.config)
    # 1. trees, always with entropies: they choose the fork points.
    plan = ctx.planner.plan(request.model_copy(update={"n": strategy.trees, "return_entropy": True}))
    check_single_prompt(plan)
    trees = await ctx.run(plan)
    tree_leaves = [Leaf(choice) for choice in trees.choices]
    # 2. fork points.
    forks = [
        ForkPoint(tree, position, leaf.choice.entropies[position].model_entropy_nats)
        for tree, leaf in enumerate(tree_leaves)
        for position in fork_positions([t.model_entropy_nats for t in leaf.choice.entropies], strategy.forks)
    ]
    (prompt_ids,) = trees.prompt_token_ids
    # 3. branches.
    branch_leaves, num_cached_tokens = [], 0
    if forks:
        branches_request = request.model_copy(
            update={"n": strategy.branches, "return_entropy": request.return_entropy or strategy.vote == "entropy_weighted"}
        )
        first_seed = None if request.seed is None else request.seed + strategy.trees
        continuations = ctx.planner.plan_continuations(
            branches_request,
            prompt_ids,
            [tree_leaves[f.tree].choice.token_ids[: f.position] for f in forks],
            max_tokens=plan.jobs[0].params.max_tokens,
            seeds=[None if first_seed is None else first_seed + i * strategy.branches for i in range(len(forks))],
        )
        branches = await ctx.run(continuations)
        tokenizer = ctx.engine.tokenizer
        prefix_texts = [
            tokenizer.decode(tree_leaves[f.tree].choice.token_ids[: f.position], skip_special_tokens=True) for f in forks
        ]
        for branch in branches.choices:  # in choice-index order: fork by fork, B each
            fork = forks[branch.prompt_index]
            branch_leaves.append(_grafted(tree_leaves[fork.tree], fork.position, prefix_texts[branch.prompt_index], branch))
        num_cached_tokens = branches.num_cached_tokens
    metrics.STRATEGY_FORKS.inc(len(forks))
    # 4. leaves: trees first, then branches in fork order.
    leaves = tree_leaves + branch_leaves
    details = {
        "num_trees": len(tree_leaves),
        "forks": [
            {"tree": f.tree, "position": f.position, "entropy_nats": f.entropy_nats,
             "leaves": [len(tree_leaves) + i * strategy.branches + b for b in range(strategy.branches)]}
            for i, f in enumerate(forks)
        ],
        "cached_prompt_tokens": num_cached_tokens,
    }
    return decide(request, plan, len(prompt_ids), leaves, details)


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
