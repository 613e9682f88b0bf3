"""Accuracy against newly generated tokens: greedy, one sample, self-consistency and
entropy_fork with the same number of leaves, on the built-in arithmetic task, one run.

ETTRL's claim, the anchor: entropy-fork tree rollouts reach equal or better accuracy
than independent votes at about 60% of the tokens. Every method answers the same
seeded problems through one server (the official `openai` client, `--concurrency`
problems in flight); tokens are `usage.completion_tokens`, i.e. newly generated ones
(a branch's shared prefix is not counted again). Progress goes to stderr, the result
as JSON to stdout.

    python benchmarks/strategies.py [--problems 48] [--trees 4 --forks 2 --branches 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os

from answering import answer_all

from entropy_serve.tasks.answers import is_correct
from entropy_serve.tasks.arithmetic import generate, levels_named


def methods(args: argparse.Namespace) -> dict[str, dict]:
    """Method name -> request fields."""
    num_leaves = args.trees * (1 + args.forks * args.branches)
    fork = {"name": "entropy_fork", "trees": args.trees, "forks": args.forks, "branches": args.branches}
    return {
        "greedy": {"temperature": 0.0},
        "single_sample": {"temperature": args.temperature},
        f"self_consistency_n{num_leaves}": {
            "temperature": args.temperature,
            "extra_body": {"strategy": {"name": "self_consistency", "n": num_leaves}},
        },
        f"entropy_fork_{args.trees}x{args.forks}x{args.branches}": {
            "temperature": args.temperature,
            "extra_body": {"strategy": fork},
        },
    }


async def run_method(client, model: str, problems, fields: dict, args, label: str) -> dict:
    rows = []
    for problem, response in await answer_all(client, model, problems, fields, args, label):
        strategy = (response.model_extra or {}).get("strategy") or {}
        rows.append({
            "correct": is_correct(response.choices[0].message.content or "", problem.answer),
            "new_tokens": response.usage.completion_tokens,
            "shared_prefix_tokens": strategy.get("shared_prefix_tokens", 0),
            "cached_prompt_tokens": strategy.get("cached_prompt_tokens", 0),
            "level": problem.level,
        })
    num = len(rows)
    by_level = {}
    for level in sorted({r["level"] for r in rows}):
        mine = [r for r in rows if r["level"] == level]
        by_level[level] = round(sum(r["correct"] for r in mine) / len(mine), 3)
    return {
        "accuracy": round(sum(r["correct"] for r in rows) / num, 3),
        "new_tokens_per_problem": round(sum(r["new_tokens"] for r in rows) / num, 1),
        "shared_prefix_tokens_per_problem": round(sum(r["shared_prefix_tokens"] for r in rows) / num, 1),
        "cached_prompt_tokens_per_problem": round(sum(r["cached_prompt_tokens"] for r in rows) / num, 1),
        "accuracy_by_level": by_level,
    }


async def run_all(url: str, problems, args: argparse.Namespace) -> dict[str, dict]:
    """Each method in turn, on one client (its connections belong to this event loop)."""
    import openai

    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", timeout=1800, max_retries=0)
    model = (await client.models.list()).data[0].id
    return {name: await run_method(client, model, problems, fields, args, name) for name, fields in methods(args).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=48)
    parser.add_argument("--levels", default="add-1digit,add-2digit", help="arithmetic levels, comma-separated")
    parser.add_argument("--trees", type=int, default=4)
    parser.add_argument("--forks", type=int, default=2)
    parser.add_argument("--branches", type=int, default=2)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--concurrency", type=int, default=4, help="problems in flight at once")
    parser.add_argument("--block-size", type=int, default=32, help="KV block size: prefix caching reuses whole blocks")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from entropy_serve.server.process import ServerProcess

    try:
        levels = levels_named(args.levels.split(","))
    except ValueError as error:
        parser.error(f"--levels: {error}")
    problems = generate(args.problems, args.seed, levels)
    kv_cache_gib = int(os.environ.get("VLLM_CPU_KVCACHE_SPACE", 4))
    with ServerProcess("--max-model-len", "2048", "--block-size", str(args.block_size), kv_cache_gib=kv_cache_gib) as server:
        results = asyncio.run(run_all(server.url, problems, args))
    sc, fork = list(results.values())[2:]
    report = {
        "problems": args.problems,
        "levels": [level.name for level in levels],
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "results": results,
        "fork_tokens_over_self_consistency": round(fork["new_tokens_per_problem"] / sc["new_tokens_per_problem"], 3),
        "fork_accuracy_minus_self_consistency": round(fork["accuracy"] - sc["accuracy"], 3),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":  # vLLM spawns engine processes
    main()
