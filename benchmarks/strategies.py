"""Accuracy against generated tokens, per temperature and task level, for every answering
method on the same seeded problems, through one server started with the model's
learned strategy defaults; and which confidence signals tell right traces from wrong.

Per temperature (`--temperatures`, 0.5 and 0.8 by default):
- plain decoding: greedy, and self-consistency's budget curve: one n = `--traces`
  request per problem, voted over its first k samples (k = 1, 2, 4, ...), each
  sample's own tokens counted. Its upper-left hull is the frontier a method must beat;
- the methods (`METHODS`): self-consistency with Beta early stopping; deepconf with the
  learned defaults and with the paper's fields sent explicitly; `auto` (escalate with
  the learned settings) at the temperature. Each reports accuracy, tokens per problem
  (`usage.completion_tokens`), wall time and p50/p95 request latency, per level too;
- the signals: for every sample of the n-sample requests, each confidence signal of
  strategies/confidence.py (mean, lowest window, tail, answer span, top-k,
  self-certainty), and its
  AUROC separating right from wrong traces, over all problems and per level.
The goal (issue 24): at every temperature, `auto` within 1 point of the best plain
decoding (greedy or any self-consistency budget) with at most 50% of the full
self-consistency's tokens (stretch: 25%), and above the frontier at its own cost.

Tune on one seed, report on another: the learned defaults come from `tune-strategies`
(seed 0, its own problems); this reports `--seed 1` by default. `--out DIR` gets
report.json, table.md, accuracy_vs_tokens_T{t}.png and traces.jsonl (every sample's
answer, correctness, tokens and signals); the report also goes to stdout.

    python benchmarks/strategies.py --out DIR [--problems 90] [--temperatures 0.5,0.8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

import numpy as np
from answering import answer_all

from entropy_serve.server.strategies.confidence import SIGNALS, answer_span, trace_signals
from entropy_serve.tasks.answers import equivalent, extract_answer, is_correct
from entropy_serve.tasks.arithmetic import generate, levels_named
from entropy_serve.tasks.voting import vote

WINDOW = 16  # the signals' window (deepconf's default)
GOAL_METHOD = "auto"


def methods(traces: int) -> dict[str, dict]:
    """Method name -> the strategy field (sent with the temperature)."""
    return {
        "sc_beta": {"name": "self_consistency", "n": traces, "early_stop": "beta"},
        "deepconf_learned": {"name": "deepconf", "n": traces},
        "deepconf_paper": {
            "name": "deepconf",
            "n": traces,
            "confidence": "topk",
            "window": 16,
            "keep": 0.9,
            "consensus": 0.95,
        },
        "auto": {"name": "auto"},
    }


def summarize(answered, wall_s: float, correct_of) -> dict:
    """Accuracy, tokens, wall time and latency of one method's (problem, response, latency_s)."""
    rows = [(p.level, correct_of(p, r), r.usage.completion_tokens, s) for p, r, s in answered]
    levels = sorted({level for level, *_ in rows})

    def part(level=None) -> dict:
        mine = [r for r in rows if level is None or r[0] == level]
        return {
            "accuracy": round(float(np.mean([r[1] for r in mine])), 4),
            "tokens_per_problem": round(float(np.mean([r[2] for r in mine])), 1),
        }

    latencies = [s for *_, s in rows]
    return {
        **part(),
        "wall_s": round(wall_s, 1),
        "latency_p50_s": round(float(np.percentile(latencies, 50)), 2),
        "latency_p95_s": round(float(np.percentile(latencies, 95)), 2),
        "by_level": {level: part(level) for level in levels},
    }


def sample_traces(answered) -> list[dict]:
    """Every sample of the n-sample requests: its problem, answer, tokens and signals."""
    traces = []
    for problem, response, _ in answered:
        for choice in response.choices:
            entropies = choice.model_extra["entropy"]["model_entropy_nats"]
            positions = choice.logprobs.content or []
            answer = extract_answer(choice.message.content or "")
            span = answer_span([p.token for p in positions], answer)
            top = [[t.logprob for t in p.top_logprobs] for p in positions]
            traces.append(
                {
                    "level": problem.level,
                    "reference": problem.answer,
                    "answer": answer,
                    "correct": equivalent(answer, problem.answer),
                    "tokens": len(entropies),
                    "signals": trace_signals(
                        entropies,
                        span,
                        WINDOW,
                        top_logprobs=top,
                        self_certainty_nats=choice.model_extra["entropy"]["self_certainty_nats"],
                    ),
                }
            )
    return traces


