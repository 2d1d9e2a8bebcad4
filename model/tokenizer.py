"""The MQ-Former's text tokenizer: BERT's uncased WordPiece plus Lyrics' special tokens and spatial tags.

Added after the 30522 BERT entries, in this order, so the ids are stable:

- ``[DEC]`` = 30522: BLIP-2's decoder start token (its ``bos_token``), which keeps its trained row
  of a BLIP-2 checkpoint (30523 rows); ICG replaces ``[CLS]`` with it.
- ``[BOS]`` = 30523: the prefix of the spatial text (SPEC: ``[BOS] spatial_text [CLS] caption``).
- ``[MLM]`` = 30524: MSP replaces ``[BOS]`` with it.
- the spatial tags ``<br> </br> <T> </T> <Bbox> </Box>`` = 30525..30530: whole tokens, matched
  case-sensitively before lower-casing; not special, so decoding keeps them.

The model's word embeddings follow with ``model.resize_token_embeddings(len(tokenizer))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformers import AddedToken, BertTokenizer
from transformers.models.bert.tokenization_bert import load_vocab

from lyrics.packages import resolve_location
from lyrics.spatial_text import SPATIAL_TOKENS

SPECIAL_TOKENS = ("[DEC]", "[BOS]", "[MLM]")
BERT_VOCAB_SIZE = 30522


def vocab_dir(location: str, checkpoint: str | Path | None = None) -> Path:
    """The folder of ``vocab.txt``: ``package:<module>/<folder>``, or a path relative to the checkpoint's folder."""
    directory = resolve_location(location, Path(checkpoint).parent if checkpoint is not None else None, "vocabulary")
    if not (directory / "vocab.txt").is_file():
        raise FileNotFoundError(f"{directory}: no vocab.txt (the bert-base-uncased WordPiece vocabulary)")
    return directory


def build_tokenizer(directory: str | Path) -> BertTokenizer:
    """The uncased WordPiece tokenizer of ``directory/vocab.txt`` with the Lyrics tokens added."""
    vocab = load_vocab(Path(directory) / "vocab.txt")
    if len(vocab) != BERT_VOCAB_SIZE:
        raise ValueError(f"{directory}/vocab.txt has {len(vocab)} entries, not bert-base-uncased's {BERT_VOCAB_SIZE}")
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True, truncation_side="right")
    specials = [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in SPATIAL_TOKENS])
    return tokenizer


@dataclass(frozen=True)
class TokenIds:
    pad: int
    cls: int
    sep: int
    mask: int
    dec: int
    bos: int
    mlm: int

    @classmethod
    def of(cls, tokenizer: BertTokenizer) -> TokenIds:
        ids = tokenizer.convert_tokens_to_ids
        return cls(
            pad=tokenizer.pad_token_id,
            cls=tokenizer.cls_token_id,
            sep=tokenizer.sep_token_id,
            mask=tokenizer.mask_token_id,
            dec=ids("[DEC]"),
            bos=ids("[BOS]"),
            mlm=ids("[MLM]"),
        )
