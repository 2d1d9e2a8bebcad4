"""Where a data source's cache lives: one root per (dataset, profile, extraction settings).

Kept apart from the job so that trainers and tools can find a cache without importing the models.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from lyrics.config import PipelinesConfig

CACHE_DIR = "cache"


def extraction_settings(config: PipelinesConfig, profile: str) -> dict[str, Any]:
    """The settings that decide a cache's content (its identity, with the model fingerprints)."""
    return {"profile": profile, **config.extraction.model_dump(exclude={"profile", "storage", "batch_size", "decode_workers", "actors"})}


def default_cache_root(config: PipelinesConfig, dataset: str, profile: str) -> Path:
    """``{root}/cache/<dataset>/<profile>-<hash of the settings>``: one root per (dataset, extraction config)."""
    settings = {**extraction_settings(config, profile), "storage": config.extraction.storage.model_dump()}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return config.path(f"{{root}}/{CACHE_DIR}/{dataset}/{profile}-{digest}")
