"""Reading a cache for training: a random-access Dataset, a cross-shard sampler, a padding collate.

File handles are opened lazily and per process, so each DataLoader worker (forked or spawned)
opens its own. Nothing is unpickled: rows come from Parquet, tensors from Zarr.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
import zarr
from torch.utils.data import Dataset, Sampler

from lyrics.store.codecs import SCALE_SUFFIX, dequantize_int8
from lyrics.store.manifest import Manifest, read_manifest
from lyrics.store.schema import SCHEMA_VERSION
from lyrics.store.writer import ROWS_NAME, SHARDS_DIR, TENSORS_NAME, CacheIncompleteError, CacheMismatchError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheExpectation:
    """What the consumer (a trainer, an evaluation) needs the cache to be.

    ``settings``: the extraction settings it would extract with now (``extraction`` and ``storage``
    as a manifest records them); a cache made with others is refused, naming each difference,
    unless ``accept_other_settings`` (then the differences are logged as a warning).
    """

    schema_version: int = SCHEMA_VERSION
    fingerprints: Mapping[str, str] | None = None
    tensor_shapes: Mapping[str, tuple[int, ...]] | None = None
    settings: Mapping[str, Mapping[str, Any]] | None = None
    accept_other_settings: bool = False

    def check(self, root: Path, manifest: Manifest) -> None:
        problems = self._fixed_problems(manifest)
        differences = self._setting_differences(manifest)
        if differences and self.accept_other_settings:
            log.warning("%s: accepted although extracted with other settings:\n  %s", root, "\n  ".join(differences))
        elif differences:
            problems += differences
            problems.append("(pass --accept-cache-settings to train on it knowingly)")
        if problems:
            raise CacheMismatchError(
                f"{root}: the cache does not match the model that wants to read it "
                "(re-extract with the matching profile or point at the right cache):\n  " + "\n  ".join(problems)
            )

    def _setting_differences(self, manifest: Manifest) -> list[str]:
        recorded = manifest.identity.to_json()
        found = _flatten({section: recorded.get(section, {}) for section in self.settings or {}})
        wanted = _flatten(dict(self.settings or {}))
        return [
            f"{key}: cache {json.dumps(found.get(key, '<absent>'))}, expected {json.dumps(wanted.get(key, '<absent>'))}"
            for key in sorted(set(found) | set(wanted))
            if found.get(key, "<absent>") != wanted.get(key, "<absent>")
        ]

    def _fixed_problems(self, manifest: Manifest) -> list[str]:
        problems = []
        if manifest.identity.schema.version != self.schema_version:
            problems.append(f"schema version: cache {manifest.identity.schema.version}, expected {self.schema_version}")
        found = manifest.identity.fingerprints
        for name, wanted in sorted((self.fingerprints or {}).items()):
            if found.get(name) != wanted:
                problems.append(f"fingerprint of {name}: cache {found.get(name, '<absent>')}, expected {wanted}")
        shapes = {f.name: f.shape for f in manifest.identity.schema.tensors}
        for name, wanted_shape in sorted((self.tensor_shapes or {}).items()):
            if shapes.get(name) != tuple(wanted_shape):
                problems.append(f"shape of {name}: cache {shapes.get(name, '<absent>')}, expected {tuple(wanted_shape)}")
        return problems


def _flatten(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}, so that a difference names the one setting that differs."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class _OpenShard:
    """One shard's handles, opened in the process that reads them."""

    def __init__(self, path: Path) -> None:
        self.rows = pq.read_table(path / ROWS_NAME)
        group = zarr.open_group(path / TENSORS_NAME, mode="r")
        self.arrays = {name: group[name] for name in group.array_keys()}


