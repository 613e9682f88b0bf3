"""Difficulty labels from sampled answers, following DiffAdapt's rule.

For each training problem, k answers are sampled with the Normal strategy; the label
comes from their correctness rate and their mean token entropy (the model's entropy,
averaged over each answer's tokens, then over the k answers):
- accuracy < `hard_below_accuracy`                -> hard   (the model mostly fails);
- otherwise, mean entropy > the entropy threshold -> easy   (solved, but unsure: overthinking);
- otherwise                                       -> normal (solved with confidence).
The entropy threshold is `easy_entropy_above` (nats) when given, else the
`easy_entropy_quantile` of the solved problems' mean entropies: entropy scales differ
between models, a quantile carries over. The resolved threshold is saved with the probe.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

CLASSES = ("easy", "normal", "hard")


@dataclass(frozen=True)
class LabelRule:
    hard_below_accuracy: float = 0.5
    easy_entropy_quantile: float = 0.5
    easy_entropy_above: float | None = None  # nats; overrides the quantile

    def __post_init__(self) -> None:
        if not 0.0 < self.hard_below_accuracy <= 1.0:
            raise ValueError(f"hard_below_accuracy must be in (0, 1], got {self.hard_below_accuracy}")
        if not 0.0 <= self.easy_entropy_quantile <= 1.0:
            raise ValueError(f"easy_entropy_quantile must be in [0, 1], got {self.easy_entropy_quantile}")
        if self.easy_entropy_above is not None and self.easy_entropy_above < 0:
            raise ValueError(f"easy_entropy_above must be >= 0 nats, got {self.easy_entropy_above}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Labels:
    classes: list[str]  # per problem, one of CLASSES
    entropy_threshold_nats: float | None  # None when no problem was solved

    def balance(self) -> dict[str, int]:
        return {name: self.classes.count(name) for name in CLASSES}


def label_problems(accuracies: list[float], mean_entropies_nats: list[float], rule: LabelRule) -> Labels:
    if len(accuracies) != len(mean_entropies_nats):
        raise ValueError("one accuracy and one mean entropy per problem")
    solved = [h for a, h in zip(accuracies, mean_entropies_nats) if a >= rule.hard_below_accuracy]
    threshold = rule.easy_entropy_above
    if threshold is None and solved:
        threshold = float(np.quantile(solved, rule.easy_entropy_quantile))
    classes = []
    for accuracy, entropy in zip(accuracies, mean_entropies_nats):
        if accuracy < rule.hard_below_accuracy:
            classes.append("hard")
        elif entropy > threshold:
            classes.append("easy")
        else:
            classes.append("normal")
    return Labels(classes, threshold)
