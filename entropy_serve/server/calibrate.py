"""`entropy-serve calibrate`: sample the built-in prompts, write the entropy profile."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from entropy_serve.calibration import DEFAULT_PROMPTS, model_fingerprint, profile_from_entropies
from entropy_serve.server import submission
from entropy_serve.server.config import ServerConfig
from entropy_serve.server.engine import running_engine
from entropy_serve.server.generation import Generator
from entropy_serve.server.protocol import ChatCompletionRequest

logger = logging.getLogger(__name__)


async def collect_entropies(config: ServerConfig, samples_per_prompt: int, max_tokens: int, seed: int) -> list[float]:
    """Model entropy of every token sampled at T=1 for the built-in prompts."""
    async with running_engine(config) as holder:
        generator = Generator(holder, config)
        prepared = [
            generator.prepare_chat(
                ChatCompletionRequest(
                    model=config.served_model_name,
                    messages=[{"role": "user", "content": prompt}],
                    n=samples_per_prompt,
                    max_tokens=max_tokens,
                    temperature=1.0,
                    seed=seed + i,
                    return_entropy=True,
                )
            )
            for i, prompt in enumerate(DEFAULT_PROMPTS)
        ]
        results = await asyncio.gather(*(submission.run(holder, p) for p in prepared))
    return [
        token.model_entropy_nats
        for prompt_results in results
        for result in prompt_results
        for tokens in result.entropies.values()
        for token in tokens
    ]


def calibrate(config: ServerConfig, out: Path, samples_per_prompt: int, max_tokens: int, seed: int) -> dict:
    entropies = asyncio.run(collect_entropies(config, samples_per_prompt, max_tokens, seed))
    profile = {
        "model": config.served_model_name,
        "fingerprint": model_fingerprint(config.model),
        "prompts": "built-in",
        "num_prompts": len(DEFAULT_PROMPTS),
        "samples_per_prompt": samples_per_prompt,
        "max_tokens": max_tokens,
        "temperature": 1.0,
        "seed": seed,
        **profile_from_entropies(entropies),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(profile, indent=2) + "\n")
    return profile
