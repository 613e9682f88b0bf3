"""The command table: every command owns its flags; shared flag types refuse nonsense."""

from __future__ import annotations

import argparse

import pytest

from entropy_serve.cli import COMMANDS, build_parser
from entropy_serve.commands import UsageError
from entropy_serve.commands.flags import server_config
from entropy_serve.flag_types import fraction, positive_int


def test_every_command_has_help_flags_and_a_run_function():
    parser = build_parser()
    for name, command in COMMANDS.items():
        assert command.HELP and callable(command.add_arguments) and callable(command.run)
        required = {
            "calibrate": ["--out", "x"],
            "train-probe": ["--out", "x"],
            "tune-strategies": ["--out", "x"],
            "batch": ["-i", "a", "-o", "b"],
            "score": ["-i", "a", "-o", "b"],
        }
        assert parser.parse_args([name, *required.get(name, [])]).command == name


@pytest.mark.parametrize(
    "argv, message",
    [
        (["serve", "--max-n", "0"], "argument --max-n: must be at least 1, got 0"),
        (["serve", "--max-model-len", "many"], "argument --max-model-len: expected a whole number, got 'many'"),
        (["serve", "--gpu-memory-utilization", "1.5"], "argument --gpu-memory-utilization: must be in (0, 1], got 1.5"),
        (["serve", "--probe", "/no/such/probe"], "argument --probe: /no/such/probe does not exist"),
        (["train-probe", "--out", "x", "--samples", "-2"], "argument --samples: must be at least 1, got -2"),
        (["calibrate"], "the following arguments are required: --out"),
        (
            ["tune-strategies", "--out", "x", "--temperatures", "0.5,3"],
            "argument --temperatures: temperatures must be in (0, 2]",
        ),
        (
            ["train-probe", "--out", "x", "--tune-temperatures", "hot"],
            "argument --tune-temperatures: expected comma-separated",
        ),
        (
            ["serve", "--strategy-defaults", "/no/such.json"],
            "argument --strategy-defaults: /no/such.json does not exist",
        ),
        (["batch", "-i", "in.jsonl"], "the following arguments are required: -o/--output-file"),
        (
            ["batch", "-i", "a", "-o", "b", "--output-order", "random"],
            "argument --output-order: invalid choice: 'random'",
        ),
        (["score", "-i", "a", "-o", "b", "--window", "0"], "argument --window: must be at least 1, got 0"),
        (
            ["serve", "--tool-call-parser", "nope"],
            "argument --tool-call-parser: unknown tool-call parser 'nope'; vLLM's are: ",
        ),
    ],
)
def test_bad_flags_are_usage_errors_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as raised:
        build_parser().parse_args(argv)
    assert raised.value.code == 2
    assert message in capsys.readouterr().err


def test_tuning_temperatures_parse_and_train_probe_can_skip_the_tuning():
    args = build_parser().parse_args(["train-probe", "--out", "x", "--tune-temperatures", ""])
    assert args.tune_temperatures == ()
    args = build_parser().parse_args(["tune-strategies", "--out", "x", "--temperatures", "0.3, 0.7"])
    assert args.temperatures == (0.3, 0.7) and args.traces == 16 and args.token_share == 0.5


def test_flag_types_by_hand():
    assert positive_int("3") == 3 and fraction("0.5") == 0.5 and fraction("1") == 1.0
    for bad in ("0", "-1", "1.5", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_int(bad)
    for bad in ("0", "1.01", "nan?"):
        with pytest.raises(argparse.ArgumentTypeError):
            fraction(bad)


def test_auto_tool_choice_needs_a_parser():
    args = build_parser().parse_args(["serve", "--enable-auto-tool-choice"])
    with pytest.raises(UsageError, match="--enable-auto-tool-choice needs --tool-call-parser"):
        server_config(args)
    args = build_parser().parse_args(
        ["batch", "-i", "a", "-o", "b", "--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
    )
    assert server_config(args).tool_call_parser == "hermes"


def test_api_keys_repeat_and_come_from_the_environment_unless_flags_name_them(monkeypatch):
    assert build_parser().parse_args(["serve"]).api_keys == []
    assert build_parser().parse_args(["serve", "--api-key", "a", "--api-key", "b"]).api_keys == ["a", "b"]
    monkeypatch.setenv("ENTROPY_SERVE_API_KEY", "x, y")
    assert build_parser().parse_args(["serve"]).api_keys == ["x", "y"]
    args = build_parser().parse_args(["serve", "--api-key", "a"])
    assert args.api_keys == ["a"] and server_config(args).api_keys == ("a",)


def test_every_flag_reads_its_environment_variable_and_the_flag_wins(monkeypatch):
    monkeypatch.setenv("ENTROPY_SERVE_MAX_TOKENS_LIMIT", "128")
    monkeypatch.setenv("ENTROPY_SERVE_ENABLE_AUTO_TOOL_CHOICE", "true")
    monkeypatch.setenv("ENTROPY_SERVE_TOOL_CALL_PARSER", "hermes")
    monkeypatch.setenv("ENTROPY_SERVE_MODEL", "")  # empty: unset, as compose passes an unset variable
    monkeypatch.setenv("ENTROPY_SERVE_TENSOR_PARALLEL_SIZE", "2")
    args = build_parser().parse_args(["serve"])
    assert (args.max_tokens_limit, args.enable_auto_tool_choice, args.tool_call_parser) == (128, True, "hermes")
    assert args.model is None and args.tensor_parallel_size == 2
    assert build_parser().parse_args(["serve", "--max-tokens-limit", "64"]).max_tokens_limit == 64


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("ENTROPY_SERVE_MAX_N", "0", "argument --max-n: must be at least 1, got 0"),
        (
            "ENTROPY_SERVE_ENABLE_AUTO_TOOL_CHOICE",
            "maybe",
            "ENTROPY_SERVE_ENABLE_AUTO_TOOL_CHOICE: expected true or false, got 'maybe'",
        ),
        (
            "ENTROPY_SERVE_DISTRIBUTED_EXECUTOR_BACKEND",
            "slurm",
            "ENTROPY_SERVE_DISTRIBUTED_EXECUTOR_BACKEND: invalid choice 'slurm'",
        ),
    ],
)
def test_bad_environment_values_are_usage_errors(monkeypatch, capsys, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as raised:
        build_parser().parse_args(["serve"])
    assert raised.value.code == 2 and message in capsys.readouterr().err
