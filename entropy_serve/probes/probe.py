"""The probe: a small classifier over the prompt's final hidden state: DiffAdapt's MLP
(d -> 512 -> 3) or multinomial logistic regression (plain or class-weighted),
whichever cross-validates better, with its held-out calibration reported.

Trained with scikit-learn (standardized features), saved without pickle: `probe.npz`
holds the scaler and the layer weights, `probe.json` the metadata (model fingerprint,
hidden size, classes, label rule and threshold, class balance, held-out accuracy against
the majority-class baseline). Inference is two matrix
products in numpy (`Probe.probabilities`), checked against scikit-learn in the tests.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from entropy_serve.calibration import model_fingerprint
from entropy_serve.probes.labels import CLASSES

WEIGHTS_FILE, METADATA_FILE = "probe.npz", "probe.json"


@dataclass
class Probe:
    mean: np.ndarray  # [d] feature standardization
    scale: np.ndarray  # [d]
    weights: list[np.ndarray]  # [d, h], [h, c]
    biases: list[np.ndarray]  # [h], [c]
    classes: list[str]  # column order of the probabilities
    metadata: dict

    @property
    def hidden_size(self) -> int:
        return int(self.mean.shape[0])

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """[batch, d] hidden states -> [batch, classes] probabilities (ReLU between layers, softmax)."""
        x = (np.asarray(features, dtype=np.float64) - self.mean) / self.scale
        for weight, bias in zip(self.weights[:-1], self.biases[:-1]):
            x = np.maximum(x @ weight + bias, 0.0)
        logits = x @ self.weights[-1] + self.biases[-1]
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def save(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        arrays = {"mean": self.mean, "scale": self.scale}
        arrays |= {f"weight_{i}": w for i, w in enumerate(self.weights)}
        arrays |= {f"bias_{i}": b for i, b in enumerate(self.biases)}
        np.savez(out / WEIGHTS_FILE, **arrays)
        (out / METADATA_FILE).write_text(json.dumps({**self.metadata, "classes": self.classes}, indent=2) + "\n")


def candidates(hidden_units: int, seed: int) -> dict[str, object]:
    """The probes model selection chooses among: DiffAdapt's MLP (d -> hidden -> 3) at
    three weight decays, and multinomial logistic regression (no hidden layer) at three
    regularization strengths. A few hundred labelled problems over a 500-1000-wide
    hidden state overfit easily: cross-validation picks how much capacity they carry."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    models: dict[str, object] = {
        f"mlp d->{hidden_units}->3 alpha={alpha}": MLPClassifier(
            hidden_layer_sizes=(hidden_units,), alpha=alpha, max_iter=1000, random_state=seed
        )
        for alpha in (0.1, 1.0, 10.0)
    }
    models |= {f"logistic C={c}": LogisticRegression(C=c, max_iter=5000) for c in (0.01, 0.1, 1.0)}
    # Classes are rarely balanced (a small model fails most hard problems alike):
    # weighting them inversely to their frequency is one more candidate, not a given.
    models |= {
        f"logistic C={c} balanced": LogisticRegression(C=c, max_iter=5000, class_weight="balanced")
        for c in (0.01, 0.1, 1.0)
    }
    return models


def calibration_report(
    probabilities: np.ndarray, labels: np.ndarray, classes: list[str], thresholds=(0.5, 0.6, 0.7, 0.8)
) -> dict:
    """How far a probe's held-out probabilities can be trusted: log loss, the multi-class
    Brier score, the expected calibration error of the top class (10 equal-width bins),
    and, per confidence threshold, the share of problems whose top probability reaches it
    (the router keeps the probe's class for those, Normal otherwise) and its accuracy there."""
    from sklearn.metrics import log_loss

    probabilities = np.asarray(probabilities, dtype=np.float64)  # [n, classes]
    probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)  # float32 rows may miss 1 by an ulp
    onehot = (np.asarray(labels)[:, None] == np.asarray(classes)[None, :]).astype(np.float64)  # [n, classes]
    top = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == onehot.argmax(axis=1)).astype(np.float64)
    bins = np.minimum((top * 10).astype(int), 9)
    ece = sum(abs(top[bins == b].mean() - correct[bins == b].mean()) * (bins == b).mean() for b in np.unique(bins))
    return {
        "log_loss": float(log_loss(onehot.argmax(axis=1), probabilities, labels=list(range(len(classes))))),
        "brier": float(((probabilities - onehot) ** 2).sum(axis=1).mean()),
        "expected_calibration_error": float(ece),
        "by_min_confidence": {
            str(t): {
                "coverage": float((top >= t).mean()),
                "accuracy": float(correct[top >= t].mean()) if (top >= t).any() else None,
            }
            for t in thresholds
        },
    }


