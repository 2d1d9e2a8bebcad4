"""Stage-1 batches from the extraction cache: the checked datasets, a resumable sample stream, the collate.

The stream is endless (one seeded permutation per epoch over every cached row, split across ranks),
and training is counted in steps. A run resumed at step s starts the stream at sample
``s * accumulate * micro_batch`` of its rank, so it sees exactly the batches an uninterrupted run
would have seen next.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import BatchSampler, Dataset, Sampler, Subset
from transformers import PreTrainedTokenizerBase

from lyrics.config import PipelinesConfig, ReadingConfig
from lyrics.extract.cache_location import STAGES, cache_schema, default_cache_root, recorded_settings
from lyrics.extract.checkpoints import component_spec
from lyrics.store import CacheDataset, CacheExpectation, ConcatCaches, ShardShuffleSampler, ThreadedBatches
from lyrics.train.objectives import ImageInputs, PretrainBatch
from lyrics.train.pretrain_text import TextSettings, encode_pretrain_text

log = logging.getLogger(__name__)

PRETRAIN_FIELDS = ("vit_tokens", "gdino_tokens", "sam_tokens", "sam_mask")


def cache_expectation(config: PipelinesConfig, profile: str, accept_other_settings: bool = False) -> CacheExpectation:
    """The schema and shapes of the profile's cache, the fingerprints of the frozen models it was made with,
    and the extraction settings it was made with (others are refused unless ``accept_other_settings``).

    A checkpoint that is absent on this machine (training away from the extraction cluster) cannot
    be fingerprinted; it is left out of the check, with a warning.
    """
    prints = {}
    for name in STAGES:
        spec = component_spec(config, profile, name)
        if spec.checkpoint.exists():
            prints[name] = spec.fingerprint()
        else:
            log.warning("%s: checkpoint absent here, the cache's %s fingerprint is not checked", spec.checkpoint, name)
    shapes = {f.name: f.shape for f in cache_schema(config, profile).tensors if f.name in PRETRAIN_FIELDS}
    return CacheExpectation(
        fingerprints=prints, tensor_shapes=shapes, settings=recorded_settings(config, profile), accept_other_settings=accept_other_settings
    )


def cache_roots(config: PipelinesConfig, profile: str, datasets: Sequence[str]) -> list[Path]:
    return [default_cache_root(config, name, profile) for name in datasets]


def open_caches(roots: Sequence[Path], expect: CacheExpectation) -> Dataset:
    """Every row with a caption from the given caches, as one dataset (a refused cache raises naming itself)."""
    parts = []
    for root in roots:
        dataset = CacheDataset(root, expect, fields=PRETRAIN_FIELDS)
        captions = dataset.rows(["caption"]).column("caption").to_pylist()
        keep = [i for i, caption in enumerate(captions) if caption]
        if len(keep) < len(captions):
            log.info("%s: %d of %d rows have no caption and are left out of stage 1", root, len(captions) - len(keep), len(captions))
        parts.append(Subset(dataset, keep))
    return ConcatCaches(parts)


class SampleStream(Sampler[int]):
    """Endless per-rank indices: epoch after epoch of ``ShardShuffleSampler`` (padded, so ranks stay in step)."""

    def __init__(self, num_rows: int, seed: int, rank: int, world_size: int, start: int = 0, order: ReadingConfig = ReadingConfig()) -> None:
        if num_rows < 1:
            raise ValueError("the cache has no rows to train on")
        self.epoch_sampler = ShardShuffleSampler(
            num_rows, shuffle=True, seed=seed, rank=rank, world_size=world_size, pad=True, block_rows=order.block_rows, window_blocks=order.window_blocks
        )
        self.start = start  # samples of this rank already consumed

    def __iter__(self) -> Iterator[int]:
        per_epoch = len(self.epoch_sampler)
        first_epoch, offset = divmod(self.start, per_epoch)
        for epoch in itertools.count(first_epoch):
            self.epoch_sampler.set_epoch(epoch)
            yield from itertools.islice(self.epoch_sampler, offset, None)
            offset = 0


@dataclass
class PretrainCollate:
    tokenizer: PreTrainedTokenizerBase
    text: TextSettings

    def __call__(self, items: Sequence[dict[str, Any]]) -> PretrainBatch:
        text = encode_pretrain_text(self.tokenizer, [i["spatial_text"] for i in items], [i["caption"] for i in items], self.text)
        return PretrainBatch(ImageInputs(*image_tensors(items)), text)


def image_tensors(items: Sequence[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(vit_tokens, refiner_tokens, refiner_mask) of cached rows: CLIP tokens; Grounding-DINO then SAM-HQ tokens."""

    def stack(name: str) -> torch.Tensor:
        return torch.stack([torch.as_tensor(item[name]) for item in items])

    gdino = stack("gdino_tokens").float()
    refiner = torch.cat([gdino, stack("sam_tokens").float()], dim=1)
    # Every stored Grounding-DINO query is real; SAM-HQ objects are padded to max_objects.
    mask = torch.cat([torch.ones(gdino.shape[:2], dtype=torch.bool), stack("sam_mask").bool()], dim=1)
    return stack("vit_tokens").float(), refiner, mask


class StreamData(L.LightningDataModule):
    """A dataset as an endless, resumable, seeded stream of micro-batches (see ``SampleStream``), read
    and collated by ``reading.threads`` threads of the training process (``ThreadedBatches``)."""

    def __init__(self, dataset: Dataset, collate: Callable[[list], Any], micro_batch: int, reading: ReadingConfig, seed: int) -> None:
        super().__init__()
        self.dataset, self.collate = dataset, collate
        self.micro_batch, self.reading, self.seed = micro_batch, reading, seed

    def train_dataloader(self) -> ThreadedBatches:
        trainer = self.trainer
        # Called after a checkpoint's loops are restored: global_step is where the run resumes.
        consumed = trainer.global_step * trainer.accumulate_grad_batches * self.micro_batch
        return self.loader(consumed, trainer.global_rank, trainer.world_size)

    def loader(self, start: int = 0, rank: int = 0, world_size: int = 1) -> ThreadedBatches:
        """Rank ``rank``'s batches from its ``start``-th sample on."""
        stream = SampleStream(len(self.dataset), self.seed, rank, world_size, start=start, order=self.reading)
        return ThreadedBatches(self.dataset, BatchSampler(stream, self.micro_batch, drop_last=False), self.collate, threads=self.reading.threads)
