"""Throughput of the scale-out shapes on this machine, one run: one engine (DP=1) against
vLLM's data parallelism (DP=2), the same cores for both.

Each shape is one `entropy-serve serve` on the same cores (by default every usable
core: DP=1 puts them all under its one worker, DP=2 gives each engine its share, as the
`|`-separated VLLM_CPU_OMP_THREADS_BIND). It gets --num-requests completion requests of
--max-tokens tokens (ignore_eos, so each generates exactly that many; return_entropy,
so the entropy channel carries every token), all in flight at once through the
official `openai` client, for --rounds rounds after a warm-up round; then the same for
`self_consistency` requests (n 4 each, a quarter as many requests: the same tokens),
whose leaves a DP server keeps on one engine. The shapes run one after another (two
engines' worth of memory at most); the ratio is the median of DP=2's rounds over the
median of DP=1's, so a drift of the machine's speed between them enters it.

    python benchmarks/scale_out.py [--num-requests 64] [--max-tokens 64] [--rounds 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

TOPICS = ["the sea", "a robot", "autumn", "a city at night", "mathematics", "a cat", "rain", "the moon"]
SC_LEAVES = 4


def prompts(num_requests: int) -> list[str]:
    return [f"Write a short story about {TOPICS[i % len(TOPICS)]} (#{i})." for i in range(num_requests)]


async def one_round(url: str, model: str, texts: list[str], max_tokens: int, strategy: bool) -> float:
    """Generated tokens per second of one round: every request in flight at once."""
    import openai

    extra = {"ignore_eos": True, "return_entropy": True}
    if strategy:
        extra["strategy"] = {"name": "self_consistency", "n": SC_LEAVES}
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", timeout=1200, max_retries=0) as client:
        start = time.perf_counter()
        replies = await asyncio.gather(
            *(
                client.completions.create(
                    model=model, prompt=t, max_tokens=max_tokens, temperature=0.8, extra_body=extra
                )
                for t in texts
            )
        )
    return sum(r.usage.completion_tokens for r in replies) / (time.perf_counter() - start)


def measure_shape(flags: list[str], bind: str, args) -> dict:
    import openai

    from entropy_serve.server.process import ServerProcess

    texts = prompts(args.num_requests)
    sc_texts = texts[: max(1, args.num_requests // SC_LEAVES)]
    serve_flags = ("--max-model-len", "2048", "--max-n", str(SC_LEAVES), *flags)
    with ServerProcess(*serve_flags, kv_cache_gib=args.kv_cache_gib, env={"VLLM_CPU_OMP_THREADS_BIND": bind}) as server:
        model = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x").models.list().data[0].id
        asyncio.run(one_round(server.url, model, texts, 1, strategy=False))  # warm-up: prompts cached
        plain = [asyncio.run(one_round(server.url, model, texts, args.max_tokens, False)) for _ in range(args.rounds)]
        sc = [asyncio.run(one_round(server.url, model, sc_texts, args.max_tokens, True)) for _ in range(args.rounds)]
    return {"flags": flags, "cores": bind, "plain_tokens_per_s": plain, "self_consistency_tokens_per_s": sc}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kv-cache-gib", type=int, default=1, help="per engine")
    parser.add_argument("--out", type=Path, help="also write the result here (JSON)")
    args = parser.parse_args()

    from entropy_serve import host

    cores = host.usable_cpus()
    if len(cores) < 2:
        raise SystemExit(f"DP=2 needs two cores; this machine lets us use {cores}")
    halves = host.split_cpus(cores, 2)
    shapes = {
        "dp1": measure_shape([], host.cpu_list_text(cores), args),
        "dp2": measure_shape(["--data-parallel-size", "2"], host.bind_text(halves), args),
    }
    median = statistics.median
    result = {
        "num_requests": args.num_requests,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "shapes": {
            name: {**shape, **{k: [round(x, 1) for x in v] for k, v in shape.items() if k.endswith("_per_s")}}
            for name, shape in shapes.items()
        },
        "ratio_dp2_over_dp1_plain": round(
            median(shapes["dp2"]["plain_tokens_per_s"]) / median(shapes["dp1"]["plain_tokens_per_s"]), 3
        ),
        "ratio_dp2_over_dp1_self_consistency": round(
            median(shapes["dp2"]["self_consistency_tokens_per_s"])
            / median(shapes["dp1"]["self_consistency_tokens_per_s"]),
            3,
        ),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":  # vLLM spawns engine processes
    main()
