"""Teacher-forced scoring: each token's log-probability and the entropy of the
distribution it was predicted from, over the full vocabulary.

How: a pooling engine of the served weights (probes/features.py, every position, no
activation) gives the final hidden state h_i of every token in one prefill; the
model's own output projection W (read from its safetensors, tied or not) gives
z_i = W h_i in the model's dtype, as vLLM's lm_head computes it, then float32:
    log p(t_{i+1} | t_<=i) = z_i[t_{i+1}] - log sum exp z_i
    H_i = -sum_v p_v log p_v                      (samplers/entropy.py, as the server's)
So entropy_nats[k] is the entropy of the distribution that scored token k was drawn
from: what the server reports as model_entropy_nats for a generated token. Models that
scale or soft-cap their logits are refused (their logits are not W h).

A record: {"prompt": text, or "messages": chat messages; "completion": optional text;
"custom_id": optional}. With a completion its tokens are scored after the prompt
(rendered as the server renders it: chat template with the generation prompt); without
one, the prompt's own tokens from the second on (the first has no context).
"""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from safetensors import safe_open
from vllm import PoolingParams
from vllm.v1.engine.async_llm import AsyncLLM

from entropy_serve.offline.records import InputLine
from entropy_serve.offline.runner import Answered
from entropy_serve.probes.features import pooling_engine_args
from entropy_serve.probes.router import DifficultyRouter
from entropy_serve.samplers.entropy import shifted_log_normalizer_and_entropy
from entropy_serve.server.config import ServerConfig
from entropy_serve.server.core.rendering import Renderer
from entropy_serve.server.engine.feature_engines import pooling_kv_cache_bytes, start_feature_engine
from entropy_serve.server.engine.holder import engine_args
from entropy_serve.server.errors import APIError, validation_message
from entropy_serve.server.protocol.messages import ChatMessage
from entropy_serve.server.protocol.requests import ChatCompletionRequest, CompletionRequest

LOGIT_SCALING_KEYS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")
ROWS_PER_MATMUL = 256  # positions projected to the vocabulary at once ([256, V] float32: 50 MB at V=49k)


class ScoreRecord(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    custom_id: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    completion: str | None = None

    @model_validator(mode="after")
    def _one_prompt(self) -> ScoreRecord:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("prompt: give exactly one of prompt (text) or messages (chat)")
        if self.messages is not None and not self.messages:
            raise ValueError("messages: must not be empty")
        if self.completion == "":
            raise ValueError("completion: must not be empty (leave it out to score the prompt)")
        return self

    def as_request(self, model: str) -> CompletionRequest | ChatCompletionRequest:
        """The request whose prompt the server would render for this record."""
        if self.messages is not None:
            return ChatCompletionRequest(model=model, messages=self.messages)
        return CompletionRequest(model=model, prompt=self.prompt)


def output_projection(model_dir: str) -> torch.Tensor:
    """The model's lm_head weight [vocab, hidden] in its stored dtype (the input
    embedding when the model ties them)."""
    folder = Path(model_dir)
    if not folder.is_dir():  # a hub id: its files in the local cache (nothing is downloaded here)
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(model_dir, local_files_only=True))
    config = json.loads((folder / "config.json").read_text())
    scaled = [key for key in LOGIT_SCALING_KEYS if config.get(key) not in (None, 1, 1.0)]
    if scaled:
        raise ValueError(f"score: this model scales its logits ({', '.join(scaled)}); scoring reads W h only")
    name = "model.embed_tokens.weight" if config.get("tie_word_embeddings") else "lm_head.weight"
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, "pt") as tensors:
            if name in tensors.keys():
                return tensors.get_tensor(name)
    raise ValueError(f"score: {model_dir} has no {name} in its safetensors files")


