"""`entropy-serve train-probe`: sample a task, label difficulty, train the DiffAdapt probe
(trainer/probe.py); then learn the model's strategy defaults beside it
(trainer/tune_strategies.py; `--tune-temperatures ''` skips that)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from entropy_serve.commands import UsageError
from entropy_serve.commands.flags import add_server_flags, server_config
from entropy_serve.commands.tune_strategies import add_tuning_flags, summary, tune_settings
from entropy_serve.flag_types import positive_int
from entropy_serve.server.config import ServerConfig

HELP = "sample a task, label difficulty, train the DiffAdapt probe"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_server_flags(parser)
    parser.add_argument(
        "--task", default="arithmetic", help="'arithmetic' (built-in, seeded) or a question/answer JSONL file"
    )
    parser.add_argument("--problems", type=positive_int, default=300, help="training problems (first N of a file)")
    parser.add_argument("--samples", type=positive_int, default=8, help="answers sampled per problem (k)")
    parser.add_argument("--max-tokens", type=positive_int, default=128, help="token budget of each sampled answer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="folder for samples.jsonl and the probe (resumable)")
    parser.add_argument(
        "--hard-below-accuracy", type=float, default=0.5, help="label rule: accuracy below this is hard"
    )
    parser.add_argument(
        "--easy-entropy-quantile",
        type=float,
        default=0.5,
        help="label rule: solved problems above this quantile of mean entropy are easy",
    )
    parser.add_argument(
        "--easy-entropy-above", type=float, help="label rule: an absolute entropy threshold (nats) instead"
    )
    parser.add_argument(
        "--feature-suffix", default="", help="text appended to each prompt before reading its hidden state"
    )
    parser.add_argument("--hidden-units", type=positive_int, default=512)
    parser.add_argument(
        "--table-samples",
        type=int,
        default=2,
        help="answers per problem for each candidate strategy of the learned difficulty table "
        "(0: keep the paper's table)",
    )
    parser.add_argument(
        "--table-tolerance",
        type=float,
        default=0.02,
        help="accuracy a cheaper candidate may give up against its class's best (0.02: 2 points)",
    )
    add_tuning_flags(parser, prefix="tune-")


def engine_config(args: argparse.Namespace) -> ServerConfig:
    return server_config(args, max_n=max(args.samples, args.tune_traces))


def run(args: argparse.Namespace) -> int:
    from entropy_serve.probes.labels import LabelRule
    from entropy_serve.trainer.probe import TrainSettings, train_probe
    from entropy_serve.trainer.tune_strategies import learn

    settings = TrainSettings(
        task=args.task,
        num_problems=args.problems,
        samples=args.samples,
        max_tokens=args.max_tokens,
        seed=args.seed,
        rule=LabelRule(args.hard_below_accuracy, args.easy_entropy_quantile, args.easy_entropy_above),
        feature_suffix=args.feature_suffix,
        hidden_units=args.hidden_units,
        table_samples=args.table_samples,
        table_tolerance=args.table_tolerance,
    )
    if not 0 <= args.table_samples <= args.samples:
        raise UsageError(f"--table-samples must be in [0, --samples={args.samples}]")
    if not 0.0 <= args.table_tolerance < 1.0:
        raise UsageError("--table-tolerance must be in [0, 1)")
    try:
        config = engine_config(args)
        metadata = train_probe(config, settings, args.out)
        learned = learn(config, tune_settings(args, "tune-"), args.out) if args.tune_temperatures else None
    except KeyboardInterrupt:
        print(
            f"entropy-serve: interrupted; finished samples are kept in {args.out}: run the same command to resume",
            file=sys.stderr,
        )
        return 130
    print(
        json.dumps(
            {
                k: metadata[k]
                for k in (
                    "class_balance",
                    "entropy_threshold_nats",
                    "feature_pooling",
                    "probe",
                    "num_train",
                    "num_held_out",
                )
            }
        )
    )
    print(
        f"held-out accuracy {metadata['held_out_accuracy']:.3f} vs majority-class baseline "
        f"{metadata['majority_baseline_accuracy']:.3f} ({metadata['majority_class']})"
    )
    if "difficulty_table" in metadata:
        print(
            f"difficulty table (per class, the cheapest strategy within {args.table_tolerance} of the best accuracy): "
            f"{metadata['difficulty_table']['chosen']}"
        )
    if learned is not None:
        print(f"strategy defaults:\n{summary(learned)}")
    print(f"wrote {args.out}")
    return 0
