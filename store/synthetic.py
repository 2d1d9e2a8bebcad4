"""Deterministic synthetic rows and tensors for a cache schema (tests and ``bench/store.py``).

Feature values imitate transformer activations rather than white noise: per-channel scales
drawn log-normally plus a few outlier channels, which is what makes per-token int8 lossy.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from lyrics.store.schema import CacheSchema, sample_id


def synthetic_rows(dataset: str, shard: str, start: int, count: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng([seed, start])
    rows = []
    for i in range(start, start + count):
        n = int(rng.integers(0, 4))
        x1y1 = rng.uniform(0, 0.5, size=(n, 2))
        boxes = np.concatenate([x1y1, x1y1 + rng.uniform(0.1, 0.5, size=(n, 2))], axis=1).round(4)
        labels = [f"tag{int(t)}" for t in rng.integers(0, 50, size=n)]
        key = f"{i:09d}"
        rows.append(
            {
                "id": sample_id(dataset, shard, key),
                "dataset": dataset,
                "shard": shard,
                "key": key,
                "caption": f"synthetic caption {i}",
                "width": 640,
                "height": 480,
                "tags": labels,
                "tag_scores": rng.uniform(0.5, 1.0, size=n).round(4).tolist(),
                "boxes": boxes.tolist(),
                "box_labels": labels,
                "box_scores": rng.uniform(0.3, 1.0, size=n).round(4).tolist(),
                "spatial_text": "",
                "source": json.dumps({"index": i}),
            }
        )
    return rows


def synthetic_tensors(schema: CacheSchema, count: int, seed: int, extra_queries: int = 0) -> dict[str, np.ndarray]:
    """One batch of every tensor field; top-Q fields get ``extra_queries`` more tokens plus scores."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for f in schema.tensors:
        if f.kind == "mask":
            out[f.name] = synthetic_masks(rng, count, f.shape)
            continue
        tokens = f.shape[0] + (extra_queries if f.select_by else 0)
        width = f.shape[-1]
        channel_scale = rng.lognormal(0.0, 0.5, size=width).astype(np.float32)
        channel_scale[rng.choice(width, size=max(1, width // 64), replace=False)] *= 20.0  # outlier channels
        out[f.name] = rng.standard_normal((count, tokens, width), dtype=np.float32) * channel_scale
        if f.select_by:
            out[f.select_by] = rng.uniform(0, 1, size=(count, tokens)).astype(np.float32)
    return out


def synthetic_masks(rng: np.random.Generator, count: int, shape: tuple[int, ...]) -> np.ndarray:
    """Valid-object masks (count, M) or per-object region masks (count, M, G, G) shaped like real ones: blobs, not noise."""
    if len(shape) == 1:
        return np.arange(shape[0])[None, :] < rng.integers(0, shape[0] + 1, size=(count, 1))
    masks = np.zeros((count, *shape), dtype=bool)
    grid = shape[-1]
    for index in np.ndindex(count, shape[0]):
        x1, y1 = rng.integers(0, grid - 1, size=2)
        x2, y2 = x1 + 1 + rng.integers(0, grid - x1), y1 + 1 + rng.integers(0, grid - y1)
        masks[index][y1:y2, x1:x2] = True
    return masks
