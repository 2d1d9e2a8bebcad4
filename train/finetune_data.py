"""Stage-2 batches: instruction examples joined to their image's cache row, as LVLM inputs.

Each registered instruction set (``instructions:`` in pipelines.yaml) is a JSONL file whose
examples name their image by file stem; the cache of the set's data set gives every row's key
(``image_key`` of its ``source``). Examples whose image has no row stop the run, naming the
images. Text-only examples (LLaVA's) are left out: every stage-2 example has soft visual tokens.

A sample becomes inputs the same way in training, evaluation and chat (``SampleEncoder``):

- the MQ-Former reads ``[BOS] spatial_text`` (semantic-aware extraction), whole objects up to
  ``max_spatial_tokens``;
- the LLM prompt carries the first ``max_prompt_objects`` objects of the spatial text right after
  the image slot (the refiner writes them best first);
- the conversation is rendered with the LLM's chat template; labels only on the responses.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from lyrics.config import ConfigError, PipelinesConfig
from lyrics.data.instruction_templates import IMAGE_TOKEN
from lyrics.data.instructions import Instruction, image_key, read_jsonl, require_images
from lyrics.extract.cache_location import default_cache_root
from lyrics.model.lvlm import ImageFeatures, PromptSettings
from lyrics.model.tokenizer import TokenIds
from lyrics.store import CacheDataset, CacheExpectation, ConcatCaches
from lyrics.train.cache_data import PRETRAIN_FIELDS, image_tensors
from lyrics.train.finetune_text import IGNORE, ChatTokens, encode_conversation, encode_prompt
from lyrics.train.pretrain_text import spatial_tokens

log = logging.getLogger(__name__)

_OBJECT = re.compile(r"<br>.*?</br>", re.S)


@dataclass
class FinetuneBatch:
    image: ImageFeatures
    input_ids: torch.Tensor  # (B, L) right-padded for training, left-padded for generation
    attention_mask: torch.Tensor  # (B, L)
    image_positions: torch.Tensor  # (B, L) bool
    labels: torch.Tensor  # (B, L) IGNORE except response tokens


class InstructionDataset(Dataset):
    """The examples of one instruction set, each with its image's cached features and spatial text."""

    def __init__(self, examples: Sequence[Instruction], cache: CacheDataset) -> None:
        self.examples = list(examples)
        self.cache = cache
        first = row_index(cache)
        require_images(self.examples, first, str(cache.root))
        self.rows = [first[example.image] for example in self.examples if example.image is not None]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        items = self.cache.__getitems__([self.rows[i] for i in indices])
        for item, index in zip(items, indices):
            item["turns"] = self.examples[index].turns
        return items


def row_index(cache: CacheDataset) -> dict[str, int]:
    """Image key -> the first cache row of that image (the join of instructions and benchmarks with the cache)."""
    first: dict[str, int] = {}
    for index, source in enumerate(cache.rows(["source"]).column("source").to_pylist()):
        first.setdefault(image_key(json.loads(source)), index)
    return first


def open_instruction_sets(config: PipelinesConfig, profile: str, names: Sequence[str], expect: CacheExpectation) -> Dataset:
    """Every image example of the named sets, joined to the profile's caches (refusals name the file or cache)."""
    parts = []
    for name in names:
        entry = config.instruction_set(name)
        path = config.path(entry.instructions)
        if not path.is_file():
            made = f" (made by: {entry.produced_by})" if entry.produced_by else ""
            raise ConfigError(f"{path}: instruction set {name!r} not found{made}")
        examples = read_jsonl(path)
        with_image = [example for example in examples if example.image is not None]
        if len(with_image) < len(examples):
            log.info("%s: %d text-only examples left out of stage 2", path, len(examples) - len(with_image))
        cache = CacheDataset(default_cache_root(config, entry.images, profile), expect, fields=PRETRAIN_FIELDS)
        parts.append(InstructionDataset(with_image, cache))
    return ConcatCaches(parts)