class CacheDataset(Dataset):
    """Random access by global index over every shard of a complete cache.

    Each item is a dict: the row columns (Python values) and one torch tensor per tensor field
    (float fields as float16, int8 fields dequantized to float16, masks as bool).
    """

    def __init__(self, root: str | Path, expect: CacheExpectation | None = None, fields: Sequence[str] | None = None) -> None:
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        if not self.manifest.complete:
            raise CacheIncompleteError(f"{self.root}: the cache is incomplete (its extraction has not finished); run the extract phase again to resume it")
        (expect or CacheExpectation()).check(self.root, self.manifest)
        schema_fields = self.manifest.identity.schema.tensors
        names = [f.name for f in schema_fields]
        unknown = set(fields or ()) - set(names)
        if unknown:
            raise KeyError(f"{self.root}: no tensor fields {sorted(unknown)}; the cache has {names}")
        self.fields = [f for f in schema_fields if fields is None or f.name in fields]
        self.int8 = self.manifest.identity.storage.dtype == "int8"
        self.shard_names = [s.name for s in self.manifest.shards]
        self.offsets = np.cumsum([0] + [s.rows for s in self.manifest.shards]).tolist()
        self._pid: int | None = None
        self._open: dict[int, _OpenShard] = {}

    def __len__(self) -> int:
        return self.offsets[-1]

    def locate(self, index: int) -> tuple[int, int]:
        """(shard number, row within the shard) of a global index."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a cache of {len(self)} rows")
        shard = bisect.bisect_right(self.offsets, index) - 1
        return shard, index - self.offsets[shard]

    def _shard(self, shard: int) -> _OpenShard:
        if self._pid != os.getpid():  # a new worker process: never share handles across a fork
            self._pid, self._open = os.getpid(), {}
        if shard not in self._open:
            self._open[shard] = _OpenShard(self.root / SHARDS_DIR / self.shard_names[shard])
        return self._open[shard]

    def __getitem__(self, index: int) -> dict[str, Any]:
        shard_no, row_no = self.locate(index)
        shard = self._shard(shard_no)
        item: dict[str, Any] = shard.rows.slice(row_no, 1).to_pylist()[0]
        for f in self.fields:
            values = shard.arrays[f.name][row_no]
            if f.kind == "float" and self.int8:
                values = dequantize_int8(values, shard.arrays[f.name + SCALE_SUFFIX][row_no]).astype(np.float16)
            item[f.name] = torch.from_numpy(np.ascontiguousarray(values))
        return item

    def rows(self, columns: Sequence[str] | None = None) -> pa.Table:
        """All rows (no tensors) as one Arrow table, in global index order."""
        tables = [pq.read_table(self.root / SHARDS_DIR / name / ROWS_NAME, columns=columns) for name in self.shard_names]
        return pa.concat_tables(tables)


class ShardShuffleSampler(Sampler[int]):
    """A seeded permutation over the global index space of all shards, split across DDP ranks.

    Every epoch draws a fresh permutation (``set_epoch``); rank r takes positions r, r + W, ...
    so the ranks are disjoint and together cover every row once. With ``pad=True`` the list is
    padded by wrapping around so every rank gets the same count (what DDP needs to stay in step).
    """

    def __init__(
        self,
        num_rows: int,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        pad: bool = False,
    ) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        self.world_size = world_size if world_size is not None else (dist.get_world_size() if distributed else 1)
        self.rank = rank if rank is not None else (dist.get_rank() if distributed else 0)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world size {self.world_size}")
        self.num_rows, self.shuffle, self.seed, self.pad = num_rows, shuffle, seed, pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_rows))
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.num_rows, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        order = self._order()
        if self.pad and order:
            total = -(-self.num_rows // self.world_size) * self.world_size
            order = (order * (total // len(order) + 1))[:total]
        return iter(order[self.rank :: self.world_size])

    def __len__(self) -> int:
        if self.pad:
            return -(-self.num_rows // self.world_size)
        return len(range(self.rank, self.num_rows, self.world_size))


def pad_collate(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack tensors; pad ragged boxes to (B, N_max, 4) with a ``box_mask``; keep other values as lists."""
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        else:
            out[key] = values
    if "boxes" in out:
        count = max((len(b) for b in out["boxes"]), default=0)
        boxes = torch.zeros(len(batch), count, 4)
        mask = torch.zeros(len(batch), count, dtype=torch.bool)
        for i, item_boxes in enumerate(out["boxes"]):
            if item_boxes:
                boxes[i, : len(item_boxes)] = torch.tensor(item_boxes, dtype=torch.float32)
                mask[i, : len(item_boxes)] = True
        out["boxes"], out["box_mask"] = boxes, mask
    return out

