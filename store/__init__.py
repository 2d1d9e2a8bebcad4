"""The feature cache of SPEC section 3.3: Zarr v3 tensors + Parquet rows + a JSON manifest."""

from lyrics.store.codecs import StorageOptions
from lyrics.store.manifest import CacheIdentity, Manifest, ShardRecord, Skip, read_manifest
from lyrics.store.loader import ThreadedBatches
from lyrics.store.reader import WORKER_START, CacheDataset, CacheExpectation, ConcatCaches, pad_collate
from lyrics.store.sampler import ShardShuffleSampler
from lyrics.store.schema import ROW_COLUMNS, SCHEMA_VERSION, CacheSchema, TensorField, lyrics_schema, sample_id
from lyrics.store.writer import CacheIncompleteError, CacheMismatchError, CacheWriter, ShardWriter, check_resumable, committed_shards

__all__ = [
    "ROW_COLUMNS",
    "SCHEMA_VERSION",
    "WORKER_START",
    "CacheDataset",
    "CacheExpectation",
    "CacheIdentity",
    "CacheIncompleteError",
    "CacheMismatchError",
    "CacheSchema",
    "ConcatCaches",
    "CacheWriter",
    "Manifest",
    "ShardRecord",
    "ShardShuffleSampler",
    "ShardWriter",
    "Skip",
    "StorageOptions",
    "TensorField",
    "ThreadedBatches",
    "check_resumable",
    "committed_shards",
    "lyrics_schema",
    "read_manifest",
    "sample_id",
]
