"""Offline work on files, without HTTP: `batch` (OpenAI's batch format answered by the
in-process service) and `score` (per-token log-probabilities and entropies of given
texts), both resumable (records.py, runner.py)."""
