"""The REC grid: layout size, box colours where the boxes are, the scored IoU in the titles, size checks."""

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from lyrics.data.instruction_templates import REC, TEMPLATES
from lyrics.evaluate.benchmarks import REC_PROMPT
from lyrics.evaluate.rec import rec_scores
from lyrics.evaluate.rec_grid import DPI, PANEL_HEIGHT, PANEL_WIDTH, draw_rec_grid, expression_of, rec_grid_figure
from lyrics.spatial_text import format_box

# Solid colours that are neither green nor red, so box pixels stand out.
IMAGES = {
    "blue": Image.new("RGB", (200, 100), (30, 60, 200)),
    "grey": Image.new("RGB", (120, 160), (128, 128, 128)),
    "dark": Image.new("L", (100, 100), 40),  # grey-level: must still show grey, not a colour map
}


def _record(image: str, expression: str, prediction: str, box: list[float]) -> dict:
    width, height = IMAGES[image].size
    return {
        "id": image,
        "image": image,
        "prompt": REC_PROMPT.format(expression=expression),
        "prediction": prediction,
        "target": {"box": box, "size": [width, height]},
    }


RIGHT = _record("blue", "the left box", "It is " + format_box([20 / 200, 10 / 100, 120 / 200, 80 / 100]), [20.0, 10.0, 120.0, 80.0])
WRONG = _record("grey", "the top one", format_box([0.6, 0.55, 0.9, 0.9]) + " or " + format_box([0.05, 0.8, 0.3, 0.95]), [10.0, 10.0, 60.0, 70.0])
NO_BOX = _record("dark", "a thing", "I cannot find it.", [30.0, 20.0, 80.0, 90.0])
RECORDS = [RIGHT, WRONG, NO_BOX]
WRONG_PIXELS = (0.6 * 120, 0.55 * 160, 0.9 * 120, 0.9 * 160)  # the first box, not the second


def _edges(box, steps: int = 20) -> list[tuple[float, float]]:
    """Points along the four edges, corners left out (where the other box or the image border may be)."""
    x1, y1, x2, y2 = box
    ts = np.linspace(0.15, 0.85, steps)
    return [p for t in ts for p in ((x1 + t * (x2 - x1), y1), (x1 + t * (x2 - x1), y2), (x1, y1 + t * (y2 - y1)), (x2, y1 + t * (y2 - y1)))]


