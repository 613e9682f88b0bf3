"""train-policy's pure parts: settings (file, flags, errors), rewards, group runs, the
loss aggregation of each loss type on a hand-computed batch, rollout bodies, logs."""

from __future__ import annotations

import argparse
import json
from types import SimpleNamespace

import pytest
import torch

from entropy_serve import cli
from entropy_serve.trainer.grpo import PolicyTrainer, group_indices
from entropy_serve.trainer.methods import MethodPlan
from entropy_serve.trainer.policy import check_output_folder, reward_mode, rewards_for
from entropy_serve.trainer.policy_config import PolicyConfig, add_config_flags, resolve_config
from entropy_serve.trainer.policy_log import StepLog, read_log, truncate_log


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    return parser.parse_args(argv)


# -- settings ---------------------------------------------------------------------------


def test_flags_win_over_the_file_and_the_file_over_defaults(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("method: [kl_cov]\nlearning-rate: 2.0e-6\nlevels: [add-1digit, add-2digit]\nsteps: 7\n")
    settings = resolve_config(parse("--config", str(config), "--steps", "9", "--output-dir", str(tmp_path / "out")))
    assert settings.method == ["kl_cov"]
    assert settings.learning_rate == 2e-6
    assert settings.levels == ["add-1digit", "add-2digit"]
    assert settings.steps == 9  # the flag wins
    assert settings.group_size == 8  # the default


def test_every_kind_of_flag_parses(tmp_path):
    settings = resolve_config(
        parse(
            "--output-dir",
            str(tmp_path),
            "--levels",
            "add-1digit, add-3digit",
            "--method",
            "ttrl, ettrl",
            "--adaptive-temperature",
            '{"method": "hapo", "tau": 0.3}',
            "--typical-p",
            "0.9",
        )
    )
    assert settings.levels == ["add-1digit", "add-3digit"]
    assert settings.method == ["ttrl", "ettrl"]
    assert settings.adaptive_temperature.method == "hapo" and settings.adaptive_temperature.tau == 0.3
    assert settings.typical_p == 0.9 and reward_mode(settings) == "majority"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--method", "bogus"), "unknown method 'bogus'; known: clip_cov, kl_cov"),
        (("--method", "steer,clip_cov"), "methods steer and clip_cov each replace the token loss"),
        (("--method", "canon,hapo"), "methods canon and hapo each replace GRPO's advantages"),
        (("--method", "ettrl,ettrl"), "a method is named twice"),
        (("--group-size", "1"), "group_size"),
        (("--method", "kl_cov", "--updates-per-batch", "1"), "updates_per_batch >= 2"),
        (("--steer-weight-min", "1.5"), "steer_weight_min"),
        (("--held-out-problems", "4", "--task", "problems.jsonl"), "held_out_problems: needs the built-in arithmetic"),
        (("--clip-cov-lower", "5", "--clip-cov-upper", "1"), "clip_cov_lower"),
        ((), "output_dir"),
    ],
)
def test_bad_settings_name_the_field(tmp_path, argv, message):
    if "output_dir" != message:
        argv = (*argv, "--output-dir", str(tmp_path))
    with pytest.raises(ValueError, match=message):
        resolve_config(parse(*argv))


def test_config_file_errors(tmp_path):
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"output_dir": str(tmp_path), "lerning_rate": 1}))
    with pytest.raises(ValueError, match="lerning_rate"):
        resolve_config(parse("--config", str(unknown)))
    broken = tmp_path / "broken.yaml"
    broken.write_text("steps: [1\n")
    with pytest.raises(ValueError, match="not valid yaml"):
        resolve_config(parse("--config", str(broken)))
    with pytest.raises(ValueError, match="is not a file"):
        resolve_config(parse("--config", str(tmp_path / "missing.yaml")))


def test_cli_reports_bad_settings_without_starting_anything(tmp_path, capsys):
    assert cli.main(["train-policy", "--output-dir", str(tmp_path), "--loss-type", "ppo"]) == 2
    assert "loss_type" in capsys.readouterr().err


def test_output_folder_holds_one_run(tmp_path):
    settings = PolicyConfig(output_dir=tmp_path, steps=4)
    check_output_folder(settings)
    check_output_folder(settings.model_copy(update={"steps": 8, "save_steps": 2}))  # more steps: a resume
    with pytest.raises(ValueError, match="learning_rate"):
        check_output_folder(settings.model_copy(update={"learning_rate": 1e-3}))


# -- rewards and groups -----------------------------------------------------------------


