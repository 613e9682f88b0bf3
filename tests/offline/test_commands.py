"""`batch` and `score` refuse unusable files before any engine starts, and start none
when every line is already answered."""

from __future__ import annotations

import json

import pytest

from entropy_serve.cli import main


@pytest.mark.parametrize("command", ["batch", "score"])
def test_a_repeated_custom_id_stops_before_any_work(command, tmp_path, capsys):
    (tmp_path / "in.jsonl").write_text('{"custom_id": "a"}\n{"custom_id": "a"}\n')
    assert main([command, "-i", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl")]) == 2
    assert "custom_id 'a' is on line 1 and line 2" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists() or (tmp_path / "out.jsonl").read_text() == ""


@pytest.mark.parametrize("command", ["batch", "score"])
def test_an_output_that_is_not_ours_is_refused(command, tmp_path, capsys):
    (tmp_path / "in.jsonl").write_text('{"custom_id": "a"}\n')
    (tmp_path / "out.jsonl").write_text("my notes\n")
    assert main([command, "-i", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl")]) == 2
    assert "line 1 is not an output record" in capsys.readouterr().err
    assert (tmp_path / "out.jsonl").read_text() == "my notes\n"


@pytest.mark.parametrize("command", ["batch", "score"])
def test_nothing_left_to_answer_starts_no_engine(command, tmp_path, capsys):
    (tmp_path / "in.jsonl").write_text('{"custom_id": "a"}\nnot json\n')
    (tmp_path / "out.jsonl").write_text(
        json.dumps({"custom_id": "a"}) + "\n" + json.dumps({"custom_id": None, "line": 2}) + "\n"
    )
    assert main([command, "-i", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl")]) == 0
    assert "all 2 lines are already in" in capsys.readouterr().err


def test_a_missing_input_is_a_clear_error(tmp_path, capsys):
    assert main(["batch", "-i", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "out.jsonl")]) == 2
    assert "nope.jsonl" in capsys.readouterr().err
