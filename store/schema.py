"""What a cache holds: the tensor fields (Zarr) and the row columns (Parquet).

Fixed-shape tensors go to Zarr. Variable-length per-object data is handled two ways:
- SAM-HQ object tokens are padded to ``max_objects`` and stored with a ``sam_mask`` valid mask,
  because the MQ-Former consumes them as one (Q + M) x 260 token block with a key-padding mask;
- boxes, labels, scores and tags are small and ragged, so they live in Parquet list columns.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import pyarrow as pa

SCHEMA_VERSION = 1

TensorKind = Literal["float", "mask"]


@dataclass(frozen=True)
class TensorField:
    """One per-sample tensor stored in Zarr; ``shape`` excludes the sample axis."""

    name: str
    shape: tuple[int, ...]
    kind: TensorKind = "float"
    # Name of a per-token score input used to keep only the best ``shape[0]`` tokens (top-Q).
    select_by: str | None = None


@dataclass(frozen=True)
class CacheSchema:
    tensors: tuple[TensorField, ...]
    version: int = SCHEMA_VERSION

    def field(self, name: str) -> TensorField:
        for f in self.tensors:
            if f.name == name:
                return f
        raise KeyError(f"no tensor field {name!r}; the schema has {[f.name for f in self.tensors]}")

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "tensors": [asdict(f) for f in self.tensors]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CacheSchema:
        tensors = tuple(
            TensorField(name=t["name"], shape=tuple(t["shape"]), kind=t["kind"], select_by=t.get("select_by"))
            for t in data["tensors"]
        )
        return cls(tensors=tensors, version=int(data["version"]))


def lyrics_schema(
    vit_tokens: int = 257,
    vit_width: int = 1024,
    gdino_queries: int = 900,
    max_objects: int = 32,
    refiner_width: int = 260,
    mask_grid: int = 64,
) -> CacheSchema:
    """The cache of SPEC section 3.2; the defaults are the paper sizes (CLIP ViT-L/14, Q = 900)."""
    return CacheSchema(
        tensors=(
            TensorField("vit_tokens", (vit_tokens, vit_width)),
            TensorField("gdino_tokens", (gdino_queries, refiner_width), select_by="gdino_scores"),
            TensorField("sam_tokens", (max_objects, refiner_width)),
            TensorField("sam_mask", (max_objects,), kind="mask"),
            # Each object's SAM-HQ mask on the image-embedding grid (the mask its token averages
            # over), kept so that `make show` can draw it; bool, compresses to a few hundred bytes.
            TensorField("sam_masks", (max_objects, mask_grid, mask_grid), kind="mask"),
        )
    )


# Row columns, one Parquet file per shard. ``source`` keeps the input's own metadata as JSON text.
ROW_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("caption", pa.string()),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("tags", pa.list_(pa.string())),
        pa.field("tag_scores", pa.list_(pa.float32())),
        pa.field("boxes", pa.list_(pa.list_(pa.float32(), 4))),
        pa.field("box_labels", pa.list_(pa.string())),
        pa.field("box_scores", pa.list_(pa.float32())),
        pa.field("spatial_text", pa.string()),
        pa.field("source", pa.string()),
    ]
)

ROW_COLUMNS: tuple[str, ...] = tuple(ROW_SCHEMA.names)


def sample_id(dataset: str, shard: str, key: str) -> str:
    """Stable, unique id of an input sample: ``dataset/shard/key``."""
    return f"{dataset}/{shard}/{key}"
