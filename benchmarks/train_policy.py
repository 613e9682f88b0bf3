"""Entropy control in RL fine-tuning, one run: plain GRPO (dapo loss) against KL-Cov,
Clip-Cov and the 80/20 forking-token mask, the same short run each, on the embedded model.

Each variant is `entropy-serve train-policy` with the same settings but its entropy
control (arithmetic 1-digit addition, seed 0). Before and after, held-out problems
(another seed) are answered by the in-process service: greedy, and single samples at
T 0.8 (`--samples` per problem, accuracy averaged). The claim checked is Cui et al.'s:
mean token entropy holds up under KL-Cov / Clip-Cov while it falls under plain GRPO.
Writes OUT/results.json, OUT/results.md (one table) and OUT/entropy.png (rollout entropy
and reward per step, every variant); each variant's run folder stays in OUT/VARIANT.

    python benchmarks/train_policy.py --out DIR [--steps 12] [--learning-rate 2e-5] [--held-out 100] [--variants ...]
    python benchmarks/train_policy.py --report DIR   # redraw the table and plot from DIR/results.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from entropy_serve import model_store
from entropy_serve.server.config import ServerConfig
from entropy_serve.server.core.service import running_service
from entropy_serve.tasks import arithmetic
from entropy_serve.tasks.answers import is_correct
from entropy_serve.trainer.policy_log import LOG_FILE, read_log

VARIANTS = {
    "grpo (dapo)": [],
    "kl_cov": ["--entropy-control", "kl_cov"],
    "clip_cov": ["--entropy-control", "clip_cov"],
    "80/20": ["--top-entropy-quantile", "0.2"],
    # The paper's fractions select max(1, fraction x tokens) tokens: one token in a batch
    # of a few hundred. Ten times the fraction, for small runs.
    "kl_cov x10": ["--entropy-control", "kl_cov", "--kl-cov-fraction", "0.02"],
    "clip_cov x10": ["--entropy-control", "clip_cov", "--clip-cov-ratio", "0.002"],
}
DEFAULT_VARIANTS = ["grpo (dapo)", "kl_cov", "clip_cov", "80/20"]
HELD_OUT_SEED = 1_000


async def held_out_accuracy(model: str, problems, samples: int) -> dict:
    """Greedy accuracy, and mean single-sample accuracy at T 0.8, on `problems`."""
    config = ServerConfig(
        model=model, served_model_name="m", max_model_len=1024, max_n=samples, gpu_memory_utilization=0.3
    )

    async def one(service, index, problem):
        messages = [{"role": "user", "content": problem.question}]
        base = {"model": "m", "messages": messages, "max_tokens": 64}
        greedy, sampled = await asyncio.gather(
            service.answer({**base, "temperature": 0.0}, "chat_completions"),
            service.answer({**base, "temperature": 0.8, "n": samples, "seed": index}, "chat_completions"),
        )
        return (
            is_correct(greedy.choices[0].message.content, problem.answer),
            sum(is_correct(c.message.content, problem.answer) for c in sampled.choices) / samples,
        )

    async with running_service(config) as service:
        scores = await asyncio.gather(*(one(service, i, p) for i, p in enumerate(problems)))
    return {
        "greedy_accuracy": round(sum(g for g, _ in scores) / len(scores), 3),
        "sample_accuracy_t08": round(sum(s for _, s in scores) / len(scores), 3),
    }


def train(name: str, flags: list[str], args) -> dict:
    out = args.out / name.replace(" (dapo)", "").replace(" ", "-").replace("/", "-")
    command = [
        sys.executable,
        "-m",
        "entropy_serve",
        "train-policy",
        "--output-dir",
        str(out),
        "--steps",
        str(args.steps),
        "--group-size",
        str(args.group_size),
        "--prompts-per-step",
        str(args.prompts_per_step),
        "--learning-rate",
        str(args.learning_rate),
        "--max-tokens",
        str(args.max_tokens),
        "--seed",
        str(args.seed),
        "--calibration-samples",
        "1",
        "--save-steps",
        str(args.steps),
        *flags,
    ]
    print(f"[{name}] {' '.join(command[1:])}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    records = read_log(out / LOG_FILE)
    rollout = [
        (r["step"], r["rollout_entropy_nats"], r["reward"]) for r in records if r["rollout_entropy_nats"] is not None
    ]
    return {
        "folder": str(out),
        "wall_s": round(time.perf_counter() - started, 1),
        "rollout_entropy_by_batch": [round(h, 3) for _, h, _ in rollout],
        "reward_by_batch": [round(r, 3) for _, _, r in rollout],
        "trainer_entropy_by_step": [round(r["trainer_entropy_nats"], 3) for r in records],
        "steps": [s for s, _, _ in rollout],
    }


def write_report(results: dict, args) -> None:
    lines = [
        "| variant | greedy acc before -> after | T0.8 sample acc before -> after "
        "| rollout entropy (nats): first batch -> last -> mean of the last 3 | wall (s) |",
        "|---|---|---|---|---|",
    ]
    before = results["before"]
    for name, run in results["variants"].items():
        entropy = run["rollout_entropy_by_batch"]
        lines.append(
            f"| {name} | {before['greedy_accuracy']} -> {run['after']['greedy_accuracy']} "
            f"| {before['sample_accuracy_t08']} -> {run['after']['sample_accuracy_t08']} "
            f"| {entropy[0]} -> {entropy[-1]} -> {sum(entropy[-3:]) / len(entropy[-3:]):.3f} | {run['wall_s']} |"
        )
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (entropy_axis, reward_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for name, run in results["variants"].items():
        entropy_axis.plot(run["steps"], run["rollout_entropy_by_batch"], marker=".", label=name)
        reward_axis.plot(run["steps"], run["reward_by_batch"], marker=".", label=name)
    for axis, label in (
        (entropy_axis, "rollout mean token entropy (nats)"),
        (reward_axis, "reward (accuracy of rollouts)"),
    ):
        axis.set_xlabel("optimizer step (its rollout batch sampled at its start)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(args.out / "entropy.png", dpi=100)


def main() -> None:
    if sys.argv[1:2] == ["--report"]:  # python benchmarks/train_policy.py --report OUT: redraw from OUT/results.json
        out = Path(sys.argv[2])
        write_report(json.loads((out / "results.json").read_text()), argparse.Namespace(out=out))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--prompts-per-step", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--held-out", type=int, default=100)
    parser.add_argument("--samples", type=int, default=4, help="T 0.8 samples per held-out problem")
    parser.add_argument(
        "--variants",
        type=lambda text: text.split(","),
        default=DEFAULT_VARIANTS,
        help=f"comma-separated, of: {', '.join(VARIANTS)} (default: the first four)",
    )
    args = parser.parse_args()
    for name in args.variants:
        if name not in VARIANTS:
            parser.error(f"--variants: unknown {name!r}")
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    problems = arithmetic.generate(args.held_out, HELD_OUT_SEED, arithmetic.levels_named(["add-1digit"]))
    base = str(model_store.prepare_default_model())
    results = {
        "settings": vars(args) | {"out": str(args.out)},
        "before": asyncio.run(held_out_accuracy(base, problems, args.samples)),
    }
    print(f"before: {results['before']}", file=sys.stderr, flush=True)
    results["variants"] = {}
    for name in args.variants:
        run = train(name, VARIANTS[name], args)
        run["after"] = asyncio.run(held_out_accuracy(run["folder"], problems, args.samples))
        print(f"[{name}] after: {run['after']}", file=sys.stderr, flush=True)
        results["variants"][name] = run
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_report(results, args)


if __name__ == "__main__":
    main()
