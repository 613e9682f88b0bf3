"""Learn a model's strategy defaults: sample traces of training problems, replay the
strategies on them (trainer/strategy_tuning.py), save strategy_defaults.json.

`entropy-serve tune-strategies` runs this alone; `train-probe` runs it as its last stage,
beside the probe (serve --probe DIR then uses both). Order:
1. problems: the built-in arithmetic levels TUNING_LEVELS (seeded; short answers and
   work shown) or the first problems of a JSONL file;
2. traces, on the served engine through the in-process service: per problem one greedy
   chat answer and one n-sample answer per temperature (seed + i per sample, as the
   strategies seed their traces), with entropies and token texts, each request
   appended to `OUT/tuning_traces.jsonl` as it finishes, so the same command resumes;
3. the replay and choice, written to `OUT/strategy_defaults.json`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from entropy_serve.calibration import model_fingerprint
from entropy_serve.server.config import ServerConfig
from entropy_serve.server.core.service import running_service
from entropy_serve.server.strategies.defaults import DEFAULTS_FILE, StrategyDefaults
from entropy_serve.tasks.problems import TrainingProblem, load_problems
from entropy_serve.trainer.sampling import read_records, sample_to
from entropy_serve.trainer.strategy_tuning import ProblemTraces, trace_from_choice, tune

TRACES_FILE = "tuning_traces.jsonl"
TUNING_LEVELS = ("add-1digit", "add-2digit", "work-1digit-2ops")
GREEDY = "greedy"


@dataclass(frozen=True)
class TuneSettings:
    task: str  # "arithmetic" or a JSONL path
    num_problems: int = 90
    temperatures: tuple[float, ...] = (0.5, 0.8)
    num_traces: int = 16
    max_tokens: int = 128
    seed: int = 0
    token_share: float = 0.5  # of self-consistency's tokens at num_traces

    def kinds(self) -> list[str]:
        return [GREEDY, *(str(t) for t in self.temperatures)]


def trace_body(config: ServerConfig, problem: TrainingProblem, kind: str, settings: TuneSettings, index: int) -> dict:
    greedy = kind == GREEDY
    return {
        "model": config.served_model_name,
        "messages": [{"role": "user", "content": problem.question}],
        "n": 1 if greedy else settings.num_traces,
        "max_tokens": settings.max_tokens,
        "temperature": 0.0 if greedy else float(kind),
        "seed": settings.seed * 1_000_003 + index * settings.num_traces,
        "return_entropy": True,
        "logprobs": True,  # each token's text: the answer's span
    }


def read_traces(path: Path, problems: list[TrainingProblem]) -> dict[tuple[str, int], dict]:
    """(kind, problem index) -> record, from an earlier run (sampling.read_records)."""
    return read_records(path, problems, key=lambda record: (record["kind"], record["index"]), what="traces")


async def sample_traces(
    config: ServerConfig,
    problems: list[TrainingProblem],
    todo: list[tuple[str, int]],
    settings: TuneSettings,
    path: Path,
) -> None:
    def record(key: tuple, reply, body: dict) -> dict:
        kind, index = key
        choices = [choice.model_dump(include={"message", "entropy", "logprobs"}) for choice in reply.choices]
        return {"kind": kind, "index": index, "question": problems[index].question, "choices": choices}

    bodies = {(kind, i): trace_body(config, problems[i], kind, settings, i) for kind, i in todo}
    async with running_service(config) as service:
        await sample_to(service, bodies, record, path, "tuning traces")


def problem_traces(
    records: dict[tuple[str, int], dict], problems: list[TrainingProblem], temperature: float
) -> list[ProblemTraces]:
    return [
        ProblemTraces(
            reference=problem.answer,
            greedy=trace_from_choice(records[(GREEDY, i)]["choices"][0]),
            pool=tuple(trace_from_choice(c) for c in records[(str(temperature), i)]["choices"]),
        )
        for i, problem in enumerate(problems)
    ]


def learn(config: ServerConfig, settings: TuneSettings, out: Path) -> StrategyDefaults:
    """Steps 1-3 (module doc); returns what it wrote to OUT/strategy_defaults.json."""
    problems = load_problems(settings.task, settings.num_problems, settings.seed, TUNING_LEVELS)
    out.mkdir(parents=True, exist_ok=True)
    path = out / TRACES_FILE
    finished = read_traces(path, problems)
    todo = [(kind, i) for kind in settings.kinds() for i in range(len(problems)) if (kind, i) not in finished]
    if todo:
        print(f"tuning traces: {len(todo)} requests ({len(finished)} already in {path})")
        asyncio.run(sample_traces(config, problems, todo, settings, path))
        finished = read_traces(path, problems)
    traces = {t: problem_traces(finished, problems, t) for t in settings.temperatures}
    made_by = (
        f"{len(problems)} problems of {settings.task} (seed {settings.seed}), greedy and {settings.num_traces} "
        f"traces at T {list(settings.temperatures)}, {settings.max_tokens} tokens; budget {settings.token_share} "
        "of self-consistency's tokens"
    )
    learned = tune(traces, settings.token_share, config.served_model_name, model_fingerprint(config.model), made_by)
    (out / DEFAULTS_FILE).write_text(learned.model_dump_json(indent=2) + "\n")
    return learned
