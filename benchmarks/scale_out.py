"""Throughput of the scale-out shapes on this machine, one run: one engine (DP=1) against
vLLM's data parallelism (DP=2), and one Ray Serve replica against two, the same cores
for each pair.

DP: one `entropy-serve serve` on every usable core (DP=1 puts them all under its one
worker, DP=2 gives each engine its share, as the `|`-separated VLLM_CPU_OMP_THREADS_BIND).
Replicas: `entropy-serve serve-replicas` with one replica on every core, or two with half
each, measured through Ray Serve's HTTP proxy. Each shape gets --num-requests completion requests of
--max-tokens tokens (ignore_eos, so each generates exactly that many; return_entropy,
so the entropy channel carries every token), all in flight at once through the
official `openai` client, for --rounds rounds after a warm-up round; then the same for
`self_consistency` requests (n 4 each, a quarter as many requests: the same tokens),
whose leaves a DP server keeps on one engine. The shapes run one after another (two
engines' worth of memory at most); a ratio is the median of the scaled shape's rounds over
the median of its baseline's, so a drift of the machine's speed between them enters it.

    python benchmarks/scale_out.py [--num-requests 64] [--max-tokens 64] [--rounds 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from throughput import completions_tokens_per_s, prompts  # beside this script

SC_LEAVES = 4


async def one_round(url: str, model: str, texts: list[str], max_tokens: int, strategy: bool) -> float:
    """Generated tokens per second of one round: every request in flight at once."""
    extra = {"ignore_eos": True, "return_entropy": True}
    if strategy:
        extra["strategy"] = {"name": "self_consistency", "n": SC_LEAVES}
    return await completions_tokens_per_s(url, model, texts, max_tokens, extra, timeout_s=1200, max_retries=0)


@contextlib.contextmanager
def served(flags: list[str], bind: str, kv_cache_gib: int) -> Iterator[str]:
    """One `entropy-serve serve` on the cores of `bind`; yields its URL."""
    from entropy_serve.server.process import ServerProcess

    serve_flags = ("--max-model-len", "2048", "--max-n", str(SC_LEAVES), *flags)
    with ServerProcess(*serve_flags, kv_cache_gib=kv_cache_gib, env={"VLLM_CPU_OMP_THREADS_BIND": bind}) as server:
        yield server.url


@contextlib.contextmanager
def replicas(replica_cores: list[str], kv_cache_gib: int) -> Iterator[str]:
    """`entropy-serve serve-replicas` with one replica per CPU list; yields its URL once all are up."""
    import httpx

    from entropy_serve.server.process import free_port

    port = free_port()
    serve_flags = ["--max-model-len", "2048", "--max-n", str(SC_LEAVES), "--kv-cache-gib", str(kv_cache_gib)]
    count = len(replica_cores)
    command = [sys.executable, "-m", "entropy_serve", "serve-replicas", "--replicas", str(count)]
    command += ["--replica-cores", "|".join(replica_cores), "--port", str(port), "--", *serve_flags]
    log = tempfile.NamedTemporaryFile("w+", prefix="serve-replicas-", suffix=".log", delete=False)
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                groups = httpx.get(f"{url}/replicas/targets", timeout=5).json()
                if sum(len(group["targets"]) for group in groups) == count:
                    break
            except (httpx.TransportError, ValueError):
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve-replicas --replicas {count} did not come up; its log: {log.name}")
            time.sleep(1)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(180)


def measure(url: str, args) -> dict:
    import openai

    texts = prompts(args.num_requests)
    sc_texts = texts[: max(1, args.num_requests // SC_LEAVES)]
    model = openai.OpenAI(base_url=f"{url}/v1", api_key="x").models.list().data[0].id
    asyncio.run(one_round(url, model, texts, 1, strategy=False))  # warm-up: prompts cached
    plain = [asyncio.run(one_round(url, model, texts, args.max_tokens, False)) for _ in range(args.rounds)]
    sc = [asyncio.run(one_round(url, model, sc_texts, args.max_tokens, True)) for _ in range(args.rounds)]
    return {
        "plain_tokens_per_s": [round(x, 1) for x in plain],
        "self_consistency_tokens_per_s": [round(x, 1) for x in sc],
    }


def ratios(scaled: dict, baseline: dict) -> dict:
    median = statistics.median
    return {
        kind: round(median(scaled[f"{kind}_tokens_per_s"]) / median(baseline[f"{kind}_tokens_per_s"]), 3)
        for kind in ("plain", "self_consistency")
    }


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
        raise SystemExit(f"two engines need two cores; this machine lets us use {cores}")
    halves = host.split_cpus(cores, 2)
    shapes = {}
    with served([], host.cpu_list_text(cores), args.kv_cache_gib) as url:
        shapes["dp1"] = measure(url, args)
    with served(["--data-parallel-size", "2"], host.bind_text(halves), args.kv_cache_gib) as url:
        shapes["dp2"] = measure(url, args)
    print(json.dumps(shapes), file=sys.stderr, flush=True)  # the DP pair, before the replicas start
    with replicas([host.cpu_list_text(cores)], args.kv_cache_gib) as url:
        shapes["replicas1"] = measure(url, args)
    with replicas([host.cpu_list_text(half) for half in halves], args.kv_cache_gib) as url:
        shapes["replicas2"] = measure(url, args)
    result = {
        "cpus": cores,
        "num_requests": args.num_requests,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "shapes": shapes,
        "ratio_dp2_over_dp1": ratios(shapes["dp2"], shapes["dp1"]),
        "ratio_replicas2_over_replicas1": ratios(shapes["replicas2"], shapes["replicas1"]),
        "ratio_replicas1_over_dp1": ratios(shapes["replicas1"], shapes["dp1"]),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":  # vLLM spawns engine processes
    main()
