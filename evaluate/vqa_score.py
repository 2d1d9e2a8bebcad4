"""The official VQA accuracy (VQAv2 ``vqaEval.py``, GT-Vision-Lab/VQA) and exact match for GQA / OCR-VQA.

The VQAv2 / OK-VQA / TextVQA numbers that Lyrics is compared on (Qwen-VL, Shikra, LLaVA) come from this
script, so its answer normalization is reproduced to the letter, quirks included, tables as data:

- punctuation: for each char of ``PUNCT``, if it touches a space anywhere in the text, or the text has a
  digit-comma-digit anywhere, every occurrence is deleted, otherwise it becomes a space; then every
  period not followed by a digit is deleted (the official ``(?!<=\\d)`` is a typo for a lookbehind and
  checks nothing, and ``re.UNICODE`` is passed as the ``count`` argument, so at most 32 are deleted);
- digits and articles: lowercase, split on whitespace, number words to digits (``MANUAL_MAP``),
  articles dropped, then ``CONTRACTIONS`` word by word.

Accuracy of one question with n human answers (10 in VQAv2): the mean over the n leave-one-out
subsets of min(#matches among the other n-1 / 3, 1). Scores here are fractions in [0, 1] (the
official script prints percentages: multiply by 100).

Two conventions (``VQA_CONVENTIONS``):

- ``official`` (the default): ``vqaEval.py`` to the letter. Both sides are normalized only when the
  human answers disagree; when they are unanimous the prediction is compared after whitespace
  cleaning alone, so "Yes" scores 0 against ten "yes". The paper's VQAv2 numbers come from this code
  (the evaluation server runs it).
- ``lmms-eval``: lmms-eval's ``vqav2`` task, which normalizes the prediction and every human answer
  always, so "Yes" scores 1 there.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from lyrics.evaluate.metric_inputs import require_strings

VQAConvention = Literal["official", "lmms-eval"]
VQA_CONVENTIONS: tuple[VQAConvention, ...] = ("official", "lmms-eval")

CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's",
    "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've",
    "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all",
    "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've",
    "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
MANUAL_MAP: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES: tuple[str, ...] = ("a", "an", "the")
PUNCT: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)
# Verbatim from the official script, typo included (see the module docstring).
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
# The official call is ``periodStrip.sub("", outText, re.UNICODE)``: the flag lands in ``count``.
_PERIOD_STRIP_COUNT = int(re.UNICODE)


def process_punctuation(text: str) -> str:
    """The official ``processPunctuation`` (see the module docstring)."""
    out = text
    has_digit_comma = COMMA_STRIP.search(text) is not None
    for p in PUNCT:
        if (p + " " in text or " " + p in text) or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def process_digit_article(text: str) -> str:
    """The official ``processDigitArticle``: lowercase, number words -> digits, no articles, contractions."""
    words = [MANUAL_MAP.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def clean_whitespace(text: str) -> str:
    """What the official script does to every answer first: newline and tab -> space, strip."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_answer(text: str) -> str:
    """The full official normalization of one answer (whitespace, punctuation, digits and articles)."""
    return process_digit_article(process_punctuation(clean_whitespace(text)))


def vqa_accuracy(prediction: str, human_answers: Sequence[str], *, convention: VQAConvention = "official") -> float:
    """One question's VQA accuracy in [0, 1]: mean over leave-one-out subsets of min(matches / 3, 1),
    normalized by the ``convention`` (see the module docstring)."""
    if convention not in VQA_CONVENTIONS:
        raise ValueError(f"unknown VQA convention {convention!r}; one of {', '.join(VQA_CONVENTIONS)}")
    if not human_answers:
        raise ValueError("a VQA question needs at least one human answer")
    pred = clean_whitespace(prediction)
    gts = [clean_whitespace(a) for a in human_answers]
    if convention == "lmms-eval" or len(set(gts)) > 1:
        pred = process_digit_article(process_punctuation(pred))
        gts = [process_digit_article(process_punctuation(a)) for a in gts]
    matches = sum(g == pred for g in gts)
    # Leaving out a matching answer leaves matches - 1 among the others, any other leaves matches.
    total = sum(min(1.0, (matches - (g == pred)) / 3) for g in gts)
    return total / len(gts)


@dataclass(frozen=True)
class VQAResult:
    accuracy: float  # mean of per_item, a fraction in [0, 1]
    per_item: list[float]


def vqa_scores(
    predictions: Sequence[str], answers: Sequence[Sequence[str]], *, convention: VQAConvention = "official"
) -> VQAResult:
    """The VQA accuracy of every question (``answers[i]``: question i's human answers) and their mean."""
    _check_lengths(predictions, answers)
    require_strings(predictions, "prediction")
    for index, human in enumerate(answers):
        require_strings(human, f"human answer of question {index}")
    per_item = [vqa_accuracy(p, a, convention=convention) for p, a in zip(predictions, answers)]
    return VQAResult(accuracy=_mean(per_item), per_item=per_item)


@dataclass(frozen=True)
class ExactMatchResult:
    accuracy: float  # fraction in [0, 1]
    correct: int
    total: int
    per_item: list[bool]


def exact_match(predictions: Sequence[str], answers: Sequence[str]) -> ExactMatchResult:
    """GQA / OCR-VQA accuracy: one reference answer, equal after the official VQA normalization of both."""
    _check_lengths(predictions, answers)
    require_strings(predictions, "prediction")
    require_strings(answers, "reference answer")
    per_item = [normalize_answer(p) == normalize_answer(a) for p, a in zip(predictions, answers)]
    correct = sum(per_item)
    return ExactMatchResult(accuracy=_mean(per_item), correct=correct, total=len(per_item), per_item=per_item)


def _check_lengths(predictions: Sequence[object], references: Sequence[object]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")


def _mean(values: Sequence[float]) -> float:
    """Mean of values; 0.0 for none (an empty benchmark scores nothing rather than failing)."""
    return sum(values) / len(values) if values else 0.0
