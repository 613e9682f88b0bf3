"""The registry of entropy-RL methods `train-policy --method` selects, by name.

Like verl's `register_policy_loss`, each method is a small pure piece, written in
trainer/entropy_control.py, token_methods.py or group_methods.py, registered here with
its paper, what it needs and what it costs (the README's table is this registry's,
`methods_table()`). A method plugs in at one or more stages of a step:
1. rollout: AEPO's second rollout at another temperature;
2. reward: TTRL's majority reward;
3. advantage, per group: one that replaces GRPO's advantages (CANON, HAPO's token
   average), then those that scale them (ETTRL, SEED-GRPO), in the order given;
4. token loss: exactly one (PPO's clipped surrogate when none is named);
5. token mask and regularizer: the 80/20 mask; SIREN's anchored entropy term.
No method named is plain GRPO (TRL's, with DAPO's loss by default).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from entropy_serve.trainer import group_methods, token_methods
from entropy_serve.trainer.entropy_control import (
    TokenLoss,
    clip_cov_loss,
    entropy_advantage_scale,
    kl_cov_loss,
    ppo_loss,
)
from entropy_serve.trainer.method_registry import (
    METHODS,
    AdvantageFn,
    Group,
    Method,
    TokenInputs,
    TokenLossFn,
    register,
)

__all__ = ["METHODS", "Group", "MethodPlan", "TokenInputs", "methods_table"]


def ppo_token_loss(inputs: TokenInputs, s) -> TokenLoss:
    """PPO's clipped surrogate (DAPO's clip-higher by default): the loss with no method."""
    return ppo_loss(
        inputs.log_probs,
        inputs.old_log_probs,
        inputs.advantages,
        inputs.mask,
        eps_low=s.epsilon,
        eps_high=s.epsilon_high,
    )


@dataclass(frozen=True)
class MethodPlan:
    """The methods of one run, checked to compose, in the order each stage applies them."""

    names: tuple[str, ...]

    @classmethod
    def of(cls, names: Sequence[str]) -> MethodPlan:
        unknown = [n for n in names if n not in METHODS]
        if unknown:
            raise ValueError(f"unknown method {', '.join(map(repr, unknown))}; known: {', '.join(METHODS)}")
        if len(set(names)) != len(names):
            raise ValueError(f"a method is named twice: {', '.join(names)}")
        losses = [n for n in names if METHODS[n].token_loss]
        if len(losses) > 1:
            raise ValueError(f"methods {' and '.join(losses)} each replace the token loss; name one")
        replacing = [n for n in names if METHODS[n].replaces_advantages]
        if len(replacing) > 1:
            raise ValueError(f"methods {' and '.join(replacing)} each replace GRPO's advantages; name one")
        return cls(tuple(names))

    def __contains__(self, name: str) -> bool:
        return name in self.names

    def token_loss(self) -> TokenLossFn:
        return next((METHODS[n].token_loss for n in self.names if METHODS[n].token_loss), ppo_token_loss)

    def token_loss_reads_entropies(self) -> bool:
        return any(METHODS[n].token_loss_reads_entropies for n in self.names)

    def advantage_hooks(self) -> list[AdvantageFn]:
        """Replacing estimators first, then the factors, each in the order named."""
        ordered = sorted(self.names, key=lambda n: not METHODS[n].replaces_advantages)
        return [METHODS[n].advantage for n in ordered if METHODS[n].advantage]

    def apply_advantages(self, group: Group, settings) -> list[float]:
        for hook in self.advantage_hooks():
            group = Group(**{**group.__dict__, "advantages": hook(group, settings)})
        return group.advantages


def _scaled(advantages: list[float], factors: list[float]) -> list[float]:
    return [a * f for a, f in zip(advantages, factors)]


register(
    Method(
        name="clip_cov",
        paper="Cui et al. 2025, The Entropy Mechanism of RL for Reasoning LMs (arXiv 2505.22617); verl",
        does=(
            "drops the gradient of `clip_cov_ratio` of the tokens, drawn among those whose advantage x log-prob "
            "covariance lies in (`clip_cov_lower`, `clip_cov_upper`)"
        ),
        needs="nothing more",
        cost="none",
        token_loss=lambda i, s: clip_cov_loss(
            i.log_probs,
            i.old_log_probs,
            i.advantages,
            i.mask,
            generator=i.generator,
            ratio=s.clip_cov_ratio,
            lower=s.clip_cov_lower,
            upper=s.clip_cov_upper,
            eps_low=s.epsilon,
            eps_high=s.epsilon_high,
        ),
    )
)
register(
    Method(
        name="kl_cov",
        paper="Cui et al. 2025 (arXiv 2505.22617); verl",
        does=(
            "`kl_cov_coef` x \\|log p - log p_old\\| on the top `kl_cov_fraction` of tokens by covariance, on the "
            "unclipped -A r"
        ),
        needs="`updates_per_batch` >= 2 (zero fully on-policy)",
        cost="none",
        token_loss=lambda i, s: kl_cov_loss(
            i.log_probs, i.old_log_probs, i.advantages, i.mask, fraction=s.kl_cov_fraction, coef=s.kl_cov_coef
        ),
    )
)
register(
    Method(
        name="80_20",
        paper="Wang et al. 2025, Beyond the 80/20 Rule (arXiv 2506.01939); TRL's mask",
        does="trains only on the `forking_token_fraction` (0.2) highest-entropy tokens of the batch",
        needs="nothing more",
        cost="none",
    )
)
register(
    Method(
        name="ttrl",
        paper="Zuo et al. 2025, TTRL (arXiv 2504.16084)",
        does=(
            "reward 1 for an answer equivalent to its group's majority label (no reference needed; it only feeds the "
            "logged accuracy)"
        ),
        needs="answers the project's equivalence can compare",
        cost="none",
    )
)
register(
    Method(
        name="ettrl",
        paper="Liu et al. 2025, ETTRL (arXiv 2508.11356), entropy-based advantage reshaping",
        does=(
            "each advantage times Y_i = 1 + (mean H - H_i) / mean H over its group (H_i: mean token entropy), clipped"
            " at 0"
        ),
        needs="the engine's entropies (always returned)",
        cost="none",
        advantage=lambda g, s: _scaled(g.advantages, entropy_advantage_scale(g.mean_entropies_nats)),
    )
)
register(
    Method(
        name="aepo",
        paper="AEPO, Arbitrary Entropy Policy Optimization (arXiv 2510.08141); 597358816/AEPO at b353a05",
        does=(
            "holds entropy at `aepo_target_entropy_nats`: a REINFORCE term (advantage 1) on the best responses of a "
            "second rollout at `aepo_temperature_high` (entropy at or below target) or `aepo_temperature_low` (above)"
        ),
        needs=(
            "a second rollout in the same step (`aepo_prompt_fraction` of the problems, a quarter by default, "
            "`group_size` each) on the same engine"
        ),
        cost=(
            "`aepo_prompt_fraction` more rollout tokens; a forward and backward pass over up to `aepo_samples` "
            "more responses"
        ),
    )
)
register(
    Method(
        name="steer",
        paper="STEER, Rethinking Entropy Interventions in RLVR (arXiv 2510.10150); zz-haooo/STEER at b31df71",
        does=(
            "each token's dual-clipped loss times a weight in [`steer_weight_min`, `steer_weight_max`], lower where "
            "the predicted entropy change \\|A/p_old p(1-p)(ln p + H)\\| is larger"
        ),
        needs="the trainer's per-token entropies (computed anyway)",
        cost="a few elementwise ops per token",
        token_loss_reads_entropies=True,
        token_loss=lambda i, s: token_methods.steer_loss(
            i.log_probs,
            i.old_log_probs,
            i.advantages,
            i.mask,
            i.entropies,
            weight_min=s.steer_weight_min,
            weight_max=s.steer_weight_max,
            eps_low=s.epsilon,
            eps_high=s.epsilon_high,
            dual_clip=s.dual_clip,
        ),
    )
)
register(
    Method(
        name="siren",
        paper="SIREN, Rethinking Entropy Regularization in LRMs (arXiv 2509.25133); Linn3a/siren at fa59a8d",
        does=(
            "adds `siren_coef` (H - H_0)^2, H the top-`siren_top_p` nucleus entropy of each response's peak tokens "
            "(above its `siren_peak_quantile`), H_0 its value on the first batch"
        ),
        needs="the trainer's logits (a sort over the vocabulary per token)",
        cost="a vocabulary sort per response token in the loss's forward pass",
    )
)
register(
    Method(
        name="canon",
        paper="CANON, Conditional Advantage Estimation (arXiv 2509.23962); biuboomc/CANON at 7d6f814",
        does=(
            "replaces GRPO's advantages: each group split at its median mean entropy, each response compared with the"
            " other half's mean reward (`canon_mu` 1) or its own half's (0)"
        ),
        needs="the engine's entropies; pairs with `loss_type: dr_grpo` as in the paper",
        cost="none",
        advantage=lambda g, s: group_methods.canon_advantages(g.rewards, g.mean_entropies_nats, s.canon_mu),
        replaces_advantages=True,
    )
)
register(
    Method(
        name="seed_grpo",
        paper="SEED-GRPO, Semantic Entropy Enhanced GRPO (arXiv 2505.12346)",
        does=(
            "each group's advantages times 1 - `seed_grpo_alpha` SE / ln G, SE the entropy of the group's answer "
            "classes"
        ),
        needs="answers the project's equivalence can compare",
        cost="G^2 answer comparisons per group",
        advantage=lambda g, s: [
            a * group_methods.seed_grpo_scale(g.answers, s.seed_grpo_alpha, g.same) for a in g.advantages
        ],
    )
)
register(
    Method(
        name="hapo",
        paper="HAPO, From Uniform to Heterogeneous (arXiv 2509.16591); starriver030515/HAPO at 7671dde",
        does=(
            "token-level group-average advantages; per-token advantage redistribution and asymmetric clipping driven "
            "by normalized log-entropy (`hapo_entropy_pivot`, `hapo_clip_alpha`, `hapo_advantage_beta`)"
        ),
        needs=(
            "the trainer's per-token entropies; the paper's rollouts add `adaptive_temperature: {method: hapo, tau: "
            "0.05}`"
        ),
        cost="one sort of the batch's entropies per update",
        advantage=lambda g, s: group_methods.token_mean_advantages(g.rewards, g.num_tokens),
        replaces_advantages=True,
        token_loss_reads_entropies=True,
        token_loss=lambda i, s: token_methods.hapo_loss(
            i.log_probs,
            i.old_log_probs,
            i.advantages,
            i.mask,
            i.entropies,
            pivot=s.hapo_entropy_pivot,
            clip_alpha=s.hapo_clip_alpha,
            advantage_beta=s.hapo_advantage_beta,
            eps_low=s.epsilon,
            eps_high=s.epsilon_high,
            dual_clip=s.dual_clip,
        ),
    )
)


def methods_table() -> str:
    """The README's table of methods, from the registry."""
    rows = ["| method | paper, code | what it does | needs | costs |", "| --- | --- | --- | --- | --- |"]
    rows += [f"| `{m.name}` | {m.paper} | {m.does} | {m.needs} | {m.cost} |" for m in METHODS.values()]
    return "\n".join(rows)
