"""ScienceQA-style choice parsing and accuracy."""

import pytest

from lyrics.evaluate.multiple_choice import choice_accuracy, format_options, parse_choice

OPTIONS = ["cat", "dog", "bird"]


@pytest.mark.parametrize(
    ("prediction", "letter"),
    [
        ("A", "A"),
        (" B\n", "B"),
        ("(B)", "B"),
        ("(C) bird", "C"),
        ("C.", "C"),
        ("B) dog", "B"),
        ("A: cat", "A"),
        ("A cat", "A"),  # a bare letter followed by that option's text
        ("The answer is B.", "B"),
        ("Birds fly, so the answer is (C).", "C"),
        ("dog", "B"),  # the exact text of an option
        ("Dog.", "B"),
        ("A dog", None),  # "A" reads as the article here, and "a dog" is no option's text
        ("D", None),  # not one of the 3 options
        ("The answer is D.", None),
        ("", None),
        ("I think so", None),
        ("a", None),  # letters are uppercase
    ],
)
def test_parse_choice(prediction: str, letter: str | None):
    assert parse_choice(prediction, OPTIONS) == letter


def test_choice_accuracy_by_hand():
    predictions = ["A", "The answer is C", "dog", "maybe", "(A)"]
    answers = ["A", "B", "B", "A", "C"]
    result = choice_accuracy(predictions, answers, [OPTIONS] * 5)
    # Read: A (right), C (wrong), B (right), nothing (wrong, unparsable), A (wrong) -> 2 / 5.
    assert result.predicted == ["A", "C", "B", None, "A"]
    assert result.per_item == [True, False, True, False, False]
    assert (result.correct, result.total, result.unparsable) == (2, 5, 1)
    assert result.accuracy == pytest.approx(0.4)
    assert choice_accuracy([], [], []).accuracy == 0.0
    with pytest.raises(ValueError):
        choice_accuracy(["A"], ["A", "B"], [OPTIONS])


def test_format_options():
    assert format_options(OPTIONS) == "(A) cat (B) dog (C) bird"


def test_an_answer_that_is_not_a_string_is_named():
    with pytest.raises(TypeError, match=r"prediction\(s\) are not strings \(index 0: NoneType None\)"):
        choice_accuracy([None], ["A"], [["cat", "dog"]])
