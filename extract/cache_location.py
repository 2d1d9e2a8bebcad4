"""Where a data source's cache lives and what it must contain: root, schema, model fingerprints.

One root per (dataset, profile, extraction settings). Kept apart from the job and the models so
that trainers and tools can find and check a cache without importing the frozen models.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lyrics.config import STAGE_ORDER, PipelinesConfig
from lyrics.extract.checkpoints import component_spec
from lyrics.store import CacheSchema, StorageOptions, lyrics_schema

CACHE_DIR = "cache"
STAGES = STAGE_ORDER  # the frozen models, in pipeline order


def extraction_settings(config: PipelinesConfig, profile: str) -> dict[str, Any]:
    """The settings that decide a cache's content (its identity, with the model fingerprints)."""
    return {"profile": profile, **config.extraction.model_dump(exclude={"profile", "storage", "batch_size", "decode_workers", "model_actors"})}


def storage_options(config: PipelinesConfig) -> StorageOptions:
    storage = config.extraction.storage
    return StorageOptions(dtype=storage.dtype, top_q=storage.top_q, compression=storage.compression)


def recorded_settings(config: PipelinesConfig, profile: str) -> dict[str, dict[str, Any]]:
    """The settings a manifest records (``extraction``, ``storage``) as this configuration would record them."""
    return {"extraction": extraction_settings(config, profile), "storage": asdict(storage_options(config))}


def default_cache_root(config: PipelinesConfig, dataset: str, profile: str) -> Path:
    """``{root}/cache/<dataset>/<profile>-<hash of the settings>``: one root per (dataset, extraction config)."""
    settings = {**extraction_settings(config, profile), "storage": config.extraction.storage.model_dump()}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return config.path(f"{{root}}/{CACHE_DIR}/{dataset}/{profile}-{digest}")


def fingerprints(config: PipelinesConfig, profile: str) -> dict[str, str]:
    return {name: component_spec(config, profile, name).fingerprint() for name in STAGES}


def cache_schema(config: PipelinesConfig, profile: str) -> CacheSchema:
    """The cache's tensor shapes, from the architecture files (no weights loaded)."""
    vision = component_spec(config, profile, "clip").arch["vision_config"]
    queries = component_spec(config, profile, "gdino").arch["model"]["num_queries"]
    settings = config.extraction
    return lyrics_schema(
        vit_tokens=(vision["image_size"] // vision["patch_size"]) ** 2 + 1,
        vit_width=vision["hidden_size"],
        gdino_queries=settings.storage.top_q or queries,
        max_objects=settings.max_objects,
    )
