"""torch.compile for the samplers' CPU hot paths, with an eager fallback.

Eager PyTorch runs a full-vocabulary row operation as one pass per operator, each
writing a new [batch, vocab] buffer; inductor's C++ backend fuses a function's
operators into a few vectorized loops with no intermediate buffers. CPU tensors take the
compiled function, compiled on first use (and again for a new shape specialisation,
e.g. a batch of one; the engine adapter compiles them at start-up); other devices, or
ENTROPY_SERVE_COMPILE=0, take the eager one; where compiling fails (no C++ compiler)
the eager one runs from then on, after one warning.
"""

from __future__ import annotations

import functools
import logging
import os

import torch

logger = logging.getLogger(__name__)

COMPILE_ENV = "ENTROPY_SERVE_COMPILE"


class CompiledOnCpu:
    """`fn` (tensors first), compiled on first call with a CPU tensor."""

    def __init__(self, fn) -> None:
        functools.update_wrapper(self, fn)
        self.eager = fn
        self._compiled = None
        self.enabled = os.environ.get(COMPILE_ENV, "1") != "0"

    def __call__(self, *tensors: torch.Tensor):
        if not (self.enabled and tensors[0].is_cpu):
            return self.eager(*tensors)
        if self._compiled is None:
            self._compiled = torch.compile(self.eager, dynamic=True)
        try:
            return self._compiled(*tensors)
        except Exception as error:  # inductor finds a missing compiler only when it runs
            logger.warning("%s: torch.compile failed (%s); using the eager version", self.eager.__name__, error)
            self.enabled = False
            return self.eager(*tensors)
