"""The server's settings are defined once (server/config.py): every command that starts an
engine resolves them to the same values, from its flags, and the trainer's engine too."""

from __future__ import annotations

import dataclasses

import pytest

from entropy_serve import model_store
from entropy_serve.cli import COMMANDS, build_parser
from entropy_serve.server.config import ServerConfig, platform_is_cpu

# What a command resolves when given no flag: one table for all of them.
RESOLVED = {
    "max_model_len": None,
    "dtype": "auto",
    "enforce_eager": platform_is_cpu(),  # on for CPU, off for GPU
    "gpu_memory_utilization": 0.9,
    "max_num_seqs": 64,
    "max_num_batched_tokens": None,
    "num_gpu_blocks_override": None,
    "block_size": None,
    "cpu_cores": None,
    "kv_cache_gib": None,
    "tensor_parallel_size": 1,
    "pipeline_parallel_size": 1,
    "data_parallel_size": 1,
    "distributed_executor_backend": None,
    "entropy_channel": "auto",
    "entropy_channel_host": None,
    "logprobs_mode": None,
    "max_n": 16,
    "max_leaves": 64,
    "max_tokens_limit": None,
    "max_prompt_tokens": None,
    "probe": None,
    "difficulty_table": None,
    "probe_min_confidence": 0.5,
    "enable_auto_tool_choice": False,
    "tool_call_parser": None,
    "host": "127.0.0.1",
    "port": 8000,
    "api_keys": (),
    "max_body_bytes": 4 * 1024 * 1024,
    "drain_timeout_s": 30.0,
    "database_url": None,
    "max_file_bytes": 100 * 1024 * 1024,
    "max_batch_lines": 50_000,
    "batch_max_in_flight": 8,
}
# Settings a command fixes itself, over the table.
FIXED = {
    "calibrate": {"max_n": 4},  # its --samples
    "train-probe": {"max_n": 16},  # max(--samples 8, --tune-traces 16)
    "tune-strategies": {"max_n": 16},  # its --traces
}
REQUIRED = {
    "calibrate": ["--out", "x"],
    "train-probe": ["--out", "x"],
    "tune-strategies": ["--out", "x"],
    "batch": ["-i", "a", "-o", "b"],
    "score": ["-i", "a", "-o", "b"],
}
ENGINE_COMMANDS = [name for name, command in COMMANDS.items() if hasattr(command, "engine_config")]


def test_the_table_covers_every_setting_but_the_derived_ones():
    derived = {"model", "served_model_name", "entropy_profile", "strategy_defaults"}
    assert set(RESOLVED) | derived == {f.name for f in dataclasses.fields(ServerConfig)}


def test_every_command_that_starts_an_engine_says_so():
    assert set(ENGINE_COMMANDS) == {"serve", "batch", "score", "calibrate", "train-probe", "tune-strategies"}


@pytest.mark.parametrize("name", ENGINE_COMMANDS)
def test_every_command_resolves_the_same_config(name, monkeypatch):
    for variable in ("ENTROPY_SERVE_CPU_CORES", "ENTROPY_SERVE_KV_CACHE_GIB"):  # the test session sets them
        monkeypatch.delenv(variable, raising=False)
    args = build_parser().parse_args([name, *REQUIRED.get(name, [])])
    config = COMMANDS[name].engine_config(args)
    resolved = {field: getattr(config, field) for field in RESOLVED}
    assert resolved == {**RESOLVED, **FIXED.get(name, {})}
    assert config.model == str(model_store.prepare_default_model())
    assert config.served_model_name == model_store.DEFAULT_MODEL_NAME


def test_the_policy_trainers_engine_resolves_the_same_defaults(tmp_path):
    from entropy_serve.trainer.policy import engine_config
    from entropy_serve.trainer.policy_config import PolicyConfig

    config = engine_config(PolicyConfig(output_dir=tmp_path), model="m")
    own = {
        "dtype": "float32",
        "max_model_len": 1024,
        "gpu_memory_utilization": 0.3,
        "max_n": 8,
        "logprobs_mode": "processed_logprobs",
        "cpu_cores": config.cpu_cores,
    }
    assert {field: getattr(config, field) for field in RESOLVED} == {**RESOLVED, **own}


def test_a_config_built_in_code_gets_the_platforms_default():
    assert ServerConfig(model="m", served_model_name="m").enforce_eager is platform_is_cpu()
    assert ServerConfig(model="m", served_model_name="m", enforce_eager=False).enforce_eager is False


def test_settings_are_checked_where_they_are_defined():
    with pytest.raises(ValueError, match="max_num_seqs must be at least 1"):
        ServerConfig(model="m", served_model_name="m", max_num_seqs=0)
    with pytest.raises(ValueError, match="batch_max_in_flight must be at least 1"):
        ServerConfig(model="m", served_model_name="m", batch_max_in_flight=0)
