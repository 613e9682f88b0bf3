"""Question/answer JSONL files in the common math formats.

Each line is a JSON object with a question (`question`, `problem` or `prompt`) and an
answer (`answer` or `solution`). GSM8K answers end in `#### 42`; MATH solutions hold a
`\\boxed{...}`; plain answers are taken as they are. Bad lines are errors naming the
file and line, never skipped in silence.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from entropy_serve.tasks.answers import extract_answer, extract_boxed

QUESTION_KEYS = ("question", "problem", "prompt")
ANSWER_KEYS = ("answer", "solution")


@dataclass(frozen=True)
class QAItem:
    question: str
    answer: str


def reference_answer(raw: str) -> str:
    """The final answer inside a reference solution (GSM8K, MATH, or plain)."""
    if "####" in raw or extract_boxed(raw) is not None:
        answer = extract_answer(raw)
        if answer is None:
            raise ValueError(f"no final answer in reference solution {raw[:80]!r}")
        return answer
    return raw.strip()


def load_jsonl(path: str | Path) -> list[QAItem]:
    path = Path(path)
    items = []
    with path.open() as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                question = next(record[k] for k in QUESTION_KEYS if k in record)
                answer = next(str(record[k]) for k in ANSWER_KEYS if k in record)
                items.append(QAItem(question=question, answer=reference_answer(answer)))
            except (json.JSONDecodeError, StopIteration, TypeError, ValueError) as error:
                detail = "missing question or answer field" if isinstance(error, StopIteration) else str(error)
                raise ValueError(f"{path}:{number}: {detail}") from error
    return items
