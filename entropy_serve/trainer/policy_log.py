"""The policy run's per-step log (JSONL), its plot (PNG), and checkpoint-at-Ctrl-C.

One line per optimizer step, written as the step ends, so a stopped run keeps its log;
a resumed run drops the lines past its checkpoint first. Rollout fields (reward,
accuracy, rollout entropy, tokens, sync time) are present on the steps that sampled a
rollout batch (every `updates_per_batch` steps), null on the others.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

from transformers import TrainerCallback

LOG_FILE = "train_log.jsonl"
PLOT_FILE = "train_log.png"
ROLLOUTS_FILE = "rollouts.jsonl"  # each rollout request (step: the optimizer steps before it) and its responses

# Our log's names for TRL's logged metrics (and ours, logged through TRL's metric store).
FIELDS = {
    "reward": "reward",
    "accuracy": "accuracy",
    "rollout_entropy_nats": "rollout_entropy_nats",
    "trainer_entropy_nats": "entropy",
    "clip_fraction": "clip_fraction",
    "policy_kl": "policy_kl",
    "reference_kl": "kl",
    "cov_selected_tokens": "cov_selected_tokens",
    "siren_entropy_nats": "siren_entropy",  # the siren method's peak-token nucleus entropy
    "siren_anchor_nats": "siren_anchor",
    "aepo_temperature": "aepo_temperature",  # the aepo method's second rollout
    "aepo_target_entropy_nats": "aepo_target_entropy_nats",
    "aepo_samples": "aepo_samples",
    "aepo_rollout_tokens": "aepo_rollout_tokens",  # prompt and completion tokens of its second rollout
    "mean_completion_tokens": "completions/mean_length",
    "total_tokens": "num_tokens",  # prompt and completion tokens of every rollout so far
    "sync_s": "sync_s",
    "loss": "loss",
    "learning_rate": "learning_rate",
}


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def truncate_log(path: Path, keep_step: Callable[[int], bool]) -> None:
    """Keep the records whose step passes `keep_step` (a resumed run redoes the others)."""
    kept = [record for record in read_log(path) if keep_step(record["step"])]
    path.write_text("".join(json.dumps(record) + "\n" for record in kept))


class StepLog(TrainerCallback):
    """Appends one record per logged step to `path`, with the step's wall time."""

    def __init__(self, path: Path):
        self.path = path
        self._step_started = time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_started = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        # Rank 0 writes (its metrics are already gathered over ranks); the run's final
        # summary (train_runtime...) is not a step.
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        record = {"step": state.global_step, **{ours: logs.get(theirs) for ours, theirs in FIELDS.items()}}
        record["step_time_s"] = time.perf_counter() - self._step_started
        with self.path.open("a") as out:
            out.write(json.dumps(record) + "\n")


class StopOnInterrupt(TrainerCallback):
    """Ctrl-C: finish the step under way, save a checkpoint, stop. A second Ctrl-C stops at once."""

    def __init__(self):
        self.interrupted = False
        self._previous = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._previous = signal.signal(signal.SIGINT, self._handle)

    def on_train_end(self, args, state, control, **kwargs):
        self.restore()

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum, frame):
        if self.interrupted:
            raise KeyboardInterrupt
        self.interrupted = True
        print("\nentropy-serve: stopping after this step, with a checkpoint (Ctrl-C again to stop now)", flush=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.interrupted:
            control.should_save = True
            control.should_training_stop = True


def plot_log(records: list[dict], path: Path, title: str) -> None:
    """Reward and accuracy, and mean token entropy (rollout and trainer), over steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (scores, entropy) = plt.subplots(1, 2, figsize=(11, 4))
    for axis, names, label in (
        (scores, ("reward", "accuracy"), "reward / accuracy"),
        (entropy, ("rollout_entropy_nats", "trainer_entropy_nats"), "mean token entropy (nats)"),
    ):
        for name in names:
            points = [(r["step"], r[name]) for r in records if r.get(name) is not None]
            if points:
                axis.plot(*zip(*points), marker=".", label=name)
        axis.set_xlabel("optimizer step")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
