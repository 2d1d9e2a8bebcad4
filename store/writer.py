"""Writing a cache: one shard at a time, each committed atomically.

Layout of a cache root::

    manifest.json                 rebuilt from the shards' shard.json by ``finalize``
    shards/<name>/rows.parquet    one row per sample (``schema.ROW_SCHEMA``)
    shards/<name>/tensors.zarr/   Zarr v3 group, one array per tensor field (+ int8 scales)
    shards/<name>/shard.json      rows, skipped inputs, source
    shards/.tmp-<name>-<pid>-<r>/ a shard being written; never read, removed on the next open and by finalize

A shard is written under a temporary name and renamed into place on commit, so a crash leaves
either a whole shard or none; a restarted job skips committed shards and redoes the rest. Writers
may run in any process on any node that sees the cache root (the extract job's workers do).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from lyrics.store.codecs import SCALE_SUFFIX, StorageOptions, compressors, encode, select_top_q, stored_dtype
from lyrics.store.manifest import (
    MANIFEST_NAME,
    SHARD_META_NAME,
    CacheIdentity,
    Manifest,
    ShardRecord,
    Skip,
    read_manifest,
    write_json_atomic,
)
from lyrics.store.schema import ROW_COLUMNS, ROW_SCHEMA, CacheSchema

SHARDS_DIR = "shards"
ROWS_NAME = "rows.parquet"
TENSORS_NAME = "tensors.zarr"
TMP_PREFIX = ".tmp-"
_SHARD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class CacheMismatchError(ValueError):
    """The cache on disk was built differently from what the caller expects."""


class CacheIncompleteError(CacheMismatchError):
    """The cache's extraction has not finished: it cannot serve a consumer any more than a mismatched one."""


def _identity_mismatches(found: CacheIdentity, wanted: CacheIdentity) -> list[str]:
    found_json, wanted_json = found.to_json(), wanted.to_json()
    return [
        f"{key}: the cache has {json.dumps(found_json[key], sort_keys=True)}, "
        f"this job has {json.dumps(wanted_json[key], sort_keys=True)}"
        for key in wanted_json
        if found_json[key] != wanted_json[key]
    ]


def check_resumable(root: Path, identity: CacheIdentity) -> None:
    """Refuse to add to an existing cache built with other settings (reads only; creates nothing)."""
    if (root / MANIFEST_NAME).exists():
        problems = _identity_mismatches(read_manifest(root).identity, identity)
        if problems:
            raise CacheMismatchError(
                f"{root}: this cache was built with different settings, so it cannot be "
                "resumed; use another cache root or delete it.\n  " + "\n  ".join(problems)
            )


def committed_shards(root: Path) -> set[str]:
    """Names of the shards committed under a cache root (none when it does not exist yet)."""
    shards_dir = root / SHARDS_DIR
    if not shards_dir.is_dir():
        return set()
    return {p.name for p in shards_dir.iterdir() if (p / SHARD_META_NAME).is_file() and not p.name.startswith(".")}


class CacheWriter:
    """Opens (or resumes) a cache root for writing."""

    def __init__(self, root: str | Path, identity: CacheIdentity) -> None:
        self.root = Path(root)
        self.identity = identity
        self.shards_dir = self.root / SHARDS_DIR
        check_resumable(self.root, identity)
        self.shards_dir.mkdir(parents=True, exist_ok=True)
        if not (self.root / MANIFEST_NAME).exists():
            write_json_atomic(self.root / MANIFEST_NAME, Manifest(identity).to_json())
        self._remove_partials()  # shards whose writers died before their commit: redone

    def committed(self) -> set[str]:
        return committed_shards(self.root)

    def open_shard(self, name: str, source: str) -> ShardWriter:
        if not _SHARD_NAME.match(name):
            raise ValueError(f"shard name {name!r} must be letters, digits, '_', '-', '.' and not start with '.'")
        if (self.shards_dir / name).exists():
            raise FileExistsError(f"{self.shards_dir / name}: shard is already committed")
        return ShardWriter(self.shards_dir, name, source, self.identity)

    def committed_rows(self, columns: Sequence[str]) -> pa.Table:
        """Row columns of every committed shard, in shard order (for summaries before finalize)."""
        tables = [pq.read_table(self.shards_dir / name / ROWS_NAME, columns=list(columns)) for name in sorted(self.committed())]
        return pa.concat_tables(tables) if tables else ROW_SCHEMA.empty_table().select(list(columns))

    def _remove_partials(self) -> None:
        for partial in self.shards_dir.glob(TMP_PREFIX + "*"):
            shutil.rmtree(partial)

    def records(self) -> list[ShardRecord]:
        """Every committed shard's record, in name order."""
        return [read_shard_record(self.shards_dir / name) for name in sorted(self.committed())]

    def finalize(self, extra: Mapping[str, Any] | None = None) -> Manifest:
        """Rebuild the manifest from every committed shard and mark the cache complete; the
        temporary folders of writers killed during the run go (no writer is left by now)."""
        self._remove_partials()
        records = tuple(self.records())
        manifest = Manifest(self.identity, records, complete=True, extra=dict(extra or {}))
        write_json_atomic(self.root / MANIFEST_NAME, manifest.to_json())
        return manifest


