"""Entropy profiles: computed by hand, tied to their model, shipped for the default one."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from entropy_serve import calibration
from entropy_serve.model_store import DEFAULT_MODEL_NAME, prepare_default_model


def test_profile_from_entropies_by_hand():
    entropies = [float(i) for i in range(1, 101)]  # 1..100 nats
    profile = calibration.profile_from_entropies(entropies)
    assert profile["log_entropy_pivot"] == pytest.approx(math.log(np.quantile(entropies, 0.8)))
    log_h = np.log(entropies)
    assert profile["log_entropy_spread"] == pytest.approx((np.quantile(log_h, 0.95) - np.quantile(log_h, 0.05)) / 2)
    assert profile["summary"]["num_tokens"] == 100
    assert profile["summary"]["mean_entropy_nats"] == pytest.approx(50.5)


def test_zero_entropies_do_not_break_the_logs():
    profile = calibration.profile_from_entropies([0.0] * 20 + [1.0] * 20)
    assert math.isfinite(profile["log_entropy_pivot"]) and profile["log_entropy_spread"] > 0


def test_too_few_tokens_is_an_error():
    with pytest.raises(ValueError, match="at least 10 tokens"):
        calibration.profile_from_entropies([1.0])


def test_shipped_profile_belongs_to_the_default_model():
    path = calibration.default_profile_path(DEFAULT_MODEL_NAME)
    loaded = calibration.load_profile(path, str(prepare_default_model()))
    assert loaded.data["summary"]["num_tokens"] > 1000
    assert 0 < loaded.profile.log_entropy_spread < 10


def test_profile_of_another_model_is_refused(tmp_path):
    other = tmp_path / "other-model"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    path = calibration.default_profile_path(DEFAULT_MODEL_NAME)
    with pytest.raises(ValueError, match="was made for"):
        calibration.load_profile(path, str(other))


def test_fingerprint_ignores_tool_versions(tmp_path):
    for version in ("4.0", "5.0"):
        folder = tmp_path / version
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"hidden_size": 8, "transformers_version": version}))
    assert calibration.model_fingerprint(str(tmp_path / "4.0")) == calibration.model_fingerprint(str(tmp_path / "5.0"))


def test_unreadable_profile_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="cannot read entropy profile"):
        calibration.load_profile(bad)


@pytest.mark.e2e
def test_calibrate_command_writes_a_profile(tmp_path):
    out = tmp_path / "profile.json"
    command = [
        sys.executable,
        "-m",
        "entropy_serve",
        "calibrate",
        "--out",
        str(out),
        "--samples",
        "1",
        "--max-tokens",
        "16",
        "--max-model-len",
        "1024",
    ]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    profile = json.loads(out.read_text())
    assert profile["model"] == DEFAULT_MODEL_NAME
    assert profile["fingerprint"] == calibration.model_fingerprint(str(prepare_default_model()))
    assert 10 <= profile["summary"]["num_tokens"] <= 16 * len(calibration.DEFAULT_PROMPTS)


def test_calibrate_rejects_nonsense_flags():
    done = subprocess.run(
        [sys.executable, "-m", "entropy_serve", "calibrate", "--out", "x.json", "--samples", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "argument --samples: must be at least 1, got 0" in done.stderr


def test_profile_for_a_model_is_its_folders_own_or_the_shipped_one(tmp_path):
    from entropy_serve.calibration import PROFILE_FILE, default_profile_path, profile_for

    assert profile_for(None) == default_profile_path("SmolLM2-135M-Instruct") is not None
    assert profile_for(str(tmp_path)) is None
    (tmp_path / PROFILE_FILE).write_text("{}")
    assert profile_for(str(tmp_path)) == tmp_path / PROFILE_FILE