def completions(*texts: str) -> list[list[dict]]:
    return [[{"role": "assistant", "content": text}] for text in texts]


def test_groups_are_by_position_even_when_a_problem_is_drawn_twice_in_a_row():
    """TRL's sampler may draw one problem twice in a row: two groups of G, never one of 2G."""
    assert group_indices(6, 3) == [[0, 1, 2], [3, 4, 5]]
    assert group_indices(4, 1) == [[0], [1], [2], [3]]
    with pytest.raises(ValueError, match="do not split into groups of 4"):
        group_indices(6, 4)


def test_majority_reward_votes_in_each_of_two_groups_of_one_problem():
    reward = rewards_for("majority", group_size=3)
    texts = ("5", "5", "6", "6", "6", "5")  # the same problem twice: two groups, two votes
    values = reward(prompts=["p"] * 6, completions=completions(*texts), answer=["5"] * 6, log_metric=lambda *_: None)
    assert values == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0]


def test_ground_truth_reward_and_logged_accuracy():
    logged = {}
    reward = rewards_for("ground_truth", group_size=3)
    values = reward(
        prompts=["p"] * 3,
        completions=completions("7", "The answer is 7.", "8"),
        answer=["7"] * 3,
        log_metric=logged.__setitem__,
    )
    assert values == [1.0, 1.0, 0.0]
    assert logged["accuracy"] == pytest.approx(2 / 3)


def test_majority_reward_votes_within_each_group_and_ignores_truth():
    logged = {}
    reward = rewards_for("majority", group_size=4)
    prompts = ["p"] * 4 + ["q"] * 4
    texts = ("5", "5", "6", "no idea", "1", "2", "2", "3")
    values = reward(
        prompts=prompts, completions=completions(*texts), answer=["6"] * 4 + ["2"] * 4, log_metric=logged.__setitem__
    )
    # Group p votes 5 (wrong, but the majority), group q votes 2.
    assert values == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    assert logged["accuracy"] == pytest.approx(3 / 8)  # against the references: metrics only


# -- the loss ---------------------------------------------------------------------------

PER_TOKEN = torch.tensor([[1.0, 2.0, 9.0], [3.0, 9.0, 9.0]])
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


EXTRA = torch.tensor([[2.0, 2.0, 7.0]])  # AEPO's rows, added beside the batch
EXTRA_MASK = torch.tensor([[1.0, 1.0, 0.0]])


@pytest.mark.parametrize(
    ("loss_type", "expected", "extra"),
    [
        ("grpo", (1.5 + 3.0) / 2, 2.0 / 2),  # mean over responses of each response's token mean
        ("bnpo", 6.0 / 3, 4.0 / 3),  # over the batch's tokens
        ("dr_grpo", 6.0 / (2 * 4), 4.0 / (2 * 4)),  # over responses x max_completion_length (4)
        ("dapo", 6.0 / 3, 4.0 / 3),  # over the generation batch's tokens (num_items_in_batch)
    ],
)
def test_aggregation_of_each_loss_type(loss_type, expected, extra):
    """Extra rows (AEPO's) are divided by the policy batch's normalizer: each weighs what it
    would as one more row of the batch."""
    trainer = SimpleNamespace(
        loss_type=loss_type,
        current_gradient_accumulation_steps=1,
        max_completion_length=4,
        accelerator=SimpleNamespace(num_processes=1),
        args=SimpleNamespace(steps_per_generation=1),
    )
    inputs = {"num_items_in_batch": torch.tensor(3.0), "completion_mask": MASK}
    assert PolicyTrainer.aggregate(trainer, PER_TOKEN, MASK, inputs).item() == pytest.approx(expected)
    assert PolicyTrainer.aggregate(trainer, EXTRA, EXTRA_MASK, inputs).item() == pytest.approx(extra)


def loss_trainer(*methods: str) -> SimpleNamespace:
    settings = PolicyConfig(output_dir="x", epsilon=0.2, epsilon_high=0.28, method=list(methods))
    return SimpleNamespace(settings=settings, methods=MethodPlan.of(methods), _cov_generator=torch.Generator())


