"""DiffAdapt difficulty probe: labels from sampled answers (labels.py), features from the
served model's final hidden state (features.py), a small classifier over them (probe.py),
the per-class inference strategies (table.py), and the router that classifies a request
and picks its strategy at serving time (router.py)."""
