"""REC predictions drawn on their images (PNG grid), for a person to see what the accuracy counts.

Each panel: the image, the reference box (green), the answer's first box (red, dashed) mapped to
pixels by ``lyrics.evaluate.rec.predicted_box`` and the IoU from ``lyrics.evaluate.rec.iou``, so the
picture shows exactly what ``rec_scores`` scored. Records are those of ``predictions.jsonl``.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from PIL import Image  # noqa: E402

from lyrics.data.instruction_templates import REC, TEMPLATES  # noqa: E402
from lyrics.evaluate.rec import iou, predicted_box  # noqa: E402

PANEL_WIDTH, PANEL_HEIGHT = 4.0, 4.4  # inches; the extra height is for the title (up to three lines)
DPI = 80  # as data/sample/draw.py and extract/show.py write theirs
TARGET_COLOR, PREDICTION_COLOR = "lime", "red"  # lime: pure green, visible on dark photos

# Every REC template (evaluation uses the first; training data any), "{expression}" as a group.
_REC_PATTERNS = [
    re.compile("".join("(.+)" if part == "{expression}" else re.escape(part) for part in re.split(r"(\{expression\})", t)), re.S)
    for t in TEMPLATES[REC]
]


def expression_of(prompt: str) -> str:
    """The referring expression inside a REC prompt; the prompt itself when no template matches."""
    for pattern in _REC_PATTERNS:
        match = pattern.fullmatch(prompt)
        if match:
            return match.group(1)
    return prompt


def rec_grid_figure(records: Sequence[dict], images: Mapping[str, Image.Image], columns: int = 4, limit: int = 16) -> Figure:
    """The grid as a figure (the caller closes it): the first ``limit`` records whose image is in ``images``."""
    drawn = [r for r in records if r["image"] in images][:limit]
    if not drawn:  # an empty grid would look like a drawing bug, not like missing images
        raise ValueError(f"none of the {len(records)} records has its image among the {len(images)} given")
    rows = math.ceil(len(drawn) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(PANEL_WIDTH * columns, PANEL_HEIGHT * rows), dpi=DPI, squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, record in zip(axes.flat, drawn):
        _draw_panel(axis, images[record["image"]], record)
    legend = [
        Line2D([], [], color=TARGET_COLOR, linewidth=2, label="reference box"),
        Line2D([], [], color=PREDICTION_COLOR, linewidth=2, linestyle="--", label="predicted box (first in the answer)"),
    ]
    figure.legend(handles=legend, loc="upper center", ncol=2, fontsize=9, frameon=False)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.3 / figure.get_figheight()))  # room for the legend on top
    return figure


def draw_rec_grid(records: Sequence[dict], images: Mapping[str, Image.Image], out: Path, columns: int = 4, limit: int = 16) -> Path:
    """Write the grid to ``out`` (PNG, PANEL_WIDTH x PANEL_HEIGHT inches per panel at DPI); returns ``out``."""
    figure = rec_grid_figure(records, images, columns, limit)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=DPI)  # no bbox_inches="tight": the pixel size stays columns x rows panels
    plt.close(figure)
    return out


def _draw_panel(axis: plt.Axes, image: Image.Image, record: dict) -> None:
    target = record["target"]
    size = (int(target["size"][0]), int(target["size"][1]))
    if image.size != size:  # boxes would land in the wrong place: the image is not the scored one
        raise ValueError(f"image {record['image']!r}: size {image.size} but the record's target says {size}")
    axis.imshow(image.convert("RGB"))  # RGB: a grey-level image would otherwise get a colour map
    _box(axis, target["box"], TARGET_COLOR, "-")
    box = predicted_box(record["prediction"], size)  # the same call, and size, as rec_scores
    if box is None:
        verdict = "no box"
    else:
        _box(axis, box, PREDICTION_COLOR, "--")
        verdict = f"IoU {iou(box, target['box']):.2f}"
    expression = textwrap.shorten(expression_of(record["prompt"]), 70, placeholder="…")
    axis.set_title("\n".join(textwrap.wrap(expression, 40)[:2] + [verdict]), fontsize=8)


def _box(axis: plt.Axes, box: Sequence[float], color: str, linestyle: str) -> None:
    x1, y1, x2, y2 = box
    axis.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=2, linestyle=linestyle))
