"""What is fast on this host: bare `vllm.LLM.generate` tokens/s per dtype, per preloaded
library and per core binding, and the choice `dtype auto` makes here.

Three sweeps, each varying one thing from the project's defaults (dtype auto, vLLM's own
preload, every core): every dtype; every preload choice (tcmalloc is Debian's
libtcmalloc-minimal4, skipped with a note where it is not installed); every binding.
Each run is a fresh process (LD_PRELOAD and the OpenMP runtime are fixed when a process
starts) with the project's engine settings and an explicit KV budget, on the same
prompts (ignore_eos: every request generates exactly --max-tokens tokens). A shared
machine's speed drifts: compare rows of one report only, over several --rounds.

    python benchmarks/host.py [--dtypes bfloat16,float32,float16] [--preloads iomp,tcmalloc,iomp+tcmalloc]
                              [--binds '1'] [--num-requests 64] [--max-tokens 64] [--rounds 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from throughput import prompts  # benchmarks/, this script's folder: the same prompts as the throughput benchmark


def measure(dtype: str, num_requests: int, max_tokens: int, rounds: int) -> dict:
    """In this process: build the engine, generate `rounds` times, return tokens/s."""
    from vllm import LLM, SamplingParams

    from entropy_serve import host
    from entropy_serve.model_store import prepare_default_model
    from entropy_serve.server.config import ServerConfig
    from entropy_serve.server.engine.holder import engine_args

    config = ServerConfig(
        model=str(prepare_default_model()), served_model_name="bench", max_model_len=2048, dtype=dtype
    )
    args = engine_args(config)
    started = time.perf_counter()
    llm = LLM(**{k: v for k, v in vars(args).items() if k != "enable_log_requests"})
    load_s = time.perf_counter() - started
    texts = prompts(num_requests)
    llm.generate(texts, SamplingParams(max_tokens=1), use_tqdm=False)  # warm-up, fills the prefix cache
    params = SamplingParams(max_tokens=max_tokens, temperature=0.8, ignore_eos=True)
    tokens_per_s = []
    for _ in range(rounds):
        start = time.perf_counter()
        outputs = llm.generate(texts, params, use_tqdm=False)
        tokens_per_s.append(sum(len(c.token_ids) for o in outputs for c in o.outputs) / (time.perf_counter() - start))
    llm.llm_engine.engine_core.shutdown()
    return {
        "tokens_per_s": [round(x, 1) for x in tokens_per_s],
        "load_s": round(load_s, 1),
        "resolved_dtype": host.resolve_dtype(dtype),
    }


def run_child(dtype: str, preload: str, bind: str, args: argparse.Namespace) -> dict:
    from entropy_serve import host

    env = {**os.environ, **host.preload_env(preload), "VLLM_CPU_OMP_THREADS_BIND": bind}
    command = [
        sys.executable,
        __file__,
        "--child",
        dtype,
        "--num-requests",
        str(args.num_requests),
        "--max-tokens",
        str(args.max_tokens),
        "--rounds",
        str(args.rounds),
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode != 0:
        return {"error": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", default="bfloat16,float32,float16")
    parser.add_argument(
        "--preloads", default="iomp,tcmalloc,iomp+tcmalloc", help="beside vLLM's own (PyTorch's libgomp)"
    )
    parser.add_argument(
        "--binds",
        default="",
        help="core lists beside all cores, ';'-separated (e.g. '1' leaves core 0 to the scheduler)",
    )
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.num_requests, args.max_tokens, args.rounds)))
        return

    from entropy_serve import host

    every_core, auto = host.cpu_list_text(host.usable_cpus()), host.resolve_dtype("auto")
    runs = [(dtype, "default", every_core) for dtype in args.dtypes.split(",")]
    for preload in filter(None, args.preloads.split(",")):
        try:
            host.preload_env(preload)
            runs.append((auto, preload, every_core))
        except RuntimeError as error:
            print(f"skipping preload {preload}: {error}", file=sys.stderr)
    runs += [(auto, "default", bind) for bind in filter(None, args.binds.split(";"))]
    results = []
    for dtype, preload, bind in runs:
        result = run_child(dtype, preload, bind, args)
        results.append({"dtype": dtype, "preload": preload, "bind": bind, **result})
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    report = {
        "cpu": host.cpu_model(),
        "machine": platform.machine(),
        "native_bf16": host.cpu_has_native_bf16(),
        "auto_dtype": host.resolve_dtype("auto"),
        "num_requests": args.num_requests,
        "max_tokens": args.max_tokens,
        "results": results,
    }
    print(json.dumps(report, indent=2))
    print("\n| dtype | preload | cores | tok/s, median (rounds) | engine load s |\n| --- | --- | --- | --- | --- |")
    for r in results:
        rounds = r.get("tokens_per_s")
        speed = f"**{statistics.median(rounds):.0f}** ({', '.join(f'{x:.0f}' for x in rounds)})" if rounds else "failed"
        print(f"| {r['dtype']} | {r['preload']} | {r['bind']} | {speed} | {r.get('load_s', '')} |")


if __name__ == "__main__":  # vLLM spawns engine processes
    main()
