"""Input keys, duplicate ids, torn-line recovery and ordered, bounded answering, without an engine."""

from __future__ import annotations

import asyncio
import json

import pytest

from entropy_serve.offline.records import RecordsError, ResumableOutput, pending, read_input
from entropy_serve.offline.runner import Answered, OutputOrder, answer_lines


def write_lines(path, *lines: str) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def test_lines_are_keyed_by_custom_id_else_line_number(tmp_path):
    path = tmp_path / "in.jsonl"
    write_lines(path, '{"custom_id": "a"}', "", "not json", '{"custom_id": 7}', "[1]")
    lines = read_input(path)
    assert [line.number for line in lines] == [1, 3, 4, 5]  # the blank line is skipped
    assert [line.key for line in lines] == ["a", 3, 4, 5]
    assert lines[1].error.startswith("line 3: not JSON")
    assert lines[0].record_key_fields() == {"custom_id": "a"}
    assert lines[2].record_key_fields() == {"custom_id": None, "line": 4}


def test_lines_past_the_parsers_bounds_are_error_lines_not_a_crash(tmp_path):
    path = tmp_path / "in.jsonl"
    write_lines(
        path,
        '{"custom_id": "big", "body": {"n": ' + "1" * 5000 + "}}",
        "[" * 100_000 + "]" * 100_000,
        '{"custom_id": "ok"}',
    )
    lines = read_input(path)
    assert lines[0].error == "line 1: not JSON (an integer of 5000 digits in 'n'; at most 1000 are accepted)"
    assert lines[1].error == "line 2: not JSON (nested deeper than 128 levels)"
    assert lines[2].key == "ok" and lines[2].error is None


def test_a_repeated_custom_id_is_refused_before_any_work(tmp_path):
    path = tmp_path / "in.jsonl"
    write_lines(path, '{"custom_id": "a"}', '{"custom_id": "b"}', '{"custom_id": "a"}')
    with pytest.raises(RecordsError, match="custom_id 'a' is on line 1 and line 3"):
        read_input(path)


def test_output_recovers_done_keys_and_cuts_a_torn_last_line(tmp_path):
    path = tmp_path / "out.jsonl"
    whole = json.dumps({"custom_id": "a", "x": 1}) + "\n" + json.dumps({"custom_id": None, "line": 4}) + "\n"
    path.write_text(whole + '{"custom_id": "b", "x": ')  # the run died mid-write
    with ResumableOutput(path) as output:
        assert output.done == {"a", 4}
        assert path.read_text() == whole  # the torn line is gone, never merged with the next
        output.write({"custom_id": "b", "x": 2})
    assert path.read_text() == whole + '{"custom_id": "b", "x": 2}\n'
    assert ResumableOutput(path).done == {"a", 4, "b"}


def test_output_that_is_not_ours_is_refused_not_rewritten(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"custom_id": "a"}\nhello\n{"custom_id": "b"}\n')
    with pytest.raises(RecordsError, match="line 2 is not an output record"):
        ResumableOutput(path)
    assert path.read_text() == '{"custom_id": "a"}\nhello\n{"custom_id": "b"}\n'


def test_pending_skips_what_is_done(tmp_path):
    path = tmp_path / "in.jsonl"
    write_lines(path, '{"custom_id": "a"}', '{"custom_id": "b"}', "oops")
    assert [line.key for line in pending(read_input(path), {"a", 3})] == ["b"]


def answered_after(delays: dict[str, float]):
    async def answer(line) -> Answered:
        await asyncio.sleep(delays[line.key])
        return Answered(record={"custom_id": line.key}, ok=line.key != "bad", num_tokens=3)

    return answer


@pytest.mark.parametrize(
    "order, expected", [(OutputOrder.COMPLETED, ["c", "b", "a"]), (OutputOrder.INPUT, ["a", "b", "c"])]
)
def test_records_are_written_as_completed_or_in_input_order(tmp_path, order, expected):
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"custom_id": k}) + "\n" for k in "abc"))
    lines = read_input(tmp_path / "in.jsonl")
    with ResumableOutput(tmp_path / "out.jsonl") as output:
        tally = asyncio.run(
            answer_lines(
                lines,
                0,
                answered_after({"a": 0.3, "b": 0.2, "c": 0.1}),
                output,
                max_in_flight=8,
                order=order,
                description="test",
            )
        )
    written = [json.loads(line)["custom_id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert written == expected
    assert (tally.num_answered, tally.num_errors, tally.num_tokens) == (3, 0, 9)


def test_at_most_max_in_flight_lines_run_at_once(tmp_path):
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"custom_id": k}) + "\n" for k in "abcdef"))
    running, most = 0, 0

    async def answer(line) -> Answered:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.02)
        running -= 1
        return Answered(record={"custom_id": line.key}, ok=True, num_tokens=1)

    with ResumableOutput(tmp_path / "out.jsonl") as output:
        asyncio.run(
            answer_lines(
                read_input(tmp_path / "in.jsonl"),
                0,
                answer,
                output,
                max_in_flight=2,
                order=OutputOrder.COMPLETED,
                description="test",
            )
        )
    assert most == 2
    assert ResumableOutput(tmp_path / "out.jsonl").done == set("abcdef")


def test_a_failure_of_the_service_stops_the_run_and_writes_nothing_for_it(tmp_path):
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"custom_id": k}) + "\n" for k in "abc"))

    async def answer(line) -> Answered:
        if line.key == "b":
            await asyncio.sleep(0.05)
            raise RuntimeError("the engine died")
        await asyncio.sleep(0.01 if line.key == "a" else 5)
        return Answered(record={"custom_id": line.key}, ok=True, num_tokens=1)

    with ResumableOutput(tmp_path / "out.jsonl") as output, pytest.raises(RuntimeError, match="engine died"):
        asyncio.run(
            answer_lines(
                read_input(tmp_path / "in.jsonl"),
                0,
                answer,
                output,
                max_in_flight=8,
                order=OutputOrder.COMPLETED,
                description="test",
            )
        )
    # a finished before the failure; c was cancelled: a rerun answers b and c.
    assert ResumableOutput(tmp_path / "out.jsonl").done == {"a"}
