"""REC accuracy: IoU by hand, the first box counts, pixel mapping, clipping, unparsable answers."""

import pytest

from lyrics.evaluate.rec import iou, predicted_box, rec_scores


def test_iou_by_hand():
    assert iou((1, 2, 5, 6), (1, 2, 5, 6)) == 1.0  # identical
    assert iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0  # disjoint
    assert iou((0, 0, 1, 1), (1, 0, 2, 1)) == 0.0  # sharing an edge only
    # Overlap 1x1 = 1; union 4 + 4 - 1 = 7.
    assert iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    # The left half of a 4x4 box: 8 / 16.
    assert iou((0, 0, 4, 4), (0, 0, 2, 4)) == 0.5
    # No area (reversed corners, a point): 0, never a division by zero.
    assert iou((2, 2, 1, 1), (0, 0, 3, 3)) == 0.0
    assert iou((1, 1, 1, 1), (1, 1, 1, 1)) == 0.0


def test_predicted_box_maps_back_by_width_and_height():
    # 999 -> 1.0 -> the full width 640 / height 480; 333 -> 333/999 = 1/3 of each.
    assert predicted_box("<Bbox>(0,0),(999,999)</Box>", (640, 480)) == (0.0, 0.0, 640.0, 480.0)
    x1, y1, x2, y2 = predicted_box("It is here: <Bbox>(333,333),(999,999)</Box>.", (600, 300))
    assert (x1, y1, x2, y2) == pytest.approx((200.0, 100.0, 600.0, 300.0))
    # The first box counts.
    assert predicted_box("<Bbox>(0,0),(999,999)</Box><Bbox>(0,0),(333,333)</Box>", (3, 3)) == (0, 0, 3, 3)
    assert predicted_box("no box", (10, 10)) is None
    assert predicted_box("", (10, 10)) is None


def test_rec_scores_by_hand():
    size = (1000, 500)
    left, right = (0.0, 0.0, 500.0, 250.0), (500.0, 0.0, 1000.0, 500.0)
    predictions = [
        # (0,0)-(499/999 * 1000, 499/999 * 500): IoU = (499/999)^2 * 1000*500 / (500*250) = 0.998 -> right.
        "<Bbox>(0,0),(499,499)</Box>",
        # The whole image: 500*250 / (1000*500) = 0.25 -> wrong.
        "<Bbox>(0,0),(999,999)</Box>",
        "I cannot find it.",  # no box: wrong, unparsable
        # 2997 is clipped to 999 -> (500/999 * 1000 = 500.5, 0, 1000, 500), inside the target:
        # IoU = (1000 - 500000/999) / 500 = 998/999 -> right.
        # (Unclipped, x2 would be 3000 and the IoU 499.5*500 / (2499.5*500) ~ 0.2: wrong.)
        "<Bbox>(500,0),(2997,999)</Box>",
        "",  # empty: wrong, unparsable
    ]
    targets = [left, left, left, right, right]
    result = rec_scores(predictions, targets, [size] * 5)
    assert result.per_item[0] == pytest.approx((499 / 999) ** 2 * 4)
    assert result.per_item[1] == pytest.approx(0.25)
    assert result.per_item[2] is None and result.per_item[4] is None
    assert result.per_item[3] == pytest.approx(998 / 999)
    assert (result.correct, result.total, result.unparsable) == (2, 5, 2)
    assert result.accuracy == pytest.approx(2 / 5)


def test_threshold_is_inclusive_and_inputs_are_checked():
    # The left half of the image against the whole image: IoU exactly 0.5 counts.
    result = rec_scores(["<Bbox>(0,0),(999,999)</Box>"], [(0, 0, 2, 4)], [(4, 4)])
    assert result.per_item == [0.5] and result.accuracy == 1.0
    assert rec_scores([], [], []).accuracy == 0.0
    with pytest.raises(ValueError, match="2 predictions, 1 targets, 1 sizes"):
        rec_scores(["a", "b"], [(0, 0, 1, 1)], [(1, 1)])


def test_an_answer_that_is_not_a_string_is_named():
    with pytest.raises(TypeError, match=r"1 prediction\(s\) are not strings \(index 1: NoneType None\)"):
        rec_scores(["<Bbox>(0,0),(999,999)</Box>", None], [(0, 0, 1, 1)] * 2, [(4, 4)] * 2)
