"""AEPO's entropy regularizer (arXiv 2510.08141; 597358816/AEPO at b353a05), on our engine.

Each rollout batch, in the same step:
1. the policy's rollout entropy (mean over its tokens) is compared with the target
   (`aepo_target_entropy_nats`, by default the run's first batch's: the entropy held);
2. a second rollout on the same engine samples the first `aepo_prompt_fraction` of the
   batch's problems (the reference's quarter; at least one), `group_size` responses
   each, at `aepo_temperature_high` when entropy is at or below the target,
   `aepo_temperature_low` above it;
3. its responses are rewarded like the policy's, and those that beat their group
   (group-normalized advantage > 0.05) are kept: at most `aepo_samples`, half as many
   above the target (group_methods.aepo_selection);
4. each kept response is trained with advantage 1 (a REINFORCE pull towards what the
   hotter or cooler distribution got right), its ratio's denominator the trainer's own
   log-prob at the run's temperature when the batch was scored (as the reference
   recomputes its old log-probs with the actor), through PPO's clipped surrogate.
Ours: the reference replaces the first rows of the policy batch with these responses;
here they are added beside it (the policy batch keeps every group whole, which the
group-wise advantage hooks need), weighted by the policy batch's normalizer, so each
kept response weighs what it would as a row of the batch. The reference reads the
entropy of the last actor update; here the same step's rollout entropy, measured before
the regularizer acts.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace

import torch

from entropy_serve.trainer.entropy_control import clipped_surrogate
from entropy_serve.trainer.group_methods import aepo_selection, aepo_temperature
from entropy_serve.trainer.rollouts import Rollout


@dataclass(frozen=True)
class AepoBatch:
    """The kept responses, padded: prompts on the left, completions on the right."""

    prompt_ids: torch.Tensor  # [rows, prompt tokens]
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor  # [rows, completion tokens]
    completion_mask: torch.Tensor
    old_log_probs: torch.Tensor | None = None  # [rows, completion tokens], set by `score`

    @property
    def size(self) -> int:
        return self.completion_ids.size(0)


def pad_rollouts(rollouts: list[Rollout], pad_id: int, device) -> AepoBatch:
    prompt_len = max((len(r.prompt_ids) for r in rollouts), default=0)
    completion_len = max((len(r.completion_ids) for r in rollouts), default=0)

    def rows(sequences, length, left):
        ids = [
            [pad_id] * (length - len(s)) + list(s) if left else list(s) + [pad_id] * (length - len(s))
            for s in sequences
        ]
        masks = [
            [0] * (length - len(s)) + [1] * len(s) if left else [1] * len(s) + [0] * (length - len(s))
            for s in sequences
        ]
        return (
            torch.tensor(ids, dtype=torch.long, device=device).view(len(sequences), length),
            torch.tensor(masks, dtype=torch.long, device=device).view(len(sequences), length),
        )

    prompt_ids, prompt_mask = rows([r.prompt_ids for r in rollouts], prompt_len, left=True)
    completion_ids, completion_mask = rows([r.completion_ids for r in rollouts], completion_len, left=False)
    return AepoBatch(prompt_ids, prompt_mask, completion_ids, completion_mask)


class AepoRollout:
    """AEPO's second rollout and its loss term, for one PolicyTrainer."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.settings = trainer.settings
        self.target_nats = self.settings.aepo_target_entropy_nats
        self.answers = {_key(row["prompt"]): row["answer"] for row in trainer.train_dataset}

    def run(self, problem_prompts: list[list[dict]], entropy_nats: float, step: int) -> AepoBatch:
        """Steps 1-3 of the module doc: the kept responses of this step's second rollout."""
        s, trainer = self.settings, self.trainer
        if self.target_nats is None:
            self.target_nats = entropy_nats
        temperature = aepo_temperature(entropy_nats, self.target_nats, s.aepo_temperature_high, s.aepo_temperature_low)
        prompts = problem_prompts[: max(1, math.ceil(len(problem_prompts) * s.aepo_prompt_fraction))]
        bodies = [
            trainer.rollout_body(prompt, s.group_size, trainer.rollout_seed(step, g, stream=1), temperature)
            for g, prompt in enumerate(prompts)
        ]
        groups = trainer.sample(bodies, step, kind="aepo")
        rewards = [self.rewards(prompt, group) for prompt, group in zip(prompts, groups)]
        chosen = aepo_selection(rewards, s.aepo_samples, above_target=entropy_nats > self.target_nats)
        flat = [rollout for group in groups for rollout in group]
        trainer._log_metric("aepo_temperature", temperature)
        trainer._log_metric("aepo_target_entropy_nats", self.target_nats)
        trainer._log_metric("aepo_samples", float(len(chosen)))
        trainer._log_metric("aepo_rollout_tokens", float(sum(len(r.prompt_ids) + len(r.completion_ids) for r in flat)))
        pad_id = trainer.processing_class.pad_token_id
        return pad_rollouts([flat[i] for i in chosen], pad_id, trainer.accelerator.device)

    def rewards(self, prompt: list[dict], group: list[Rollout]) -> list[float]:
        """The run's own reward function on one group (ground truth or TTRL's vote)."""
        reward = self.trainer.reward_funcs[0]
        return reward(
            prompts=[prompt] * len(group),
            completions=[[{"role": "assistant", "content": r.text}] for r in group],
            answer=[self.answers.get(_key(prompt))] * len(group),
            log_metric=lambda *_: None,
        )

    def score(self, batch: AepoBatch) -> AepoBatch:
        """The trainer's log-probs of the kept responses now, before this batch's updates."""
        if not batch.size:
            return batch
        with torch.no_grad():
            log_probs, _, _ = self.trainer.token_statistics(
                self.trainer.accelerator.unwrap_model(self.trainer.model),
                batch.prompt_ids,
                batch.prompt_mask,
                batch.completion_ids,
                batch.completion_mask,
            )
        return replace(batch, old_log_probs=log_probs)

    def token_loss(self, model, batch: AepoBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 4: PPO's clipped loss with advantage 1 on each kept token, and its mask."""
        s = self.settings
        # The bare model, not its DistributedDataParallel wrapper: each wrapped forward
        # broadcasts buffers to every rank, and ranks keep different numbers of rows here
        # (none on some), so a second wrapped forward would wait forever. The gradients
        # still reach the same parameters, and DDP averages them in the one backward.
        module = self.trainer.accelerator.unwrap_model(model)
        log_probs, _, _ = self.trainer.token_statistics(
            module, batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask
        )
        ones = torch.ones_like(log_probs[:, :1])
        loss, _ = clipped_surrogate(log_probs, batch.old_log_probs, ones, s.epsilon, s.epsilon_high)
        mask = batch.completion_mask.float()
        return loss * mask, mask


def _key(prompt: list[dict]) -> str:
    return json.dumps(prompt, sort_keys=True)
