"""The cache manifest: what was extracted, how, by which models, and what was skipped.

Each committed shard carries its own ``shard.json`` (committed atomically with its data); the
root ``manifest.json`` is rebuilt from those files, so it can never disagree with the shards.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lyrics.store.codecs import StorageOptions
from lyrics.store.schema import CacheSchema

MANIFEST_NAME = "manifest.json"
SHARD_META_NAME = "shard.json"


@dataclass(frozen=True)
class Skip:
    """An input that did not become a row, and why (for example ``truncated: image file is truncated``)."""

    id: str
    file: str
    reason: str


@dataclass(frozen=True)
class ShardRecord:
    """A committed shard: its ``inputs`` (samples read from its source) are its ``rows`` plus its skips."""

    name: str
    source: str
    rows: int
    skipped: tuple[Skip, ...] = ()
    inputs: int | None = None  # None: not counted by the writer (defaults to rows + skips)
    last: bool = True  # the last cache shard of its input shard (an input shard is cut into parts)

    def __post_init__(self) -> None:
        if self.inputs is None:
            object.__setattr__(self, "inputs", self.rows + len(self.skipped))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "inputs": self.inputs, "rows": self.rows, "last": self.last,
                "skipped": [asdict(s) for s in self.skipped]}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShardRecord:
        return cls(data["name"], data["source"], int(data["rows"]), tuple(Skip(**s) for s in data["skipped"]), data.get("inputs"), data.get("last", True))


@dataclass(frozen=True)
class CacheIdentity:
    """Everything that decides the cache's content; a resumed job must match it exactly."""

    schema: CacheSchema
    storage: StorageOptions
    extraction: dict[str, Any]
    fingerprints: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema.to_json(),
            "storage": asdict(self.storage),
            "extraction": self.extraction,
            "fingerprints": dict(sorted(self.fingerprints.items())),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CacheIdentity:
        return cls(
            schema=CacheSchema.from_json(data["schema"]),
            # Caches written before the setting existed compressed their features with zstd.
            storage=StorageOptions(**{"compression": "zstd", **data["storage"]}),
            extraction=data["extraction"],
            fingerprints=dict(data["fingerprints"]),
        )


@dataclass(frozen=True)
class Manifest:
    identity: CacheIdentity
    shards: tuple[ShardRecord, ...] = ()
    complete: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def skipped(self) -> tuple[Skip, ...]:
        return tuple(skip for s in self.shards for skip in s.skipped)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.identity.schema.version,
            "complete": self.complete,
            "inputs": sum(s.inputs for s in self.shards),
            "rows": self.rows,
            "skipped_count": len(self.skipped),
            **self.identity.to_json(),
            "shards": [s.to_json() for s in self.shards],
            "extra": self.extra,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        return cls(
            identity=CacheIdentity.from_json(data),
            shards=tuple(ShardRecord.from_json(s) for s in data["shards"]),
            complete=bool(data["complete"]),
            extra=data.get("extra", {}),
        )


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON to a temporary name in the same folder, fsync, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_manifest(root: Path) -> Manifest:
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no cache manifest here; run the extract phase to build this cache")
    try:
        return Manifest.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a valid cache manifest ({type(e).__name__}: {e})") from e
