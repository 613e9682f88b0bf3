"""`entropy-serve train-probe`: sample, label, featurize, train, save.

Order:
1. problems: the built-in arithmetic task (seeded) or a JSONL file (tasks/);
2. sampling: k answers per problem with the paper's Normal strategy, on the served
   engine with exact per-token entropies; then, on the same engine, each candidate
   strategy of the table search (probes/table.py CANDIDATES) answers every problem
   `table_samples` times. Each finished request is appended to `OUT/samples.jsonl` or
   `OUT/table_samples.jsonl` at once, so an interrupted run keeps its work and the same
   command resumes where it stopped;
3. labels: accuracy and mean token entropy -> easy / normal / hard (probes/labels.py);
4. features: the final hidden states of each rendered prompt, pooled three ways (the
   last token, the mean, both; probes/features.py);
5. probe: pooling and classifier chosen by cross-validation, saved with its metadata
   to OUT (probes/probe.py),
   and the held-out accuracy printed against the majority-class baseline;
6. table: per class, the cheapest candidate within the tolerance of the class's best
   accuracy (`choose_table`), saved as `OUT/difficulty_table.json`, which `serve
   --probe OUT` routes with.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from entropy_serve.calibration import model_fingerprint
from entropy_serve.probes.features import POOLINGS
from entropy_serve.probes.labels import LabelRule, label_problems
from entropy_serve.probes.probe import fit_probe
from entropy_serve.probes.table import CANDIDATES, TABLE_FILE, ClassStrategy, DifficultyTable, choose_table
from entropy_serve.server.config import ServerConfig
from entropy_serve.server.core.service import Endpoint, running_service
from entropy_serve.server.engine.feature_engines import start_feature_engine
from entropy_serve.tasks.answers import is_correct
from entropy_serve.tasks.problems import TrainingProblem, load_problems
from entropy_serve.trainer.sampling import read_records, sample_to

logger = logging.getLogger(__name__)

SAMPLES_FILE = "samples.jsonl"
TABLE_SAMPLES_FILE = "table_samples.jsonl"
NORMAL_CANDIDATE = "diffadapt-normal"  # sampled once, for the labels


@dataclass(frozen=True)
class TrainSettings:
    task: str  # "arithmetic" or a JSONL path
    num_problems: int
    samples: int
    max_tokens: int
    seed: int
    rule: LabelRule
    feature_suffix: str = ""
    hidden_units: int = 512
    held_out_fraction: float = 0.25
    table_samples: int = 2  # answers per problem and candidate strategy in the table search; 0: no search
    table_tolerance: float = 0.02  # accuracy a cheaper candidate may give up against its class's best


def answer_body(
    config: ServerConfig,
    problem: TrainingProblem,
    *,
    strategy: ClassStrategy,
    settings: TrainSettings,
    samples: int,
    seed: int,
) -> dict:
    """A chat request answering `problem` with `strategy` (instruction as a system message),
    `samples` answers (one when greedy: they would all be the same), with entropies."""
    messages = [{"role": "user", "content": problem.question}]
    if strategy.instruction:
        messages.insert(0, {"role": "system", "content": strategy.instruction})
    return {
        "model": config.served_model_name,
        "messages": messages,
        "n": 1 if strategy.temperature == 0 else samples,
        "max_tokens": strategy.max_tokens(settings.max_tokens),
        "temperature": strategy.temperature,
        "top_p": strategy.top_p,
        "seed": seed,
        "return_entropy": True,
    }


def answer_record(problem: TrainingProblem, reply) -> dict:
    """What a problem's answers say: their accuracy, mean token entropy and tokens."""
    choices = reply.choices
    entropies = [c.model_extra["entropy"]["model_entropy_nats"] for c in choices]
    return {
        "question": problem.question,
        "answer": problem.answer,
        "accuracy": sum(is_correct(c.message.content, problem.answer) for c in choices) / len(choices),
        "mean_entropy_nats": float(np.mean([np.mean(h or [0.0]) for h in entropies])),
        "num_tokens": reply.usage.completion_tokens,
        "num_answers": len(choices),
    }


async def sample_problems(
    config: ServerConfig,
    problems: list[TrainingProblem],
    *,
    todo: list[int],
    candidate_todo: list[tuple[str, int]],
    settings: TrainSettings,
    out: Path,
) -> None:
    """On one engine: the `todo` problems with the Normal strategy (labels, samples.jsonl),
    then the `candidate_todo` (candidate, problem) pairs (the table search)."""
    normal = DifficultyTable().normal

    async with running_service(config) as service:

        def label_record(key: tuple, reply, body: dict) -> dict:
            (index,) = key
            (prompt_token_ids,) = service.prompt_token_ids(body, Endpoint.CHAT_COMPLETIONS)
            return {"index": index, "prompt_token_ids": prompt_token_ids, **answer_record(problems[index], reply)}

        def candidate_record(key: tuple, reply, body: dict) -> dict:
            name, index = key
            return {"candidate": name, "index": index, **answer_record(problems[index], reply)}

        bodies = {
            (i,): answer_body(
                config,
                problems[i],
                strategy=normal,
                settings=settings,
                samples=settings.samples,
                seed=settings.seed * 1_000_003 + i * settings.samples,
            )
            for i in todo
        }
        await sample_to(service, bodies, label_record, out / SAMPLES_FILE, "sampling")
        bodies = {
            (name, i): answer_body(
                config,
                problems[i],
                strategy=CANDIDATES[name],
                settings=settings,
                samples=settings.table_samples,
                seed=settings.seed * 1_000_003 + i * settings.samples,
            )
            for name, i in candidate_todo
        }
        if bodies:
            await sample_to(service, bodies, candidate_record, out / TABLE_SAMPLES_FILE, "table search")


