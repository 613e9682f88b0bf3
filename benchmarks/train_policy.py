"""Every entropy-RL method of the trainer, with seeds: what each does to rollout entropy
and to held-out accuracy, against plain GRPO, on the embedded model.

Each run is `entropy-serve train-policy` with the same settings but its `--method` and
`--seed` (arithmetic, 1-digit addition by default), with `--held-out-problems`: the run
answers the same held-out problems (a fixed seed) greedy and at T 0.8 before step 1 and
after its last step, on its own rollout engine. Runs go one after another (two cores);
a run whose folder already holds its summary is not redone, so an interrupted benchmark
resumes with the same command. Writes, in OUT:
- runs/METHOD-sSEED.json: each run's summary (per-step rollout entropy, held-out scores,
  tokens, wall time), small enough to keep; the run folders (the trained model, its
  logs; not its checkpoints) stay in OUT/work;
- results.json, results.md (the table and the verdicts) and entropy.png (rollout
  entropy per step, mean and the seeds' min-max band, every method in one plot).

    python benchmarks/train_policy.py --out DIR [--methods grpo,aepo,...] [--seeds 0,1,2] [--steps 30]
    python benchmarks/train_policy.py --report DIR   # redraw the table and plot from DIR/runs
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from functools import reduce
from operator import getitem
from pathlib import Path

from entropy_serve.trainer.held_out import HELD_OUT_FILE
from entropy_serve.trainer.methods import METHODS
from entropy_serve.trainer.policy import CHECKPOINTS
from entropy_serve.trainer.policy_log import LOG_FILE, read_log

BASELINE = "grpo"  # no method: TRL's GRPO with DAPO's loss
# Each benchmarked run's name and what it passes to train-policy besides the settings
# every run shares: its --method, and the settings a method needs at this scale.
VARIANTS = {BASELINE: [], **{method: ["--method", method] for method in METHODS}}
VARIANTS["canon"] += ["--loss-type", "dr_grpo"]  # the paper's pairing (its advantages are not std-scaled)
# The reference samples a quarter of a batch of hundreds of problems again; a quarter of
# 2 problems is one group, whose 4 answers are often all wrong (nothing to select): all.
VARIANTS["aepo"] += ["--aepo-prompt-fraction", "1.0"]
# AEPO's claim is a target of one's choosing. By default the target is the first batch's
# entropy, which the untrained model reaches while failing most problems; this one is
# 1 nat, which plain GRPO's entropy passes through on its way down.
VARIANTS["aepo_1nat"] = [*VARIANTS["aepo"], "--aepo-target-entropy-nats", "1.0"]
AEPO_BAND = 0.10  # the paper's claim: entropy held within 10% of its target ...
AEPO_FROM_STEP = 10  # ... from step 10 on


def run_method(method: str, seed: int, args) -> dict:
    """Train one (method, seed), or read its summary if an earlier benchmark did."""
    summary_path = args.out / "runs" / f"{method}-s{seed}.json"
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    folder = args.out / "work" / f"{method}-s{seed}"
    command = [
        sys.executable, "-m", "entropy_serve", "train-policy",
        "--output-dir", str(folder), "--steps", str(args.steps), "--seed", str(seed),
        "--group-size", str(args.group_size), "--prompts-per-step", str(args.prompts_per_step),
        "--updates-per-batch", str(args.updates_per_batch), "--learning-rate", str(args.learning_rate),
        "--max-tokens", str(args.max_tokens), "--save-steps", str(args.steps), "--calibration-samples", "1",
        "--held-out-problems", str(args.held_out), "--held-out-samples", str(args.samples),
        *VARIANTS[method],
    ]  # fmt: skip
    print(f"[{method} s{seed}] {' '.join(command[2:])}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    records = read_log(folder / LOG_FILE)
    rollout = [r for r in records if r["rollout_entropy_nats"] is not None]
    summary = {
        "method": method,
        "seed": seed,
        "wall_s": round(time.perf_counter() - started, 1),
        "steps": [r["step"] for r in rollout],  # the steps that sampled a rollout batch
        "rollout_entropy_nats": [round(r["rollout_entropy_nats"], 4) for r in rollout],
        "reward": [round(r["reward"], 4) for r in rollout],
        "aepo_target_entropy_nats": rollout[0].get("aepo_target_entropy_nats"),
        # prompt and completion tokens sampled: TRL's count of the policy's rollouts, and AEPO's second rollout
        "total_tokens": rollout[-1]["total_tokens"] + sum(r.get("aepo_rollout_tokens") or 0 for r in rollout),
        "held_out": json.loads((folder / HELD_OUT_FILE).read_text()),
    }
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    shutil.rmtree(folder / CHECKPOINTS)  # ~1.5 GB a run (weights and optimizer state); the model stays
    return summary


def spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def shown(values: list[float], digits: int = 3) -> str:
    mean, sd = spread(values)
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def column(runs: list[dict], *path: str) -> list:
    """One value per run, found by the keys in `path`."""
    return [reduce(getitem, path, run) for run in runs]


def late_entropies(run: dict) -> list[float]:
    """The rollout entropies of the batches from step AEPO_FROM_STEP on."""
    return [h for s, h in zip(run["steps"], run["rollout_entropy_nats"]) if s >= AEPO_FROM_STEP]


def aepo_holds(run: dict) -> float:
    """The share of rollout batches from step AEPO_FROM_STEP on whose entropy is within
    AEPO_BAND of the run's target."""
    target = run["aepo_target_entropy_nats"]
    late = late_entropies(run)
    return sum(abs(h - target) <= AEPO_BAND * target for h in late) / max(1, len(late))


