"""`entropy-serve tune-strategies`: learn the model's strategy defaults (deepconf's and
escalate's settings per temperature) from traces of training problems
(trainer/tune_strategies.py). train-probe runs the same as its last stage."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from entropy_serve.commands import UsageError
from entropy_serve.commands.flags import add_server_flags, server_config
from entropy_serve.flag_types import positive_int, probability
from entropy_serve.server.config import ServerConfig

HELP = "learn the model's strategy defaults (deepconf, escalate, auto) from training problems"


def temperatures(text: str) -> tuple[float, ...]:
    """argparse type: comma-separated sampling temperatures in (0, 2] ('' for none)."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if any(not 0.0 < t <= 2.0 for t in values):
        raise argparse.ArgumentTypeError(f"temperatures must be in (0, 2], got {text!r}")
    return values


def add_tuning_flags(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """The tuning's own flags (train-probe gives them the prefix 'tune-')."""
    parser.add_argument(
        f"--{prefix}temperatures",
        type=temperatures,
        default=(0.5, 0.8),
        help="sampling temperatures to learn settings for, comma-separated" + (" ('' to skip)" if prefix else ""),
    )
    parser.add_argument(f"--{prefix}problems", type=positive_int, default=90, help="training problems for the tuning")
    parser.add_argument(
        f"--{prefix}traces", type=positive_int, default=16, help="traces sampled per problem and temperature"
    )
    parser.add_argument(
        f"--{prefix}token-share",
        type=probability,
        default=0.5,
        help="the token budget: this share of self-consistency's tokens at the full trace count",
    )


def tune_settings(args: argparse.Namespace, prefix: str = ""):
    from entropy_serve.trainer.tune_strategies import TuneSettings

    read = lambda name: getattr(args, (prefix + name).replace("-", "_"))  # noqa: E731
    return TuneSettings(
        task=args.task,
        num_problems=read("problems"),
        temperatures=read("temperatures"),
        num_traces=read("traces"),
        max_tokens=args.max_tokens,
        seed=args.seed,
        token_share=read("token-share"),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_server_flags(parser)
    parser.add_argument(
        "--task", default="arithmetic", help="'arithmetic' (built-in, seeded) or a question/answer JSONL file"
    )
    add_tuning_flags(parser)
    parser.add_argument("--max-tokens", type=positive_int, default=128, help="token budget of each trace")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for tuning_traces.jsonl and strategy_defaults.json (resumable)"
    )
    parser.add_argument("--into-profile", type=Path, help="also write the defaults into this entropy profile JSON")


def engine_config(args: argparse.Namespace) -> ServerConfig:
    return server_config(args, max_n=tune_settings(args).num_traces)


def run(args: argparse.Namespace) -> int:
    from entropy_serve.trainer.tune_strategies import learn

    settings = tune_settings(args)
    if not settings.temperatures:
        raise UsageError("--temperatures names none")
    learned = learn(engine_config(args), settings, args.out)
    if args.into_profile:
        from entropy_serve.server.strategies.defaults import PROFILE_KEY

        profile = json.loads(args.into_profile.read_text())
        profile[PROFILE_KEY] = learned.model_dump()
        args.into_profile.write_text(json.dumps(profile, indent=2) + "\n")
    print(summary(learned))
    print(f"wrote {args.out}")
    return 0


def summary(learned) -> str:
    """Per temperature: what was chosen, and its training score against plain decoding."""
    lines = []
    for entry in learned.temperatures:
        t = entry.training
        plain = {k: v for k, v in t.items() if k == "greedy" or k.startswith("self_consistency_")}
        best = max(plain, key=lambda k: plain[k]["accuracy"])
        lines.append(
            f"T {entry.temperature}: budget {t['token_budget_per_problem']:.1f} tokens/problem; best plain decoding "
            f"{best} {plain[best]['accuracy']:.3f} at {plain[best]['tokens_per_problem']:.1f}"
        )
        for name, fields in entry.strategies.items():
            lines.append(
                f"  {name} {json.dumps(fields)}: accuracy {t[name]['accuracy']:.3f} at "
                f"{t[name]['tokens_per_problem']:.1f} tokens/problem"
            )
    return "\n".join(lines)
