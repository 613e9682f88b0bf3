"""`entropy-serve train-policy`: GRPO with entropy control, rollouts on our engine (trainer/policy.py)."""

from __future__ import annotations

import argparse
import json

HELP = "fine-tune a policy with GRPO and entropy control (Clip-Cov, KL-Cov, 80/20, TTRL), rollouts on our engine"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from entropy_serve.trainer.policy_config import add_config_flags

    add_config_flags(parser)


def run(args: argparse.Namespace) -> int:
    from entropy_serve.trainer.policy import train_policy
    from entropy_serve.trainer.policy_config import resolve_config

    settings = resolve_config(args)
    summary = train_policy(settings)
    print(json.dumps(summary))
    if summary["interrupted"]:
        print(f"entropy-serve: stopped at step {summary['step']} with a checkpoint; run the same command to resume")
        return 130
    if "rank" not in summary:  # rank 0 (or the only process) wrote the folder
        print(f"wrote {settings.output_dir} (serve it: entropy-serve serve --model {settings.output_dir})")
    return 0