def _is_green(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return (g > 170) & (r < 90) & (b < 90)


def _is_red(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return (r > 170) & (g < 90) & (b < 90)


def _near(rgb: tuple[int, int, int]):
    return lambda p: (np.abs(p.astype(int) - rgb) <= 2).all(axis=-1)


def _fraction(pixels: np.ndarray, axis, points, test) -> float:
    """Share of data points whose 3x3 neighbourhood in the PNG has a pixel passing ``test``."""
    height = pixels.shape[0]
    hits = 0
    for x, y in axis.transData.transform(points):  # display pixels, origin at the bottom left
        col, row = int(round(x)), int(round(height - y))
        hits += bool(test(pixels[row - 1 : row + 2, col - 1 : col + 2]).any())
    return hits / len(points)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = draw_rec_grid(RECORDS, IMAGES, tmp_path_factory.mktemp("grid") / "rec.png", columns=2)
    figure = rec_grid_figure(RECORDS, IMAGES, columns=2)  # the same layout, for its axes transforms
    figure.canvas.draw()
    yield out, np.asarray(Image.open(out).convert("RGB")), figure
    plt.close(figure)


def test_png_size_is_the_grid_layout(rendered):
    out, pixels, _ = rendered
    assert out.is_file()
    # 3 panels in 2 columns -> 2 rows.
    assert Image.open(out).size == (round(2 * PANEL_WIDTH * DPI), round(2 * PANEL_HEIGHT * DPI))
    assert pixels.shape[:2] == (round(2 * PANEL_HEIGHT * DPI), round(2 * PANEL_WIDTH * DPI))


def test_boxes_are_drawn_in_their_colours_where_they_are(rendered):
    _, pixels, figure = rendered
    right, wrong, no_box = figure.axes[:3]
    # Reference boxes: solid green all round (the right answer's red dashes sit on it: not checked there).
    assert _fraction(pixels, wrong, _edges(WRONG["target"]["box"]), _is_green) > 0.95
    assert _fraction(pixels, no_box, _edges(NO_BOX["target"]["box"]), _is_green) > 0.95
    # The wrong answer's first box: red, dashed (gaps), never green; its second box is not drawn.
    assert 0.5 < _fraction(pixels, wrong, _edges(WRONG_PIXELS), _is_red)
    assert _fraction(pixels, wrong, _edges(WRONG_PIXELS), _is_green) == 0
    assert _fraction(pixels, wrong, [(21.0, 128.0), (6.0, 140.0)], _is_red) == 0  # on the second box's edges
    # The right answer's box lies on the reference: red dashes and green between them.
    assert _fraction(pixels, right, _edges(RIGHT["target"]["box"]), lambda p: _is_red(p) | _is_green(p)) > 0.95
    assert _fraction(pixels, right, _edges(RIGHT["target"]["box"]), _is_red) > 0.5
    # Inside the boxes the image shows through, not a box colour; a grey-level image stays grey.
    assert _fraction(pixels, right, [(70.0, 45.0)], _near((30, 60, 200))) == 1
    assert _fraction(pixels, no_box, [(55.0, 55.0)], _near((40, 40, 40))) == 1
    # No answer box: no red anywhere in that panel.
    (x0, y0), (x1, y1) = no_box.get_window_extent().get_points()
    height = pixels.shape[0]
    assert not _is_red(pixels[int(height - y1) : int(height - y0), int(x0) : int(x1)]).any()


def test_titles_hold_the_expression_and_the_scored_iou(rendered):
    _, _, figure = rendered
    scored = rec_scores([r["prediction"] for r in RECORDS], [r["target"]["box"] for r in RECORDS], [tuple(r["target"]["size"]) for r in RECORDS])
    titles = [axis.get_title() for axis in figure.axes[:3]]
    assert scored.per_item[0] > 0.9 and scored.per_item[1] == 0 and scored.per_item[2] is None
    assert titles == [f"the left box\nIoU {scored.per_item[0]:.2f}", "the top one\nIoU 0.00", "a thing\nno box"]
    legend = figure.legends[0]
    assert [t.get_text() for t in legend.get_texts()][0] == "reference box"


def test_limit_and_missing_images(tmp_path):
    figure = rec_grid_figure([_record("blue", "x", "", [0, 0, 1, 1]) | {"image": "absent"}] + RECORDS, IMAGES, columns=4, limit=2)
    titles = [axis.get_title() for axis in figure.axes]
    assert titles[:2] == [f"the left box\nIoU {rec_scores([RIGHT['prediction']], [RIGHT['target']['box']], [(200, 100)]).per_item[0]:.2f}", "the top one\nIoU 0.00"]
    assert titles[2:] == ["", ""] and len(figure.axes) == 4  # one row of four
    plt.close(figure)
    with pytest.raises(ValueError, match="none of the 1 records"):
        draw_rec_grid([RIGHT], {"other": IMAGES["blue"]}, tmp_path / "empty.png")


def test_size_mismatch_names_the_image(tmp_path):
    wrong_image = dict(IMAGES, grey=Image.new("RGB", (160, 120)))  # transposed: a different image
    with pytest.raises(ValueError, match="'grey'"):
        draw_rec_grid(RECORDS, wrong_image, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_expression_from_any_rec_template_or_the_prompt():
    for template in TEMPLATES[REC]:
        assert expression_of(template.format(expression="man in red, left")) == "man in red, left"
    assert expression_of("<Image>What is this?") == "<Image>What is this?"
