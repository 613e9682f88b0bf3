"""Micro-benchmark: our typical + temperature step versus transformers' warper chain.

Same [batch, vocab] logits tensor for both, median of repeated runs (after warm-up):
(a) transformers: TemperatureLogitsWarper(T) then TypicalLogitsWarper(p);
(b) ours: samplers.chain.apply_chain with the same T and typical_p (which also computes
    the model and sampled entropies it reports).

    python benchmarks/sampler_step.py [--batch 32] [--vocab 49152] [--repeats 30] [--threads N]

vLLM's CPU worker runs with the torch threads of the cores it binds (one, on a 2-core
machine, where it leaves the other to the engine process): `--threads 1` times the step
as it runs there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TypicalLogitsWarper

from entropy_serve.samplers.chain import RowParams, apply_chain


def median_time_s(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--typical-p", type=float, default=0.9)
    parser.add_argument(
        "--logit-scale", type=float, default=3.0, help="std of the random logits (larger: peakier rows)"
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    logits = torch.randn(args.batch, args.vocab, generator=torch.Generator().manual_seed(0)) * args.logit_scale
    params = RowParams.uniform(args.batch, temperature=args.temperature, typical_p=args.typical_p)
    temperature = TemperatureLogitsWarper(args.temperature)
    typical = TypicalLogitsWarper(mass=args.typical_p)

    def theirs():
        return typical(None, temperature(None, logits.clone()))

    def ours():
        return apply_chain(logits.clone(), params)

    assert torch.equal(theirs() == float("-inf"), logits.clone().isinf() | _our_mask(logits, params))
    theirs_s, ours_s = median_time_s(theirs, args.repeats), median_time_s(ours, args.repeats)
    print(
        json.dumps(
            {
                "batch": args.batch,
                "vocab": args.vocab,
                "logit_scale": args.logit_scale,
                "threads": torch.get_num_threads(),
                "transformers_ms": round(theirs_s * 1e3, 2),
                "ours_ms": round(ours_s * 1e3, 2),
                "ratio_ours_over_transformers": round(ours_s / theirs_s, 3),
            },
            indent=2,
        )
    )


def _our_mask(logits: torch.Tensor, params: RowParams) -> torch.Tensor:
    shaped = logits.clone()
    apply_chain(shaped, params)
    return shaped == float("-inf")


if __name__ == "__main__":
    main()
