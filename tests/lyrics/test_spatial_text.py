"""The spatial text of SPEC 3.2: exact format, round trip, box finding where the grammar puts boxes."""

import pytest

from lyrics.spatial_text import COORD_MAX, find_boxes, format_box, format_objects, parse_objects, to_coords


def test_format_is_exactly_the_paper_markup():
    text = format_objects(["cat", "red cup"], [(0.0, 0.1, 0.5, 1.0), (0.25, 0.25, 0.75, 0.5)])
    assert text == "<br><T>cat</T><Bbox>(0,100),(500,999)</Box></br><br><T>red cup</T><Bbox>(250,250),(749,500)</Box></br>"


def test_round_trip_moves_a_coordinate_by_at_most_half_a_step():
    boxes = [(i / 97, (i * 7 % 97) / 97, min(1.0, i / 97 + 0.3), 1.0) for i in range(97)]
    tags = [f"tag {i}" for i in range(97)]
    parsed = parse_objects(format_objects(tags, boxes))
    assert [t for t, _ in parsed] == tags
    for (_, got), want in zip(parsed, boxes):
        assert max(abs(g - w) for g, w in zip(got, want)) <= 0.5 / COORD_MAX + 1e-12
    # Formatting what was parsed is a fixed point.
    assert format_objects(tags, [b for _, b in parsed]) == format_objects(tags, boxes)


def test_coordinates_are_clipped_to_the_range_and_tags_cannot_break_markup():
    assert to_coords((-0.2, 0.0, 1.0, 1.7)) == (0, 0, 999, 999)
    assert format_objects(["a<b>  c"], [(0, 0, 1, 1)]) == "<br><T>a b c</T><Bbox>(0,0),(999,999)</Box></br>"
    with pytest.raises(ValueError, match="2 tags for 1 boxes"):
        format_objects(["a", "b"], [(0, 0, 1, 1)])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_coordinate_that_is_not_a_number_is_a_clear_error(bad):
    with pytest.raises(ValueError, match=r"box \(0\.1, .*\) has a coordinate that is not a finite number"):
        format_box((0.1, bad, 0.3, 0.4))
    with pytest.raises(ValueError, match="not a finite number"):
        format_objects(["cat"], [(bad, 0, 1, 1)])


def test_find_boxes_reads_boxes_only_inside_bbox_tags():
    answer = "The dog is at <Bbox>( 12, 34 ),(560,780) </Box> and <Bbox>(1,2),(3000,4)</Box>, not at (5,6),(7,8)."
    boxes = find_boxes(answer)
    assert len(boxes) == 2  # the bare pair in running text is not a box
    assert boxes[0] == pytest.approx((12 / 999, 34 / 999, 560 / 999, 780 / 999))
    assert boxes[1][2] == 1.0  # 3000 clipped to 999
    # A pair inside a tag's text is the tag's words, not its box.
    tagged = "<br><T>sign reading (1,2),(3,4)</T><Bbox>(100,200),(300,400)</Box></br>"
    assert find_boxes(tagged) == [pytest.approx((100 / 999, 200 / 999, 300 / 999, 400 / 999))]
    assert find_boxes("(1,2),(3,4)") == find_boxes("<Bbox>(1,2),(3,4)") == find_boxes("no box here") == []
    assert find_boxes(format_box((0.1, 0.2, 0.3, 0.4))) == [pytest.approx((100 / 999, 200 / 999, 300 / 999, 400 / 999))]
