"""TRL's GRPOTrainer with rollouts on our engine and entropy control in the loss.

What the subclass changes, and nothing else; the entropy-RL methods of the run
(trainer/methods.py, `settings.method`) plug in where each acts:
1. rollouts (`_rollout`, TRL's `rollout_func`): before a rollout batch, the weights of
   the last optimizer step go into the running engine (trainer/rollouts.py); each
   problem's group is one request with `n` = group size on our samplers; the engine's
   log-probs come back with the tokens, and each response's mean token entropy, length
   and answer are kept for the advantage hooks; AEPO's second rollout
   (trainer/aepo.py) runs here, on the same engine;
2. advantages (`_generate_and_score_completions`): TRL's group-normalized advantages,
   then each group through the methods' advantage hooks (CANON, HAPO, ETTRL, SEED-GRPO);
3. the loss (`_compute_loss`): one forward pass gives log-probs, entropies (and SIREN's
   nucleus entropies); the ratio's denominator is the engine's log-prob of the token
   (the policy that really sampled it); the per-token loss is the methods' (PPO's
   clipped surrogate by default), then TRL's 80/20 entropy mask, the k3 KL to the
   reference when beta > 0, TRL's aggregation for the loss type (grpo, bnpo, dr_grpo,
   dapo), and the scalar terms: SIREN's regularizer, AEPO's REINFORCE term.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict
from pathlib import Path

import torch

from entropy_serve.tasks.answers import equivalent, extract_answer
from entropy_serve.trainer.aepo import AepoBatch, AepoRollout
from entropy_serve.trainer.entropy_control import TokenLoss, masked_mean
from entropy_serve.trainer.methods import Group, MethodPlan, TokenInputs
from entropy_serve.trainer.policy_config import PolicyConfig
from entropy_serve.trainer.rollouts import Rollout, RolloutEngine
from entropy_serve.trainer.token_methods import nucleus_entropy, siren_entropy, siren_regularizer

# TRL's import warns about the vLLM versions its own vLLM integration supports (we use
# none of it: the engine is ours), and sets VLLM_LOGGING_LEVEL=ERROR in os.environ for
# every vLLM started after it, in this process and its children: the user's setting is
# put back.
warnings.filterwarnings("ignore", message="TRL currently supports vLLM versions")
_vllm_logging_level = os.environ.get("VLLM_LOGGING_LEVEL")
from trl import GRPOTrainer  # noqa: E402
from trl.trainer.utils import selective_log_softmax_and_entropy  # noqa: E402

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
        self.methods = MethodPlan.of(settings.method)
        self.engine = engine
        self.served_model_name = served_model_name
        self.rollout_log = rollout_log  # JSONL: every rollout request body and its responses
        self.synced_step = 0  # the engine starts with the initial weights
        self._rollouts: list[Rollout] = []  # the current rollout batch's, in TRL's row order
        self._rewards: torch.Tensor | None = None  # of the current rollout batch, every process's rows
        self._aepo_batch: AepoBatch | None = None
        self._siren_anchor: float | None = None  # SIREN's H_0: set by the first loss of a run (or resume)
        self._cov_generator = torch.Generator().manual_seed(settings.seed)
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is "experimental": we know
        super().__init__(*args, rollout_func=self._rollout, **kwargs)
        self.aepo = AepoRollout(self) if "aepo" in self.methods else None

    def restore_anchors(self, records: list[dict]) -> None:
        """A resumed run keeps the reference values its methods set on the run's first
        batch (SIREN's anchor, AEPO's default target), read from the kept log."""
        first = records[0] if records else {}
        if first.get("siren_anchor_nats") is not None:
            self._siren_anchor = first["siren_anchor_nats"]
        if self.aepo is not None and self.aepo.target_nats is None:
            self.aepo.target_nats = first.get("aepo_target_entropy_nats")

    # -- 1. rollouts -------------------------------------------------------------------

    def rollout_body(self, messages: list[dict], n: int, seed: int, temperature: float | None = None) -> dict:
        s = self.settings
        body = {
            "model": self.served_model_name,
            "messages": messages,
            "n": n,
            "max_tokens": s.max_tokens,
            "temperature": s.temperature if temperature is None else temperature,
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

    def sample(self, bodies: list[dict], step: int, kind: str = "policy") -> list[list[Rollout]]:
        """Each body's responses from the engine, logged to the rollout log."""
        groups = self.engine.generate(bodies)
        with self.rollout_log.open("a") as out:
            for body, group in zip(bodies, groups):
                record = {"step": step, "kind": kind, "body": body, "responses": [asdict(r) for r in group]}
                out.write(json.dumps(record) + "\n")
        return groups

    def _rollout(self, prompts: list, trainer: GRPOTrainer) -> dict:
        step = self.state.global_step
        if step != self.synced_step:
            self._log_metric("sync_s", self.engine.sync_weights(self.accelerator.unwrap_model(self.model)))
            self.synced_step = step
        runs = group_indices(len(prompts), self.num_generations)
        seeds = [self.rollout_seed(step, g) for g in range(len(runs))]
        bodies = [self.rollout_body(prompts[run[0]], len(run), seed) for run, seed in zip(runs, seeds)]
        rollouts = [None] * len(prompts)
        for run, group in zip(runs, self.sample(bodies, step)):
            for index, rollout in zip(run, group):
                rollouts[index] = rollout
        self._rollouts = rollouts
        token_entropies = [h for r in rollouts for h in r.model_entropies_nats]
        entropy = sum(token_entropies) / max(1, len(token_entropies))
        self._log_metric("rollout_entropy_nats", entropy)
        if self.aepo is not None:
            self._aepo_batch = self.aepo.run([prompts[run[0]] for run in runs], entropy, step)
        return {
            "prompt_ids": [r.prompt_ids for r in rollouts],
            "completion_ids": [r.completion_ids for r in rollouts],
            "logprobs": [r.logprobs for r in rollouts],
            "mean_entropy_nats": [r.mean_entropy_nats for r in rollouts],  # to the reward functions
        }

    def rollout_seed(self, step: int, group: int, stream: int = 0) -> int:
        """A rollout request's seed, distinct per run seed, step, rank, group and stream
        (0: the policy's rollout, 1: AEPO's)."""
        rank = self.accelerator.process_index
        return self.settings.seed * SEED_STRIDE + step * 1_009 + rank * 101 + group + stream * 50

    # -- 2. advantages -----------------------------------------------------------------

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        self._rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        return self._rewards

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        hooks = self.methods.advantage_hooks()
        if hooks and self._rollouts:
            output["advantages"] = self.method_advantages(output["advantages"])
        if self._aepo_batch is not None:
            self._aepo_batch = self.aepo.score(self._aepo_batch)
        return output

    def method_advantages(self, advantages: torch.Tensor) -> torch.Tensor:
        """TRL's advantages of this process's rows, each group through the methods' hooks."""
        rows = len(self._rollouts)
        start = self.accelerator.process_index * rows
        rewards = self._rewards[start : start + rows].nansum(dim=1).tolist()  # one reward function
        result = advantages.tolist()
        for run in group_indices(rows, self.num_generations):
            group = Group(
                rewards=[rewards[i] for i in run],
                advantages=[result[i] for i in run],
                mean_entropies_nats=[self._rollouts[i].mean_entropy_nats for i in run],
                num_tokens=[len(self._rollouts[i].completion_ids) for i in run],
                answers=[extract_answer(self._rollouts[i].text) for i in run],
                same=equivalent,
            )
            for index, value in zip(run, self.methods.apply_advantages(group, self.settings)):
                result[index] = value
        return torch.tensor(result, dtype=advantages.dtype, device=advantages.device)

    # -- 3. the loss -------------------------------------------------------------------

    def token_statistics(self, model, prompt_ids, prompt_mask, completion_ids, completion_mask, nucleus_top_p=None):
        """Per completion token [batch, tokens]: log-prob of the token under `model` at the
        run's temperature (with gradient), the distribution's entropy (without), and the
        top-p nucleus entropy (with gradient) when asked."""
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        num_tokens = completion_ids.size(1)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -num_tokens - 1 : -1, :]
        log_probs, entropies = selective_log_softmax_and_entropy(
            logits, completion_ids, entropy_requires_grad=False, temperature=self.temperature
        )
        nucleus = nucleus_entropy(logits / self.temperature, nucleus_top_p) if nucleus_top_p else None
        return log_probs, entropies, nucleus

    def _compute_loss(self, model, inputs):
        s = self.settings
        siren = "siren" in self.methods
        log_probs, entropies, nucleus = self.token_statistics(
            model,
            inputs["prompt_ids"],
            inputs["prompt_mask"],
            inputs["completion_ids"],
            inputs["completion_mask"],
            nucleus_top_p=s.siren_top_p if siren else None,
        )  # [batch, tokens] each
        mask = inputs["completion_mask"].float()
        advantages = inputs["advantages"]
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(1)  # [batch, 1]: one advantage per response
        old_log_probs = inputs["sampling_per_token_logps"]  # the engine's, [batch, tokens]

        result = self.token_loss(log_probs, old_log_probs, advantages, mask, entropies)
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
        loss = self.aggregate(per_token_loss, mask, inputs)
        if siren:
            loss = loss + self.siren_term(nucleus, mask)
        if self._aepo_batch is not None and self._aepo_batch.size:
            aepo_loss, aepo_mask = self.aepo.token_loss(model, self._aepo_batch)
            loss = loss + self.aggregate(aepo_loss, aepo_mask, inputs)
        return loss

    def token_loss(self, log_probs, old_log_probs, advantages, mask, entropies=None) -> TokenLoss:
        """The per-token policy loss of the run's methods (PPO's clipped surrogate when none
        replaces it); `entropies` (the trainer's, per token) feed STEER's and HAPO's."""
        if entropies is None:
            if self.methods.token_loss_reads_entropies():
                raise ValueError(f"methods {', '.join(self.methods.names)}: the token loss needs the entropies")
            entropies = torch.full_like(log_probs, float("nan"))  # read by no loss of this run
        inputs = TokenInputs(log_probs, old_log_probs, advantages, mask, entropies, self._cov_generator)
        return self.methods.token_loss()(inputs, self.settings)

    def siren_term(self, nucleus: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """SIREN's regularizer on this batch, anchored at the run's first batch (scaled for
        gradient accumulation like the policy loss)."""
        s = self.settings
        entropy = siren_entropy(nucleus, mask, s.siren_peak_quantile)
        if self._siren_anchor is None:
            self._siren_anchor = entropy.item()
        self._metrics["train"]["siren_entropy"].append(entropy.item())
        self._metrics["train"]["siren_anchor"].append(self._siren_anchor)
        term = siren_regularizer(entropy, self._siren_anchor, s.siren_coef)
        return term / self.current_gradient_accumulation_steps

    def aggregate(self, per_token_loss: torch.Tensor, mask: torch.Tensor, inputs: dict) -> torch.Tensor:
        """TRL's reduction of the per-token loss for `loss_type`, scaled for gradient
        accumulation. The normalizers are the policy batch's, also for AEPO's extra rows
        (its term weighs as if its rows were part of the batch, as in the reference)."""
        accumulation = self.current_gradient_accumulation_steps
        masked = per_token_loss * mask
        if self.loss_type == "grpo":
            rows = inputs["completion_mask"].size(0)
            return (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).sum() / rows / accumulation
        if self.loss_type == "bnpo":
            return masked.sum() / inputs["completion_mask"].sum().clamp(min=1.0) / accumulation
        if self.loss_type == "dr_grpo":
            return masked.sum() / (inputs["completion_mask"].size(0) * self.max_completion_length) / accumulation
        # dapo: over the tokens of the whole generation batch, as TRL normalizes it
        normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
        return masked.sum() / (normalizer * accumulation / self.args.steps_per_generation)
