"""Zero-copy rows of the cache's uncompressed Zarr v3 arrays, memory-mapped.

The cache stores each sample as its own inner chunk of a sharded array (``writer.py``). When a
chunk's only codec is ``bytes`` (no compression, the default for features), its bytes in the
shard file *are* the sample's array, at the offset the shard index gives (Zarr v3 sharding
codec: ``n_chunks x (offset, nbytes)`` as little-endian uint64 plus a crc32c, at the end of the
file). Mapping the file and viewing those bytes reads a row without a copy: the batch's stack is
the only one. tensorstore copies each chunk twice (read, then into its result), which made it
0.76x a hand-written ``.npy`` memmap reader (``python bench/store.py``).

Arrays in any other layout (compressed, index at the start, big-endian) return None from
``mapped_array``, and the reader reads them with tensorstore.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

_NO_CHUNK = np.iinfo(np.uint64).max  # an inner chunk that was never written
_INDEX_CHECKSUM_BYTES = 4  # the crc32c after the index


class MappedArray:
    """Rows of one sharded, uncompressed Zarr v3 array whose inner chunks are single rows."""

    def __init__(self, folder: Path, dtype: np.dtype, shape: tuple[int, ...], rows_per_shard: int, fill_value: float | bool) -> None:
        self.folder, self.dtype, self.shape, self.rows_per_shard = folder, dtype, shape, rows_per_shard
        self.row_shape = shape[1:]
        # Zarr stores no chunk that holds only the fill value (the padded tokens of an image without objects).
        self.fill = np.full(self.row_shape, fill_value, dtype=dtype)
        self._shards: dict[int, tuple[np.memmap, np.ndarray] | None] = {}

    def _shard(self, number: int) -> tuple[np.memmap, np.ndarray] | None:
        if number not in self._shards:
            path = self.folder / "c" / str(number) / "/".join("0" * len(self.row_shape))
            if not path.is_file():  # no row of it differs from the fill value: Zarr wrote no file
                self._shards[number] = None
                return None
            data = np.memmap(path, dtype=np.uint8, mode="c")  # copy-on-write: writable views for torch, the file stays as it is
            index_bytes = self.rows_per_shard * 16
            index = data[len(data) - _INDEX_CHECKSUM_BYTES - index_bytes : len(data) - _INDEX_CHECKSUM_BYTES].view("<u8").reshape(-1, 2)
            self._shards[number] = data, index
        return self._shards[number]

    def row(self, row: int) -> np.ndarray:
        """The row as a view of the mapped file (no copy); the fill value where Zarr stored no chunk."""
        shard = self._shard(row // self.rows_per_shard)
        if shard is None:
            return self.fill.copy()
        data, index = shard
        offset, nbytes = index[row % self.rows_per_shard]
        if offset == _NO_CHUNK:
            return self.fill.copy()
        expected = math.prod(self.row_shape) * self.dtype.itemsize
        if nbytes != expected:
            raise ValueError(f"{self.folder}: row {row} holds {nbytes} bytes, expected {expected}")
        return data[offset : offset + nbytes].view(self.dtype).reshape(self.row_shape)


def mapped_array(folder: Path) -> MappedArray | None:
    """A ``MappedArray`` of the array at ``folder``, or None when its layout needs decoding."""
    meta = json.loads((folder / "zarr.json").read_text())
    codecs = meta.get("codecs", [])
    if len(codecs) != 1 or codecs[0]["name"] != "sharding_indexed" or meta["chunk_key_encoding"] != {"name": "default", "configuration": {"separator": "/"}}:
        return None
    sharding = codecs[0]["configuration"]
    little = {"name": "bytes", "configuration": {"endian": "little"}}
    inner_is_raw = sharding["codecs"] in ([little], [{"name": "bytes"}])
    index_is_standard = sharding["index_codecs"] == [little, {"name": "crc32c"}] and sharding.get("index_location", "end") == "end"
    shape, shard_shape = (
        tuple(meta["shape"]),
        tuple(meta["chunk_grid"]["configuration"]["chunk_shape"]),
    )
    one_row_chunks = tuple(sharding["chunk_shape"]) == (1, *shape[1:]) and shard_shape[1:] == shape[1:]
    if not (inner_is_raw and index_is_standard and one_row_chunks):
        return None
    return MappedArray(folder, np.dtype(meta["data_type"]).newbyteorder("<"), shape, shard_shape[0], meta["fill_value"])