def budget_curve(traces: list[dict], num_problems: int, num_traces: int) -> dict[str, dict]:
    """Self-consistency over the first k samples of each problem, k = 1, 2, 4, ..."""
    by_problem = [traces[i * num_traces : (i + 1) * num_traces] for i in range(num_problems)]
    curve, k = {}, 1
    while k <= num_traces:
        correct = [
            equivalent(vote([t["answer"] for t in mine[:k]]).winner, mine[0]["reference"]) for mine in by_problem
        ]
        tokens = [sum(t["tokens"] for t in mine[:k]) for mine in by_problem]
        curve[f"self_consistency_{k}"] = {
            "accuracy": round(float(np.mean(correct)), 4),
            "tokens_per_problem": round(float(np.mean(tokens)), 1),
        }
        k *= 2
    return curve


def aurocs(traces: list[dict]) -> dict[str, dict[str, float | None]]:
    """Per level (and all): each signal's AUROC for right against wrong traces, over the
    traces where the signal is defined (the answer span: traces that spell an answer;
    `answer_traces` counts them); None where those are all right or all wrong."""
    from sklearn.metrics import roc_auc_score

    table = {}
    for level in ["all", *sorted({t["level"] for t in traces})]:
        mine = [t for t in traces if level == "all" or t["level"] == level]
        row = {"traces": len(mine), "right": sum(t["correct"] for t in mine)}
        for signal in SIGNALS:
            defined = [t for t in mine if t["signals"][signal] is not None]
            labels = [t["correct"] for t in defined]
            usable = len(set(labels)) == 2
            row[signal] = (
                round(float(roc_auc_score(labels, [t["signals"][signal] for t in defined])), 3) if usable else None
            )
            if signal == "answer":
                row["answer_traces"] = len(defined)
        table[level] = row
    return table


def frontier_accuracy(plain: dict[str, dict], tokens: float) -> float:
    """The best plain-decoding accuracy at no more than `tokens` per problem."""
    return max((row["accuracy"] for row in plain.values() if row["tokens_per_problem"] <= tokens), default=0.0)


def goal(plain: dict[str, dict], full: dict, row: dict) -> dict:
    best = max(plain.values(), key=lambda r: r["accuracy"])
    share = row["tokens_per_problem"] / full["tokens_per_problem"]
    points = 100 * (row["accuracy"] - best["accuracy"])
    return {
        "best_plain_accuracy": best["accuracy"],
        "accuracy_minus_best_plain_points": round(points, 1),
        "tokens_over_full_self_consistency": round(share, 3),
        "frontier_accuracy_at_its_tokens": frontier_accuracy(plain, row["tokens_per_problem"]),
        "above_frontier": row["accuracy"] > frontier_accuracy(plain, row["tokens_per_problem"]),
        "goal_reached": points >= -1.0 and share <= 0.5,
        "stretch_reached": points >= -1.0 and share <= 0.25,
    }


async def run_temperature(client, model: str, problems, args, temperature: float, greedy: dict) -> dict:
    def correct_of(problem, response) -> bool:
        return is_correct(response.choices[0].message.content or "", problem.answer)

    fields = {
        "temperature": temperature,
        "logprobs": True,
        "top_logprobs": 20,
        "n": args.traces,
        "extra_body": {"return_entropy": True},
    }
    answered = await answer_all(client, model, problems, fields, args, f"T {temperature}: {args.traces} samples")
    answered.sort(key=lambda item: problems.index(item[0]))
    traces = sample_traces(answered)
    plain = {"greedy": greedy, **budget_curve(traces, len(problems), args.traces)}
    full = plain[f"self_consistency_{2 ** int(np.log2(args.traces))}"]
    results = {}
    for name, strategy in methods(args.traces).items():
        if args.only and name not in args.only:
            continue
        started = time.perf_counter()
        done = await answer_all(
            client,
            model,
            problems,
            {"temperature": temperature, "extra_body": {"strategy": strategy}},
            args,
            f"T {temperature}: {name}",
        )
        results[name] = summarize(done, time.perf_counter() - started, correct_of)
        if name == "auto":
            escalated = [r.model_extra["strategy"]["escalation"]["escalated"] for _, r, _ in done]
            results[name]["escalated_share"] = round(float(np.mean(escalated)), 3)
    return {
        "traces": traces,
        "plain": plain,
        "methods": results,
        "goals": {name: goal(plain, full, row) for name, row in results.items()},
        "auroc": aurocs(traces),
    }


async def run_all(url: str, problems, args) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", timeout=3600, max_retries=0)
    model = (await client.models.list()).data[0].id
    started = time.perf_counter()
    answered = await answer_all(client, model, problems, {"temperature": 0.0}, args, "greedy")
    greedy = summarize(
        answered, time.perf_counter() - started, lambda p, r: is_correct(r.choices[0].message.content or "", p.answer)
    )
    return {str(t): await run_temperature(client, model, problems, args, t, greedy) for t in args.temperatures}


