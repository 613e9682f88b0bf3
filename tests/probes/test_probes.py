"""Labels, the numpy probe against scikit-learn, the strategy table: pure, on hand-made data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from entropy_serve.probes.labels import LabelRule, label_problems
from entropy_serve.probes.probe import Probe, candidates, fit_probe, from_sklearn, load_probe
from entropy_serve.probes.table import DifficultyTable, load_table


def test_labels_follow_diffadapt_rule_with_a_quantile_threshold():
    accuracies = [0.0, 0.25, 1.0, 0.75, 1.0, 0.5]
    entropies = [2.0, 0.1, 0.4, 1.2, 0.9, 3.0]
    labels = label_problems(accuracies, entropies, LabelRule(hard_below_accuracy=0.5, easy_entropy_quantile=0.5))
    # Solved: entropies 0.4, 1.2, 0.9, 3.0 -> median 1.05.
    assert labels.entropy_threshold_nats == pytest.approx(1.05)
    assert labels.classes == ["hard", "hard", "normal", "easy", "normal", "easy"]
    assert labels.balance() == {"easy": 2, "normal": 2, "hard": 2}


def test_an_absolute_threshold_overrides_the_quantile_and_nothing_solved_is_all_hard():
    rule = LabelRule(hard_below_accuracy=0.5, easy_entropy_above=0.5)
    assert label_problems([1.0, 1.0], [0.4, 0.6], rule).classes == ["normal", "easy"]
    nothing = label_problems([0.0, 0.2], [1.0, 2.0], LabelRule())
    assert nothing.classes == ["hard", "hard"] and nothing.entropy_threshold_nats is None


@pytest.mark.parametrize(
    "fields", [{"hard_below_accuracy": 0}, {"easy_entropy_quantile": 1.5}, {"easy_entropy_above": -1}]
)
def test_bad_rules_are_errors(fields):
    with pytest.raises(ValueError):
        LabelRule(**fields)


def three_blobs(rng: np.random.Generator, per_class: int = 40, dim: int = 16):
    centers = {"easy": 0.0, "normal": 3.0, "hard": -3.0}
    features = np.concatenate([rng.normal(c, 1.0, (per_class, dim)) for c in centers.values()])
    labels = [name for name in centers for _ in range(per_class)]
    return features, labels


def test_probe_learns_separable_classes_and_saves_without_pickle(tmp_path):
    rng = np.random.default_rng(0)
    features, labels = three_blobs(rng)
    probe, report = fit_probe(features, labels, hidden_units=8, held_out_fraction=0.25, seed=0)
    assert report["held_out_accuracy"] > 0.9 > report["majority_baseline_accuracy"]
    assert report["num_train"] + report["num_held_out"] == 120
    assert report["probe"] in report["cross_validation_accuracy"]
    assert report["cross_validation_accuracy"][report["probe"]] == max(report["cross_validation_accuracy"].values())
    expected = probe.probabilities(features[:10])
    probe.metadata = {"model": "m", "fingerprint": "name:some-model"}
    probe.save(tmp_path)
    loaded = load_probe(tmp_path, model="some-model")
    np.testing.assert_allclose(loaded.probabilities(features[:10]), expected, rtol=1e-12)
    with pytest.raises(ValueError, match="trained for 'm'.*train-probe --model other"):
        load_probe(tmp_path, model="other")


@pytest.mark.parametrize("kind", ["mlp", "logistic"])
def test_numpy_forward_equals_sklearn_predict_proba(kind):
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler

    features, labels = three_blobs(np.random.default_rng(1), per_class=20, dim=6)
    features += np.random.default_rng(2).normal(0, 2.0, features.shape)  # overlapping: probabilities not all 0/1
    scaler = StandardScaler().fit(features)
    model = MLPClassifier((5,), max_iter=300, random_state=0) if kind == "mlp" else LogisticRegression(C=0.1)
    with np.errstate(all="ignore"):
        model.fit(scaler.transform(features), labels)
    probe = from_sklearn(scaler, model)
    expected = model.predict_proba(scaler.transform(features))
    np.testing.assert_allclose(probe.probabilities(features), expected, rtol=1e-6, atol=1e-9)
    assert probe.classes == ["easy", "hard", "normal"]  # sklearn's order, kept with the columns


def test_training_needs_every_class_twice():
    features = np.zeros((5, 3))
    with pytest.raises(ValueError, match="every class at least twice"):
        fit_probe(features, ["easy", "easy", "normal", "normal", "hard"], 4, 0.25, 0)


def test_unreadable_probe_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="cannot read probe"):
        load_probe(tmp_path)


def test_table_defaults_are_diffadapts_and_a_file_overrides_fields(tmp_path):
    table = DifficultyTable()
    assert (table.normal.temperature, table.normal.top_p, table.normal.budget_fraction) == (0.8, 0.95, 1.0)
    assert (table.easy.temperature, table.easy.budget_fraction) == (0.5, 0.4)
    assert (table.hard.temperature, table.hard.budget_fraction) == (0.4, 0.5)
    assert table.easy.max_tokens(100) == 40 and table.hard.max_tokens(1) == 1
    path = tmp_path / "table.json"
    path.write_text(json.dumps({"hard": {"temperature": 0.2}}))
    custom = load_table(path)
    assert custom.hard.temperature == 0.2 and custom.hard.budget_fraction == 0.5 and custom.easy == table.easy
    for bad in ({"hard": {"temperature": 5}}, {"extreme": {}}, [1], {"easy": {"budget_fraction": 0}}):
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match="cannot read difficulty table"):
            load_table(path)


def test_the_learned_table_keeps_the_cheapest_candidate_within_tolerance():
    from entropy_serve.probes.table import CANDIDATES, DIFFADAPT, choose_table

    scores = {
        "easy": {"diffadapt-normal": (0.90, 30.0), "greedy": (0.95, 14.0), "greedy-0.4-budget": (0.94, 9.0)},
        "normal": {"diffadapt-normal": (0.50, 30.0), "greedy": (0.40, 14.0), "cool-0.5": (0.49, 20.0)},
        "hard": {"diffadapt-normal": (0.0, 40.0), "greedy": (0.0, 12.0), "greedy-0.4-budget": (0.0, 12.0)},
    }
    table, chosen = choose_table(scores, tolerance=0.02)
    # easy: 0.94 is within 0.02 of 0.95 and cheapest; normal: greedy gives up 10 points, cool-0.5 one;
    # hard: a tie in accuracy and tokens goes to the candidate listed first.
    assert chosen == {"easy": "greedy-0.4-budget", "normal": "cool-0.5", "hard": "greedy"}
    assert table.easy == CANDIDATES["greedy-0.4-budget"] and table.normal == CANDIDATES["cool-0.5"]
    assert choose_table(scores, tolerance=0.0)[1]["normal"] == "diffadapt-normal"
    # a class without problems keeps the paper's strategy
    _, chosen = choose_table({"easy": scores["easy"]}, tolerance=0.02)
    assert chosen["hard"] == f"{DIFFADAPT}-hard"
    assert load_table(DIFFADAPT) == DifficultyTable()


def test_calibration_report_by_hand():
    from entropy_serve.probes.probe import calibration_report

    probabilities = np.array([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.4, 0.35, 0.25]])
    labels = np.array(["easy", "normal", "normal", "hard"])
    report = calibration_report(probabilities, labels, ["easy", "normal", "hard"])
    # Brier: (0.01+0.0025+0.0025) + (0.36+0.49+0.01) + (0.04+0.09+0.01) + (0.16+0.1225+0.5625) / 4
    assert report["brier"] == pytest.approx((0.015 + 0.86 + 0.14 + 0.845) / 4)
    assert report["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.3, 0.7, 0.25])))
    # bins: 0.9 (right), 0.6 (wrong), 0.7 (right), 0.4 (wrong) -> |0.9-1| + |0.6-0| + |0.7-1| + |0.4-0|, / 4
    assert report["expected_calibration_error"] == pytest.approx((0.1 + 0.6 + 0.3 + 0.4) / 4)
    assert report["by_min_confidence"]["0.6"] == {"coverage": 0.75, "accuracy": pytest.approx(2 / 3)}
    assert report["by_min_confidence"]["0.8"] == {"coverage": 0.25, "accuracy": 1.0}


def test_an_unsure_probe_routes_as_normal():
    import asyncio

    from entropy_serve.probes.router import DifficultyRouter

    probe = Probe(
        np.zeros(2),
        np.ones(2),
        [np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])],
        [np.zeros(3)],
        ["easy", "normal", "hard"],
        {},
    )

    class Features:
        async def features(self, prompts):
            return np.array([prompts[0]], dtype=np.float32)

    def classify(min_confidence: float, x: float):
        router = DifficultyRouter(probe, DifficultyTable(), min_confidence)
        router.features = Features()
        return asyncio.run(router.classify([x, 0.0]))

    sure = classify(0.5, 3.0)  # softmax(3, 0, 0): easy at 0.91
    assert (sure.name, sure.fallback, sure.strategy) == ("easy", False, DifficultyTable().easy)
    unsure = classify(0.95, 3.0)
    assert (unsure.name, unsure.fallback, unsure.strategy) == ("normal", True, DifficultyTable().normal)
    assert unsure.probabilities["easy"] == pytest.approx(sure.probabilities["easy"])


def test_poolings_by_hand():
    from entropy_serve.probes.features import engine_pooling_type, pooled

    hidden = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]])  # [tokens, hidden]
    assert pooled(hidden, "last").tolist() == [5.0, 9.0]
    assert pooled(hidden, "mean").tolist() == [3.0, 5.0]
    assert pooled(hidden, "last+mean").tolist() == [5.0, 9.0, 3.0, 5.0]
    assert [engine_pooling_type(p) for p in ("last", "mean", "last+mean")] == ["LAST", "ALL", "ALL"]
    with pytest.raises(ValueError):
        pooled(hidden, "max")


def test_cross_validation_chooses_the_pooling_that_carries_the_classes():
    rng = np.random.default_rng(3)
    informative, labels = three_blobs(rng)
    noise = rng.normal(0.0, 1.0, informative.shape)
    probe, report = fit_probe(
        {"last": noise, "mean": informative}, labels, hidden_units=8, held_out_fraction=0.25, seed=0
    )
    assert report["feature_pooling"] == "mean"
    assert report["held_out_accuracy"] > 0.9
    assert set(report["cross_validation_accuracy"]) == {
        f"{p} / {n}" for p in ("last", "mean") for n in candidates(8, 0)
    }
    assert probe.hidden_size == informative.shape[1]
