"""The feature cache of SPEC section 3.3: Zarr v3 tensors + Parquet rows + a JSON manifest."""

from lyrics.store.codecs import StorageOptions
from lyrics.store.manifest import CacheIdentity, Manifest, ShardRecord, Skip, read_manifest
from lyrics.store.reader import CacheDataset, CacheExpectation, ShardShuffleSampler, pad_collate
from lyrics.store.schema import ROW_COLUMNS, SCHEMA_VERSION, CacheSchema, TensorField, lyrics_schema, sample_id
from lyrics.store.writer import CacheIncompleteError, CacheMismatchError, CacheWriter, ShardWriter, check_resumable, committed_shards

__all__ = [
    "ROW_COLUMNS",
    "SCHEMA_VERSION",
    "CacheDataset",
    "CacheExpectation",
    "CacheIdentity",
    "CacheIncompleteError",
    "CacheMismatchError",
    "CacheSchema",
    "CacheWriter",
    "Manifest",
    "ShardRecord",
    "ShardShuffleSampler",
    "ShardWriter",
    "Skip",
    "StorageOptions",
    "TensorField",
    "check_resumable",
    "committed_shards",
    "lyrics_schema",
    "read_manifest",
    "sample_id",
]
