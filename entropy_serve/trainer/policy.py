"""`entropy-serve train-policy`: GRPO with entropy control, rollouts on our engine.

Order:
1. settings (trainer/policy_config.py) are checked against the output folder's
   `train_config.json`: a folder holds one run, which the same command resumes;
2. problems: the built-in arithmetic levels (seeded) or a JSONL file (tasks/), as TRL
   conversational prompts with their reference answers;
3. the rollout engine starts (trainer/rollouts.py) on the initial weights, in float32 by
   default, with `processed_logprobs`;
4. TRL's loop runs (trainer/grpo.py): rollouts, rewards, advantages, our loss; a
   checkpoint every `save_steps` and at Ctrl-C, one JSONL line per step;
5. at the end: the weights, in the initial model's dtype, and the tokenizer are saved to
   the output folder (an ordinary HF model folder), the engine takes them, answers the
   held-out problems when asked (as it did before step 1: `held_out.json`) and
   calibrates them (the `calibrate` command's profile, `entropy_profile.json`, which
   `serve --model DIR` then uses), and the log's plot is drawn.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from entropy_serve import calibration, host, model_store
from entropy_serve.calibration import PROFILE_FILE, profile_record, sample_entropies
from entropy_serve.server.config import ServerConfig
from entropy_serve.tasks.answers import extract_answer, is_correct
from entropy_serve.tasks.problems import load_problems
from entropy_serve.trainer.entropy_control import majority_rewards
from entropy_serve.trainer.grpo import group_indices
from entropy_serve.trainer.held_out import record_held_out
from entropy_serve.trainer.policy_config import PolicyConfig
from entropy_serve.trainer.policy_log import (
    LOG_FILE,
    PLOT_FILE,
    ROLLOUTS_FILE,
    StepLog,
    StopOnInterrupt,
    plot_log,
    read_log,
    truncate_log,
)

logger = logging.getLogger(__name__)

CONFIG_FILE = "train_config.json"
CHECKPOINTS = "checkpoints"
SYNC_DIR = ".engine-weights"
SERVED_NAME = "policy"


def rewards_for(mode: str, group_size: int):
    """TRL reward function: ground truth (1 if correct), or TTRL's majority agreement
    within each problem's group of `group_size`; the accuracy against the reference is
    logged either way."""

    def rewards(prompts, completions, answer, log_metric, **_) -> list[float]:
        texts = [completion[-1]["content"] for completion in completions]
        correct = [1.0 if is_correct(text, reference) else 0.0 for text, reference in zip(texts, answer)]
        log_metric("accuracy", sum(correct) / len(correct))
        if mode == "ground_truth":
            return correct
        agreement = [0.0] * len(texts)
        for run in group_indices(len(prompts), group_size):
            for index, reward in zip(run, majority_rewards([extract_answer(texts[i]) for i in run])):
                agreement[index] = reward
        return agreement

    rewards.__name__ = mode
    return rewards


def reward_mode(settings: PolicyConfig) -> str:
    """TTRL's majority vote when the `ttrl` method is on, the reference answers otherwise."""
    return "majority" if "ttrl" in settings.method else "ground_truth"


