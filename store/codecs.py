"""Storage options and the per-field encodings they imply.

- ``fp16`` (default): float features stored as float16; reading returns exactly the float16 values.
- ``int8``: symmetric per-token quantization: each token (last axis) gets its own float32 scale
  ``max|x| / 127`` kept in a side array ``<field>__scale``; values are ``round(x / scale)``.
- ``top_q``: fields with a ``select_by`` score (the Grounding-DINO queries) keep only their
  ``top_q`` best tokens, in descending score order. Applies on top of either dtype.
- ``compression`` of the feature fields: ``none`` (default), ``lz4`` or ``zstd``. Features are
  nearly incompressible (zstd saves 7 % on fp16 tokens) and every epoch pays the decode, while raw
  chunks are read without a copy (``zarr_mmap.py``), so they are stored raw (``python bench/store.py``
  measures each option). Masks are always zstd (130 KB -> < 1 KB).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from zarr.abc.codec import BytesBytesCodec
from zarr.codecs import BloscCodec, ZstdCodec

from lyrics.store.schema import TensorField

StorageDtype = Literal["fp16", "int8"]
Compression = Literal["none", "lz4", "zstd"]
SCALE_SUFFIX = "__scale"
INT8_MAX = 127.0


@dataclass(frozen=True)
class StorageOptions:
    dtype: StorageDtype = "fp16"
    top_q: int | None = None
    compression: Compression = "none"
    zstd_level: int = 3
    # Samples per Zarr shard object; each sample is its own inner chunk (fast random reads).
    samples_per_chunk_file: int = 64

    def __post_init__(self) -> None:
        if self.dtype not in ("fp16", "int8"):
            raise ValueError(f"storage dtype must be 'fp16' or 'int8', got {self.dtype!r}")
        if self.compression not in ("none", "lz4", "zstd"):
            raise ValueError(f"storage compression must be 'none', 'lz4' or 'zstd', got {self.compression!r}")
        if self.top_q is not None and self.top_q < 1:
            raise ValueError(f"top_q must be a positive number of tokens, got {self.top_q}")


def stored_dtype(field: TensorField, options: StorageOptions) -> str:
    if field.kind == "mask":
        return "bool"
    return "int8" if options.dtype == "int8" else "float16"


def compressors(field: TensorField, options: StorageOptions) -> tuple[BytesBytesCodec, ...]:
    """The Zarr codecs after serialisation of one field's chunks."""
    if field.kind == "mask" or options.compression == "zstd":
        return (ZstdCodec(level=options.zstd_level),)
    if options.compression == "lz4":
        return (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),)
    return ()


def select_top_q(tokens: np.ndarray, scores: np.ndarray, q: int) -> np.ndarray:
    """Keep the ``q`` tokens with the highest score, best first. tokens: (B, Q, D), scores: (B, Q)."""
    if scores.shape != tokens.shape[:2]:
        raise ValueError(f"top-Q scores have shape {scores.shape}, expected {tokens.shape[:2]}")
    # Stable sort on the negated score: ties keep query order, so the result is deterministic.
    order = np.argsort(-scores, axis=1, kind="stable")[:, :q]
    return np.take_along_axis(tokens, order[..., None], axis=1)


def quantize_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-token symmetric int8: returns (values int8 of x.shape, scales float32 of x.shape[:-1])."""
    x = x.astype(np.float32, copy=False)
    scale = np.abs(x).max(axis=-1) / INT8_MAX
    safe = np.where(scale > 0, scale, 1.0)
    q = np.clip(np.rint(x / safe[..., None]), -INT8_MAX, INT8_MAX).astype(np.int8)
    return q, scale.astype(np.float32)


def dequantize_int8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) * scale[..., None]


def encode(field: TensorField, values: np.ndarray, options: StorageOptions) -> dict[str, np.ndarray]:
    """The arrays to append for one batch of a field: ``{array name: values}``."""
    if field.kind == "mask":
        return {field.name: values.astype(bool)}
    if options.dtype == "int8":
        q, scale = quantize_int8(values)
        return {field.name: q, field.name + SCALE_SUFFIX: scale}
    return {field.name: values.astype(np.float16)}
