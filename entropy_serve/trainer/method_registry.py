"""What an entropy-RL method is, and the registry `trainer/methods.py` fills.

A method is registered with its paper, what it does, needs and costs, and the hooks it
brings: a token loss over `TokenInputs`, an advantage hook over one `Group`. Stages that
are not a function of these (AEPO's rollout, SIREN's term, the 80/20 mask, TTRL's reward)
are wired in the trainer by name (trainer/grpo.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from entropy_serve.trainer.entropy_control import TokenLoss


@dataclass(frozen=True)
class TokenInputs:
    """What a token loss reads, [batch, tokens] each (advantages [batch, 1])."""

    log_probs: torch.Tensor
    old_log_probs: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor
    entropies: torch.Tensor
    generator: torch.Generator


@dataclass(frozen=True)
class Group:
    """One problem's responses, as an advantage hook reads them."""

    rewards: list[float]
    advantages: list[float]  # what the stages before produced (GRPO's to start with)
    mean_entropies_nats: list[float]  # each response's mean token entropy (the engine's)
    num_tokens: list[int]
    answers: list[str | None]  # extracted final answers
    same: Callable[[str, str], bool]  # the project's answer equivalence


TokenLossFn = Callable[[TokenInputs, "object"], TokenLoss]  # (inputs, settings) -> loss
AdvantageFn = Callable[[Group, "object"], list[float]]  # (group, settings) -> new advantages


@dataclass(frozen=True)
class Method:
    name: str
    paper: str
    does: str
    needs: str
    cost: str
    token_loss: TokenLossFn | None = None
    advantage: AdvantageFn | None = None
    token_loss_reads_entropies: bool = False  # STEER, HAPO
    replaces_advantages: bool = False  # CANON, HAPO: a new estimator, not a factor on GRPO's


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is registered twice")
    METHODS[method.name] = method
    return method