@dataclass
class SampleEncoder:
    """Cached samples + conversations -> ``FinetuneBatch``; shared by training, evaluation and chat."""

    llm_tokenizer: PreTrainedTokenizerBase
    mq_tokenizer: PreTrainedTokenizerBase
    settings: PromptSettings
    num_visual_tokens: int

    def training_batch(self, items: Sequence[dict[str, Any]]) -> FinetuneBatch:
        """Teacher-forced inputs of items with ``turns``; right-padded."""
        return self._batch(items, [self._conversation(item) for item in items], left=False)

    def prompt_batch(self, items: Sequence[dict[str, Any]], histories: Sequence[Sequence[tuple[str, str]]], questions: Sequence[str]) -> FinetuneBatch:
        """Generation inputs: each item's history and new question (its first turn holds ``<Image>``); left-padded."""
        tokens = []
        for item, history, question in zip(items, histories, questions, strict=True):
            turns = self._with_objects([*history, (question, "")], self._objects(item["spatial_text"]))
            tokens.append(encode_prompt(self.llm_tokenizer, turns[:-1], turns[-1][0], self.num_visual_tokens))
        return self._batch(items, tokens, left=True)

    def __call__(self, items: Sequence[dict[str, Any]]) -> FinetuneBatch:
        return self.training_batch(items)

    def _conversation(self, item: dict[str, Any]) -> ChatTokens:
        """The example's tokens with as many prompt objects as leave its first answer whole in max_text_tokens."""
        objects = self._objects(item["spatial_text"])
        for keep in range(len(objects), -1, -1):
            tokens = encode_conversation(self.llm_tokenizer, self._with_objects(item["turns"], objects[:keep]),
                                         self.num_visual_tokens, self.settings.max_text_tokens)  # fmt: skip
            if not tokens.truncated:
                break
        return tokens  # without objects and still too long: the first answer is cut

    def _objects(self, spatial_text: str | None) -> list[str]:
        if not (self.settings.spatial_text_in_prompt and spatial_text):
            return []
        return _OBJECT.findall(spatial_text)[: self.settings.max_prompt_objects]

    @staticmethod
    def _with_objects(turns: Sequence[tuple[str, str]], objects: Sequence[str]) -> list[tuple[str, str]]:
        turns = [tuple(turn) for turn in turns]
        if objects:
            human, assistant = turns[0]
            turns[0] = (human.replace(IMAGE_TOKEN, f"{IMAGE_TOKEN}{''.join(objects)}\n", 1), assistant)
        return turns

    def _batch(self, items: Sequence[dict[str, Any]], tokens: Sequence[ChatTokens], left: bool) -> FinetuneBatch:
        length = max(len(t.input_ids) for t in tokens)
        pad = self.llm_tokenizer.pad_token_id  # set by load_llm where the folder has none; padded places are masked

        def padded(t: torch.Tensor, value: int | bool) -> torch.Tensor:
            extra = length - len(t)
            return F.pad(t, (extra, 0) if left else (0, extra), value=value)

        return FinetuneBatch(
            image=self._image(items),
            input_ids=torch.stack([padded(t.input_ids, pad) for t in tokens]),
            attention_mask=torch.stack([padded(torch.ones_like(t.input_ids), 0) for t in tokens]),
            image_positions=torch.stack([padded(t.image_positions, False) for t in tokens]),
            labels=torch.stack([padded(t.labels, IGNORE) for t in tokens]),
        )

    def _image(self, items: Sequence[dict[str, Any]]) -> ImageFeatures:
        vit, refiner, mask = image_tensors(items)
        if not self.settings.semantic_aware:
            return ImageFeatures(vit, refiner, mask)
        bos = TokenIds.of(self.mq_tokenizer).bos
        rows = [spatial_tokens(self.mq_tokenizer, bos, item["spatial_text"] or "", self.settings.max_spatial_tokens)[0] for item in items]
        ids = torch.full((len(rows), max(map(len, rows))), TokenIds.of(self.mq_tokenizer).pad, dtype=torch.long)
        for row, tokens in enumerate(rows):
            ids[row, : len(tokens)] = torch.tensor(tokens)
        return ImageFeatures(vit, refiner, mask, ids, torch.tensor([len(t) for t in rows]))
