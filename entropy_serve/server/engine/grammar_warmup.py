"""Grammars compiled in the engine's workers before the request that needs one is submitted.

Our adapter constrains its rows with xgrammar inside the engine step
(adapters/grammar.py); compiling a large schema there takes seconds, during which every
request in the batch waits. vLLM compiles its own grammars off the step and schedules a
request once its grammar is ready; we do the same from outside the scheduler:
1. before submitting jobs whose rows carry a grammar this engine has not compiled yet,
   `compiled` submits a one-token warm-up request whose row spec asks the workers to
   compile it (RowSpec.compile_grammar);
2. the workers compile it in a background thread and publish a readiness record on the
   entropy channel (spec.grammar_ready_key); the engine keeps stepping meanwhile;
3. the request is submitted after that; its compile in the step is a cache hit.
Requests that need one new grammar at once share one warm-up. When readiness does not
come within WARMUP_TIMEOUT_S, the request goes ahead and compiles in the step, as before.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict

from vllm import SamplingParams
from vllm.sampling_params import RequestOutputKind

from entropy_serve.server.engine.adapters.channel import EntropyStore
from entropy_serve.server.engine.adapters.spec import RowSpec, grammar_ready_key

logger = logging.getLogger(__name__)

WARMUP_TIMEOUT_S = 120.0
MAX_KNOWN = 1024  # grammars remembered as compiled (the workers' cache is bounded too)
WARMUP_PROMPT = [0]  # any one token: the warm-up's output is thrown away


class GrammarWarmup:
    """One AsyncLLM's grammars: compiled ones, and warm-ups under way (by readiness key,
    which names the data-parallel engine: each compiles its own)."""

    def __init__(self) -> None:
        self._known: OrderedDict[str, asyncio.Future] = OrderedDict()

    async def compiled(self, llm, store: EntropyStore, grammars: set[str], rank: int | None = None) -> None:
        """Return once every grammar in `grammars` is compiled in the workers of `llm`'s
        data-parallel engine `rank` (None: its only engine), or its warm-up timed out."""
        waits = []
        for grammar in grammars:
            key = grammar_ready_key(grammar, rank or 0)
            ready = self._known.get(key)
            if ready is None:
                ready = self._known[key] = asyncio.ensure_future(self._warm_up(llm, store, grammar, key, rank))
                while len(self._known) > MAX_KNOWN:
                    self._known.popitem(last=False)
            self._known.move_to_end(key)
            waits.append(ready)
        if waits:
            await asyncio.gather(*(asyncio.shield(wait) for wait in waits))  # one leaving client cancels no warm-up

    async def _warm_up(self, llm, store: EntropyStore, grammar: str, key: str, rank: int | None) -> None:
        spec = RowSpec(key=f"grammar-warmup-{uuid.uuid4().hex}", shape=False, compile_grammar=grammar)
        params = SamplingParams(
            max_tokens=1, temperature=0.0, extra_args=spec.to_extra_args(), output_kind=RequestOutputKind.FINAL_ONLY
        )
        store.open(key)
        try:
            async for _ in llm.generate({"prompt_token_ids": WARMUP_PROMPT}, params, spec.key, data_parallel_rank=rank):
                pass
            await store.take(key, range(1), timeout_s=WARMUP_TIMEOUT_S)
        except TimeoutError:
            logger.warning(
                "a grammar was not compiled within %.0f s; its request compiles it in the engine step", WARMUP_TIMEOUT_S
            )
            self._known.pop(key, None)  # try again next time
        except BaseException:
            self._known.pop(key, None)  # the engine died or stopped: nothing is known compiled
            raise
        finally:
            store.forget(key)
