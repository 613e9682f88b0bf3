"""TRL's GRPOTrainer with rollouts on our engine and entropy control in the loss.

What the subclass changes, and nothing else:
1. rollouts (`_rollout`, TRL's `rollout_func`): before a rollout batch, the weights of
   the last optimizer step go into the running engine (trainer/rollouts.py); each
   problem's group is one request with `n` = group size on our samplers; the engine's
   log-probs come back with the tokens, and each response's mean token entropy is kept
   for ETTRL's advantage reshaping;
2. advantages (`_generate_and_score_completions`): TRL's group-normalized advantages,
   times ETTRL's Y_i when `entropy_advantage` is on;
3. the loss (`_compute_loss`): the ratio's denominator is the engine's log-prob of the
   token (the policy that really sampled it), the per-token loss is PPO's clipped
   surrogate, Clip-Cov or KL-Cov (trainer/entropy_control.py), then TRL's 80/20 entropy
   mask, the k3 KL to the reference when beta > 0, and TRL's aggregation for the loss
   type (grpo, bnpo, dr_grpo, dapo).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict
from pathlib import Path

import torch

from entropy_serve.trainer.entropy_control import (
    CovLoss,
    clip_cov_loss,
    entropy_advantage_scale,
    kl_cov_loss,
    masked_mean,
    ppo_loss,
)
from entropy_serve.trainer.policy_config import PolicyConfig
from entropy_serve.trainer.rollouts import RolloutEngine

# TRL's import warns about the vLLM versions its own vLLM integration supports (we use
# none of it: the engine is ours), and sets VLLM_LOGGING_LEVEL=ERROR in os.environ for
# every vLLM started after it, in this process and its children: the user's setting is
# put back.
warnings.filterwarnings("ignore", message="TRL currently supports vLLM versions")
_vllm_logging_level = os.environ.get("VLLM_LOGGING_LEVEL")
from trl import GRPOTrainer  # noqa: E402

if _vllm_logging_level is None:
    os.environ.pop("VLLM_LOGGING_LEVEL", None)
else:
    os.environ["VLLM_LOGGING_LEVEL"] = _vllm_logging_level

SEED_STRIDE = 100_003  # a rollout request's seed: seed * SEED_STRIDE + step * 1_009 + rank * 101 + group


def group_indices(num_prompts: int, group_size: int) -> list[list[int]]:
    """The indices of each problem's group: TRL repeats each problem `group_size` times in
    a row, so group g is positions g*G .. g*G+G-1, by position, as TRL's own advantages
    group them. Not by equal prompts: when the sampler draws one problem twice in a row,
    its two groups are two groups, not one of 2G."""
    if group_size < 1 or num_prompts % group_size:
        raise ValueError(f"{num_prompts} prompts do not split into groups of {group_size}")
    return [list(range(start, start + group_size)) for start in range(0, num_prompts, group_size)]


class PolicyTrainer(GRPOTrainer):
    def __init__(
        self, *args, settings: PolicyConfig, engine: RolloutEngine, served_model_name: str, rollout_log: Path, **kwargs
    ):
        self.settings = settings
        self.engine = engine
        self.served_model_name = served_model_name
        self.rollout_log = rollout_log  # JSONL: every rollout request body and its responses
        self.synced_step = 0  # the engine starts with the initial weights
        self._advantage_scale: list[float] = []
        self._cov_generator = torch.Generator().manual_seed(settings.seed)
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is "experimental": we know
        super().__init__(*args, rollout_func=self._rollout, **kwargs)

    # -- 1. rollouts -------------------------------------------------------------------

    def rollout_body(self, messages: list[dict], n: int, seed: int) -> dict:
        s = self.settings
        body = {
            "model": self.served_model_name,
            "messages": messages,
            "n": n,
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "seed": seed,
            "return_entropy": True,
            "logprobs": True,
            "top_logprobs": 0,
        }
        if s.typical_p is not None:
            body["typical_p"] = s.typical_p
        if s.adaptive_temperature is not None:
            body["adaptive_temperature"] = s.adaptive_temperature.model_dump()
        return body

    def _rollout(self, prompts: list, trainer: GRPOTrainer) -> dict:
        step = self.state.global_step
        if step != self.synced_step:
            self._log_metric("sync_s", self.engine.sync_weights(self.accelerator.unwrap_model(self.model)))
            self.synced_step = step
        runs = group_indices(len(prompts), self.num_generations)
        first = self.settings.seed * SEED_STRIDE + step * 1_009 + self.accelerator.process_index * 101
        seeds = [first + i for i in range(len(runs))]
        bodies = [self.rollout_body(prompts[run[0]], len(run), seed) for run, seed in zip(runs, seeds)]
        groups = self.engine.generate(bodies)
        with self.rollout_log.open("a") as out:
            for body, group in zip(bodies, groups):
                record = {"step": step, "body": body, "responses": [asdict(r) for r in group]}
                out.write(json.dumps(record) + "\n")
        rollouts = [None] * len(prompts)
        self._advantage_scale = [1.0] * len(prompts)
        for run, group in zip(runs, groups):
            scales = entropy_advantage_scale([r.mean_entropy_nats for r in group])
            for index, rollout, scale in zip(run, group, scales):
                rollouts[index] = rollout
                self._advantage_scale[index] = scale
        token_entropies = [h for r in rollouts for h in r.model_entropies_nats]
        self._log_metric("rollout_entropy_nats", sum(token_entropies) / max(1, len(token_entropies)))
        return {
            "prompt_ids": [r.prompt_ids for r in rollouts],
            "completion_ids": [r.completion_ids for r in rollouts],
            "logprobs": [r.logprobs for r in rollouts],
            "mean_entropy_nats": [r.mean_entropy_nats for r in rollouts],  # to the reward functions
        }

    # -- 2. advantages -----------------------------------------------------------------

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if self.settings.entropy_advantage:
            scale = torch.tensor(
                self._advantage_scale, dtype=output["advantages"].dtype, device=output["advantages"].device
            )
            output["advantages"] = output["advantages"] * scale
        return output

    # -- 3. the loss -------------------------------------------------------------------

    def token_loss(self, log_probs, old_log_probs, advantages, mask) -> CovLoss:
        """The per-token policy loss of the configured entropy control."""
        s = self.settings
        if s.entropy_control == "clip_cov":
            return clip_cov_loss(
                log_probs,
                old_log_probs,
                advantages,
                mask,
                generator=self._cov_generator,
                ratio=s.clip_cov_ratio,
                lower=s.clip_cov_lower,
                upper=s.clip_cov_upper,
                eps_low=s.epsilon,
                eps_high=s.epsilon_high,
            )
        if s.entropy_control == "kl_cov":
            return kl_cov_loss(
                log_probs, old_log_probs, advantages, mask, fraction=s.kl_cov_fraction, coef=s.kl_cov_coef
            )
        return ppo_loss(log_probs, old_log_probs, advantages, mask, eps_low=s.epsilon, eps_high=s.epsilon_high)

    def _compute_loss(self, model, inputs):
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        log_probs, entropies, _ = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, completion_ids.size(1), compute_entropy=True
        )  # [batch, tokens] each
        mask = completion_mask.float()
        advantages = inputs["advantages"]
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(1)  # [batch, 1]: one advantage per response
        old_log_probs = inputs["sampling_per_token_logps"]  # the engine's, [batch, tokens]

        result = self.token_loss(log_probs, old_log_probs, advantages, mask)
        per_token_loss = result.loss
        if self.top_entropy_quantile < 1.0:
            per_token_loss = per_token_loss * self.get_high_entropy_mask(entropies, mask, 1 - self.top_entropy_quantile)
        if self.beta != 0.0:
            reference = inputs["ref_per_token_logps"]
            reference_kl = torch.exp(reference - log_probs) - (reference - log_probs) - 1
            per_token_loss = per_token_loss + self.beta * reference_kl
            self._metrics["train"]["kl"].append(masked_mean(reference_kl.detach(), mask).item())

        drift = (old_log_probs - log_probs).detach()
        self._metrics["train"]["entropy"].append(masked_mean(entropies.detach(), mask).item())
        self._metrics["train"]["clip_fraction"].append(result.clip_fraction)
        self._metrics["train"]["cov_selected_tokens"].append(float(result.selected.sum()))
        self._metrics["train"]["policy_kl"].append(masked_mean(torch.exp(drift) - drift - 1, mask).item())
        return self.aggregate(per_token_loss, mask, inputs)

    def aggregate(self, per_token_loss: torch.Tensor, mask: torch.Tensor, inputs: dict) -> torch.Tensor:
        """TRL's reduction of the per-token loss for `loss_type`, scaled for gradient accumulation."""
        accumulation = self.current_gradient_accumulation_steps
        masked = per_token_loss * mask
        if self.loss_type == "grpo":
            return (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean() / accumulation
        if self.loss_type == "bnpo":
            return masked.sum() / mask.sum().clamp(min=1.0) / accumulation
        if self.loss_type == "dr_grpo":
            return masked.sum() / (per_token_loss.size(0) * self.max_completion_length) / accumulation
        # dapo: over the tokens of the whole generation batch, as TRL normalizes it
        normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
        return masked.sum() / (normalizer * accumulation / self.args.steps_per_generation)
