"""Entropy-RL methods that act on one problem's group of responses: pure functions over lists.

A group is the `group_size` responses to one problem (trainer/grpo.group_indices). Each
function takes the group's per-response numbers and returns one number per response
(an advantage, or a factor on it), so the trainer applies them group by group:
- CANON (Conditional Advantage Estimation; arXiv 2509.23962, biuboomc/CANON at 7d6f814):
  the group split at its median mean-token entropy, advantages relative to the other
  half's mean reward (inter) and to the own half's (intra);
- SEED-GRPO (arXiv 2505.12346): advantages scaled down by the group's semantic entropy;
- HAPO's Token Level Group Average (arXiv 2509.16591, starriver030515/HAPO at 7671dde):
  rewards normalized over the group's tokens, not its responses;
- AEPO's temperature switch and sample selection (arXiv 2510.08141, 597358816/AEPO at
  b353a05): which temperature the regularizer's samples are drawn at, and which of them
  it trains on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

GRPO_STD_EPSILON = 1e-4  # TRL's: advantages = (r - mean) / (std + 1e-4)


def group_normalized(rewards: Sequence[float]) -> list[float]:
    """GRPO's advantages within one group: (r - mean) / (std + 1e-4), std over responses
    (population std, as TRL's and verl's)."""
    mean = sum(rewards) / len(rewards)
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards))
    return [(r - mean) / (std + GRPO_STD_EPSILON) for r in rewards]


def canon_advantages(rewards: Sequence[float], mean_entropies_nats: Sequence[float], mu: float = 1.0) -> list[float]:
    """CANON's entropy-conditioned advantages (`compute_dr_entropy_per_token_group_outcome_advantage`).

    The group is sorted by mean token entropy; the first n // 2 are the low-entropy half
    L, the rest the high-entropy half H (ties keep the group's order, a stable sort).
    With mean_L, mean_H their mean rewards:
        i in H: A_i = mu (r_i - mean_L) + (1 - mu) (r_i - mean_H)
        i in L: A_i = mu (r_i - mean_H) + (1 - mu) (r_i - mean_L)
    mu = 1 (the paper's setting) compares each response with the other half only (inter
    group); mu = 0 with its own half (intra group). The reference's alpha = 1 and beta = 0
    are fixed here. Ours: the reference then divides by the maximum response length
    because its loss sums tokens; TRL's `dr_grpo` aggregation does that division itself,
    so it is left out here (use `--loss-type dr_grpo` for the reference's scale). A group
    of one response gets 0."""
    n = len(rewards)
    if n < 2:
        return [0.0] * n
    order = sorted(range(n), key=lambda i: mean_entropies_nats[i])
    low, high = order[: n // 2], order[n // 2 :]
    mean_low = sum(rewards[i] for i in low) / len(low)
    mean_high = sum(rewards[i] for i in high) / len(high)
    in_high = set(high)
    advantages = []
    for i, reward in enumerate(rewards):
        other, own = (mean_low, mean_high) if i in in_high else (mean_high, mean_low)
        advantages.append(mu * (reward - other) + (1 - mu) * (reward - own))
    return advantages


def semantic_entropy(answers: Sequence[str | None], same: Callable[[str, str], bool]) -> float:
    """Entropy (nats) of the group's meaning classes: answers grouped greedily by `same`
    (each joins the first class whose first member it equals), a response with no answer
    a class of its own; p(C_k) = |C_k| / n, the sampled frequency (the paper's estimate
    with the responses' probabilities replaced by their counts)."""
    classes: list[list[str]] = []
    singles = 0
    for answer in answers:
        if answer is None:
            singles += 1
            continue
        for members in classes:
            if same(answer, members[0]):
                members.append(answer)
                break
        else:
            classes.append([answer])
    counts = [len(members) for members in classes] + [1] * singles
    n = len(answers)
    return -sum(c / n * math.log(c / n) for c in counts)


def seed_grpo_scale(answers: Sequence[str | None], alpha: float, same: Callable[[str, str], bool]) -> float:
    """SEED-GRPO's factor on every advantage of the group, its linear f:
    1 - alpha * SE(q) / SE_max, SE_max = ln n (every answer its own class). Confident
    groups keep their signal; uncertain ones update conservatively. Clipped at 0 (alpha
    > 1 would flip signs)."""
    if len(answers) < 2:
        return 1.0
    return max(0.0, 1.0 - alpha * semantic_entropy(answers, same) / math.log(len(answers)))


HAPO_SMOOTH_LIMIT = 5.0  # the reference falls back to GRPO's advantages when |A| reaches this


def token_mean_advantages(rewards: Sequence[float], num_tokens: Sequence[int]) -> list[float]:
    """HAPO's Token Level Group Average (`compute_hapo_outcome_advantage`): every token
    carries its response's reward, and the mean and (population) std are taken over the
    group's tokens, so long responses weigh in proportion to their tokens, as they do in a
    token-mean loss: A_i = (r_i - mean_tok) / (std_tok + 1e-6). If any |A_i| reaches 5
    (a lone outlier among many tokens), the group keeps GRPO's per-response advantages."""
    total = sum(num_tokens)
    if total == 0:
        return group_normalized(rewards)
    mean = sum(r * t for r, t in zip(rewards, num_tokens)) / total
    std = math.sqrt(sum(t * (r - mean) ** 2 for r, t in zip(rewards, num_tokens)) / total)
    advantages = [(r - mean) / (std + 1e-6) for r in rewards]
    if any(abs(a) >= HAPO_SMOOTH_LIMIT for a in advantages):
        return group_normalized(rewards)
    return advantages


def aepo_temperature(entropy_nats: float, target_nats: float, high: float, low: float) -> float:
    """AEPO's switch: the regularizer samples at the higher temperature when the policy's
    entropy is at or below the target (pushing it up), at the lower one above it."""
    return high if entropy_nats <= target_nats else low


AEPO_ADVANTAGE_THRESHOLD = 0.05  # the reference's `_select_by_advantage(threshold=0.05)`


def aepo_selection(groups_rewards: Sequence[Sequence[float]], num_samples: int, above_target: bool) -> list[int]:
    """Which of the regularizer's responses it trains on, as flat indices over the groups
    in order: those whose group-normalized advantage exceeds 0.05 (they beat their group),
    at most `num_samples`, half as many when entropy is above the target (the reference's
    `reinforce_sample_num`, halved). Each is then trained with advantage 1: a REINFORCE
    pull towards the good answers of the hotter (or cooler) distribution."""
    chosen = []
    offset = 0
    for rewards in groups_rewards:
        chosen += [offset + i for i, a in enumerate(group_normalized(rewards)) if a > AEPO_ADVANTAGE_THRESHOLD]
        offset += len(rewards)
    limit = min(num_samples, len(chosen))
    return chosen[: limit // 2 if above_target else limit]
