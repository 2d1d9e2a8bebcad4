"""Captioning metrics: the numbers are pycocoevalcap's own, and its edge cases do not crash."""

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from lyrics.evaluate.captioning import CaptionScores, caption_scores

REFERENCES = {
    "101": [
        "A man riding a bike down a city street.",
        "A cyclist rides along a busy road.",
        "A person on a bicycle in traffic.",
        "Man rides his bike past parked cars.",
        "A man on a bike on the street.",
    ],
    "102": ["Two cats sleeping on a red couch.", "A pair of cats napping on a sofa."],
    "103": [
        "A plate of pasta with tomato sauce.",
        "Spaghetti with red sauce on a white plate.",
        "A dish of noodles and marinara.",
    ],
    "104": [
        "A dog catching a frisbee in a park.",
        "A brown dog jumps for a flying disc.",
        "Dog leaping to catch a frisbee on the grass.",
        "A dog playing frisbee outdoors.",
    ],
    "105": ["A red stop sign at an intersection.", "Stop sign on a street corner."],
    "106": [
        "People skiing down a snowy mountain.",
        "Skiers on a snow covered slope.",
        "A group of people skiing.",
    ],
}
PREDICTIONS = {
    "101": "A man riding a bicycle down the street.",
    "102": "Two cats are sleeping on a couch!",
    "103": "A plate of spaghetti with sauce.",
    "104": "A dog jumping to catch a frisbee.",
    "105": "A stop sign on the corner of a street.",
    "106": "A man standing in the snow.",
}


def _pycocoevalcap(predictions, references):
    """The reference computation: pycocoevalcap's tokenizer and scorers called directly."""
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": c} for c in refs] for i, refs in references.items()})
    res = tokenizer.tokenize({i: [{"caption": predictions[i]}] for i in references})
    cider, per_image = Cider().compute_score(gts, res)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge_l, _ = Rouge().compute_score(gts, res)
    return cider, per_image, bleu[3], rouge_l


@pytest.fixture(scope="module")
def scores() -> CaptionScores:
    return caption_scores(PREDICTIONS, REFERENCES)


def test_equal_to_pycocoevalcap_run_directly(scores):
    cider, per_image, bleu4, rouge_l = _pycocoevalcap(PREDICTIONS, REFERENCES)
    assert scores.cider == float(cider)
    assert scores.bleu4 == bleu4
    assert scores.rouge_l == float(rouge_l)
    assert scores.meteor is None
    assert scores.per_image_cider == {i: float(s) for i, s in zip(REFERENCES, per_image)}
    assert scores.num_images == 6
    # Sanity on the scale: fractions, CIDEr of good captions around 1, tables multiply by 100.
    assert 0.3 < scores.cider < 3.0 and 0.0 < scores.bleu4 < 1.0 and 0.0 < scores.rouge_l < 1.0
    assert scores.as_percent() == pytest.approx(
        {"CIDEr": 100 * scores.cider, "BLEU-4": 100 * scores.bleu4, "ROUGE-L": 100 * scores.rouge_l}
    )


def test_perfect_match_gives_bleu4_and_rouge_l_of_one():
    references = {"1": ["A man riding a red bicycle down the street."], "2": ["Two small cats sleeping on an old couch."]}
    predictions = {"1": "a man riding a red bicycle down the street", "2": "Two small cats sleeping on an old couch"}
    scores = caption_scores(predictions, references)
    assert scores.bleu4 == pytest.approx(1.0, abs=1e-6)
    assert scores.rouge_l == pytest.approx(1.0)


def test_cider_of_a_caption_identical_to_its_references_beats_an_unrelated_one():
    references = {
        "a": ["a dog runs across the grass"] * 3,
        "b": ["a bowl of soup on a table", "soup in a white bowl"],
        "c": ["a train at a station platform", "a red train waiting at the station"],
    }
    identical = caption_scores({"a": "A dog runs across the grass.", "b": "", "c": ""}, references)
    unrelated = caption_scores({"a": "Two planes flying above an ocean.", "b": "", "c": ""}, references)
    assert identical.per_image_cider["a"] > unrelated.per_image_cider["a"]
    assert identical.per_image_cider["a"] > 1.0
    assert unrelated.per_image_cider["a"] == 0.0
    assert identical.cider > unrelated.cider


def test_empty_and_punctuation_only_predictions_score_zero_without_crashing():
    predictions = dict(PREDICTIONS, **{"102": "", "105": " ... !"})
    scores = caption_scores(predictions, REFERENCES)
    assert scores.per_image_cider["102"] == 0.0 and scores.per_image_cider["105"] == 0.0
    # Same as pycocoevalcap given the empty caption (the tokenizer returns "" for both).
    cider, _, bleu4, rouge_l = _pycocoevalcap(predictions, REFERENCES)
    assert (scores.cider, scores.bleu4, scores.rouge_l) == (float(cider), bleu4, float(rouge_l))
    assert scores.cider < caption_scores(PREDICTIONS, REFERENCES).cider
    every_empty = caption_scores({i: "" for i in REFERENCES}, REFERENCES)
    assert (every_empty.cider, every_empty.bleu4, every_empty.rouge_l) == (0.0, 0.0, 0.0)


def test_line_breaks_inside_a_caption_do_not_shift_captions_between_images():
    # Java's tokenizer breaks lines at \r and U+2028 too; unguarded, "102" would get "101"'s tail.
    predictions = dict(PREDICTIONS, **{"101": "A man riding a bicycle\rdown the street.", "103": "A plate of\u2028spaghetti with sauce."})
    assert caption_scores(predictions, REFERENCES).per_image_cider == caption_scores(PREDICTIONS, REFERENCES).per_image_cider


def test_mismatched_ids_are_refused_with_their_names():
    with pytest.raises(ValueError, match=r"without references: '999'"):
        caption_scores(dict(PREDICTIONS, **{"999": "a cat"}), REFERENCES)
    references = dict(REFERENCES)
    references["777"] = ["a boat"]
    with pytest.raises(ValueError, match=r"without a prediction: '777'"):
        caption_scores(PREDICTIONS, references)
    with pytest.raises(ValueError, match=r"same image ids"):
        caption_scores({"1": "x"}, {"2": ["x"]})
    with pytest.raises(ValueError, match=r"empty list of references: '101'"):
        caption_scores(PREDICTIONS, dict(REFERENCES, **{"101": []}))
    with pytest.raises(TypeError, match="strings"):
        caption_scores({101: "x"}, {101: ["x"]})
    with pytest.raises(TypeError, match="not one string"):
        caption_scores({"1": "a cat"}, {"1": "a cat"})
    with pytest.raises(ValueError, match="empty"):
        caption_scores({}, {})


def test_meteor_when_asked():
    scores = caption_scores(dict(PREDICTIONS, **{"102": ""}), REFERENCES, meteor=True)
    assert scores.meteor is not None and 0.0 < scores.meteor < 1.0
    assert "METEOR" in scores.as_percent()
    assert scores.cider == caption_scores(dict(PREDICTIONS, **{"102": ""}), REFERENCES).cider
