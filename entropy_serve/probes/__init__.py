"""DiffAdapt difficulty probe: labels from sampled answers (labels.py), features from the
served model's final hidden state (features.py), a small classifier over them (probe.py)."""