def launch_rank() -> tuple[int, int]:
    """(this process's rank, the number of processes) under accelerate / torchrun; (0, 1) alone."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def check_output_folder(settings: PolicyConfig, write: bool = True) -> None:
    """A new folder records the settings; an existing one must hold the same run."""
    out = settings.output_dir
    out.mkdir(parents=True, exist_ok=True)
    recorded = out / CONFIG_FILE
    if recorded.exists():
        previous = PolicyConfig.model_validate_json(recorded.read_text())
        if previous.resumable_fields() != settings.resumable_fields():
            changed = sorted(
                k for k, v in settings.resumable_fields().items() if previous.resumable_fields().get(k) != v
            )
            raise ValueError(f"{out} holds a run with other settings ({', '.join(changed)}); use a new --output-dir")
    if write:
        recorded.write_text(settings.model_dump_json(indent=2) + "\n")


def engine_config(settings: PolicyConfig, model: str) -> ServerConfig:
    profile = settings.entropy_profile or calibration.profile_for(settings.model)
    return ServerConfig(
        model=model,
        served_model_name=SERVED_NAME,
        dtype=settings.dtype,
        max_model_len=settings.max_model_len,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        max_n=max(settings.group_size, settings.calibration_samples, settings.held_out_samples),
        logprobs_mode="processed_logprobs",
        entropy_profile=str(profile) if profile else None,
        cpu_cores=host.launcher_rank_cores(dict(os.environ)),  # CPU ranks' engines side by side
    )


def grpo_args(settings: PolicyConfig):
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=str(settings.output_dir / CHECKPOINTS),
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        per_device_train_batch_size=settings.group_size * settings.prompts_per_step,
        gradient_accumulation_steps=1,
        num_generations=settings.group_size,
        num_iterations=settings.updates_per_batch,
        max_steps=settings.steps,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="constant",
        loss_type=settings.loss_type,
        beta=settings.beta,
        epsilon=settings.epsilon,
        epsilon_high=settings.epsilon_high,
        top_entropy_quantile=settings.forking_token_fraction if "80_20" in settings.method else 1.0,
        temperature=settings.temperature,
        max_completion_length=settings.max_tokens,
        logging_steps=1,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=2,
        report_to="none",
        seed=settings.seed,
    )


def train_policy(settings: PolicyConfig) -> dict:
    """Run (or resume) the training; returns a summary. See the module doc."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_utils import get_last_checkpoint

    from entropy_serve.trainer.grpo import PolicyTrainer
    from entropy_serve.trainer.rollouts import RolloutEngine

    rank, world_size = launch_rank()
    main = rank == 0  # writes the log, the plot and the output folder; every rank runs its own rollouts
    check_output_folder(settings, write=main)
    out = settings.output_dir
    model_path = settings.model or str(model_store.prepare_default_model())
    problems = load_problems(settings.task, settings.num_problems, settings.seed, tuple(settings.levels))
    dataset = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": p.question}], "answer": p.answer} for p in problems]
    )
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    checkpoint = get_last_checkpoint(str(out / CHECKPOINTS)) if (out / CHECKPOINTS).is_dir() else None
    log_path = out / LOG_FILE
    rollout_log = out / (ROLLOUTS_FILE if world_size == 1 else ROLLOUTS_FILE.replace(".jsonl", f".rank{rank}.jsonl"))
    if checkpoint is None:
        rollout_log.unlink(missing_ok=True)
        if main:
            log_path.unlink(missing_ok=True)
    else:  # the steps after the checkpoint are redone, and the rollouts they sampled
        resumed_step = int(Path(checkpoint).name.split("-")[-1])
        truncate_log(rollout_log, lambda step: step < resumed_step)
        if main:
            truncate_log(log_path, lambda step: step <= resumed_step)
            print(f"resuming from {checkpoint}")

    engine = RolloutEngine(engine_config(settings, model_path), out / SYNC_DIR)
    stop = StopOnInterrupt()
    try:
        if main and settings.held_out_problems and checkpoint is None:
            print(f"held-out before: {record_held_out(engine, settings, SERVED_NAME, 'before')}")
        trainer = PolicyTrainer(
            model=model,
            processing_class=tokenizer,
            reward_funcs=[rewards_for(reward_mode(settings), settings.group_size)],
            args=grpo_args(settings),
            train_dataset=dataset,
            callbacks=[StepLog(log_path), stop],
            settings=settings,
            engine=engine,
            served_model_name=SERVED_NAME,
            rollout_log=rollout_log,
        )
        if checkpoint is not None:
            trainer.restore_anchors(read_log(log_path))
        try:
            trainer.train(resume_from_checkpoint=checkpoint)
        except Exception:
            # A terminal's Ctrl-C reaches the engine's processes too: vLLM stops them, and
            # a rollout under way fails. The model and optimizer are still those of the
            # last finished step (a rollout comes before its step's updates): save them.
            if not stop.interrupted:
                raise
            logger.warning("the interrupted step failed; saving the checkpoint of step %d", trainer.state.global_step)
            trainer._save_checkpoint(trainer.model, trial=None)
        if not main:
            return {"interrupted": stop.interrupted, "step": trainer.state.global_step, "rank": rank}
        records = read_log(log_path)
        if records:
            plot_log(records, out / PLOT_FILE, f"{settings.loss_type}, methods: {', '.join(settings.method) or 'none'}")
        if stop.interrupted:
            return {"interrupted": True, "step": trainer.state.global_step}
        engine.sync_weights(trainer.model)  # float32, before save_model casts it
        save_model(trainer.model, tokenizer, model_path, out)
        if settings.held_out_problems:
            print(f"held-out after: {record_held_out(engine, settings, SERVED_NAME, 'after')}")
        entropies = engine.run(sample_entropies(engine.service, settings.calibration_samples, 128, settings.seed))
    finally:
        stop.restore()
        engine.close()
    profile = profile_record(
        out.name,
        str(out),
        entropies,
        samples_per_prompt=settings.calibration_samples,
        max_tokens=128,
        seed=settings.seed,
    )
    (out / PROFILE_FILE).write_text(json.dumps(profile, indent=2) + "\n")
    return {
        "interrupted": False,
        "step": trainer.state.global_step,
        "steps_logged": len(records),
        "entropy_profile": profile["summary"],
    }


def save_model(model: torch.nn.Module, tokenizer, source: str, out: Path) -> None:
    """The trained weights as an ordinary HF folder, in the dtype the source model was saved in."""
    source_config = json.loads((Path(source) / "config.json").read_text())
    dtype_name = source_config.get("dtype") or source_config.get("torch_dtype") or "float32"
    model.to(getattr(torch, dtype_name)).save_pretrained(out)
    tokenizer.save_pretrained(out)
