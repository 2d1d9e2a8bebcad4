"""MME: the official answer reading, accuracy, accuracy+ and the category sums, by hand."""

import pytest

from lyrics.evaluate.mme import COGNITION, PERCEPTION, mme_answer, mme_scores


@pytest.mark.parametrize(
    ("prediction", "read"),
    [
        ("Yes", "yes"),
        ("yes\n", "yes"),
        ("No, it is not.", "no"),
        ("Not sure", "no"),  # "no" in the first 4 characters
        ("nope", "no"),
        ("Yes, no doubt", "yes"),  # "yes" is looked for first
        ("The answer is yes", "other"),
        ("2", "other"),
        ("", "other"),
    ],
)
def test_mme_answer_follows_the_official_parse(prediction: str, read: str):
    assert mme_answer(prediction) == read


def test_mme_scores_by_hand():
    records = [
        # existence: image 1 both right; image 2 one right, one wrong.
        ("existence", 1, "Yes", "yes"),
        ("existence", 1, "No", "no"),
        ("existence", 2, "Yes.", "Yes"),
        ("existence", 2, "Yes", "no"),
        # count: image 1: "2" reads other (wrong), "No" right.
        ("count", 1, "2", "yes"),
        ("count", 1, "No", "no"),
        # code_reasoning: image 7 both right.
        ("code_reasoning", 7, "yes", "yes"),
        ("code_reasoning", 7, "no", "no"),
    ]
    result = mme_scores(records)
    existence, count, code = (result.subtasks[k] for k in ("existence", "count", "code_reasoning"))
    # existence: acc 3/4 = 0.75, acc+ 1/2 = 0.5 -> 75 + 50 = 125.
    assert (existence.accuracy, existence.accuracy_plus, existence.score) == (0.75, 0.5, 125.0)
    assert (existence.questions, existence.images, existence.other) == (4, 2, 0)
    # count: acc 1/2, acc+ 0/1 -> 50; one "other".
    assert (count.accuracy, count.accuracy_plus, count.score, count.other) == (0.5, 0.0, 50.0, 1)
    # code_reasoning: 100 + 100 = 200.
    assert code.score == 200.0
    assert result.perception == pytest.approx(125 + 50)
    assert result.cognition == pytest.approx(200)
    assert result.missing == [n for n in (*PERCEPTION, *COGNITION) if n not in ("existence", "count", "code_reasoning")]


def test_subtask_names_match_case_insensitively_and_answers_are_checked():
    # "ocr" is MME's "OCR": one image, both right -> 200 to perception.
    result = mme_scores([("ocr", "a.jpg", "yes", "yes"), ("ocr", "a.jpg", "no", "no")])
    assert result.perception == 200.0 and result.cognition == 0.0
    assert "OCR" not in result.missing
    # A subtask outside MME is scored but counted in neither sum.
    result = mme_scores([("mine", 1, "yes", "yes")])
    assert result.subtasks["mine"].score == 200.0 and result.perception == 0.0
    with pytest.raises(ValueError, match="'yes' or 'no'"):
        mme_scores([("count", 1, "yes", "2")])


def test_an_answer_that_is_not_a_string_is_named():
    with pytest.raises(TypeError, match=r"prediction\(s\) are not strings \(item 'count/7': NoneType None\)"):
        mme_scores([("existence", 3, "Yes", "Yes"), ("count", 7, None, "No")])
