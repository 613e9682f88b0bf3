"""The probe: a small MLP (DiffAdapt: d -> 512 -> 3) over the prompt's final hidden state.

Trained with scikit-learn (standardized features, `MLPClassifier`), saved without
pickle: `probe.npz` holds the scaler and the layer weights, `probe.json` the metadata
(model fingerprint, hidden size, classes, label rule and threshold, class balance,
held-out accuracy against the majority-class baseline). Inference is two matrix
products in numpy (`Probe.probabilities`), checked against scikit-learn in the tests.
"""

from __future__ import annotations

import json
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
        """[batch, d] hidden states -> [batch, classes] probabilities (ReLU MLP, softmax)."""
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


def fit_probe(
    features: np.ndarray, labels: list[str], hidden_units: int, held_out_fraction: float, seed: int
) -> tuple[Probe, dict]:
    """Train on a stratified split; report held-out accuracy and the majority baseline."""
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(labels)
    counts = {c: int((y == c).sum()) for c in CLASSES}
    if min(counts.values()) < 2:
        raise ValueError(
            f"the probe needs every class at least twice, got {counts}: sample more problems or change the label rule"
        )
    x_train, x_test, y_train, y_test = train_test_split(
        features, y, test_size=held_out_fraction, random_state=seed, stratify=y
    )
    scaler = StandardScaler().fit(x_train)
    mlp = MLPClassifier(hidden_layer_sizes=(hidden_units,), alpha=1e-3, max_iter=500, early_stopping=False, random_state=seed)
    mlp.fit(scaler.transform(x_train), y_train)
    majority = max(set(y_train), key=list(y_train).count)
    report = {
        "num_train": int(len(y_train)),
        "num_held_out": int(len(y_test)),
        "held_out_accuracy": float((mlp.predict(scaler.transform(x_test)) == y_test).mean()),
        "majority_class": str(majority),
        "majority_baseline_accuracy": float((y_test == majority).mean()),
    }
    probe = Probe(
        mean=scaler.mean_,
        scale=scaler.scale_,
        weights=[np.asarray(w) for w in mlp.coefs_],
        biases=[np.asarray(b) for b in mlp.intercepts_],
        classes=[str(c) for c in mlp.classes_],
        metadata={},
    )
    return probe, report


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
