"""JSONL in and out for the offline commands (batch, score): keyed input lines, and an
output file that a rerun resumes.

Input: one JSON value per line (blank lines skipped). A line's key is its `custom_id`
when it is a JSON object with a string `custom_id`, else its line number: a bad line
still gets a record, and a rerun knows it is done. Two lines with one `custom_id` are
an error before any work starts.

Output: append-only whole lines, each written with one `write` and flushed, so a crash
can leave at most one torn line, the last. Opening the output for a rerun reads the
keys already answered and cuts a torn last line off (it is redone, never merged with
the next record); any other line that is not a record stops the run, naming it (the
file is the user's: it is not rewritten).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from entropy_serve.json_input import MalformedJSON, parse_json

Key = str | int  # a custom_id, or the line number of a line without one


class RecordsError(ValueError):
    """An input or output file the command cannot work from (a clear message, exit 2)."""


@dataclass(frozen=True)
class InputLine:
    number: int  # 1-based line number in the input file
    value: object  # the parsed JSON value (None when `error`)
    error: str | None  # why the line is not JSON

    @property
    def custom_id(self) -> str | None:
        if isinstance(self.value, dict) and isinstance(self.value.get("custom_id"), str):
            return self.value["custom_id"]
        return None

    @property
    def key(self) -> Key:
        return self.custom_id if self.custom_id is not None else self.number

    def record_key_fields(self) -> dict:
        """The fields every output record of this line carries: its custom_id, and its
        line number when it has none (the only way a rerun can recognize it)."""
        if self.custom_id is not None:
            return {"custom_id": self.custom_id}
        return {"custom_id": None, "line": self.number}


def read_input(path: Path) -> list[InputLine]:
    """Every non-blank line of `path`; RecordsError when a custom_id repeats."""
    with open(path, encoding="utf-8", errors="replace") as file:
        return parse_lines(file, str(path))


def parse_lines(texts: Iterable[str], source: str) -> list[InputLine]:
    """Every non-blank line of `texts` (a file's lines; `source` names it in errors)."""
    lines = []
    first_line_of: dict[str, int] = {}
    for number, text in enumerate(texts, start=1):
        if not text.strip():
            continue
        try:
            line = InputLine(number, parse_json(text), None)
        except MalformedJSON as error:
            line = InputLine(number, None, f"line {number}: not JSON ({error})")
        custom_id = line.custom_id
        if custom_id is not None:
            if custom_id in first_line_of:
                raise RecordsError(
                    f"{source}: custom_id {custom_id!r} is on line {first_line_of[custom_id]} and line {number}; "
                    "each must be unique (the output is matched to the input by it)"
                )
            first_line_of[custom_id] = number
        lines.append(line)
    return lines


def record_key(record: dict) -> Key:
    return record["custom_id"] if record.get("custom_id") is not None else record["line"]


class ResumableOutput:
    """The output file: the keys it already holds, and whole-line appends."""

    def __init__(self, path: Path):
        self.path = path
        self.done = self._recover()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _recover(self) -> set[Key]:
        """Keys of the records already written; a torn last line is cut off."""
        if not self.path.exists():
            return set()
        data = self.path.read_bytes()
        whole_end = data.rfind(b"\n") + 1  # 0 when no line is whole
        if whole_end < len(data):  # a torn last line: written in part when the run died
            os.truncate(self.path, whole_end)
        done = set()
        for number, raw in enumerate(data[:whole_end].splitlines(), start=1):
            try:
                record = json.loads(raw)
                done.add(record_key(record))
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
                raise RecordsError(
                    f"{self.path}: line {number} is not an output record; "
                    "resume only into a file this command wrote (or write to a new file)"
                ) from None
        return done

    def write(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        written = os.write(self._fd, line)  # O_APPEND: one write, at the end
        if written != len(line):  # a full disk: the torn line is cut off on the next run
            raise OSError(f"{self.path}: only {written} of {len(line)} bytes written")

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> ResumableOutput:
        return self

    def __exit__(self, *_) -> None:
        self.close()


def pending(lines: Iterable[InputLine], done: set[Key]) -> list[InputLine]:
    return [line for line in lines if line.key not in done]
