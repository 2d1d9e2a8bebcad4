"""POPE (object hallucination) metrics, read exactly as the official POPE ``evaluate.py`` reads answers.

The official script keeps the text before the first period, deletes commas, splits on single spaces,
and reads "no" when one of the words is "No", "no" or "not"; everything else, an empty or off-topic
answer included, reads "yes". That default matters: POPE's yes-ratio and precision are meant to
expose a model that says yes too easily, and published numbers use this rule. Positive = "yes".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from lyrics.evaluate.metric_inputs import require_strings

YesNo = Literal["yes", "no"]


def pope_answer(text: str) -> YesNo:
    """The official POPE reading of a generation (see the module docstring)."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


@dataclass(frozen=True)
class PopeResult:
    accuracy: float  # all metrics are fractions in [0, 1]
    precision: float  # TP / (TP + FP); 0.0 when nothing was predicted yes
    recall: float  # TP / (TP + FN); 0.0 when no label is yes
    f1: float  # 2PR / (P + R); 0.0 when P + R = 0
    yes_ratio: float  # share of answers read as yes
    tp: int
    fp: int
    tn: int
    fn: int
    predicted: list[YesNo]


def pope_scores(predictions: Sequence[str], labels: Sequence[str]) -> PopeResult:
    """Accuracy, precision, recall, F1 and yes-ratio of generations against "yes"/"no" labels.

    The official script divides by zero in the degenerate cases; those metrics are 0.0 here."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    require_strings(predictions, "prediction")
    gold = [_label(label) for label in labels]
    predicted = [pope_answer(p) for p in predictions]
    tp = sum(p == "yes" and g == "yes" for p, g in zip(predicted, gold))
    fp = sum(p == "yes" and g == "no" for p, g in zip(predicted, gold))
    tn = sum(p == "no" and g == "no" for p, g in zip(predicted, gold))
    fn = sum(p == "no" and g == "yes" for p, g in zip(predicted, gold))
    total = len(predicted)
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    return PopeResult(
        accuracy=_ratio(tp + tn, total),
        precision=precision,
        recall=recall,
        f1=_ratio(2 * precision * recall, precision + recall),
        yes_ratio=_ratio(tp + fp, total),
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
        predicted=predicted,
    )


def _label(label: str) -> YesNo:
    value = label.strip().lower()
    if value not in ("yes", "no"):
        raise ValueError(f"a POPE label is 'yes' or 'no', not {label!r}")
    return value  # type: ignore[return-value]


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0
