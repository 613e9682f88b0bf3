"""DiffAdapt routing against always-Normal: accuracy and generated tokens on held-out
problems, one run, one server.

Train a probe first (`entropy-serve train-probe --out DIR`, arithmetic seed 0); this
answers arithmetic problems of another seed (the same 1- to 3-digit addition levels)
twice: with the Normal strategy of the difficulty table for every problem (T 0.8,
top-p 0.95, the full --max-tokens), and with `strategy: "difficulty"` (the probe picks
the class, the class picks instruction, temperature and budget). Same seeds per problem
on both sides. DiffAdapt's target: at least 20% fewer tokens with accuracy no more than
1 point lower. Progress goes to stderr, the result as JSON to stdout.

    python benchmarks/difficulty.py --probe DIR [--problems 90] [--max-tokens 96]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections import Counter

from answering import answer_all

from entropy_serve.probes.table import DifficultyTable
from entropy_serve.tasks import arithmetic
from entropy_serve.tasks.answers import is_correct
from entropy_serve.tasks.problems import TRAINING_LEVELS


async def run_method(client, model: str, problems, fields: dict, args, label: str) -> list[dict]:
    rows = []
    for problem, response, _ in await answer_all(client, model, problems, fields, args, label):
        difficulty = (response.model_extra or {}).get("difficulty") or {}
        rows.append(
            {
                "level": problem.level,
                "correct": is_correct(response.choices[0].message.content or "", problem.answer),
                "tokens": response.usage.completion_tokens,
                "class": difficulty.get("class"),
                "probe_latency_s": difficulty.get("probe_latency_s"),
            }
        )
    return rows


def summary(rows: list[dict]) -> dict:
    result = {
        "accuracy": round(sum(r["correct"] for r in rows) / len(rows), 3),
        "tokens_per_problem": round(sum(r["tokens"] for r in rows) / len(rows), 1),
        "accuracy_by_level": {
            level: round(statistics.mean(r["correct"] for r in rows if r["level"] == level), 3)
            for level in sorted({r["level"] for r in rows})
        },
    }
    if rows[0]["class"] is not None:
        result["classes"] = dict(Counter(r["class"] for r in rows))
        result["classes_by_level"] = {
            level: dict(Counter(r["class"] for r in rows if r["level"] == level))
            for level in sorted({r["level"] for r in rows})
        }
        result["probe_latency_s_median"] = statistics.median(r["probe_latency_s"] for r in rows)
    return result


async def run_all(url: str, problems, args) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", timeout=1800, max_retries=0)
    model = (await client.models.list()).data[0].id
    normal = DifficultyTable().normal
    always_normal = {"temperature": normal.temperature, "top_p": normal.top_p}
    results = {
        "always_normal": summary(await run_method(client, model, problems, always_normal, args, "always-normal")),
        "difficulty": summary(
            await run_method(client, model, problems, {"extra_body": {"strategy": "difficulty"}}, args, "difficulty")
        ),
    }
    # The probe's own cost, without queueing behind other requests: one at a time.
    alone = []
    for problem in problems[:20]:
        response = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": problem.question}],
            max_tokens=1,
            extra_body={"strategy": "difficulty"},
        )
        alone.append(response.model_extra["difficulty"]["probe_latency_s"])
    results["probe_latency_s_median_one_at_a_time"] = statistics.median(alone)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe", required=True, help="probe folder from `entropy-serve train-probe`")
    parser.add_argument("--problems", type=int, default=90)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--concurrency", type=int, default=16, help="problems in flight at once")
    parser.add_argument("--seed", type=int, default=1, help="problem seed (train-probe used 0)")
    args = parser.parse_args()

    from entropy_serve.server.process import ServerProcess

    problems = arithmetic.generate(args.problems, args.seed, arithmetic.levels_named(TRAINING_LEVELS))
    kv_cache_gib = int(os.environ.get("VLLM_CPU_KVCACHE_SPACE", 2))
    started = time.perf_counter()
    with ServerProcess("--max-model-len", "2048", "--probe", args.probe, kv_cache_gib=kv_cache_gib) as server:
        ready_s = time.perf_counter() - started
        results = asyncio.run(run_all(server.url, problems, args))
    normal, routed = results["always_normal"], results["difficulty"]
    report = {
        "problems": args.problems,
        "max_tokens": args.max_tokens,
        "seed": args.seed,
        "server_ready_s_with_probe": round(ready_s, 1),
        "results": results,
        "token_ratio_difficulty_over_normal": round(routed["tokens_per_problem"] / normal["tokens_per_problem"], 3),
        "accuracy_difference_points": round(100 * (routed["accuracy"] - normal["accuracy"]), 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":  # vLLM spawns engine processes
    main()
