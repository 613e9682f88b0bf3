"""Held-out accuracy of a policy run, before and after, on its own rollout engine.

Problems come from the built-in arithmetic levels with a fixed seed (HELD_OUT_SEED, not
the run's: every run of a comparison answers the same problems). The small levels have
few distinct questions (1-digit addition: 100), so held-out problems can repeat training
ones there: the numbers measure what training did to the model's answers, not
generalization to unseen questions. Each problem is answered greedy and with
`samples` samples at T 0.8 (accuracy averaged over them), through the service the
server answers with.
"""

from __future__ import annotations

import asyncio
import json

from entropy_serve.server.core.service import Service
from entropy_serve.tasks import arithmetic
from entropy_serve.tasks.answers import is_correct

HELD_OUT_SEED = 1_000
HELD_OUT_FILE = "held_out.json"
SAMPLE_TEMPERATURE = 0.8


def held_out_problems(num_problems: int, levels: list[str]) -> list[arithmetic.Problem]:
    return arithmetic.generate(num_problems, HELD_OUT_SEED, arithmetic.levels_named(levels))


async def held_out_accuracy(
    service: Service, served_model_name: str, problems, samples: int, max_tokens: int
) -> dict[str, float]:
    """Greedy accuracy, and mean single-sample accuracy at T 0.8, on `problems`."""

    async def one(index, problem):
        base = {
            "model": served_model_name,
            "messages": [{"role": "user", "content": problem.question}],
            "max_tokens": max_tokens,
        }
        greedy, sampled = await asyncio.gather(
            service.answer({**base, "temperature": 0.0}, "chat_completions"),
            service.answer(
                {**base, "temperature": SAMPLE_TEMPERATURE, "n": samples, "seed": HELD_OUT_SEED + index},
                "chat_completions",
            ),
        )
        return (
            is_correct(greedy.choices[0].message.content, problem.answer),
            sum(is_correct(c.message.content, problem.answer) for c in sampled.choices) / samples,
        )

    scores = await asyncio.gather(*(one(i, p) for i, p in enumerate(problems)))
    return {
        "greedy_accuracy": round(sum(g for g, _ in scores) / len(scores), 4),
        "sample_accuracy_t08": round(sum(s for _, s in scores) / len(scores), 4),
    }


def record_held_out(engine, settings, served_model_name: str, stage: str) -> dict[str, float]:
    """Answer the run's held-out problems on the engine's current weights and record the
    scores under `stage` ("before" / "after") in the output folder's held_out.json."""
    problems = held_out_problems(settings.held_out_problems, settings.levels)
    scores = engine.run(
        held_out_accuracy(engine.service, served_model_name, problems, settings.held_out_samples, settings.max_tokens)
    )
    path = settings.output_dir / HELD_OUT_FILE
    record = json.loads(path.read_text()) if path.exists() else {}
    record.update(
        {"problems": len(problems), "samples": settings.held_out_samples, "seed": HELD_OUT_SEED, stage: scores}
    )
    path.write_text(json.dumps(record, indent=2) + "\n")
    return scores
