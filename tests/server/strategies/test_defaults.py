"""Learned strategy settings: reading them, and how a request's strategy takes them."""

from __future__ import annotations

import json

import pytest

from entropy_serve.server.protocol.extensions import Auto, DeepConf, Escalate, SelfConsistency
from entropy_serve.server.strategies import defaults
from entropy_serve.server.strategies.defaults import StrategyDefaults, TemperatureDefaults, resolve

LEARNED = StrategyDefaults(
    model="m",
    fingerprint="sha256:abc",
    temperatures=[
        TemperatureDefaults(
            temperature=0.5,
            strategies={
                "escalate": {"threshold_nats": 0.25, "stop_confidence": 0.9},
                "deepconf": {"confidence": "entropy", "keep": 0.1},
            },
            training={"escalate": {"accuracy": 0.4}},
        ),
        TemperatureDefaults(
            temperature=0.8,
            strategies={"escalate": {"threshold_nats": 0.75}, "deepconf": {"window": 8}},
            training={"escalate": {"accuracy": 0.6}},
        ),
    ],
).check()


def test_fields_the_client_sent_win_and_the_rest_are_learned():
    sent = DeepConf.model_validate({"name": "deepconf", "keep": 0.9, "n": 8})
    strategy, temperature = resolve(sent, 0.45, LEARNED)
    assert (strategy.keep, strategy.n, strategy.confidence, strategy.window) == (0.9, 8, "entropy", 16)
    assert temperature == 0.45
    strategy, _ = resolve(DeepConf(name="deepconf"), 0.9, LEARNED)  # the nearest temperature's
    assert (strategy.window, strategy.confidence) == (8, "topk")


def test_auto_is_escalate_learned_at_the_learned_temperature_when_none_is_sent():
    strategy, temperature = resolve(Auto(name="auto"), None, LEARNED)
    assert isinstance(strategy, Escalate)
    assert (strategy.threshold_nats, temperature) == (0.75, 0.8)  # the better-scoring entry
    strategy, temperature = resolve(Auto(name="auto"), 0.5, LEARNED)
    assert (strategy.threshold_nats, strategy.stop_confidence, temperature) == (0.25, 0.9, 0.5)


def test_without_learned_settings_the_field_defaults_apply():
    strategy, temperature = resolve(Auto(name="auto"), None, None)
    assert strategy == Escalate(name="escalate") and temperature is None
    sent = SelfConsistency(name="self_consistency", n=4)
    assert resolve(sent, 0.5, LEARNED) == (sent, 0.5)  # not a tuned strategy


def test_load_reads_a_file_or_a_profile_and_checks_the_model(tmp_path):
    record = LEARNED.model_dump()
    (tmp_path / "d.json").write_text(json.dumps(record))
    (tmp_path / "profile.json").write_text(json.dumps({"log_entropy_pivot": 1.0, "strategy_defaults": record}))
    assert defaults.load(tmp_path / "d.json", "sha256:abc") == LEARNED
    assert defaults.load(tmp_path / "profile.json") == LEARNED
    assert defaults.has_defaults(tmp_path / "profile.json") and defaults.has_defaults(tmp_path / "d.json")
    with pytest.raises(ValueError, match="learned on 'm'"):
        defaults.load(tmp_path / "d.json", "sha256:other")


@pytest.mark.parametrize(
    "strategies,message",
    [
        ({"escalate": {"threshold_nats": -1.0}}, "threshold_nats"),
        ({"escalate": {"n": 4}}, "not tuned"),
        ({"self_consistency": {"n": 4}}, "unknown strategy"),
    ],
)
def test_bad_learned_settings_are_refused(tmp_path, strategies, message):
    record = {"temperatures": [{"temperature": 0.5, "strategies": strategies}]}
    (tmp_path / "d.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=message):
        defaults.load(tmp_path / "d.json")
