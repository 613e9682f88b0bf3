"""Grammar masks for our rows: xgrammar, in the engine process, after the model's entropy.

vLLM's runner applies its structured-output bitmask to the logits before any logits
processor runs (vLLM 0.32: `GPUModelRunner.sample_tokens` -> `apply_grammar_bitmask`,
then the Sampler and its processors), so an adapter under vLLM's own mask could only see
the constrained distribution. For rows our adapter shapes or measures, the server
therefore leaves vLLM's `structured_outputs` unset and sends the grammar's text in the
row spec (server/protocol/constraints.py); here it is compiled with the same library and options
vLLM's xgrammar backend uses, one matcher per request follows the tokens the request
has generated, and each step's bitmask is applied between measuring the model's entropy
and sampling (rows.py). The model entropy reported is then the unconstrained model's,
and the sampled entropy that of the masked distribution the token is really drawn from.

Compiling happens off the step: the server first sends a warm-up row asking for the
grammar (server/engine/grammar_warmup.py), `prepare` compiles it in a background thread
(xgrammar releases the GIL while compiling) and publishes its readiness on the entropy
channel; the request that needs it is submitted after that, and its compile in the step
is a cache hit. The compiler's cache is bounded (COMPILE_CACHE_BYTES): an evicted
grammar is compiled again, in the step.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
import xgrammar as xgr

from entropy_serve.server.engine.adapters.channel import EntropyPublisher, engine_index
from entropy_serve.server.engine.adapters.spec import RowSpec, grammar_ready_key

# This runs in vLLM's engine process, where only vLLM's logger tree has handlers.
logger = logging.getLogger(f"vllm.{__name__}")

COMPILE_CACHE_BYTES = 512 << 20  # compiled grammars kept for reuse (xgrammar's default: no bound)


class Matcher:
    """One request's grammar state: the matcher and how many output tokens it has taken."""

    def __init__(self, matcher: xgr.GrammarMatcher, key: str):
        self.matcher = matcher
        self.key = key
        self.num_accepted = 0
        self.broken = False

    def follow(self, output_ids: Sequence[int]) -> None:
        """Accept the tokens generated since the last step."""
        for token in output_ids[self.num_accepted :]:
            if not self.broken and not self.matcher.accept_token(token):
                # Cannot happen while every token is drawn under the mask; never kill the engine for it.
                logger.error("entropy-serve: grammar of %s rejected token %d; its mask is lifted", self.key, token)
                self.broken = True
        self.num_accepted = len(output_ids)


class GrammarRows:
    """Compiled grammars (by text) and per-request matchers (by row key)."""

    def __init__(self, vocab_size: int, tokenizer_info: Callable[[], xgr.TokenizerInfo], engine: int = 0):
        """`tokenizer_info` is called once, on the first grammar (it loads the tokenizer);
        `engine` is the data-parallel rank of this worker's engine."""
        self.vocab_size = vocab_size
        self.tokenizer_info = tokenizer_info
        self._compiler: xgr.GrammarCompiler | None = None
        self._compiler_lock = threading.Lock()  # the step and the background compiles both ask for it
        self._background: ThreadPoolExecutor | None = None
        # Readiness records go out from the background thread, on a socket of its own.
        self.engine = engine
        self.ready_publisher = EntropyPublisher(engine)
        self.matchers: dict[str, Matcher] = {}

    @classmethod
    def of(cls, vllm_config) -> GrammarRows:
        """The model's tokenizer, as vLLM's xgrammar backend reads it."""
        model_config = vllm_config.model_config
        vocab_size = model_config.get_vocab_size()

        def tokenizer_info() -> xgr.TokenizerInfo:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(
                model_config.tokenizer, trust_remote_code=model_config.trust_remote_code
            )
            return xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)

        rows = cls(vocab_size, tokenizer_info, engine_index(vllm_config))
        rows.warm_up()
        return rows

    def warm_up(self) -> None:
        """Load the tokenizer and run xgrammar once while the engine starts, so that the
        first constrained request does not pay for them inside a step (loading the
        tokenizer holds the GIL, which would stall the step even from a background thread)."""
        compiled = self.compiler().compile_json_schema('{"type": "object", "properties": {"a": {"type": "string"}}}')
        mask = xgr.allocate_token_bitmask(1, self.vocab_size)
        xgr.GrammarMatcher(compiled).fill_next_token_bitmask(mask, 0)
        apply_bitmask(torch.zeros(1, self.vocab_size), mask)

    def compiler(self) -> xgr.GrammarCompiler:
        with self._compiler_lock:
            if self._compiler is None:
                info = self.tokenizer_info()
                self._compiler = xgr.GrammarCompiler(info, cache_enabled=True, cache_limit_bytes=COMPILE_CACHE_BYTES)
            return self._compiler

    def prepare(self, grammar: str) -> None:
        """Compile `grammar` in the background, then publish its readiness record. A
        grammar that fails to compile is ready too: the request's own compile, in the
        step, reports the failure as before."""
        if self._background is None:
            self._background = ThreadPoolExecutor(1, thread_name_prefix="entropy-serve-grammar")

        def compile_then_publish() -> None:
            try:
                self.compiler().compile_grammar(grammar)
            except Exception as error:  # reported again where the request compiles it
                logger.warning("entropy-serve: a warm-up grammar failed to compile: %s", error)
            self.ready_publisher.publish([(grammar_ready_key(grammar, self.engine), 0, 0.0, 0.0, 0.0, 0.0)])

        self._background.submit(compile_then_publish)

    def matcher(self, spec: RowSpec) -> Matcher:
        found = self.matchers.get(spec.key)
        if found is None:
            compiled = self.compiler().compile_grammar(spec.grammar)  # xgrammar caches by text
            found = self.matchers[spec.key] = Matcher(xgr.GrammarMatcher(compiled), spec.key)
            for token in spec.grammar_prefix:  # a continuation: its prefix is part of the prompt
                found.matcher.accept_token(token)
        return found

    def forget(self, key: str) -> None:
        self.matchers.pop(key, None)

    def bitmask(self, specs: Sequence[RowSpec], outputs: Sequence[Sequence[int]]) -> torch.Tensor | None:
        """[rows, words] int32 bitmask of the next allowed tokens, one row per spec (all
        allowed where a spec has no grammar); None when no spec has one."""
        if not any(spec.grammar for spec in specs):
            return None
        mask = xgr.allocate_token_bitmask(len(specs), self.vocab_size)
        for i, (spec, output_ids) in enumerate(zip(specs, outputs, strict=True)):
            if spec.grammar is None:
                continue
            state = self.matcher(spec)
            state.follow(output_ids)
            if not state.broken:
                state.matcher.fill_next_token_bitmask(mask, i)
        return mask


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """Set the tokens `bitmask` [rows, words] disallows in `logits` [rows, vocab] to -inf, in place."""
    xgr.apply_token_bitmask_inplace(logits, bitmask.to(logits.device), vocab_size=logits.shape[-1])
