"""Accuracy against newly generated tokens for every answering method, on the same
seeded problems, through one server: one table, and an accuracy-against-tokens plot.

Methods (the voting ones with the same leaf budget L, `--leaves`, 16 by default):
greedy; one sample; self-consistency (n = L); self-consistency stopped early by the
Beta rule and by ESC's window; entropy_fork (M trees x (1 + N x B) = L) with ETTRL's
fork points, with the savings rule, and stopped early by the Beta rule; deepconf
(n = L) with top-k and with entropy confidence (DeepConf-high, the defaults), and
DeepConf-low; and, with `--probe DIR`, always-Normal and difficulty routing. Tokens are `usage.completion_tokens`: newly generated ones (a
branch's shared prefix is not counted again; a stopped trace counts what it generated).

Goals (issue 12), against self-consistency with the same leaf budget: the best
early-stopping method at >= its accuracy - 1 point with <= 50% of its tokens;
difficulty routing with >= 20% fewer tokens than always-Normal at <= 1 point lower
accuracy. The report says which were reached.

Tune on one seed, report on another: `--seed` draws the problems and every sample's
seed. On `--seed 0` (30 problems) were chosen: the temperature, 0.5 (self-consistency:
36.7% at T 0.8, 53.3% at 0.3, 56.7% at 0.5) and DeepConf-low's settings; the README
reports `--seed 1`. Progress goes to stderr; `--out DIR` gets report.json, table.md and
accuracy_vs_tokens.png; the report also goes to stdout.

    python benchmarks/strategies.py --out DIR [--seed 1] [--problems 60] [--probe DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

from answering import answer_all

from entropy_serve.probes.table import DifficultyTable
from entropy_serve.tasks.answers import is_correct
from entropy_serve.tasks.arithmetic import generate, levels_named

SELF_CONSISTENCY = "self_consistency"
EARLY_STOPPING = ("sc_beta", "sc_esc", "fork_beta", "deepconf_topk", "deepconf_entropy", "deepconf_low")


def methods(args: argparse.Namespace) -> dict[str, dict]:
    """Method name -> request fields."""
    sampled = {"temperature": args.temperature}
    if args.leaves % 4:
        raise SystemExit("--leaves must be a multiple of 4 (entropy_fork: 4 trees x (1 + 1 fork x B branches))")
    fork = {"name": "entropy_fork", "trees": 4, "forks": 1, "branches": args.leaves // 4 - 1}

    def strategy(**fields) -> dict:
        return {**sampled, "extra_body": {"strategy": fields}}

    table = {
        "greedy": {"temperature": 0.0},
        "single_sample": sampled,
        SELF_CONSISTENCY: strategy(name="self_consistency", n=args.leaves),
        "sc_beta": strategy(name="self_consistency", n=args.leaves, early_stop="beta"),
        "sc_esc": strategy(name="self_consistency", n=args.leaves, early_stop="esc"),
        "entropy_fork": strategy(**fork),
        "fork_savings": strategy(**fork, fork_rule="savings"),
        "fork_beta": strategy(**fork, early_stop="beta"),
        "deepconf_topk": strategy(name="deepconf", n=args.leaves),
        "deepconf_entropy": strategy(name="deepconf", n=args.leaves, confidence="entropy"),
        # DeepConf-low (keep 0.1) with an 8-token window: the cheapest deepconf tried on seed 0.
        "deepconf_low": strategy(name="deepconf", n=args.leaves, confidence="entropy", keep=0.1, window=8),
    }
    if args.probe:
        normal = DifficultyTable().normal
        table["always_normal"] = {"temperature": normal.temperature, "top_p": normal.top_p}
        table["difficulty"] = {"extra_body": {"strategy": "difficulty"}}
    return table


async def run_method(client, model: str, problems, fields: dict, args, label: str) -> dict:
    started = time.perf_counter()
    answered = await answer_all(client, model, problems, fields, args, label)
    wall_s = time.perf_counter() - started
    rows = []
    for problem, response in answered:
        strategy = (response.model_extra or {}).get("strategy") or {}
        rows.append({
            "correct": is_correct(response.choices[0].message.content or "", problem.answer),
            "tokens": response.usage.completion_tokens,
            "leaves": strategy.get("num_leaves", 1),
            "shared_prefix_tokens": strategy.get("shared_prefix_tokens", 0),
            "level": problem.level,
        })
    num = len(rows)
    levels = sorted({r["level"] for r in rows})
    return {
        "accuracy": round(sum(r["correct"] for r in rows) / num, 4),
        "tokens_per_problem": round(sum(r["tokens"] for r in rows) / num, 1),
        "leaves_per_problem": round(sum(r["leaves"] for r in rows) / num, 2),
        "shared_prefix_tokens_per_problem": round(sum(r["shared_prefix_tokens"] for r in rows) / num, 1),
        "wall_s": round(wall_s, 1),
        "accuracy_by_level": {
            level: round(sum(r["correct"] for r in rows if r["level"] == level) / sum(r["level"] == level for r in rows), 3)
            for level in levels
        },
        "tokens_by_level": {
            level: round(sum(r["tokens"] for r in rows if r["level"] == level) / sum(r["level"] == level for r in rows), 1)
            for level in levels
        },
    }


async def run_all(url: str, problems, args: argparse.Namespace, chosen: dict[str, dict]) -> dict[str, dict]:
    """Each method in turn, on one client (its connections belong to this event loop)."""
    import openai

    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", timeout=1800, max_retries=0)
    model = (await client.models.list()).data[0].id
    return {name: await run_method(client, model, problems, fields, args, name) for name, fields in chosen.items()}


def goals(results: dict[str, dict]) -> dict:
    """What issue 12 asks for, read off the results."""
    sc = results[SELF_CONSISTENCY]
    ratios = {}
    for name in EARLY_STOPPING:
        row = results[name]
        ratios[name] = {
            "tokens_over_self_consistency": round(row["tokens_per_problem"] / sc["tokens_per_problem"], 3),
            "accuracy_minus_self_consistency_points": round(100 * (row["accuracy"] - sc["accuracy"]), 1),
        }
    eligible = [n for n, r in ratios.items() if r["accuracy_minus_self_consistency_points"] >= -1.0]
    best = min(eligible, key=lambda n: ratios[n]["tokens_over_self_consistency"]) if eligible else None
    report = {
        "early_stopping": ratios,
        "best_early_stopping_within_1_point": best,
        "early_stopping_goal_reached": best is not None and ratios[best]["tokens_over_self_consistency"] <= 0.5,
    }
    if "difficulty" in results:
        normal, routed = results["always_normal"], results["difficulty"]
        fewer = 1 - routed["tokens_per_problem"] / normal["tokens_per_problem"]
        points = 100 * (routed["accuracy"] - normal["accuracy"])
        report["difficulty_routing"] = {
            "fewer_tokens_than_always_normal": round(fewer, 3),
            "accuracy_minus_always_normal_points": round(points, 1),
            "goal_reached": fewer >= 0.2 and points >= -1.0,
        }
    return report


def markdown_table(results: dict[str, dict]) -> str:
    sc_tokens = results[SELF_CONSISTENCY]["tokens_per_problem"]
    lines = [
        "| method | accuracy | tokens / problem | x self-consistency | leaves / problem | wall s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in results.items():
        lines.append(
            f"| {name} | {100 * row['accuracy']:.1f}% | {row['tokens_per_problem']} | "
            f"{row['tokens_per_problem'] / sc_tokens:.3f} | {row['leaves_per_problem']} | {row['wall_s']} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5.5))
    for name, row in results.items():
        marker = "s" if name in EARLY_STOPPING else "o"
        axes.scatter(row["tokens_per_problem"], 100 * row["accuracy"], marker=marker)
        axes.annotate(name, (row["tokens_per_problem"], 100 * row["accuracy"]), fontsize=8,
                      xytext=(4, 3), textcoords="offset points")
    axes.set_xscale("log")
    axes.set_xlabel("newly generated tokens per problem (log)")
    axes.set_ylabel("accuracy (%)")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for report.json, table.md and accuracy_vs_tokens.png")
    parser.add_argument("--problems", type=int, default=60)
    parser.add_argument("--levels", default="add-1digit,add-2digit,work-1digit-2ops", help="arithmetic levels, comma-separated")
    parser.add_argument("--leaves", type=int, default=16, help="leaf budget of every voting method")
    parser.add_argument("--temperature", type=float, default=0.5, help="every sampled method's (chosen on seed 0)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=4, help="problems in flight at once")
    parser.add_argument("--block-size", type=int, default=32, help="KV block size: prefix caching reuses whole blocks")
    parser.add_argument("--probe", help="a train-probe folder: adds always-Normal and difficulty routing")
    parser.add_argument("--only", help="comma-separated methods to run (default: all)")
    parser.add_argument("--url", help="a server already running (its own flags apply), instead of starting one")
    parser.add_argument("--seed", type=int, default=1, help="problems and samples (strategy defaults were tuned on 0)")
    args = parser.parse_args()

    from entropy_serve.server.process import ServerProcess

    try:
        levels = levels_named(args.levels.split(","))
    except ValueError as error:
        parser.error(f"--levels: {error}")
    problems = generate(args.problems, args.seed, levels)
    chosen = methods(args)
    if args.only:
        names = args.only.split(",")
        unknown = set(names) - set(chosen)
        if unknown:
            parser.error(f"--only: unknown methods {sorted(unknown)}; known: {list(chosen)}")
        chosen = {name: chosen[name] for name in names}
    if args.url:
        results = asyncio.run(run_all(args.url, problems, args, chosen))
    else:
        kv_cache_gib = int(os.environ.get("VLLM_CPU_KVCACHE_SPACE", 4))
        flags = ["--max-model-len", "2048", "--block-size", str(args.block_size), "--max-leaves", str(max(64, args.leaves))]
        if args.probe:
            flags += ["--probe", args.probe]
        with ServerProcess(*flags, kv_cache_gib=kv_cache_gib) as server:
            results = asyncio.run(run_all(server.url, problems, args, chosen))
    report = {
        "problems": args.problems,
        "levels": [level.name for level in levels],
        "leaf_budget": args.leaves,
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "seed": args.seed,
        "results": results,
    }
    if SELF_CONSISTENCY in results and all(name in results for name in EARLY_STOPPING):
        report["goals"] = goals(results)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.json").write_text(text + "\n")
        if SELF_CONSISTENCY in results:
            (args.out / "table.md").write_text(markdown_table(results))
        plot(results, args.out / "accuracy_vs_tokens.png", f"{args.problems} problems ({', '.join(report['levels'])}), seed {args.seed}")


if __name__ == "__main__":  # vLLM spawns engine processes
    main()
