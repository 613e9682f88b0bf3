"""What produces what the server serves: the difficulty probe (`train-probe`: probe.py),
learned strategy settings (`tune-strategies`: tune_strategies.py samples the traces,
strategy_tuning.py replays them and chooses), and policies fine-tuned by GRPO with
entropy control (`train-policy`: policy.py the run, grpo.py the TRL trainer,
entropy_control.py the loss math, rollouts.py the engine that samples for it)."""