def test_plain_token_loss_is_ppo_clipped_surrogate():
    log_probs = torch.log(torch.tensor([[1.5, 0.5, 1.0]]))  # ratios 1.5, 0.5, 1.0 against old log p = 0
    result = PolicyTrainer.token_loss(
        loss_trainer(), log_probs, torch.zeros(1, 3), torch.tensor([[1.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    )
    # A = 1: -min(r, clip(r, 0.8, 1.28)) -> -1.28, -0.5; the padded token is 0.
    assert result.loss[0].tolist() == pytest.approx([-1.28, -0.5, 0.0])
    assert result.clip_fraction == pytest.approx(1 / 2)
    assert not result.selected.any()


def test_a_token_loss_that_reads_entropies_refuses_to_run_without_them():
    args = (torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 1), torch.ones(1, 2))
    with pytest.raises(ValueError, match="needs the entropies"):
        PolicyTrainer.token_loss(loss_trainer("steer"), *args)
    weighted = PolicyTrainer.token_loss(loss_trainer("steer"), *args, torch.ones(1, 2))
    assert weighted.loss.tolist() == [[-1.0, -1.0]]  # all |Omega| equal: the midpoint weight, 1


def test_rollout_body_carries_the_samplers():
    settings = PolicyConfig(
        output_dir="x", temperature=0.9, typical_p=0.8, adaptive_temperature={"method": "edt"}, max_tokens=32
    )
    trainer = SimpleNamespace(settings=settings, served_model_name="policy")
    body = PolicyTrainer.rollout_body(trainer, [{"role": "user", "content": "hi"}], n=4, seed=11)
    assert body["n"] == 4 and body["seed"] == 11 and body["max_tokens"] == 32
    assert body["temperature"] == 0.9 and body["typical_p"] == 0.8
    assert body["adaptive_temperature"]["method"] == "edt"
    assert body["return_entropy"] is True and body["logprobs"] is True and body["top_logprobs"] == 0


# -- logs -------------------------------------------------------------------------------


def test_step_log_maps_trl_names_and_truncates_for_a_resume(tmp_path):
    path = tmp_path / "log.jsonl"
    log = StepLog(path)
    state = SimpleNamespace(global_step=1, is_world_process_zero=True)
    log.on_step_begin(None, state, None)
    log.on_log(
        None,
        state,
        None,
        logs={"loss": 0.5, "reward": 0.25, "entropy": 1.5, "clip_fraction": 0.1, "completions/mean_length": 12.0},
    )
    log.on_log(None, state, None, logs={"train_runtime": 3.0})  # the run's summary: not a step
    state.global_step = 2
    log.on_log(None, state, None, logs={"loss": 0.4, "entropy": 1.4})
    records = read_log(path)
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["reward"] == 0.25 and records[0]["trainer_entropy_nats"] == 1.5
    assert records[0]["mean_completion_tokens"] == 12.0 and records[1]["reward"] is None
    assert records[0]["step_time_s"] >= 0
    truncate_log(path, lambda step: step <= 1)
    assert [r["step"] for r in read_log(path)] == [1]


# -- multi-process launches -------------------------------------------------------------


def test_engine_environment_drops_launcher_ranks_and_narrows_gpus():
    from entropy_serve.trainer.rollouts import engine_variables

    launched = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_PORT": "29500", "PATH": "/bin"}
    assert engine_variables(launched, num_cuda_devices=0) == {
        "RANK": None,
        "WORLD_SIZE": None,
        "LOCAL_RANK": None,
        "MASTER_PORT": None,
    }
    assert engine_variables(launched, num_cuda_devices=2)["CUDA_VISIBLE_DEVICES"] == "1"
    narrowed = engine_variables({**launched, "CUDA_VISIBLE_DEVICES": "4,6"}, num_cuda_devices=2)
    assert narrowed["CUDA_VISIBLE_DEVICES"] == "6"  # the launcher's own mapping kept
    assert engine_variables({"PATH": "/bin"}, num_cuda_devices=8) == {}  # one process: nothing changes


def test_the_example_config_file_is_valid():
    from pathlib import Path

    example = Path(__file__).parents[2] / "configs" / "train_policy_example.yaml"
    settings = resolve_config(parse("--config", str(example)))
    assert settings.method == ["kl_cov"] and settings.updates_per_batch == 2


@pytest.mark.parametrize("level", [None, "DEBUG"])
def test_importing_the_trainer_leaves_vllm_logging_alone(level):
    """TRL's import sets VLLM_LOGGING_LEVEL=ERROR for every later vLLM (servers the tests
    start included); ours puts the user's setting back. A fresh interpreter each time."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "VLLM_LOGGING_LEVEL"} | (
        {"VLLM_LOGGING_LEVEL": level} if level else {}
    )
    shown = (
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import os, entropy_serve.trainer.grpo; print(os.environ.get('VLLM_LOGGING_LEVEL'))",
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    assert shown == str(level)
