"""Stage-1 text: ``[BOS] spatial_text [CLS] caption [SEP]`` as token ids, with each object's span.

The spatial text is tokenized object by object (``<br>...</br>``), so every token knows the
object it belongs to: MSP masks whole objects through ``object_ids``. Objects that do not fit in
``max_spatial_tokens`` are dropped whole from the end (the refiner writes them best first); the
caption is truncated to ``max_caption_tokens`` with its ``[SEP]`` kept.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from lyrics.model.tokenizer import TokenIds

_OBJECT = re.compile(r"<br>.*?</br>", re.S)


@dataclass(frozen=True)
class TextSettings:
    max_spatial_tokens: int  # [BOS] included
    max_caption_tokens: int  # [CLS] and [SEP] included
    spatial_representation: bool = True  # False: the text is "[CLS] caption [SEP]" only (Table 4 ablation)

    def __post_init__(self) -> None:
        if self.max_spatial_tokens < 1 or self.max_caption_tokens < 2:
            raise ValueError(f"need max_spatial_tokens >= 1 ([BOS]) and max_caption_tokens >= 2 ([CLS], [SEP]); got {self}")


@dataclass
class PretrainText:
    """A padded batch; positions past ``spatial_lengths + caption_lengths`` are padding."""

    input_ids: torch.Tensor  # (B, Lt)
    spatial_lengths: torch.Tensor  # (B,) [BOS] + spatial tokens; 0 without spatial representation
    caption_lengths: torch.Tensor  # (B,) [CLS] + caption tokens + [SEP]
    object_ids: torch.Tensor  # (B, Lt) 1.. for the tokens of the sample's first, second, ... object; 0 elsewhere

    def select(self, index: torch.Tensor) -> PretrainText:
        return PretrainText(self.input_ids[index], self.spatial_lengths[index], self.caption_lengths[index], self.object_ids[index])

    @staticmethod
    def concat(parts: Sequence[PretrainText], pad_id: int) -> PretrainText:
        """The parts' rows one after another, padded to the longest text."""
        length = max(p.input_ids.shape[1] for p in parts)

        def padded(t: torch.Tensor, value: int) -> torch.Tensor:
            return F.pad(t, (0, length - t.shape[1]), value=value)

        return PretrainText(
            torch.cat([padded(p.input_ids, pad_id) for p in parts]),
            torch.cat([p.spatial_lengths for p in parts]),
            torch.cat([p.caption_lengths for p in parts]),
            torch.cat([padded(p.object_ids, 0) for p in parts]),
        )


def spatial_tokens(tokenizer: PreTrainedTokenizerBase, bos: int, spatial_text: str, max_tokens: int) -> tuple[list[int], list[int]]:
    """``[BOS]`` and the whole objects that fit in ``max_tokens``, with each token's object number (0 for [BOS])."""
    tokens, objects = [bos], [0]
    pieces = _OBJECT.findall(spatial_text)
    encoded = tokenizer(pieces, add_special_tokens=False)["input_ids"] if pieces else []
    for number, piece in enumerate(encoded, start=1):
        if len(tokens) + len(piece) > max_tokens:
            break
        tokens += piece
        objects += [number] * len(piece)
    return tokens, objects


def encode_pretrain_text(
    tokenizer: PreTrainedTokenizerBase, spatial_texts: Sequence[str], captions: Sequence[str | None], settings: TextSettings
) -> PretrainText:
    ids = TokenIds.of(tokenizer)
    spatial_rows: list[list[int]] = []
    object_rows: list[list[int]] = []
    caption_rows: list[list[int]] = []
    for spatial_text, caption in zip(spatial_texts, captions, strict=True):
        tokens: list[int] = []
        objects: list[int] = []
        if settings.spatial_representation:
            tokens, objects = spatial_tokens(tokenizer, ids.bos, spatial_text, settings.max_spatial_tokens)
        words = tokenizer(caption or "", add_special_tokens=False)["input_ids"][: settings.max_caption_tokens - 2]
        spatial_rows.append(tokens)
        object_rows.append(objects)
        caption_rows.append([ids.cls, *words, ids.sep])
    length = max(len(s) + len(c) for s, c in zip(spatial_rows, caption_rows))
    input_ids = torch.full((len(spatial_rows), length), ids.pad, dtype=torch.long)
    object_ids = torch.zeros((len(spatial_rows), length), dtype=torch.long)
    for row, (spatial, objects, caption) in enumerate(zip(spatial_rows, object_rows, caption_rows)):
        input_ids[row, : len(spatial) + len(caption)] = torch.tensor(spatial + caption)
        object_ids[row, : len(objects)] = torch.tensor(objects, dtype=torch.long)
    spatial_lengths = torch.tensor([len(s) for s in spatial_rows])
    caption_lengths = torch.tensor([len(c) for c in caption_rows])
    return PretrainText(input_ids, spatial_lengths, caption_lengths, object_ids)
