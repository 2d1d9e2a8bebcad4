"""MME scores, computed as the official MME ``eval_tool/calculation.py`` computes them.

Each image of a subtask has two questions, one answered "yes" and one "no", so a model that always
says yes gets 50% accuracy; accuracy+ (images with both questions right) exposes that. A subtask
scores acc * 100 + acc+ * 100 (at most 200); perception is the sum over its 10 subtasks (at most 2000),
cognition over its 4 (at most 800).

Answers are read like the official ``parse_pred_ans``: lowercased, "yes" or "no" exactly, else "yes"
if "yes" occurs in the first 4 characters, else "no" if "no" does (so "No.", "Not sure" and "None"
read no), else "other", which is wrong. Surrounding whitespace is stripped first (the answer files
the official tool reads hold stripped generations).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Literal

from lyrics.evaluate.metric_inputs import require_strings

PERCEPTION: tuple[str, ...] = (
    "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR",
)
COGNITION: tuple[str, ...] = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")

MMERecord = tuple[str, Hashable, str, str]  # (subtask, image_id, prediction, answer)


def mme_answer(prediction: str) -> Literal["yes", "no", "other"]:
    """The official MME reading of a generation (see the module docstring)."""
    text = prediction.strip().lower()
    if text in ("yes", "no"):
        return text  # type: ignore[return-value]
    prefix = text[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


@dataclass(frozen=True)
class SubtaskScore:
    accuracy: float  # correct questions / questions
    accuracy_plus: float  # images with every question correct / images
    score: float  # accuracy * 100 + accuracy_plus * 100
    questions: int
    images: int
    other: int  # answers read as neither yes nor no


@dataclass(frozen=True)
class MMEResult:
    perception: float  # sum of the perception subtasks' scores that were present
    cognition: float  # same for cognition
    subtasks: dict[str, SubtaskScore]  # every subtask of the records, official or not
    missing: list[str]  # official subtasks absent from the records (a partial sum is not comparable)


def mme_scores(records: Sequence[MMERecord]) -> MMEResult:
    """Per-subtask scores and the perception / cognition sums of (subtask, image_id, prediction, answer)."""
    # subtask -> image -> [question correct?]
    grouped: dict[str, dict[Hashable, list[bool]]] = {}
    others: dict[str, int] = {}
    require_strings([record[2] for record in records], "prediction", [f"{record[0]}/{record[1]}" for record in records])
    for subtask, image_id, prediction, answer in records:
        gold = answer.strip().lower()
        if gold not in ("yes", "no"):
            raise ValueError(f"an MME answer is 'yes' or 'no', not {answer!r} ({subtask}, {image_id})")
        read = mme_answer(prediction)
        grouped.setdefault(subtask, {}).setdefault(image_id, []).append(read == gold)
        others[subtask] = others.get(subtask, 0) + (read == "other")

    subtasks: dict[str, SubtaskScore] = {}
    for subtask, images in grouped.items():
        questions = sum(len(v) for v in images.values())
        acc = sum(sum(v) for v in images.values()) / questions
        acc_plus = sum(all(v) for v in images.values()) / len(images)
        subtasks[subtask] = SubtaskScore(
            accuracy=acc,
            accuracy_plus=acc_plus,
            score=acc * 100 + acc_plus * 100,
            questions=questions,
            images=len(images),
            other=others[subtask],
        )

    by_name = {name.lower(): name for name in subtasks}

    def category_sum(names: Sequence[str]) -> float:
        return sum(subtasks[by_name[n.lower()]].score for n in names if n.lower() in by_name)

    return MMEResult(
        perception=category_sum(PERCEPTION),
        cognition=category_sum(COGNITION),
        subtasks=subtasks,
        missing=[n for n in (*PERCEPTION, *COGNITION) if n.lower() not in by_name],
    )
