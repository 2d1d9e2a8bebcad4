"""The textualized spatial representation of SPEC section 3.2 and its parsers.

One object is ``<br><T>tag</T><Bbox>(x1,y1),(x2,y2)</Box></br>`` (the paper's tags, including its
asymmetric ``<Bbox>``/``</Box>`` pair). Coordinates are integers in [0, 999]: a normalized
coordinate v in [0, 1] becomes round(v * 999), and c maps back to c / 999 (so a round trip moves a
coordinate by at most 0.5 / 999). Shared by extraction, training and evaluation.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

COORD_MAX = 999
SPATIAL_TOKENS = ("<br>", "</br>", "<T>", "</T>", "<Bbox>", "</Box>")

_OBJECT = re.compile(r"<br><T>(.*?)</T><Bbox>\((\d+),(\d+)\),\((\d+),(\d+)\)</Box></br>", re.S)
# A box where the grammar puts it, between <Bbox> and </Box>; spaces around the numbers are forgiven
# (a model may emit them), a bare "(x1,y1),(x2,y2)" in running text or in a tag's text is not a box.
_BOX = re.compile(r"<Bbox>\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)\s*,\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)\s*</Box>")

Box = tuple[float, float, float, float]


def to_coords(box: Sequence[float]) -> tuple[int, int, int, int]:
    """Normalized xyxy in [0, 1] -> integer coordinates in [0, 999]."""
    if not all(math.isfinite(float(v)) for v in box):
        raise ValueError(f"box {tuple(float(v) for v in box)} has a coordinate that is not a finite number")
    return tuple(min(COORD_MAX, max(0, round(float(v) * COORD_MAX))) for v in box)  # type: ignore[return-value]


def from_coords(coords: Sequence[int]) -> Box:
    return tuple(c / COORD_MAX for c in coords)  # type: ignore[return-value]


def format_box(box: Sequence[float]) -> str:
    x1, y1, x2, y2 = to_coords(box)
    return f"<Bbox>({x1},{y1}),({x2},{y2})</Box>"


def clean_tag(tag: str) -> str:
    """A tag that cannot break the markup: no angle brackets, single spaces."""
    return " ".join(tag.replace("<", " ").replace(">", " ").split())


def format_objects(tags: Sequence[str], boxes: Sequence[Sequence[float]]) -> str:
    if len(tags) != len(boxes):
        raise ValueError(f"{len(tags)} tags for {len(boxes)} boxes")
    return "".join(f"<br><T>{clean_tag(t)}</T>{format_box(b)}</br>" for t, b in zip(tags, boxes))


def parse_objects(text: str) -> list[tuple[str, Box]]:
    """Every well-formed object of a spatial text: (tag, normalized xyxy)."""
    return [(m.group(1), from_coords([int(g) for g in m.groups()[1:]])) for m in _OBJECT.finditer(text)]


def find_boxes(text: str) -> list[Box]:
    """Every <Bbox>...</Box> in free text (a model's answer), in order; coordinates above 999 are clipped."""
    return [from_coords([min(COORD_MAX, int(g)) for g in m.groups()]) for m in _BOX.finditer(text)]
