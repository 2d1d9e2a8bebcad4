"""One benchmark's predictions -> its metrics, by task: the dispatch from a benchmark's task to its metric.

Metrics are reported in percent, as the paper's tables print them (MME: its own 0-200 per subtask
scale and the perception / cognition sums); counts stay counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lyrics.config import TASKS as CONFIG_TASKS
from lyrics.evaluate.benchmarks import EvalItem
from lyrics.evaluate.captioning import caption_scores
from lyrics.evaluate.metric_inputs import require_strings
from lyrics.evaluate.mme import mme_scores
from lyrics.evaluate.multiple_choice import choice_accuracy
from lyrics.evaluate.rec import rec_scores
from lyrics.evaluate.vqa_score import VQAConvention, exact_match, vqa_scores
from lyrics.evaluate.yes_no import pope_scores

TASKS = CONFIG_TASKS  # the tasks a benchmark may name (lyrics/config.py)


def score(
    task: str, items: Sequence[EvalItem], predictions: Sequence[str], meteor: bool = False, vqa_convention: VQAConvention = "official"
) -> dict[str, Any]:
    """The task's metrics of ``predictions`` (one per item, same order)."""
    if len(predictions) != len(items):
        raise ValueError(f"{len(predictions)} predictions for {len(items)} items")
    require_strings(predictions, "prediction", [item.id for item in items])
    targets = [item.target for item in items]
    if task == "rec":
        r = rec_scores(predictions, [t["box"] for t in targets], [tuple(t["size"]) for t in targets])
        return {"accuracy": 100 * r.accuracy, "correct": r.correct, "total": r.total, "unparsable": r.unparsable}
    if task == "caption":
        return _captioning(items, predictions, meteor)
    if task == "vqa":
        accuracy = vqa_scores(predictions, [t["answers"] for t in targets], convention=vqa_convention).accuracy
        return {"accuracy": 100 * accuracy, "total": len(items), "convention": vqa_convention}
    if task == "exact_match":
        r = exact_match(predictions, [t["answer"] for t in targets])
        return {"accuracy": 100 * r.accuracy, "correct": r.correct, "total": r.total}
    if task == "multiple_choice":
        r = choice_accuracy(predictions, [t["answer"] for t in targets], [t["options"] for t in targets])
        return {"accuracy": 100 * r.accuracy, "correct": r.correct, "total": r.total, "unparsable": r.unparsable}
    if task == "pope":
        r = pope_scores(predictions, [t["label"] for t in targets])
        return {"accuracy": 100 * r.accuracy, "precision": 100 * r.precision, "recall": 100 * r.recall, "f1": 100 * r.f1,
                "yes_ratio": 100 * r.yes_ratio, "total": len(items)}  # fmt: skip
    if task == "mme":
        r = mme_scores([(t["subtask"], t["image"], p, t["answer"]) for t, p in zip(targets, predictions)])
        subtasks = {name: {"accuracy": 100 * s.accuracy, "accuracy_plus": 100 * s.accuracy_plus, "score": s.score} for name, s in r.subtasks.items()}
        return {"perception": r.perception, "cognition": r.cognition, "subtasks": subtasks, "missing_subtasks": r.missing}
    raise ValueError(f"no metric for task {task!r}; tasks: {', '.join(TASKS)}")


def _captioning(items: Sequence[EvalItem], predictions: Sequence[str], meteor: bool) -> dict[str, Any]:
    """The scores of all images and, where the targets name domains (NoCaps), of each domain on its own, as its official evaluation does."""
    def scores_of(part: list[int]) -> dict[str, Any]:
        result = caption_scores({items[i].id: predictions[i] for i in part}, {items[i].id: items[i].target["references"] for i in part}, meteor)
        return {**result.as_percent(), "images": len(part)}

    metrics = scores_of(list(range(len(items))))
    domains: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        if "domain" in item.target:
            domains.setdefault(item.target["domain"], []).append(index)
    if domains:
        metrics["domains"] = {name: scores_of(part) for name, part in sorted(domains.items())}
    return metrics
