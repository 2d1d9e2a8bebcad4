"""A frozen-model stage that computes nothing, for timing the extract job's plumbing alone.

``bench/extract.py`` runs the job with it to measure what decoding, moving and writing cost per
core before any model runs. Its outputs have the cache's shapes and random values (drawn once per
actor, so that they compress as features do, not as zeros); no box is found, so the rows carry no
tags or objects.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lyrics.store.schema import CacheSchema

# The cache fields each stage produces; Grounding-DINO's query scores choose the top-Q tokens.
STAGE_FIELDS = {"clip": ("vit_tokens",), "ram": (), "gdino": ("gdino_tokens", "gdino_scores"), "sam": ("sam_tokens", "sam_mask", "sam_masks")}


class NullModel:
    def __init__(self, name: str, schema: CacheSchema) -> None:
        self.name = name
        rng = np.random.default_rng(0)
        shapes = {f.name: (f.shape, f.kind) for f in schema.tensors}
        shapes["gdino_scores"] = (shapes["gdino_tokens"][0][:1], "float")
        self.templates = {
            field: rng.standard_normal(shapes[field][0], dtype=np.float32) if shapes[field][1] == "float" else np.zeros(shapes[field][0], bool)
            for field in STAGE_FIELDS[name]
        }

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch with this stage's outputs added (its inputs were consumed by the caller)."""
        count = len(batch["rows"])
        for field, template in self.templates.items():
            batch[field] = np.repeat(template[None], count, axis=0)
        if self.name == "ram":
            batch["tags"], batch["tag_scores"] = [[] for _ in range(count)], [[] for _ in range(count)]
        elif self.name == "gdino":
            batch["boxes"] = [np.zeros((0, 4), np.float32) for _ in range(count)]
            batch["box_labels"], batch["box_scores"] = [[] for _ in range(count)], [np.zeros(0, np.float32) for _ in range(count)]
            batch["spatial_text"] = ["" for _ in range(count)]
        return batch
