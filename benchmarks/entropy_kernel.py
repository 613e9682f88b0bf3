"""The fused entropy kernel's memory bandwidth, against the device's own copy bandwidth
and against torch's unfused log_softmax entropy, measured in one run.

The kernel reads each logit once and writes three floats per row, so its bandwidth is
the bytes of the logits over its time; the device's attainable bandwidth is what
`torch.Tensor.copy_` of a large buffer reaches (bytes read + bytes written over its
time). Goal: the kernel at >= 80% of copy bandwidth at serving batch sizes. Rows are
real vocabulary sizes (SmolLM2 49k, Llama-3 128k, Qwen2 152k), in float32 and bfloat16.

    python benchmarks/entropy_kernel.py [--device cuda] [--out entropy_kernel.json]

`--device cpu` (with TRITON_INTERPRET=1 and --quick) only checks that the script runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from entropy_serve.kernels.entropy import fused_entropy_stats

VOCABS = (49152, 128256, 151936)
BATCHES = (1, 8, 64, 256)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def timed_s(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of `fn()` over `repeats` runs, after two warm-up runs."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def unfused_entropy(logits: torch.Tensor) -> torch.Tensor:
    """torch's way: a [batch, vocab] float32 log_softmax, then a second pass for H."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return -(logprobs.exp() * logprobs).sum(-1)


def copy_bandwidth_gbs(device: torch.device, num_bytes: int, repeats: int) -> float:
    source = torch.empty(num_bytes, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    return 2 * num_bytes / timed_s(lambda: target.copy_(source), device, repeats) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="one small case (a dry run of the script)")
    parser.add_argument("--out", help="also write the report here (JSON)")
    args = parser.parse_args()
    device = torch.device(args.device)
    vocabs, batches = ((1000,), (2,)) if args.quick else (VOCABS, BATCHES)
    copy_gbs = copy_bandwidth_gbs(device, (1 << 20) if args.quick else (1 << 30), args.repeats)
    rows = []
    for dtype_name, dtype in DTYPES.items():
        for vocab in vocabs:
            for batch in batches:
                logits = torch.randn(batch, vocab, device=device).mul_(3).to(dtype)
                num_bytes = logits.numel() * logits.element_size()
                fused_s = timed_s(lambda logits=logits: fused_entropy_stats(logits), device, args.repeats)
                unfused_s = timed_s(lambda logits=logits: unfused_entropy(logits), device, args.repeats)
                rows.append(
                    {
                        "dtype": dtype_name,
                        "vocab": vocab,
                        "batch": batch,
                        "fused_us": round(fused_s * 1e6, 1),
                        "unfused_us": round(unfused_s * 1e6, 1),
                        "fused_gbs": round(num_bytes / fused_s / 1e9, 1),
                        "fraction_of_copy": round(num_bytes / fused_s / 1e9 / copy_gbs, 3),
                        "speedup_over_unfused": round(unfused_s / fused_s, 2),
                    }
                )
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "copy_gbs": round(copy_gbs, 1),
        "goal": "fused_gbs >= 0.8 x copy_gbs",
        "rows": rows,
    }
    print(json.dumps(report, indent=2))
    print(f"\ncopy bandwidth {copy_gbs:.0f} GB/s on {report['device']}\n")
    print(
        "| dtype | vocab | batch | fused GB/s | x copy | fused us | unfused us | x unfused |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    for r in rows:
        print(
            f"| {r['dtype']} | {r['vocab']} | {r['batch']} | {r['fused_gbs']} | {r['fraction_of_copy']} | "
            f"{r['fused_us']} | {r['unfused_us']} | {r['speedup_over_unfused']} |"
        )
    if args.out:
        with open(args.out, "w") as file:
            json.dump(report, file, indent=2)


if __name__ == "__main__":
    main()