def score_positions(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden [T, H] (predicting positions), weight [V, H], targets [T] (the token each
    position predicts) -> (logprob [T], entropy_nats [T]), float32."""
    logprobs, entropies = [], []
    for start in range(0, hidden.shape[0], ROWS_PER_MATMUL):
        rows = hidden[start : start + ROWS_PER_MATMUL].to(weight.dtype)
        logits = (rows @ weight.T).float()  # [rows, V], in the model's dtype first, as vLLM's lm_head
        row_max, log_total, entropy = shifted_log_normalizer_and_entropy(logits)
        target = targets[start : start + ROWS_PER_MATMUL, None]
        logprobs.append(((logits.gather(1, target) - row_max) - log_total).squeeze(1))
        entropies.append(entropy.squeeze(1))
    return torch.cat(logprobs), torch.cat(entropies)


def highest_entropy_window(entropies: list[float], window: int) -> tuple[int, int, float]:
    """(start, end, mean) of the `window` consecutive tokens of highest mean entropy
    (all of them when fewer); the first such window on ties."""
    size = min(window, len(entropies))
    sums = [math.fsum(entropies[:size])]
    for end in range(size, len(entropies)):
        sums.append(sums[-1] + entropies[end] - entropies[end - size])
    start = max(range(len(sums)), key=lambda i: (sums[i], -i))
    return start, start + size, sums[start] / size if size else 0.0


@dataclass(frozen=True)
class ScoredTokens:
    token_ids: list[int]  # the whole sequence: prompt, then completion
    num_prompt_tokens: int
    first_scored: int  # index of the first scored token
    logprobs: list[float]  # per scored token
    entropies: list[float]


class Scorer:
    """Scores records on a pooling engine (ALL positions) of the model, and the difficulty
    router's engine when the config names a probe; `start` makes one, `stop` ends both."""

    def __init__(
        self, engine: AsyncLLM, weight: torch.Tensor, model: str, router: DifficultyRouter | None, window: int
    ):
        self.engine = engine
        self.weight = weight
        self.model = model
        self.router = router
        self.window = window
        self.tokenizer = engine.get_tokenizer()
        self.renderer = Renderer(lambda: self.tokenizer)
        self.max_model_len = engine.vllm_config.model_config.max_model_len

    @classmethod
    async def start(cls, config: ServerConfig, window: int) -> Scorer:
        # The generation engine's dtype, not the one a pooling runner would pick for `auto`.
        dtype = engine_args(config).create_model_config().dtype
        weight = output_projection(config.model).to(dtype)
        args = pooling_engine_args(
            config.model,
            config.max_model_len,
            str(dtype).removeprefix("torch."),
            config.enforce_eager,
            pooling_type="ALL",
            memory_fraction=config.gpu_memory_utilization,
            kv_cache_memory_bytes=pooling_kv_cache_bytes(config),
        )
        router = DifficultyRouter.load(config.probe, config.model, config.difficulty_table, config.probe_min_confidence)
        scorer = cls(
            await asyncio.to_thread(AsyncLLM.from_engine_args, args), weight, config.served_model_name, router, window
        )
        if router is not None:
            try:
                router.attach(await start_feature_engine(config, router.pooling, router.feature_suffix, dtype))
            except BaseException:
                scorer.stop()
                raise
        return scorer

    def stop(self) -> None:
        # Dropped as well as shut down, as EngineHolder.stop does (an engine left for the
        # interpreter's exit runs its shutdown again when vLLM's modules are torn down).
        engine, self.engine = self.engine, None
        if self.router is not None:
            self.router.stop()
        if engine is not None:
            engine.shutdown()

    async def answer(self, line: InputLine) -> Answered:
        """The line's score record, or its error record (a bad record is not fatal)."""
        try:
            record = self.parse(line)
            request = record.as_request(self.model)
            prompt_ids = self.renderer.render(request)[0]
            scored = await self.score(prompt_ids, record.completion)
            result = self.result(scored)
            if self.router is not None:
                classification = await self.router.classify(prompt_ids)
                result["difficulty"] = {"class": classification.name, "probabilities": classification.probabilities}
        except (APIError, ValueError) as error:
            message = error.message if isinstance(error, APIError) else str(error)
            return Answered(record={**line.record_key_fields(), "error": {"message": message}}, ok=False, num_tokens=0)
        return Answered(
            record={**line.record_key_fields(), **result, "error": None}, ok=True, num_tokens=len(scored.logprobs)
        )

    def parse(self, line: InputLine) -> ScoreRecord:
        if line.error is not None:
            raise ValueError(line.error)
        try:
            return ScoreRecord.model_validate(line.value)
        except ValidationError as error:
            message, _ = validation_message(list(error.errors(include_url=False)))
            raise ValueError(f"line {line.number}: {message}") from None

    async def score(self, prompt_ids: list[int], completion: str | None) -> ScoredTokens:
        completion_ids = self.tokenizer.encode(completion, add_special_tokens=False) if completion else []
        token_ids = prompt_ids + completion_ids
        first_scored = len(prompt_ids) if completion_ids else 1
        if len(token_ids) > self.max_model_len:
            raise ValueError(f"tokens: {len(token_ids)} is longer than the context length {self.max_model_len}")
        if first_scored >= len(token_ids):
            raise ValueError("prompt: a single token has nothing to score; give a completion or a longer prompt")
        hidden = await self._hidden_states(token_ids)  # [T, H]
        targets = torch.tensor(token_ids[first_scored:])
        # Off the event loop: the engine keeps being fed while this record's logits are computed.
        logprobs, entropies = await asyncio.to_thread(
            score_positions, hidden[first_scored - 1 : -1], self.weight, targets
        )
        return ScoredTokens(token_ids, len(prompt_ids), first_scored, logprobs.tolist(), entropies.tolist())

    async def _hidden_states(self, token_ids: list[int]) -> torch.Tensor:
        final = None
        async for output in self.engine.encode(
            {"prompt_token_ids": token_ids}, PoolingParams(task="token_embed"), f"score-{uuid.uuid4().hex}"
        ):
            final = output
        return final.outputs.data

    def result(self, scored: ScoredTokens) -> dict:
        ids = scored.token_ids[scored.first_scored :]
        start, end, window_mean = highest_entropy_window(scored.entropies, self.window)
        return {
            "tokens": [self.tokenizer.decode([t]) for t in ids],
            "token_ids": ids,
            "logprobs": scored.logprobs,
            "entropy_nats": scored.entropies,
            "scored": "completion" if scored.first_scored == scored.num_prompt_tokens else "prompt",
            "num_prompt_tokens": scored.num_prompt_tokens,
            "summary": {
                "num_tokens": len(ids),
                "sum_logprob": math.fsum(scored.logprobs),
                "mean_logprob": math.fsum(scored.logprobs) / len(ids),
                "mean_entropy_nats": math.fsum(scored.entropies) / len(ids),
                "max_entropy_nats": max(scored.entropies),
            },
            "highest_entropy_window": {
                "start": start,
                "end": end,
                "mean_entropy_nats": window_mean,
                "text": self.tokenizer.decode(ids[start:end]),
            },
        }
