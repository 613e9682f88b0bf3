"""`entropy-serve train-probe`: sample, label, featurize, train, save.

Order:
1. problems: the built-in arithmetic task (seeded) or a JSONL file (tasks/);
2. sampling: k answers per problem with the Normal strategy of the difficulty table,
   on the served engine with exact per-token entropies; each finished problem is
   appended to `OUT/samples.jsonl` at once, so an interrupted run keeps its work and the
   same command resumes where it stopped;
3. labels: accuracy and mean token entropy -> easy / normal / hard (probes/labels.py);
4. features: the final hidden state of each rendered prompt (probes/features.py);
5. probe: an MLP on a stratified split, saved with its metadata to OUT (probes/probe.py),
   and the held-out accuracy printed against the majority-class baseline.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from entropy_serve.calibration import model_fingerprint
from entropy_serve.probes.features import FeatureEngine
from entropy_serve.probes.labels import LabelRule, label_problems
from entropy_serve.probes.probe import fit_probe
from entropy_serve.probes.router import feature_engine_args
from entropy_serve.probes.table import DifficultyTable
from entropy_serve.server.config import ServerConfig
from entropy_serve.server.service import Endpoint, Service, running_service
from entropy_serve.tasks import arithmetic
from entropy_serve.tasks.answers import is_correct
from entropy_serve.tasks.jsonl import load_jsonl

logger = logging.getLogger(__name__)

SAMPLES_FILE = "samples.jsonl"
TRAINING_LEVELS = ("add-1digit", "add-2digit", "add-3digit")
PROBLEMS_IN_FLIGHT = 8


@dataclass(frozen=True)
class TrainingProblem:
    question: str
    answer: str


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


def load_problems(task: str, num_problems: int, seed: int, levels: tuple[str, ...] = TRAINING_LEVELS) -> list[TrainingProblem]:
    """The built-in arithmetic `levels` (seeded) or the first problems of a JSONL file."""
    if task == "arithmetic":
        levels = arithmetic.levels_named(levels)
        return [TrainingProblem(p.question, p.answer) for p in arithmetic.generate(num_problems, seed, levels)]
    path = Path(task)
    if not path.is_file():
        raise ValueError(f"--task: {task!r} is neither 'arithmetic' nor a JSONL file")
    items = load_jsonl(path)
    if len(items) < num_problems:
        raise ValueError(f"--task {task}: {len(items)} problems, fewer than --problems {num_problems}")
    return [TrainingProblem(item.question, item.answer) for item in items[:num_problems]]


def read_finished(path: Path, problems: list[TrainingProblem]) -> dict[int, dict]:
    """Problems already sampled by an earlier run of the same command."""
    if not path.exists():
        return {}
    finished = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by an interrupt: that problem is sampled again
            logger.warning("%s:%d: unreadable, sampling that problem again", path, number)
            continue
        index = record["index"]
        if index >= len(problems) or record["question"] != problems[index].question:
            raise ValueError(f"{path} holds samples of other problems (line {number}); use a new --out")
        finished[index] = record
    return finished


async def sample_problems(
    config: ServerConfig, problems: list[TrainingProblem], todo: list[int], settings: TrainSettings, store: Path
) -> None:
    """Sample the `todo` problems, appending each one's record to `store` as it finishes."""
    normal = DifficultyTable().normal
    limit = asyncio.Semaphore(PROBLEMS_IN_FLIGHT)

    async def one(service: Service, index: int) -> dict:
        problem = problems[index]
        body = {
            "model": config.served_model_name,
            "messages": [{"role": "user", "content": problem.question}],
            "n": settings.samples,
            "max_tokens": normal.max_tokens(settings.max_tokens),
            "temperature": normal.temperature,
            "top_p": normal.top_p,
            "seed": settings.seed * 1_000_003 + index * settings.samples,
            "return_entropy": True,
        }
        async with limit:
            reply = await service.answer(body, Endpoint.CHAT_COMPLETIONS)
        (prompt_token_ids,) = service.prompt_token_ids(body, Endpoint.CHAT_COMPLETIONS)
        choices = reply.choices
        entropies = [c.model_extra["entropy"]["model_entropy_nats"] for c in choices]
        return {
            "index": index,
            "question": problem.question,
            "answer": problem.answer,
            "prompt_token_ids": prompt_token_ids,
            "accuracy": sum(is_correct(c.message.content, problem.answer) for c in choices) / len(choices),
            "mean_entropy_nats": float(np.mean([np.mean(h or [0.0]) for h in entropies])),
            "num_tokens": reply.usage.completion_tokens,
        }

    async with running_service(config) as service:
        tasks = [asyncio.create_task(one(service, i)) for i in todo]
        try:
            with store.open("a") as out:
                for finished in tqdm(asyncio.as_completed(tasks), total=len(tasks), desc="sampling", unit="problem"):
                    out.write(json.dumps(await finished) + "\n")
                    out.flush()
        finally:
            for task in tasks:
                task.cancel()


async def featurize(config: ServerConfig, prompts: list[list[int]], suffix: str) -> np.ndarray:
    engine = await asyncio.to_thread(FeatureEngine.build, feature_engine_args(config), suffix)
    try:
        batches = [prompts[i : i + 64] for i in range(0, len(prompts), 64)]
        return np.concatenate([await engine.features(batch) for batch in tqdm(batches, desc="features", unit="batch")])
    finally:
        engine.shutdown()


def train_probe(config: ServerConfig, settings: TrainSettings, out: Path) -> dict:
    problems = load_problems(settings.task, settings.num_problems, settings.seed)
    out.mkdir(parents=True, exist_ok=True)
    store = out / SAMPLES_FILE
    finished = read_finished(store, problems)
    todo = [i for i in range(len(problems)) if i not in finished]
    if todo:
        print(f"sampling {len(todo)} problems x {settings.samples} ({len(finished)} already in {store})")
        asyncio.run(sample_problems(config, problems, todo, settings, store))
        finished = read_finished(store, problems)
    records = [finished[i] for i in range(len(problems))]
    labels = label_problems([r["accuracy"] for r in records], [r["mean_entropy_nats"] for r in records], settings.rule)
    print(f"labels: {labels.balance()} (entropy threshold {labels.entropy_threshold_nats} nats)")
    features = asyncio.run(featurize(config, [r["prompt_token_ids"] for r in records], settings.feature_suffix))
    probe, report = fit_probe(features, labels.classes, settings.hidden_units, settings.held_out_fraction, settings.seed)
    probe.metadata = {
        "model": config.served_model_name,
        "fingerprint": model_fingerprint(config.model),
        "hidden_size": int(features.shape[1]),
        "feature": "final hidden state at the prompt's last token (vLLM pooling, LAST, no activation)",
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
