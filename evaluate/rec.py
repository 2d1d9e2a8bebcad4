"""Referring expression comprehension (RefCOCO / RefCOCO+ / RefCOCOg) accuracy, as Qwen-VL and Shikra score it.

The answer's first box, in the spatial text of ``lyrics.spatial_text`` (integer coordinates in [0, 999]
normalized by the image's width and height), is mapped back to pixels (x * width, y * height) and counts
as correct when its IoU with the reference box is at least 0.5. IoU is taken in pixel space, where the
references live, so that they are not quantized to the 1/999 grid (IoU itself is unchanged by scaling
the axes). An answer without a parsable box is wrong, and counted apart so that a formatting failure
is not mistaken for a localization failure. Coordinates above 999 are clipped by ``find_boxes``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lyrics.evaluate.metric_inputs import require_strings
from lyrics.spatial_text import find_boxes

PixelBox = tuple[float, float, float, float]  # xyxy in pixels


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two xyxy boxes (continuous, no +1). A box with x2 <= x1 or y2 <= y1
    has no area, and a pair whose union is empty scores 0."""
    ix = min(a[2], b[2]) - max(a[0], b[0])
    iy = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, ix) * max(0.0, iy)
    union = _area(a) + _area(b) - inter
    return inter / union if union > 0 else 0.0


def _area(box: Sequence[float]) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def predicted_box(prediction: str, size: tuple[int, int]) -> PixelBox | None:
    """The answer's first box in pixels (x * width, y * height), or None; also what to draw."""
    boxes = find_boxes(prediction)
    if not boxes:
        return None
    width, height = size
    x1, y1, x2, y2 = boxes[0]
    return (x1 * width, y1 * height, x2 * width, y2 * height)


@dataclass(frozen=True)
class RecResult:
    accuracy: float  # correct / total, a fraction in [0, 1]
    correct: int
    total: int
    unparsable: int  # answers without a box (scored wrong)
    per_item: list[float | None]  # IoU of each answer's first box, None where there was none


def rec_scores(
    predictions: Sequence[str],
    targets: Sequence[Sequence[float]],
    sizes: Sequence[tuple[int, int]],
    *,
    threshold: float = 0.5,
) -> RecResult:
    """Accuracy at IoU >= threshold. ``targets``: reference boxes in pixel xyxy; ``sizes``: (width, height)."""
    if not len(predictions) == len(targets) == len(sizes):
        raise ValueError(f"{len(predictions)} predictions, {len(targets)} targets, {len(sizes)} sizes")
    require_strings(predictions, "prediction")
    per_item: list[float | None] = []
    for prediction, target, size in zip(predictions, targets, sizes):
        box = predicted_box(prediction, size)
        per_item.append(None if box is None else iou(box, target))
    correct = sum(1 for v in per_item if v is not None and v >= threshold)
    total = len(per_item)
    return RecResult(
        accuracy=correct / total if total else 0.0,
        correct=correct,
        total=total,
        unparsable=sum(1 for v in per_item if v is None),
        per_item=per_item,
    )
