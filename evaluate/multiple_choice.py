"""Multiple-choice accuracy (ScienceQA-IMG): options shown as "(A) x (B) y", the reference is a letter.

A generation is read as a letter, first match wins, so a free-form answer still counts when its
choice is unambiguous:

1. "The answer is B" / "the answer is (B)" anywhere (the chain-of-thought form LLaVA's script reads);
2. a leading letter: "(A)...", "A", "A.", "A)", "A:", or "A <text of option A>" (a bare "A" followed
   by other words is not read as a letter: it may be the English article);
3. the exact text of one option (case-insensitive, surrounding spaces and a final period ignored).

Letters are uppercase and only those of the question's options count. What gives no letter is wrong
and counted as unparsable, so that format failures stay visible.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from lyrics.evaluate.metric_inputs import require_strings

_THE_ANSWER_IS = re.compile(r"the answer is:?\s*\(?([A-Z])\)?(?![A-Za-z])", re.IGNORECASE)
_PARENTHESIZED = re.compile(r"^\(([A-Z])\)")
_BARE = re.compile(r"^([A-Z])(?:[.:)]|$)")
_BARE_THEN_TEXT = re.compile(r"^([A-Z])\s+(.+)$", re.S)


def letter(index: int) -> str:
    """The letter of the option at ``index`` (0 -> "A")."""
    return chr(ord("A") + index)


def format_options(options: Sequence[str]) -> str:
    """The prompt's option list: "(A) x (B) y"."""
    return " ".join(f"({letter(i)}) {o}" for i, o in enumerate(options))


def _norm(text: str) -> str:
    return " ".join(text.strip().rstrip(".").split()).casefold()


def parse_choice(prediction: str, options: Sequence[str]) -> str | None:
    """The letter a generation chose among ``options``, or None (see the module docstring)."""
    letters = {letter(i) for i in range(len(options))}
    text = prediction.strip()
    for m in _THE_ANSWER_IS.finditer(text):
        if m.group(1) in letters:
            return m.group(1)
    m = _PARENTHESIZED.match(text) or _BARE.match(text)
    if m and m.group(1) in letters:
        return m.group(1)
    m = _BARE_THEN_TEXT.match(text)
    if m and m.group(1) in letters and _norm(m.group(2)) == _norm(options[ord(m.group(1)) - ord("A")]):
        return m.group(1)
    matching = [letter(i) for i, o in enumerate(options) if _norm(o) == _norm(text)]
    return matching[0] if len(matching) == 1 and text else None


@dataclass(frozen=True)
class ChoiceResult:
    accuracy: float  # correct / total, a fraction in [0, 1]
    correct: int
    total: int
    unparsable: int  # generations that gave no letter (scored wrong)
    predicted: list[str | None]  # the letter read from each generation
    per_item: list[bool]


def choice_accuracy(
    predictions: Sequence[str], answers: Sequence[str], options: Sequence[Sequence[str]]
) -> ChoiceResult:
    """Accuracy of the letters read from ``predictions`` against the reference letters ``answers``."""
    if not len(predictions) == len(answers) == len(options):
        raise ValueError(f"{len(predictions)} predictions, {len(answers)} answers, {len(options)} option lists")
    require_strings(predictions, "prediction")
    predicted = [parse_choice(p, o) for p, o in zip(predictions, options)]
    per_item = [p is not None and p == a.strip().upper() for p, a in zip(predicted, answers)]
    correct = sum(per_item)
    total = len(per_item)
    return ChoiceResult(
        accuracy=correct / total if total else 0.0,
        correct=correct,
        total=total,
        unparsable=sum(p is None for p in predicted),
        predicted=predicted,
        per_item=per_item,
    )
