"""A model's token-entropy profile: the statistics `hapo` normalizes entropy with.

`entropy-serve calibrate` samples a built-in set of chat prompts at temperature 1 with
the served engine and our adapters, collects the model entropy of every generated token,
and writes:
    log_entropy_pivot  = ln(quantile_0.8(H))              (HAPO's pivot quantile)
    log_entropy_spread = (q_0.95(ln H) - q_0.05(ln H)) / 2
plus a summary (token count, mean, quantiles) and the model's fingerprint, so a profile
is never applied to another model by mistake. The embedded default model ships with a
profile made this way (entropy_serve/profiles/).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from entropy_serve.samplers.chain import EntropyProfile
from entropy_serve.samplers.temperature import ENTROPY_FLOOR_NATS

PIVOT_QUANTILE = 0.8
SPREAD_QUANTILES = (0.05, 0.95)
SUMMARY_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.8, 0.95)
PROFILES_DIR = Path(__file__).parent / "profiles"
PROFILE_FILE = "entropy_profile.json"  # a model folder's own profile (train-policy writes one); serve uses it

DEFAULT_PROMPTS = [
    "What is 17 + 25? Explain briefly.",
    "Write a short poem about the sea.",
    "Tell me a story about a robot who learns to paint.",
    "What is the capital of Japan?",
    "Explain photosynthesis to a child.",
    "List five fruits and their colours.",
    "Write a Python function that reverses a string.",
    "What are the benefits of regular exercise?",
    "Describe a rainy day in a big city.",
    "How do airplanes stay in the air?",
    "Give me three tips for learning a new language.",
    "What is 8 times 7? Show your reasoning.",
    "Summarise the plot of a fairy tale you know.",
    "Why is the sky blue?",
    "Write a friendly email inviting a colleague to lunch.",
    "What is the difference between weather and climate?",
]


@dataclass(frozen=True)
class LoadedProfile:
    profile: EntropyProfile
    path: Path
    data: dict


VOLATILE_CONFIG_KEYS = {"transformers_version", "_name_or_path", "_model_name_or_path", "torch_dtype", "dtype"}


def model_fingerprint(model: str) -> str:
    """A local model's identity: its config (less tool-version fields) and weight sizes.

    Stable across machines and library versions for the same weights; a hub id is
    fingerprinted by name.
    """
    folder = Path(model)
    config_path = folder / "config.json"
    if not config_path.is_file():
        return f"name:{model}"
    config = {k: v for k, v in json.loads(config_path.read_text()).items() if k not in VOLATILE_CONFIG_KEYS}
    weights = sorted((p.name, p.stat().st_size) for p in folder.glob("*.safetensors"))
    digest = hashlib.sha256(json.dumps([config, weights], sort_keys=True).encode()).hexdigest()
    return f"sha256:{digest}"


def profile_from_entropies(entropies_nats: list[float]) -> dict:
    """The profile fields (see module doc) from per-token model entropies."""
    if len(entropies_nats) < 10:
        raise ValueError(f"calibration needs at least 10 tokens, got {len(entropies_nats)}")
    h = np.asarray(entropies_nats, dtype=np.float64)
    log_h = np.log(np.maximum(h, ENTROPY_FLOOR_NATS))
    low, high = np.quantile(log_h, SPREAD_QUANTILES)
    return {
        "log_entropy_pivot": math.log(max(float(np.quantile(h, PIVOT_QUANTILE)), ENTROPY_FLOOR_NATS)),
        "log_entropy_spread": max(float(high - low) / 2, 1e-3),
        "pivot_quantile": PIVOT_QUANTILE,
        "summary": {
            "num_tokens": int(h.size),
            "mean_entropy_nats": float(h.mean()),
            "entropy_quantiles_nats": {str(q): float(np.quantile(h, q)) for q in SUMMARY_QUANTILES},
        },
    }


async def sample_entropies(service, samples_per_prompt: int, max_tokens: int, seed: int) -> list[float]:
    """Model entropy of every token sampled at T=1 for the built-in prompts, answered by a
    started in-process service (server/core/service.py), as a client's chat requests are."""
    import asyncio

    replies = await asyncio.gather(
        *(
            service.answer(
                {
                    "model": service.config.served_model_name,
                    "messages": [{"role": "user", "content": prompt}],
                    "n": samples_per_prompt,
                    "max_tokens": max_tokens,
                    "temperature": 1.0,
                    "seed": seed + i,
                    "return_entropy": True,
                },
                "chat_completions",
            )
            for i, prompt in enumerate(DEFAULT_PROMPTS)
        )
    )
    return [
        h for reply in replies for choice in reply.choices for h in choice.model_extra["entropy"]["model_entropy_nats"]
    ]


def profile_record(
    model_name: str, model: str, entropies_nats: list[float], *, samples_per_prompt: int, max_tokens: int, seed: int
) -> dict:
    """The profile file's contents: how it was made, the model's fingerprint, the fields."""
    return {
        "model": model_name,
        "fingerprint": model_fingerprint(model),
        "prompts": "built-in",
        "num_prompts": len(DEFAULT_PROMPTS),
        "samples_per_prompt": samples_per_prompt,
        "max_tokens": max_tokens,
        "temperature": 1.0,
        "seed": seed,
        **profile_from_entropies(entropies_nats),
    }


def profile_for(model: str | None) -> Path | None:
    """The profile a model is served with when none is named: a folder's own
    (PROFILE_FILE, as train-policy writes it), or, for the embedded model (None), the
    shipped one."""
    if model is None:
        from entropy_serve.model_store import DEFAULT_MODEL_NAME

        return default_profile_path(DEFAULT_MODEL_NAME)
    own = Path(model) / PROFILE_FILE
    return own if own.is_file() else None


def default_profile_path(model_name: str) -> Path | None:
    path = PROFILES_DIR / f"{model_name}.json"
    return path if path.is_file() else None


def load_profile(path: str | Path, model: str | None = None) -> LoadedProfile:
    """Read a profile; with `model`, refuse one made for a different model."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        profile = EntropyProfile(float(data["log_entropy_pivot"]), float(data["log_entropy_spread"]))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"cannot read entropy profile {path}: {error}") from error
    if model is not None and data.get("fingerprint") != model_fingerprint(model):
        raise ValueError(
            f"entropy profile {path} was made for {data.get('model')!r} ({data.get('fingerprint')}), "
            f"not for {model!r}; run `entropy-serve calibrate --model {model}`"
        )
    return LoadedProfile(profile, path, data)
