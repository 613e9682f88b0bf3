"""Offline throughput: `entropy-serve batch` versus bare `vllm.LLM.generate`, and `score`.

The same --num-requests completion requests (ignore_eos, so each generates exactly
--max-tokens tokens, temperature 0.8) go through bare vLLM (the server's very engine
settings, as benchmarks/throughput.py builds them) and through the `entropy-serve
batch` command, all lines in flight; then `entropy-serve score` scores the same prompts
with a completion of about the same length. Tokens/s exclude engine start-up on every
side: bare vLLM is timed around `generate`, the commands report their own answering
time in their summary line (read here). One run, the ratio measured in it.

    python benchmarks/batch.py [--num-requests 256] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from throughput import prompts  # benchmarks/, this script's folder: the same prompts as the throughput benchmark

SUMMARY = re.compile(r"(\d+) (?:generated|scored) tokens in ([\d.]+) s \(([\d.]+) tokens/s\)")


def bare_vllm(model: str, texts: list[str], max_tokens: int, max_model_len: int) -> float:
    from vllm import LLM, SamplingParams

    from entropy_serve.server.config import ServerConfig
    from entropy_serve.server.engine.holder import CORE_CLAIMS, engine_args

    args = engine_args(ServerConfig(model=model, served_model_name="bench", max_model_len=max_model_len))
    llm = LLM(**{k: v for k, v in vars(args).items() if k != "enable_log_requests"})
    start = time.perf_counter()
    outputs = llm.generate(
        texts, SamplingParams(max_tokens=max_tokens, temperature=0.8, ignore_eos=True), use_tqdm=False
    )
    elapsed = time.perf_counter() - start
    llm.llm_engine.engine_core.shutdown()
    # Its cores go to the server measured next (told the same ones: VLLM_CPU_OMP_THREADS_BIND).
    CORE_CLAIMS.release()
    return sum(len(c.token_ids) for o in outputs for c in o.outputs) / elapsed


def command_tokens_per_s(*args: str) -> float:
    """Run an entropy-serve command; the tokens/s of its summary line."""
    done = subprocess.run([sys.executable, "-m", "entropy_serve", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"entropy-serve {args[0]} failed:\n{done.stderr[-3000:]}")
    match = SUMMARY.search(done.stderr)
    if match is None:
        raise SystemExit(f"no summary line in the output of entropy-serve {args[0]}")
    return float(match.group(3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-requests", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-model-len", type=int, default=2048)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")

    from entropy_serve.model_store import DEFAULT_MODEL_NAME, prepare_default_model

    model = str(prepare_default_model())
    texts = prompts(args.num_requests)
    engine = ("--max-model-len", str(args.max_model_len), "--max-in-flight", str(args.num_requests))
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        lines = [
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/completions",
                "body": {
                    "model": DEFAULT_MODEL_NAME,
                    "prompt": t,
                    "max_tokens": args.max_tokens,
                    "temperature": 0.8,
                    "ignore_eos": True,
                },
            }
            for i, t in enumerate(texts)
        ]
        (folder / "batch.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        completion = " ".join(["Once upon a time there was a story to tell."] * max(1, args.max_tokens // 10))
        records = [{"custom_id": f"s{i}", "prompt": t, "completion": completion} for i, t in enumerate(texts)]
        (folder / "score.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

        bare = bare_vllm(model, texts, args.max_tokens, args.max_model_len)
        batch = command_tokens_per_s(
            "batch", "-i", str(folder / "batch.jsonl"), "-o", str(folder / "out.jsonl"), *engine
        )
        score = command_tokens_per_s(
            "score", "-i", str(folder / "score.jsonl"), "-o", str(folder / "scores.jsonl"), *engine
        )
    print(
        json.dumps(
            {
                "num_requests": args.num_requests,
                "max_tokens": args.max_tokens,
                "bare_vllm_tokens_per_s": round(bare, 1),
                "batch_tokens_per_s": round(batch, 1),
                "batch_over_bare_vllm": round(batch / bare, 3),
                "score_tokens_per_s": round(score, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":  # vLLM spawns engine processes
    main()