def distance(run: dict, target: float) -> float:
    """The mean distance (nats) of the rollout entropy from `target`, from step
    AEPO_FROM_STEP on."""
    return statistics.fmean(abs(h - target) for h in late_entropies(run))


def report(runs: list[dict], out: Path) -> str:
    order = list(VARIANTS)
    by_method: dict[str, list[dict]] = {}
    for run in sorted(runs, key=lambda r: (order.index(r["method"]), r["seed"])):
        by_method.setdefault(run["method"], []).append(run)
    baseline_after = [r["held_out"]["after"]["greedy_accuracy"] for r in by_method.get(BASELINE, [])]
    lines = [
        "| method | seeds | rollout entropy (nats): first batch -> last | greedy acc: before -> after "
        "| T0.8 acc: before -> after | after - grpo (greedy) | tokens | wall (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for method, group in by_method.items():
        greedy_after = column(group, "held_out", "after", "greedy_accuracy")
        versus = ""
        if baseline_after and method != BASELINE:
            gain = statistics.fmean(greedy_after) - statistics.fmean(baseline_after)
            noise = max(spread(greedy_after)[1], spread(baseline_after)[1])
            versus = f"{gain:+.3f} (spread {noise:.3f})"
            if min(len(group), len(baseline_after)) < 2:
                verdicts.append(f"- {method}: one seed, no spread measured: no verdict against plain GRPO")
            else:
                beats = "beats" if gain > noise else "does not beat"
                verdicts.append(
                    f"- {method}: {beats} plain GRPO on held-out greedy accuracy by more than the seeds' spread"
                )
        entropy = [r["rollout_entropy_nats"] for r in group]
        cells = [
            method,
            str(len(group)),
            f"{shown([e[0] for e in entropy])} -> {shown([e[-1] for e in entropy])}",
            f"{shown(column(group, 'held_out', 'before', 'greedy_accuracy'))} -> {shown(greedy_after)}",
            f"{shown(column(group, 'held_out', 'before', 'sample_accuracy_t08'))} -> "
            f"{shown(column(group, 'held_out', 'after', 'sample_accuracy_t08'))}",
            versus,
            f"{statistics.fmean(column(group, 'total_tokens')):.0f}",
            f"{statistics.fmean(column(group, 'wall_s')):.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    baseline_by_seed = {run["seed"]: run for run in by_method.get(BASELINE, [])}
    for method, group in by_method.items():
        if group[0]["aepo_target_entropy_nats"] is None:
            continue
        held = ", ".join(f"{aepo_holds(r):.2f}" for r in group)
        targets = ", ".join(f"{r['aepo_target_entropy_nats']:.2f}" for r in group)
        distances = [distance(r, r["aepo_target_entropy_nats"]) for r in group]
        line = (
            f"- {method}: share of rollout batches from step {AEPO_FROM_STEP} on within {AEPO_BAND:.0%} of the "
            f"target (nats: {targets}), per seed: {held}; mean distance from the target {shown(distances)} nats"
        )
        paired = [r for r in group if r["seed"] in baseline_by_seed]
        if paired:  # plain GRPO's run of the same seed, measured against the same target
            grpo = [distance(baseline_by_seed[r["seed"]], r["aepo_target_entropy_nats"]) for r in paired]
            line += f" (plain GRPO's, same seeds and targets: {shown(grpo)})"
        verdicts.append(line)
    if BASELINE in by_method:
        falls = [r["rollout_entropy_nats"][-1] - r["rollout_entropy_nats"][0] for r in by_method[BASELINE]]
        # How much one batch's entropy moves from the last: the noise any band is read through.
        steps = [abs(b - a) for r in by_method[BASELINE] for a, b in itertools.pairwise(late_entropies(r))]
        verdicts.append(
            f"- grpo: rollout entropy change, first batch to last, per seed: {', '.join(f'{f:+.3f}' for f in falls)}; "
            f"from one batch to the next, from step {AEPO_FROM_STEP} on: median {statistics.median(steps):.3f} nats"
        )
    text = "\n".join(lines) + "\n\n" + "\n".join(verdicts) + "\n"
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps(runs, indent=2) + "\n")
    plot(by_method, out / "entropy.png")
    return text


def plot(by_method: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from cycler import cycler

    figure, axis = plt.subplots(figsize=(10, 5.5))
    # 10 colours, solid then dashed: up to 20 methods told apart
    axis.set_prop_cycle(cycler(linestyle=["-", "--"]) * cycler(color=plt.get_cmap("tab10").colors))
    for method, group in by_method.items():
        steps = group[0]["steps"]
        series = [r["rollout_entropy_nats"] for r in group if r["steps"] == steps]
        columns = list(zip(*series))
        mean = [statistics.fmean(c) for c in columns]
        (line,) = axis.plot(steps, mean, marker=".", label=f"{method} ({len(series)} seeds)")
        axis.fill_between(
            steps, [min(c) for c in columns], [max(c) for c in columns], color=line.get_color(), alpha=0.15
        )
    axis.set_xlabel("optimizer step (the rollout batch sampled at its start)")
    axis.set_ylabel("rollout mean token entropy (nats): seeds' mean, min-max band")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--report", action="store_true", help="only redraw the table and plot from OUT/runs")
    parser.add_argument("--methods", type=lambda text: text.split(","), default=list(VARIANTS))
    parser.add_argument("--seeds", type=lambda text: [int(s) for s in text.split(",")], default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--prompts-per-step", type=int, default=2)
    parser.add_argument("--updates-per-batch", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument("--held-out", type=int, default=60, help="held-out problems")
    parser.add_argument("--samples", type=int, default=2, help="T 0.8 samples per held-out problem")
    args = parser.parse_args()
    if args.report:
        runs = [json.loads(p.read_text()) for p in sorted((args.out / "runs").glob("*.json"))]
        print(report(runs, args.out))
        return
    for name in args.methods:
        if name not in VARIANTS:
            parser.error(f"--methods: unknown {name!r}; known: {', '.join(VARIANTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    runs = []
    for seed in args.seeds:  # every method's first seed before any second seed: partial results compare
        for method in args.methods:
            runs.append(run_method(method, seed, args))
            report(runs, args.out)
    print(report(runs, args.out))


if __name__ == "__main__":
    main()
