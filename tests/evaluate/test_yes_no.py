"""POPE: the official answer reading and the metrics, worked out by hand."""

import pytest

from lyrics.evaluate.yes_no import pope_answer, pope_scores


@pytest.mark.parametrize(
    ("text", "read"),
    [
        ("Yes, there is a cat.", "yes"),
        ("No, there is not.", "no"),
        ("There is no dog in the image.", "no"),
        ("no", "no"),
        ("Yes. There is no dog.", "yes"),  # only the first sentence counts
        ("No.", "no"),
        ("", "yes"),  # anything without No / no / not reads yes, as in the official script
        ("I don't know", "yes"),
        ("Not sure", "yes"),  # "Not" is not in the official word list
        ("NO", "yes"),
    ],
)
def test_pope_answer_follows_the_official_script(text: str, read: str):
    assert pope_answer(text) == read


def test_pope_scores_by_hand():
    predictions = ["Yes", "Yes, a dog.", "No.", "No", "There is no car.", "Yes", "", "I can't tell"]
    labels = ["yes", "yes", "yes", "no", "no", "no", "no", "Yes"]
    # Read: yes yes no no no yes yes yes -> TP 3 (1, 2, 8), FN 1 (3), TN 2 (4, 5), FP 2 (6, 7).
    result = pope_scores(predictions, labels)
    assert (result.tp, result.fp, result.tn, result.fn) == (3, 2, 2, 1)
    assert result.accuracy == pytest.approx(5 / 8)  # (3 + 2) / 8
    assert result.precision == pytest.approx(3 / 5)  # 3 / (3 + 2)
    assert result.recall == pytest.approx(3 / 4)  # 3 / (3 + 1)
    assert result.f1 == pytest.approx(2 / 3)  # 2 * 0.6 * 0.75 / 1.35 = 0.9 / 1.35
    assert result.yes_ratio == pytest.approx(5 / 8)  # 5 answers read yes


def test_degenerate_cases_give_zero_instead_of_dividing_by_zero():
    result = pope_scores(["no", "no"], ["yes", "no"])
    assert (result.precision, result.recall, result.f1, result.yes_ratio) == (0.0, 0.0, 0.0, 0.0)
    assert result.accuracy == 0.5
    assert pope_scores([], []).accuracy == 0.0
    with pytest.raises(ValueError, match="'yes' or 'no'"):
        pope_scores(["yes"], ["maybe"])
    with pytest.raises(ValueError, match="1 predictions for 2 labels"):
        pope_scores(["yes"], ["yes", "no"])


def test_an_answer_that_is_not_a_string_is_named():
    with pytest.raises(TypeError, match=r"prediction\(s\) are not strings \(index 1: int 1\)"):
        pope_scores(["yes", 1], ["yes", "no"])
