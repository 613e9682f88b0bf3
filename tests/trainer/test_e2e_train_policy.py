"""`entropy-serve train-policy` on the embedded model, end to end: a run stopped by Ctrl-C
leaves a checkpoint and the same command resumes it; the weights reach the engine (the
rollout after the resumed step differs from a no-sync replay of the same seeded request,
while the first step's replays are equal); the output folder is served, with its own
entropy profile, and answered through the `openai` client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import openai
import pytest
from helpers import cli_command, command_env, run_cli, wait_for

from entropy_serve.calibration import PROFILE_FILE
from entropy_serve.server.process import ServerProcess
from entropy_serve.trainer.held_out import HELD_OUT_FILE
from entropy_serve.trainer.policy_log import LOG_FILE, PLOT_FILE, ROLLOUTS_FILE, read_log

pytestmark = pytest.mark.e2e  # starts real engines

# Small and fast, a rollout every step (updates 1), a large step so one step moves the weights;
# no checkpoint but the one Ctrl-C leaves.
FLAGS = (
    "--group-size",
    "4",
    "--prompts-per-step",
    "2",
    "--updates-per-batch",
    "1",
    "--max-tokens",
    "24",
    "--num-problems",
    "8",
    "--save-steps",
    "10",
    "--learning-rate",
    "1e-4",
    "--calibration-samples",
    "1",
    "--held-out-problems",
    "4",
    "--held-out-samples",
    "1",
    "--method",
    "clip_cov,aepo,siren,seed_grpo,ettrl,80_20",  # one of each kind of hook: loss, rollout, term, advantages, mask
)
CONTROL = Path(__file__).parent / "control_rollouts.py"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """Three steps, Ctrl-C'd (SIGINT to the whole process group, as a terminal sends it)
    once the first step is logged, then resumed by the same command."""
    out = tmp_path_factory.mktemp("train") / "policy"
    command = cli_command("train-policy", "--output-dir", out, "--steps", "3", *FLAGS)
    with (out.parent / "first.log").open("w") as output:
        first = subprocess.Popen(
            command, env=command_env(), stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            assert wait_for(lambda: read_log(out / LOG_FILE) or first.poll() is not None, timeout_s=600)
            os.killpg(first.pid, signal.SIGINT)
            assert first.wait(timeout=300) == 130, (out.parent / "first.log").read_text()[-4000:]
        finally:
            if first.poll() is None:
                os.killpg(first.pid, signal.SIGKILL)
    assert "run the same command to resume" in (out.parent / "first.log").read_text()
    assert list((out / "checkpoints").glob("checkpoint-*"))
    resumed = run_cli(*command[3:])
    assert "resuming from" in resumed.stdout
    return out


def test_log_has_each_step_once_with_rollout_and_sync_fields(run_dir):
    log = read_log(run_dir / LOG_FILE)
    assert [r["step"] for r in log] == [1, 2, 3]
    for record in log:
        assert 0.0 <= record["reward"] <= 1.0 and 0.0 <= record["accuracy"] <= 1.0
        assert record["rollout_entropy_nats"] > 0 and record["trainer_entropy_nats"] > 0
        assert record["step_time_s"] > 0
        assert round(record["aepo_temperature"], 4) in (0.8, 1.2) and record["siren_entropy_nats"] > 0
    # Clip-Cov drops one token's gradient per update, if any token's covariance is in its
    # band (none is when every group's rewards are equal: no advantage at all).
    assert any(record["cov_selected_tokens"] == 1 for record in log)
    assert log[0]["sync_s"] is None  # the first rollout runs on the initial weights
    # AEPO's default target and SIREN's anchor come from the first batch, and the resumed
    # run (steps 2 and 3) keeps them.
    assert log[0]["aepo_target_entropy_nats"] == pytest.approx(log[0]["rollout_entropy_nats"])
    assert {r["aepo_target_entropy_nats"] for r in log} == {log[0]["aepo_target_entropy_nats"]}
    assert {r["siren_anchor_nats"] for r in log} == {log[0]["siren_anchor_nats"]}
    # Every later rollout follows an update (and the resumed run's first one a restart).
    assert all(record["sync_s"] > 0 for record in log[1:])
    # The engine's log-probs are the trainer's at the first step (float32, same temperature).
    assert abs(log[0]["policy_kl"]) < 1e-4
    assert (run_dir / PLOT_FILE).stat().st_size > 0


def test_synced_weights_change_the_next_rollout(run_dir, tmp_path):
    logged = read_log(run_dir / ROLLOUTS_FILE)
    assert sorted({r["step"] for r in logged}) == [0, 1, 2]
    # two problems per step, each once (the resumed run redid its own), and AEPO's second
    # rollout of the first quarter of them (one problem)
    assert [r["kind"] for r in logged] == ["policy", "policy", "aepo"] * 3
    replay = tmp_path / "replay.json"
    subprocess.run(
        [sys.executable, str(CONTROL), str(run_dir), str(replay)], env=command_env(), check=True, timeout=600
    )
    replayed = json.loads(replay.read_text())
    assert [r["step"] for r in replayed] == [r["step"] for r in logged]

    def same(a: dict, b: dict) -> bool:
        return a["completion_ids"] == b["completion_ids"] and all(
            abs(x - y) < 1e-3 for x, y in zip(a["logprobs"], b["logprobs"])
        )

    for trained, control in zip(logged, replayed):
        assert control["kind"] == trained["kind"]
        pairs = list(zip(trained["responses"], control["responses"]))
        assert len(pairs) == 4
        if trained["step"] == 0:  # same weights, same seed: the replay is the rollout
            assert all(same(a, b) for a, b in pairs)
        else:  # after a synced step: the engine's rollout is not the initial weights'
            assert not all(same(a, b) for a, b in pairs)


def test_held_out_accuracy_is_measured_before_the_first_run_and_after_the_resumed_one(run_dir):
    held_out = json.loads((run_dir / HELD_OUT_FILE).read_text())
    assert held_out["problems"] == 4 and held_out["samples"] == 1
    for stage in ("before", "after"):
        assert set(held_out[stage]) == {"greedy_accuracy", "sample_accuracy_t08"}
        assert all(0.0 <= value <= 1.0 for value in held_out[stage].values())


def test_output_folder_is_served_with_its_profile(run_dir):
    for name in ("config.json", "model.safetensors", "tokenizer.json", PROFILE_FILE):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "config.json").read_text())["dtype"] == "bfloat16"  # the initial model's
    with ServerProcess("--model", str(run_dir), "--max-model-len", "1024") as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=300)
        (card,) = client.models.list().data
        assert card.id == "policy" and card.model_extra["entropy_profile"] == PROFILE_FILE
        # hapo needs the model's profile: served from the folder's own.
        reply = client.chat.completions.create(
            model=card.id,
            messages=[{"role": "user", "content": "Compute 2 + 3. Reply with only the result."}],
            max_tokens=8,
            temperature=0.7,
            seed=0,
            extra_body={"adaptive_temperature": {"method": "hapo"}, "return_entropy": True},
        )
        assert reply.choices[0].message.content
        assert len(reply.choices[0].model_extra["entropy"]["temperature"]) == reply.usage.completion_tokens
