"""Final-answer extraction and equivalence, for verifiable math answers.

Extraction, in order of precedence:
1. the last `\\boxed{...}` (MATH style; nested braces handled; a box cut off before
   its closing brace, e.g. by max_tokens, is no answer);
2. the text after the last `####` (GSM8K style);
3. the text after the last "answer is" / "answer:" phrase: its first number, or, when
   that line restates the sum ("the answer is 5 + 6 = 11"), the first number after
   its last "=";
4. the last number in the text.
Equivalence: equal as exact numbers (integers, decimals, fractions, `\\frac{a}{b}`,
thousands separators, a trailing period or unit-less `$`), else equal after normalizing
whitespace and common LaTeX wrappers.
"""

from __future__ import annotations

import re
from fractions import Fraction

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
ANSWER_PHRASE = re.compile(r"(?:final answer|answer)\s*(?:is|:)\s*", re.IGNORECASE)


def extract_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), braces balanced."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, begin = 1, i
    while i < len(text):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[begin:i].strip()
        i += 1
    return None  # unbalanced: no answer


def extract_answer(text: str) -> str | None:
    """The final answer of a completion, or None when it gives none."""
    if "\\boxed{" in text or "\\fbox{" in text:
        return extract_boxed(text)  # None when cut off inside the box: no answer yet
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip()
        return tail.splitlines()[0].strip() if tail else None
    phrases = list(ANSWER_PHRASE.finditer(text))
    if phrases:
        tail = text[phrases[-1].end() :]
        line = tail.strip().split("\n", 1)[0]
        if "=" in line:  # the answer restates the working: the result follows the last "="
            tail = line.rsplit("=", 1)[1]
        number = NUMBER.search(tail)
        if number:
            return number.group(0)
        first_line = tail.strip().splitlines()[0] if tail.strip() else ""
        return first_line.rstrip(".").strip() or None
    numbers = NUMBER.findall(text)
    return numbers[-1] if numbers else None


def as_number(answer: str) -> Fraction | None:
    """The exact value of a numeric answer, or None when it is not a number."""
    text = answer.strip().rstrip(".").strip("$ ").replace(",", "").replace("\\!", "")
    fraction = re.fullmatch(r"\\d?frac\{(-?\d+)\}\{(\d+)\}", text)
    if fraction:
        text = f"{fraction.group(1)}/{fraction.group(2)}"
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def normalize(answer: str) -> str:
    text = answer.strip().rstrip(".")
    text = re.sub(r"\\text\{([^}]*)\}", r"\1", text)
    text = text.replace("\\left", "").replace("\\right", "").replace("\\dfrac", "\\frac").replace("$", "")
    return re.sub(r"\s+", "", text).lower()


def equivalent(a: str | None, b: str | None) -> bool:
    """Whether two extracted answers mean the same; None (no answer) equals nothing."""
    if a is None or b is None:
        return False
    number_a, number_b = as_number(a), as_number(b)
    if number_a is not None and number_b is not None:
        return number_a == number_b
    return normalize(a) == normalize(b)


def is_correct(completion: str, reference: str) -> bool:
    return equivalent(extract_answer(completion), reference)
