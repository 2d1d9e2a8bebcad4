"""A synthetic cache with the tiny profile's real identity, and a pipelines file pointing at it, for the training tests.

The rows are the store's synthetic rows and features, with spatial text made from their boxes and a
``sample_key`` per row (``img<i>``), so stage-2 instructions can join them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lyrics.extract.cache_location import STAGES, cache_schema, default_cache_root, extraction_settings, fingerprints, storage_options
from lyrics.extract.refiner import ensure_checkpoints
from lyrics.spatial_text import format_objects
from lyrics.store import CacheIdentity, CacheWriter
from lyrics.store.synthetic import synthetic_rows, synthetic_tensors
from tests.config_file import write_test_config

ROWS = 12
TOP_Q, MAX_OBJECTS = 8, 4


def write_config(root: Path, edit=None) -> Path:
    def change(raw: dict) -> None:
        raw["extraction"].update(max_objects=MAX_OBJECTS, storage={"top_q": TOP_Q})
        raw["training"]["pretrain"]["recipes"]["tiny"].update(
            steps=4, global_batch=4, micro_batch=2, lr=3e-4, checkpoint_every=2, log_every=1, max_spatial_tokens=48
        )
        for name in STAGES:  # the frozen models' random checkpoints: created once for every test root of the session
            component = raw["profiles"]["tiny"][name]
            component["checkpoint"] = component["checkpoint"].replace("{root}", str(root.parent / "frozen"))
        if edit:
            edit(raw)

    return write_test_config(root, change, f"pipelines-{len(list(root.glob('pipelines*.yaml')))}.yaml")


def write_cache(config, dataset: str = "sample") -> Path:
    """A complete cache at the data set's default location with the tiny profile's identity
    (its frozen models' checkpoints are created first: the fingerprints hash them)."""
    ensure_checkpoints(config, "tiny")
    schema = cache_schema(config, "tiny")
    storage = storage_options(config)
    identity = CacheIdentity(schema, storage, extraction_settings(config, "tiny"), fingerprints(config, "tiny"))
    root = default_cache_root(config, dataset, "tiny")
    writer = CacheWriter(root, identity)
    rows = synthetic_rows(dataset, "00000", 0, ROWS, seed=0)
    for row in rows:
        row["spatial_text"] = format_objects(row["box_labels"], row["boxes"])
        row["source"] = json.dumps({"sample_key": f"img{int(row['key'])}"})
    rows[5]["caption"] = None  # a row without caption: left out of stage 1
    tensors = synthetic_tensors(schema, ROWS, seed=1)
    tensors["sam_mask"] = np.arange(MAX_OBJECTS)[None] < np.array([len(r["boxes"]) for r in rows])[:, None]
    with writer.open_shard("00000", source="synthetic") as shard:
        shard.add_batch(rows, tensors)
    writer.finalize()
    return root
