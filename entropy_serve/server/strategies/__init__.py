"""Strategies: how a request is answered when it names one (extensions.STRATEGIES).

Each strategy module has `answer(ctx, request) -> reply`; ANSWERS maps each strategy's
field model (whose `name` is in the registry) to it, so a strategy added to the registry
without an answer fails at import.
Voting strategies sample leaves, vote over their answers (leaves.py, voting.py) and
reply with a winning leaf, stopping early when their rules say so (stopping.py); `difficulty` routes the request and generates once.
"""

from __future__ import annotations

from entropy_serve.server.extensions import STRATEGIES, DeepConf, Difficulty, EntropyFork, SelfConsistency
from entropy_serve.server.strategies import deepconf, difficulty, entropy_fork, self_consistency

ANSWERS = {
    SelfConsistency: self_consistency.answer,
    EntropyFork: entropy_fork.answer,
    DeepConf: deepconf.answer,
    Difficulty: difficulty.answer,
}
if set(ANSWERS) != set(STRATEGIES.values()):
    raise ImportError("every strategy in extensions.STRATEGIES needs exactly one answer here")