def read_probe_samples(
    out: Path, problems: list[TrainingProblem]
) -> tuple[dict[int, dict], dict[tuple[str, int], dict]]:
    """What an earlier run of the same command sampled: problems with the Normal strategy
    (by index), and (candidate, problem) pairs of the table search."""
    finished = read_records(out / SAMPLES_FILE, problems, key=lambda record: record["index"], what="samples")
    candidates = read_records(
        out / TABLE_SAMPLES_FILE, problems, key=lambda record: (record["candidate"], record["index"]), what="answers"
    )
    return finished, candidates


def table_scores(labels: list[str], normal_records: list[dict], candidates: dict[tuple[str, int], dict]) -> dict:
    """class -> candidate -> (accuracy, tokens per answer), over the class's problems. The
    paper's Normal strategy is the labelling samples themselves."""
    scores: dict[str, dict[str, tuple[float, float]]] = {}
    for name in CANDIDATES:
        for label in sorted(set(labels)):
            if name == NORMAL_CANDIDATE:
                mine = [r for r, c in zip(normal_records, labels) if c == label]
            else:
                mine = [candidates[(name, i)] for i, c in enumerate(labels) if c == label]
            accuracy = float(np.mean([r["accuracy"] for r in mine]))
            tokens = float(np.mean([r["num_tokens"] / r["num_answers"] for r in mine]))
            scores.setdefault(label, {})[name] = (round(accuracy, 4), round(tokens, 2))
    return scores


async def featurize(config: ServerConfig, prompts: list[list[int]], suffix: str) -> dict[str, np.ndarray]:
    """Every pooling's features (features.POOLINGS), from one pass of an engine that
    returns every token's state."""
    engine = await start_feature_engine(config, "last+mean", suffix)
    try:
        batches = [prompts[i : i + 64] for i in range(0, len(prompts), 64)]
        parts = [await engine.features_by_pooling(batch) for batch in tqdm(batches, desc="features", unit="batch")]
        return {pooling: np.concatenate([part[pooling] for part in parts]) for pooling in POOLINGS}
    finally:
        engine.shutdown()


def train_probe(config: ServerConfig, settings: TrainSettings, out: Path) -> dict:
    problems = load_problems(settings.task, settings.num_problems, settings.seed)
    out.mkdir(parents=True, exist_ok=True)
    store = out / SAMPLES_FILE
    finished, candidates = read_probe_samples(out, problems)
    todo = [i for i in range(len(problems)) if i not in finished]
    searched = [name for name in CANDIDATES if name != NORMAL_CANDIDATE] if settings.table_samples else []
    candidate_todo = [(name, i) for name in searched for i in range(len(problems)) if (name, i) not in candidates]
    if todo or candidate_todo:
        print(
            f"sampling {len(todo)} problems x {settings.samples} ({len(finished)} already in {store}), "
            f"then {len(candidate_todo)} (candidate strategy, problem) pairs x {settings.table_samples}"
        )
        asyncio.run(
            sample_problems(config, problems, todo=todo, candidate_todo=candidate_todo, settings=settings, out=out)
        )
        finished, candidates = read_probe_samples(out, problems)
    records = [finished[i] for i in range(len(problems))]
    labels = label_problems([r["accuracy"] for r in records], [r["mean_entropy_nats"] for r in records], settings.rule)
    print(f"labels: {labels.balance()} (entropy threshold {labels.entropy_threshold_nats} nats)")
    features = asyncio.run(featurize(config, [r["prompt_token_ids"] for r in records], settings.feature_suffix))
    probe, report = fit_probe(
        features, labels.classes, settings.hidden_units, settings.held_out_fraction, settings.seed
    )
    if settings.table_samples:
        scores = table_scores(labels.classes, [{"num_answers": settings.samples, **r} for r in records], candidates)
        table, chosen = choose_table(scores, settings.table_tolerance)
        (out / TABLE_FILE).write_text(table.model_dump_json(indent=2) + "\n")
        report["difficulty_table"] = {
            "chosen": chosen,
            "tolerance": settings.table_tolerance,
            "samples_per_candidate": settings.table_samples,
            "scores": scores,
        }
    probe.metadata = {
        "model": config.served_model_name,
        "fingerprint": model_fingerprint(config.model),
        "hidden_size": int(features[report["feature_pooling"]].shape[1]),
        "feature": "final hidden states of the prompt, pooled as feature_pooling (vLLM pooling, no activation)",
        "feature_suffix": settings.feature_suffix,
        "task": settings.task,
        "num_problems": len(records),
        "samples_per_problem": settings.samples,
        "max_tokens": settings.max_tokens,
        "seed": settings.seed,
        "label_rule": settings.rule.to_dict(),
        "entropy_threshold_nats": labels.entropy_threshold_nats,
        "class_balance": labels.balance(),
        **report,
    }
    probe.save(out)
    return probe.metadata