def read_shard_record(folder: Path) -> ShardRecord:
    return ShardRecord.from_json(json.loads((folder / SHARD_META_NAME).read_text()))


class ShardWriter:
    """Accumulates one shard in a temporary folder; ``commit`` makes it visible atomically."""

    def __init__(self, shards_dir: Path, name: str, source: str, identity: CacheIdentity) -> None:
        self.name, self.source = name, source
        self.final = shards_dir / name
        self.tmp = shards_dir / f"{TMP_PREFIX}{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"  # one per writer, even in one process
        self.schema: CacheSchema = identity.schema
        self.storage: StorageOptions = identity.storage
        self.batches: list[pa.RecordBatch] = []
        self.skipped: list[Skip] = []
        self.rows = 0
        self.tmp.mkdir(parents=True)
        self.group = zarr.open_group(self.tmp / TENSORS_NAME, mode="w")
        self.arrays = self._create_arrays()

    def _create_arrays(self) -> dict[str, zarr.Array]:
        per_file = self.storage.samples_per_chunk_file
        arrays = {}
        for f in self.schema.tensors:
            specs = [(f.name, f.shape, stored_dtype(f, self.storage))]
            if f.kind == "float" and self.storage.dtype == "int8":
                specs.append((f.name + SCALE_SUFFIX, f.shape[:-1], "float32"))
            for name, shape, dtype in specs:
                arrays[name] = self.group.create_array(
                    name, shape=(0, *shape), dtype=dtype, chunks=(1, *shape), shards=(per_file, *shape), compressors=compressors(f, self.storage)
                )
        return arrays

    def add_batch(self, rows: Sequence[Mapping[str, Any]], tensors: Mapping[str, np.ndarray]) -> None:
        """Append B rows and their tensors (each field (B, *shape); top-Q fields also need their scores)."""
        batch = len(rows)
        for row in rows:
            if set(row) != set(ROW_COLUMNS):
                missing, extra = set(ROW_COLUMNS) - set(row), set(row) - set(ROW_COLUMNS)
                raise ValueError(f"row {row.get('id')!r}: missing columns {sorted(missing)}, unexpected {sorted(extra)}")
        encoded: dict[str, np.ndarray] = {}
        for f in self.schema.tensors:
            values = np.asarray(tensors[f.name])
            if f.select_by is not None and values.shape[1:2] > f.shape[:1]:
                values = select_top_q(values, np.asarray(tensors[f.select_by]), f.shape[0])
            if values.shape != (batch, *f.shape):
                raise ValueError(f"shard {self.name}: tensor {f.name!r} has shape {values.shape}, expected {(batch, *f.shape)}")
            encoded.update(encode(f, values, self.storage))
        self.batches.append(pa.RecordBatch.from_pylist(list(rows), schema=ROW_SCHEMA))
        for name, values in encoded.items():
            self.arrays[name].append(values, axis=0)
        self.rows += batch

    def skip(self, id: str, file: str, reason: str) -> None:
        self.skipped.append(Skip(id=id, file=file, reason=reason))

    def commit(self, inputs: int | None = None, last: bool = True) -> ShardRecord:
        """Make the shard visible; ``inputs`` (samples read from the source) must equal rows + skips.

        A shard that another writer committed meanwhile (a retried task of the same part) is kept
        and this copy dropped: both hold the same content, which depends on the input alone.
        """
        if inputs is not None and inputs != self.rows + len(self.skipped):
            raise ValueError(f"shard {self.name}: {inputs} inputs but {self.rows} rows + {len(self.skipped)} skips; nothing may vanish")
        table = pa.Table.from_batches(self.batches, schema=ROW_SCHEMA)
        pq.write_table(table, self.tmp / ROWS_NAME, compression="zstd")
        record = ShardRecord(self.name, self.source, self.rows, tuple(self.skipped), inputs, last)
        write_json_atomic(self.tmp / SHARD_META_NAME, record.to_json())
        try:
            os.rename(self.tmp, self.final)  # atomic on POSIX: the shard appears whole or not at all
        except OSError:  # ENOTEMPTY / EEXIST: committed by the other attempt
            if not (self.final / SHARD_META_NAME).is_file():
                raise
            self.abort()
            return read_shard_record(self.final)
        return record

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
