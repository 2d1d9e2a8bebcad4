"""Captioning metrics as the Lyrics paper reports them (COCO Karpathy test, NoCaps, Flickr30K).

    scores = caption_scores({"391895": "a man riding a bike"}, {"391895": ["A man rides a bicycle.", ...]})
    scores.cider, scores.bleu4, scores.rouge_l            # fractions, as pycocoevalcap returns them
    scores.as_percent()                                    # {"CIDEr": 121.3, ...}: the tables' scale

This is the COCO caption evaluation (``pycocoevalcap``, the code behind ``COCOEvalCap``) run on
plain dictionaries: predictions and references are lower-cased, tokenized and stripped of
punctuation by its Stanford ``PTBTokenizer`` (Java), each side in its own call as ``COCOEvalCap``
does, and scored by its own ``Cider``, ``Bleu(4)``, ``Rouge`` and, on request, ``Meteor``. Nothing is
reimplemented; this module only checks the inputs and packs the results.

Scale: scores are fractions, as pycocoevalcap returns them; the paper's tables multiply every
metric by 100 (CIDEr 1.213 is the tables' 121.3), which ``CaptionScores.as_percent`` does.

What the numbers are:

* CIDEr is pycocoevalcap's ``Cider`` (the clipped, length-penalised variant that the COCO server
  calls CIDEr; often named CIDEr-D). Its IDF comes from the references of the images scored
  together, so a score belongs to the whole set: ``per_image_cider`` values are that set's per-image
  terms (their mean is ``cider``), not scores an image would get alone. With a single image every
  n-gram has IDF 0 and CIDEr is 0; score a whole split at once.
* BLEU-4 is the corpus-level BLEU of ``Bleu(4)`` (closest reference length), not a mean over images.
* ROUGE-L is the mean over images of ``Rouge``'s per-image F-score (beta 1.2, best reference).
* METEOR (``meteor=True``) starts METEOR 1.5 in Java and loads its paraphrase tables (about 17 s
  and 2 GB of heap), so it is off unless asked for. SPICE is not computed: it needs a Stanford
  CoreNLP download that pycocoevalcap fetches on first use.

Inputs: image ids are strings; every prediction needs references and every referenced image a
prediction (otherwise ``ValueError`` naming the ids). An empty prediction, or one that tokenizes to
nothing (only punctuation), is scored as the empty caption: it gets 0 from every metric and counts
in the means, as it does in ``COCOEvalCap``. Line breaks inside a caption become spaces before
tokenizing: the Java tokenizer also breaks lines at ``\\r``, ``\\v``, ``\\f``, U+2028 and U+2029, which
pycocoevalcap does not replace, and that would shift every later caption onto the wrong image.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from lyrics.stderr import stderr_caught

# Characters that end a line for str.splitlines, a superset of those Java's tokenizer breaks at.
_LINE_BREAKS = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_MAX_IDS_SHOWN = 10


@dataclass(frozen=True)
class CaptionScores:
    """Corpus scores as fractions (pycocoevalcap's scale); ``as_percent`` gives the tables' scale."""

    cider: float
    bleu4: float
    rouge_l: float
    meteor: float | None
    per_image_cider: dict[str, float] = field(repr=False)

    @property
    def num_images(self) -> int:
        return len(self.per_image_cider)

    def as_percent(self) -> dict[str, float]:
        """The metrics times 100, as the paper's tables print them; METEOR only when computed."""
        table = {"CIDEr": 100.0 * self.cider, "BLEU-4": 100.0 * self.bleu4, "ROUGE-L": 100.0 * self.rouge_l}
        if self.meteor is not None:
            table["METEOR"] = 100.0 * self.meteor
        return table


def _show(ids: Sequence[str]) -> str:
    shown = ", ".join(repr(i) for i in ids[:_MAX_IDS_SHOWN])
    more = len(ids) - _MAX_IDS_SHOWN
    return f"{shown}, ... ({more} more)" if more > 0 else shown


def _check_inputs(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> None:
    if not predictions and not references:
        raise ValueError("no captions to score: predictions and references are both empty")
    bad_keys = [k for k in list(predictions) + list(references) if not isinstance(k, str)]
    if bad_keys:
        raise TypeError(f"image ids must be strings; got {_show([repr(k) for k in bad_keys])}")
    missing_refs = [i for i in predictions if i not in references]
    missing_preds = [i for i in references if i not in predictions]
    if missing_refs or missing_preds:
        parts = []
        if missing_refs:
            parts.append(f"{len(missing_refs)} predicted image(s) without references: {_show(missing_refs)}")
        if missing_preds:
            parts.append(f"{len(missing_preds)} referenced image(s) without a prediction: {_show(missing_preds)}")
        raise ValueError("predictions and references must cover the same image ids; " + "; ".join(parts))
    bad_preds = [i for i, p in predictions.items() if not isinstance(p, str)]
    if bad_preds:
        raise TypeError(f"a prediction must be one string; not so for {_show(bad_preds)}")
    bad_refs = [
        i
        for i, refs in references.items()
        if isinstance(refs, str) or not isinstance(refs, Sequence) or not all(isinstance(r, str) for r in refs)
    ]
    if bad_refs:
        raise TypeError(f"references must be a sequence of strings per image (not one string); not so for {_show(bad_refs)}")
    no_refs = [i for i, refs in references.items() if len(refs) == 0]
    if no_refs:
        raise ValueError(f"{len(no_refs)} image(s) with an empty list of references: {_show(no_refs)}")


def _tokenize(captions: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """pycocoevalcap's PTB tokenization of ``{id: [caption, ...]}``, one Java call, order kept."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    prepared = {i: [{"caption": _LINE_BREAKS.sub(" ", c)} for c in caps] for i, caps in captions.items()}
    with stderr_caught() as java:  # Java reports "PTBTokenizer tokenized N tokens at ..." on every call
        tokenized = PTBTokenizer().tokenize(prepared)
    # The wrapper pairs output lines with ids by position; a lost or extra line would misalign them.
    lost = [i for i, caps in captions.items() if len(tokenized.get(i, ())) != len(caps)]
    if lost:
        raise RuntimeError(f"PTB tokenizer returned the wrong number of captions for {_show(lost)}; Java said: {java.text.strip()[-1000:]}")
    return {i: tokenized[i] for i in captions}


def caption_scores(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    meteor: bool = False,
) -> CaptionScores:
    """CIDEr, BLEU-4, ROUGE-L (and METEOR if ``meteor``) of one caption per image against its references.

    ``predictions`` maps image id to the generated caption, ``references`` image id to its
    ground-truth captions (COCO: 5 per image; NoCaps: 10; Flickr30K: 5). Both must hold the same ids.
    Needs ``java`` on the PATH.
    """
    _check_inputs(predictions, references)
    if shutil.which("java") is None:
        raise RuntimeError("captioning metrics need Java on the PATH (pycocoevalcap's PTB tokenizer and METEOR)")

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    ids = list(references)  # the scorers iterate over gts in this order
    gts = _tokenize({i: list(references[i]) for i in ids})
    res = _tokenize({i: [predictions[i]] for i in ids})
    if not any(ref.split() for refs in gts.values() for ref in refs):
        # Cider would fail on an empty document-frequency table (max() of nothing).
        raise ValueError("every reference caption is empty after tokenization; nothing to score against")

    cider, per_image = Cider().compute_score(gts, res)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge_l, _ = Rouge().compute_score(gts, res)
    meteor_score = None
    if meteor:
        from pycocoevalcap.meteor.meteor import Meteor

        scorer = Meteor()
        try:
            meteor_score, _ = scorer.compute_score(gts, res)
        finally:
            del scorer  # its __del__ closes the Java process
    return CaptionScores(
        cider=float(cider),
        bleu4=float(bleu[3]),
        rouge_l=float(rouge_l),
        meteor=None if meteor_score is None else float(meteor_score),
        per_image_cider={i: float(s) for i, s in zip(ids, per_image, strict=True)},
    )
