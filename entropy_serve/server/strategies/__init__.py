"""Strategies: how a request is answered when it names one (extensions.STRATEGIES).

Each strategy module has `answer(ctx, request) -> reply`; ANSWERS maps each strategy's
field model (whose `name` is in the registry) to it, so a strategy added to the registry
without an answer fails at import.
Voting strategies sample leaves, vote over their answers (leaves.py, tasks/voting.py) and
reply with a winning leaf, stopping early when their rules say so (stopping.py);
`escalate` (and `auto`) answers greedily and samples only when that answer is
uncertain; `difficulty` routes the request and generates once. Fields a client leaves
out take the model's learned settings (defaults.py).
"""

from __future__ import annotations

from entropy_serve.server.protocol.extensions import (
    STRATEGIES,
    Auto,
    DeepConf,
    Difficulty,
    EntropyFork,
    Escalate,
    SelfConsistency,
)
from entropy_serve.server.strategies import deepconf, difficulty, entropy_fork, escalate, self_consistency

ANSWERS = {
    SelfConsistency: self_consistency.answer,
    EntropyFork: entropy_fork.answer,
    DeepConf: deepconf.answer,
    Escalate: escalate.answer,
    Auto: escalate.answer,
    Difficulty: difficulty.answer,
}
if set(ANSWERS) != set(STRATEGIES.values()):
    raise ImportError("every strategy in extensions.STRATEGIES needs exactly one answer here")