def fit_probe(
    features: np.ndarray | dict[str, np.ndarray],
    labels: list[str],
    hidden_units: int,
    held_out_fraction: float,
    seed: int,
) -> tuple[Probe, dict]:
    """Choose a candidate, and with several feature poolings (pooling -> [n, d] array)
    the pooling too, by 5-fold cross-validation on the training split; refit it on the
    whole split; report held-out accuracy against the majority-class baseline. Every
    pooling is split on the same problems."""
    from sklearn.base import clone
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import StratifiedKFold, cross_val_score, train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    by_pooling = features if isinstance(features, dict) else {"last": features}
    y = np.asarray(labels)
    counts = {c: int((y == c).sum()) for c in CLASSES}
    if min(counts.values()) < 2:
        raise ValueError(
            f"the probe needs every class at least twice, got {counts}: sample more problems or change the label rule"
        )
    train, test = train_test_split(np.arange(len(y)), test_size=held_out_fraction, random_state=seed, stratify=y)
    y_train, y_test = y[train], y[test]
    num_folds = int(min(5, min(np.unique(y_train, return_counts=True)[1])))
    folds = StratifiedKFold(n_splits=max(num_folds, 2), shuffle=True, random_state=seed)
    scores = {}
    models = candidates(hidden_units, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for pooling, x in by_pooling.items():
            for name, model in models.items():
                pipeline = make_pipeline(StandardScaler(), clone(model))
                scores[(pooling, name)] = float(cross_val_score(pipeline, x[train], y_train, cv=folds).mean())
        pooling, chosen = max(scores, key=scores.get)  # ties: the first (last token, the MLP)
        x_train, x_test = by_pooling[pooling][train], by_pooling[pooling][test]
        scaler = StandardScaler().fit(x_train)
        model = models[chosen].fit(scaler.transform(x_train), y_train)
    majority = max(set(y_train), key=list(y_train).count)
    probabilities = model.predict_proba(scaler.transform(x_test))
    report = {
        "probe": chosen,
        "feature_pooling": pooling,
        "cross_validation_accuracy": {f"{p} / {n}" if len(by_pooling) > 1 else n: v for (p, n), v in scores.items()},
        "num_train": int(len(y_train)),
        "num_held_out": int(len(y_test)),
        "held_out_accuracy": float((model.predict(scaler.transform(x_test)) == y_test).mean()),
        "majority_class": str(majority),
        "majority_baseline_accuracy": float((y_test == majority).mean()),
        "held_out_calibration": calibration_report(probabilities, y_test, [str(c) for c in model.classes_]),
    }
    return from_sklearn(scaler, model), report


def from_sklearn(scaler, model) -> Probe:
    """Our numpy probe of a fitted StandardScaler and MLPClassifier or multinomial
    LogisticRegression (three classes)."""
    if hasattr(model, "coefs_"):  # MLP: [d, h], [h, c]
        weights, biases = [np.asarray(w) for w in model.coefs_], [np.asarray(b) for b in model.intercepts_]
    else:  # logistic regression: one [d, c] layer
        weights, biases = [np.asarray(model.coef_).T], [np.asarray(model.intercept_)]
    return Probe(scaler.mean_, scaler.scale_, weights, biases, [str(c) for c in model.classes_], metadata={})


def load_probe(folder: str | Path, model: str | None = None) -> Probe:
    """Read a probe; with `model`, refuse one trained on another model."""
    folder = Path(folder)
    try:
        metadata = json.loads((folder / METADATA_FILE).read_text())
        with np.load(folder / WEIGHTS_FILE) as arrays:
            num_layers = sum(1 for name in arrays.files if name.startswith("weight_"))
            probe = Probe(
                mean=arrays["mean"],
                scale=arrays["scale"],
                weights=[arrays[f"weight_{i}"] for i in range(num_layers)],
                biases=[arrays[f"bias_{i}"] for i in range(num_layers)],
                classes=list(metadata["classes"]),
                metadata=metadata,
            )
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"cannot read probe {folder}: {error}") from error
    if set(probe.classes) != set(CLASSES):
        raise ValueError(f"probe {folder}: classes {probe.classes}, expected {list(CLASSES)}")
    if model is not None and metadata.get("fingerprint") != model_fingerprint(model):
        raise ValueError(
            f"probe {folder} was trained for {metadata.get('model')!r} ({metadata.get('fingerprint')}), "
            f"not for {model!r}; train one with `entropy-serve train-probe --model {model}`"
        )
    return probe
