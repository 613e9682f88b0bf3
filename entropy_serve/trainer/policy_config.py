"""`train-policy`'s settings: one frozen model, read from a config file, then flags.

Every field is also a flag (`--method kl_cov`), generated from the fields
below, so a name, its type and its default are written once. A flag wins over the file;
the file wins over the defaults. Files are YAML (.yaml / .yml) or JSON.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from entropy_serve.server.protocol.extensions import AdaptiveTemperature
from entropy_serve.trainer.methods import METHODS, MethodPlan


class PolicyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # What to train, and the engine its rollouts run on.
    model: str | None = Field(None, description="HF model folder (default: the embedded SmolLM2-135M-Instruct)")
    dtype: str = Field(
        "float32", description="engine dtype; float32 makes the engine's log-probs the trainer's (see README)"
    )
    max_model_len: int = Field(1024, ge=64, description="the rollout engine's context length")
    gpu_memory_utilization: float = Field(0.3, gt=0.0, le=1.0, description="the rollout engine's share of memory")
    entropy_profile: str | None = Field(
        None, description="profile JSON for hapo rollouts (default: the embedded model's)"
    )
    # The task (its reward: ground truth, or the `ttrl` method's majority vote).
    task: str = Field("arithmetic", description="'arithmetic' (built-in, seeded) or a question/answer JSONL file")
    levels: list[str] = Field(["add-1digit"], min_length=1, description="arithmetic levels to train on")
    num_problems: int = Field(512, ge=1, description="training problems (the first N of a file)")
    # The loss (TRL's GRPO) and the entropy-RL methods (trainer/methods.py, the README's table).
    loss_type: Literal["dapo", "grpo", "dr_grpo", "bnpo"] = "dapo"
    method: list[str] = Field([], description=f"entropy-RL methods, in order ({', '.join(METHODS)}); none: plain GRPO")
    clip_cov_ratio: float = Field(
        2e-4, gt=0.0, le=1.0, description="clip_cov: fraction of tokens whose gradient is dropped"
    )
    clip_cov_lower: float = Field(1.0, description="clip_cov: covariance band, lower bound")
    clip_cov_upper: float = Field(5.0, description="clip_cov: covariance band, upper bound")
    kl_cov_fraction: float = Field(2e-3, gt=0.0, le=1.0, description="kl_cov: fraction of tokens penalized")
    kl_cov_coef: float = Field(1.0, ge=0.0, description="kl_cov: penalty coefficient")
    forking_token_fraction: float = Field(
        0.2, gt=0.0, le=1.0, description="80_20: the top fraction of tokens by entropy that is trained"
    )
    aepo_target_entropy_nats: float | None = Field(
        None, gt=0.0, description="aepo: the entropy held (default: the first rollout batch's)"
    )
    aepo_temperature_high: float = Field(1.2, gt=0.0, description="aepo: regularizer temperature below target")
    aepo_temperature_low: float = Field(0.8, gt=0.0, description="aepo: regularizer temperature above target")
    aepo_samples: int = Field(4, ge=1, description="aepo: most regularizer responses per step (halved above target)")
    aepo_prompt_fraction: float = Field(
        0.25, gt=0.0, le=1.0, description="aepo: share of a batch's problems sampled again (the reference's quarter)"
    )
    steer_weight_min: float = Field(0.8, gt=0.0, description="steer: smallest token weight")
    steer_weight_max: float = Field(1.2, gt=0.0, description="steer: largest token weight")
    dual_clip: float = Field(3.0, gt=1.0, description="steer, hapo: dual-clip bound c on -A r for A < 0")
    siren_coef: float = Field(0.005, ge=0.0, description="siren: regularizer coefficient")
    siren_top_p: float = Field(0.8, gt=0.0, le=1.0, description="siren: the nucleus its entropy is taken over")
    siren_peak_quantile: float = Field(
        0.8, ge=0.0, lt=1.0, description="siren: per response, tokens above this entropy quantile"
    )
    canon_mu: float = Field(1.0, ge=0.0, le=1.0, description="canon: 1 inter-group, 0 intra-group advantages")
    seed_grpo_alpha: float = Field(0.5, ge=0.0, description="seed_grpo: sensitivity to semantic entropy")
    hapo_entropy_pivot: float = Field(0.8, ge=0.0, le=1.0, description="hapo: the entropy quantile that is neutral")
    hapo_clip_alpha: float = Field(1.0, ge=0.0, description="hapo: how far entropy widens the clip range")
    hapo_advantage_beta: float = Field(1.0, ge=0.0, description="hapo: how far entropy redistributes advantages")
    beta: float = Field(0.0, ge=0.0, description="k3 KL to the initial model")
    epsilon: float = Field(0.2, gt=0.0, description="PPO clip, lower side")
    epsilon_high: float = Field(0.28, gt=0.0, description="PPO clip, upper side (DAPO's clip-higher)")
    # The batch and the optimizer.
    group_size: int = Field(8, ge=2, description="responses sampled per problem")
    prompts_per_step: int = Field(4, ge=1, description="problems per rollout batch")
    updates_per_batch: int = Field(2, ge=1, description="optimizer steps per rollout batch (KL-Cov needs 2 or more)")
    steps: int = Field(20, ge=1, description="optimizer steps in all")
    learning_rate: float = Field(5e-6, gt=0.0)
    # Rollout sampling: the server's samplers, exact per-token entropies.
    max_tokens: int = Field(64, ge=1, description="token budget of each response")
    temperature: float = Field(1.0, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    typical_p: float | None = Field(None, gt=0.0, le=1.0)
    adaptive_temperature: AdaptiveTemperature | None = Field(None, description='e.g. {"method": "hapo", "tau": 0.5}')
    # The run.
    output_dir: Path = Field(description="the trained model folder, its log, plot and checkpoints")
    save_steps: int = Field(10, ge=1, description="a checkpoint every N steps (and at Ctrl-C)")
    calibration_samples: int = Field(4, ge=1, description="samples per prompt for the final weights' entropy profile")
    held_out_problems: int = Field(
        0, ge=0, description="arithmetic problems answered before and after training (held_out.json); 0: none"
    )
    held_out_samples: int = Field(4, ge=1, description="samples at T 0.8 per held-out problem")
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> PolicyConfig:
        if self.clip_cov_lower >= self.clip_cov_upper:
            raise ValueError(
                f"clip_cov_lower ({self.clip_cov_lower}) must be below clip_cov_upper ({self.clip_cov_upper})"
            )
        MethodPlan.of(self.method)  # a ValueError naming the method that does not exist or compose
        if "kl_cov" in self.method and self.updates_per_batch < 2:
            raise ValueError("method kl_cov: needs updates_per_batch >= 2 (fully on-policy its penalty is zero)")
        if self.held_out_problems and self.task != "arithmetic":
            raise ValueError("held_out_problems: needs the built-in arithmetic task (a file's problems are not split)")
        if self.steer_weight_min > self.steer_weight_max:
            raise ValueError(
                f"steer_weight_min ({self.steer_weight_min}) must not exceed steer_weight_max ({self.steer_weight_max})"
            )
        return self

    def resumable_fields(self) -> dict:
        """What a resumed run must share with the run it resumes (it may run more steps)."""
        return self.model_dump(mode="json", exclude={"steps", "save_steps", "held_out_problems", "held_out_samples"})


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """`--config FILE`, and one flag per PolicyConfig field (unset flags stay unset)."""
    parser.add_argument("--config", type=Path, help="YAML or JSON file of these settings (flags win over it)")
    for name, field in PolicyConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind = _bare_type(field.annotation)
        help_text = (field.description or "") + ("" if field.is_required() else f" (default: {_shown(field.default)})")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        elif kind is list:
            parser.add_argument(flag, type=_comma_list, default=argparse.SUPPRESS, help=help_text + "; comma-separated")
        elif isinstance(kind, type) and issubclass(kind, BaseModel):
            parser.add_argument(flag, type=json.loads, default=argparse.SUPPRESS, help=help_text + "; JSON")
        else:  # numbers, strings, paths, literals: pydantic converts and checks them
            parser.add_argument(flag, default=argparse.SUPPRESS, help=help_text)


def resolve_config(args: argparse.Namespace) -> PolicyConfig:
    """The file's settings, then the flags given; a ValueError naming the field if invalid."""
    values = read_config_file(args.config) if getattr(args, "config", None) else {}
    values.update({name: getattr(args, name) for name in PolicyConfig.model_fields if hasattr(args, name)})
    try:
        return PolicyConfig.model_validate(values)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in error.errors())
        raise ValueError(f"invalid settings: {problems}") from None


def read_config_file(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"--config: {path} is not a file")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text)
        else:
            values = json.loads(text)
    except Exception as error:  # the parsers' own errors name the line
        raise ValueError(f"--config {path}: not valid {path.suffix.lstrip('.') or 'JSON'}: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"--config {path}: expected a mapping of settings, got {type(values).__name__}")
    return {key.replace("-", "_"): value for key, value in values.items()}


def _bare_type(annotation):
    """The field's type without `| None` and its parameters (list[str] -> list)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    return typing.get_origin(annotation) or annotation


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _shown(value) -> str:
    return ",".join(value) if isinstance(value, list) else str(value)
