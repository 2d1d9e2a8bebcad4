"""The official VQA normalization and leave-one-out accuracy, with values worked out by hand."""

import pytest

from lyrics.evaluate.vqa_score import exact_match, normalize_answer, vqa_accuracy, vqa_scores


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("Two", "2"),  # number word -> digit (after lowercasing)
        ("None", "0"),
        ("a dog", "dog"),  # articles dropped
        ("The dog's bowl", "dog's bowl"),  # "'" is not official punctuation
        ("dont", "don't"),  # contractions, word by word
        ("Wheres it", "where's it"),
        ("yes.", "yes"),  # a period not followed by a digit goes
        ("3.5", "3.5"),  # one followed by a digit stays
        ("1,000", "1000"),  # digit-comma-digit: every punctuation char is deleted, not spaced
        ("red, white", "red white"),  # "," touches a space: deleted
        ("well-known", "well known"),  # "-" touches no space: becomes a space
        ("yes!", "yes"),  # "!" -> " ", then whitespace is collapsed by the split
        ("Two dogs\n", "2 dogs"),  # newline -> space, strip
        ("\tcat\t", "cat"),
        ("", ""),
    ],
)
def test_normalization_matches_the_official_script(raw: str, normalized: str):
    assert normalize_answer(raw) == normalized


def test_period_strip_deletes_at_most_32_periods_like_the_official_call():
    # The official periodStrip.sub("", text, re.UNICODE) passes re.UNICODE (32) as count: 40 - 32 = 8 stay.
    assert normalize_answer("." * 40) == "." * 8


def test_leave_one_out_accuracy_by_hand():
    def answers(matches: int) -> list[str]:
        return ["cat"] * matches + ["dog"] * (10 - matches)

    # 2 matches: leaving out one of the 2 leaves 1 -> 1/3 (twice); any of the other 8 leaves 2 -> 2/3.
    # (2 * 1/3 + 8 * 2/3) / 10 = 18/3 / 10 = 0.6.
    assert vqa_accuracy("cat", answers(2)) == pytest.approx(0.6)
    # 1 match: 0 (once), 1/3 (9 times) -> 3/10 = 0.3.
    assert vqa_accuracy("cat", answers(1)) == pytest.approx(0.3)
    # 3 matches: 2/3 (3 times), 3/3 capped at 1 (7 times) -> (2 + 7) / 10 = 0.9.
    assert vqa_accuracy("cat", answers(3)) == pytest.approx(0.9)
    # 4 matches: at least 3 others always match -> 1.
    assert vqa_accuracy("cat", answers(4)) == 1.0
    assert vqa_accuracy("bird", answers(4)) == 0.0
    # The humans disagree, so both sides are normalized: "A Cat." -> "cat", "the cat" -> "cat".
    assert vqa_accuracy("A Cat.", ["the cat"] * 2 + ["dog"] * 8) == pytest.approx(0.6)


def test_unanimous_answers_are_compared_raw_by_the_official_code():
    # vqaEval.py normalizes only when the humans disagree: "Yes" against ten "yes" scores 0 there;
    # lmms-eval normalizes every answer, so it scores 1.
    assert vqa_accuracy("Yes", ["yes"] * 10) == 0.0
    assert vqa_accuracy("Yes", ["yes"] * 10, convention="official") == 0.0
    assert vqa_accuracy("Yes", ["yes"] * 10, convention="lmms-eval") == 1.0
    assert vqa_accuracy(" yes\n", ["yes"] * 10) == 1.0  # whitespace is cleaned in both
    # With disagreement both conventions normalize: "Two" -> "2", 2 matches -> 0.6.
    two = ["2", "2"] + ["3"] * 8
    for convention in ("official", "lmms-eval"):
        assert vqa_accuracy("Two", two, convention=convention) == pytest.approx(0.6)
    result = vqa_scores(["Yes", "yes"], [["yes"] * 10] * 2)
    assert result.per_item == [0.0, 1.0]
    assert vqa_scores(["Yes", "yes"], [["yes"] * 10] * 2, convention="lmms-eval").accuracy == 1.0
    with pytest.raises(ValueError, match="unknown VQA convention 'lmms'; one of official, lmms-eval"):
        vqa_accuracy("yes", ["yes"], convention="lmms")


def test_answers_that_are_not_strings_are_named():
    with pytest.raises(TypeError, match=r"1 prediction\(s\) are not strings \(index 1: NoneType None\)"):
        vqa_scores(["cat", None], [["cat"], ["dog"]])
    with pytest.raises(TypeError, match=r"human answer of question 0.*index 2: int 3"):
        vqa_scores(["cat"], [["cat", "dog", 3]])
    with pytest.raises(TypeError, match=r"prediction\(s\) are not strings \(index 0: NoneType None\)"):
        exact_match([None], ["cat"])


def test_vqa_scores_mean_and_checks():
    result = vqa_scores(["cat", "cat", "bird"], [["cat"] * 10, ["cat"] * 2 + ["dog"] * 8, ["cat"] * 10])
    assert result.per_item == pytest.approx([1.0, 0.6, 0.0])
    assert result.accuracy == pytest.approx(1.6 / 3)
    assert vqa_scores([], []).accuracy == 0.0
    with pytest.raises(ValueError, match="at least one human answer"):
        vqa_accuracy("cat", [])
    with pytest.raises(ValueError, match="1 predictions for 2 references"):
        vqa_scores(["cat"], [["cat"], ["dog"]])


def test_exact_match_normalizes_both_sides():
    # "Two" = "2"; "a red car." = "red car"; "blue" != "green"; "" != "yes".
    result = exact_match(["Two", "a red car.", "blue", ""], ["2", "Red car", "green", "yes"])
    assert result.per_item == [True, True, False, False]
    assert (result.correct, result.total) == (2, 4)
    assert result.accuracy == 0.5
