"""Arithmetic problems, answer extraction/equivalence and JSONL loading, by hand."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest

from entropy_serve.tasks import answers, arithmetic
from entropy_serve.tasks.jsonl import load_jsonl, reference_answer


def test_generation_is_seeded_and_exact():
    first = arithmetic.generate(50, seed=3)
    assert first == arithmetic.generate(50, seed=3)
    assert first != arithmetic.generate(50, seed=4)
    for problem in first:
        assert str(eval(problem.expression)) == problem.answer  # noqa: S307 (our own digits and + - *)
        template = arithmetic.WORK_SHOWN_TEMPLATE if problem.level.startswith("work-") else arithmetic.QUESTION_TEMPLATE
        assert problem.question == template.format(expression=problem.expression)
    assert {p.level for p in first} == {level.name for level in arithmetic.DEFAULT_LEVELS}


def test_the_work_shown_level_asks_for_the_work():
    (level,) = arithmetic.levels_named(["work-1digit-2ops"])
    (problem,) = arithmetic.generate(1, seed=0, levels=(level,))
    a, plus, b, plus_again, c = problem.expression.split()
    assert plus == plus_again == "+" and int(problem.answer) == int(a) + int(b) + int(c)
    assert problem.question == f"Compute {problem.expression}. Show your work, then give the final answer."


def test_levels_have_their_digits():
    level = arithmetic.Level("add-3digit", digits=3)
    for problem in arithmetic.generate(20, seed=0, levels=(level,)):
        a, _, b = problem.expression.split()
        assert 100 <= int(a) <= 999 and 100 <= int(b) <= 999


@pytest.mark.parametrize(
    "levels,message",
    [
        ((), "at least one level"),
        ((arithmetic.Level("x", digits=0),), "invalid level"),
        ((arithmetic.Level("x", 1, ("/",)),), "unknown operations"),
        ((arithmetic.Level("x", 1, ("*", "+")),), "precedence"),
    ],
)
def test_bad_levels_are_errors(levels, message):
    with pytest.raises(ValueError, match=message):
        arithmetic.generate(3, seed=0, levels=levels)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("So the total is \\boxed{42}.", "42"),
        ("first \\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("nested \\boxed{x^{2}+1} end", "x^{2}+1"),
        ("Natalia sold 48 clips.\n#### 72", "72"),
        ("The answer is 1,234.", "1,234"),
        ("So, the answer is 5 + 6 = 11.", "11"),
        ("the final answer is 3 + 3 + 5 = 11\n\nAnd 2 = 2", "11"),
        ("Final answer: -7", "-7"),
        ("We get 3 apples and then 5 pears", "5"),
        ("no numbers at all", None),
        ("broken \\boxed{12", None),
    ],
)
def test_extract_answer(text, expected):
    assert answers.extract_answer(text) == expected


@pytest.mark.parametrize(
    "a,b,same",
    [
        ("42", "42.0", True),
        ("1,234", "1234", True),
        ("\\frac{1}{2}", "0.5", True),
        ("3/4", "0.75", True),
        ("$5", "5", True),
        ("7.", "7", True),
        ("-3", "3", False),
        ("\\text{Paris}", "paris", True),
        ("\\left(1, 2\\right)", "(1,2)", True),
        ("x", "y", False),
        (None, "1", False),
        ("1", None, False),
    ],
)
def test_equivalent(a, b, same):
    assert answers.equivalent(a, b) is same


def test_as_number_rejects_non_numbers():
    assert answers.as_number("abc") is None and answers.as_number("1/0") is None
    assert answers.as_number("\\dfrac{-3}{4}") == Fraction(-3, 4)


def test_is_correct():
    assert answers.is_correct("Let me add: 17 + 25 = 42. The answer is 42.", "42")
    assert not answers.is_correct("The answer is 41.", "42")


def test_reference_answers_in_each_format():
    assert reference_answer("She has 3 + 4 = 7 apples.\n#### 7") == "7"
    assert reference_answer("Thus $x = \\boxed{5}$.") == "5"
    assert reference_answer(" 12 ") == "12"


def test_load_jsonl_formats_and_errors(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"question": "1+1?", "answer": "It is 2.\n#### 2"},
                {"problem": "Half of 1?", "solution": "$\\boxed{\\frac{1}{2}}$"},
                {"prompt": "Capital of France?", "answer": "Paris"},
            ]
        )
        + "\n\n"
    )
    items = load_jsonl(good)
    assert [(i.question, i.answer) for i in items] == [
        ("1+1?", "2"),
        ("Half of 1?", "\\frac{1}{2}"),
        ("Capital of France?", "Paris"),
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x", "answer": "1"}\n{"question": "no answer"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: missing question or answer"):
        load_jsonl(bad)
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    with pytest.raises(ValueError, match="broken.jsonl:1"):
        load_jsonl(broken)


def test_levels_by_name_keep_their_order_and_refuse_unknown_names():
    levels = arithmetic.levels_named(["add-3digit", "add-1digit"])
    assert [level.name for level in levels] == ["add-1digit", "add-3digit"]
    with pytest.raises(ValueError, match=r"unknown levels \['add-9digit'\]"):
        arithmetic.levels_named(["add-1digit", "add-9digit"])