def markdown(report: dict) -> str:
    lines = []
    for t, part in report["by_temperature"].items():
        full = part["plain"][max(part["plain"], key=lambda k: part["plain"][k]["tokens_per_problem"])]
        lines += [
            f"### T {t}",
            "",
            "| method | accuracy | tokens / problem | x full SC | wall s | p50 / p95 latency s |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name, row in {**part["plain"], **part["methods"]}.items():
            latency = f"{row['latency_p50_s']} / {row['latency_p95_s']}" if "latency_p50_s" in row else ""
            lines.append(
                f"| {name} | {100 * row['accuracy']:.1f}% | {row['tokens_per_problem']} | "
                f"{row['tokens_per_problem'] / full['tokens_per_problem']:.3f} | {row.get('wall_s', '')} | {latency} |"
            )
        lines += [
            "",
            "| AUROC (right vs wrong traces) | traces (right) | " + " | ".join(SIGNALS) + " |",
            "| --- | --- |" + " --- |" * len(SIGNALS),
        ]
        for level, row in part["auroc"].items():
            cells = " | ".join("" if row[s] is None else f"{row[s]:.3f}" for s in SIGNALS)
            lines.append(f"| {level} | {row['traces']} ({row['right']}) | {cells} |")
        lines.append(
            "(answer: over the traces that spell their answer: "
            + ", ".join(f"{level} {row['answer_traces']}" for level, row in part["auroc"].items())
            + ")"
        )
        lines.append("")
    return "\n".join(lines)


def plot(part: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5.5))
    plain = sorted(part["plain"].items(), key=lambda item: item[1]["tokens_per_problem"])
    xs, ys, best = [], [], 0.0
    for _, row in plain:  # the frontier: the best accuracy reached at each cost or less
        best = max(best, 100 * row["accuracy"])
        xs.append(row["tokens_per_problem"])
        ys.append(best)
    axes.step(xs, ys, where="post", color="grey", label="plain decoding frontier")
    for name, row in [*plain, *part["methods"].items()]:
        marker = "o" if name in part["plain"] else "s"
        axes.scatter(row["tokens_per_problem"], 100 * row["accuracy"], marker=marker)
        axes.annotate(
            name,
            (row["tokens_per_problem"], 100 * row["accuracy"]),
            fontsize=8,
            xytext=(4, 3),
            textcoords="offset points",
        )
    axes.set_xscale("log")
    axes.set_xlabel("generated tokens per problem (log)")
    axes.set_ylabel("accuracy (%)")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for report.json, table.md and the plots")
    parser.add_argument("--problems", type=int, default=90)
    parser.add_argument(
        "--levels", default="add-1digit,add-2digit,work-1digit-2ops", help="arithmetic levels, comma-separated"
    )
    parser.add_argument("--traces", type=int, default=16, help="self-consistency's full budget, and every strategy's n")
    parser.add_argument("--temperatures", default="0.5,0.8")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=4, help="problems in flight at once")
    parser.add_argument(
        "--only",
        help="comma-separated methods (default: all of "
        + ", ".join(methods(16))
        + "); 'plain' alone runs greedy, the budget curve and the AUROCs",
    )
    parser.add_argument(
        "--url", help="a server already running (its own flags and defaults apply), instead of starting one"
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="problems and samples (the defaults were learned on seed 0)"
    )
    args = parser.parse_args()
    args.temperatures = [float(t) for t in args.temperatures.split(",")]
    args.only = set(args.only.split(",")) if args.only else None
    if args.only and args.only - {"plain", *methods(args.traces)}:
        parser.error(f"--only: unknown methods {sorted(args.only - {'plain', *methods(args.traces)})}")

    from entropy_serve.server.process import ServerProcess

    try:
        levels = levels_named(args.levels.split(","))
    except ValueError as error:
        parser.error(f"--levels: {error}")
    problems = generate(args.problems, args.seed, levels)
    if args.url:
        by_temperature = asyncio.run(run_all(args.url, problems, args))
    else:
        kv_cache_gib = int(os.environ.get("VLLM_CPU_KVCACHE_SPACE", 4))
        flags = ["--max-model-len", "2048", "--max-n", str(args.traces), "--max-leaves", str(max(64, args.traces + 1))]
        with ServerProcess(*flags, kv_cache_gib=kv_cache_gib) as server:
            by_temperature = asyncio.run(run_all(server.url, problems, args))
    report = {
        "problems": args.problems,
        "levels": [level.name for level in levels],
        "traces": args.traces,
        "max_tokens": args.max_tokens,
        "seed": args.seed,
        "goal_method": GOAL_METHOD,
        "by_temperature": by_temperature,
    }
    traces = {t: part.pop("traces") for t, part in by_temperature.items()}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.json").write_text(text + "\n")
        with (args.out / "traces.jsonl").open("w") as out:  # every sample with its signals: the AUROCs' data
            for t, part in traces.items():
                for trace in part:
                    out.write(json.dumps({"temperature": float(t), **trace}) + "\n")
        (args.out / "table.md").write_text(markdown(report))
        for t, part in by_temperature.items():
            plot(part, args.out / f"accuracy_vs_tokens_T{t}.png", f"T {t}: {args.problems} problems, seed {args.seed}")


if __name__ == "__main__":  # vLLM spawns engine processes
    main()
