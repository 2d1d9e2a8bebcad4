"""The two ends of the extract job's pipeline, kept light (no model library is imported): the reading
of input shards into parts, and the writing of each part as a cache shard by the worker that holds it.

A part is up to ``part_size`` consecutive inputs of one input shard; part ``k`` of shard ``00042``
becomes the cache shard ``00042.0003``. Its content depends on the shard's bytes and the settings
alone, so a rerun redoes exactly the parts that are missing.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lyrics.data.image_folder import FolderShard
from lyrics.data.webdataset import InputSkip, TarShard, WebSample
from lyrics.store import CacheIdentity, ShardWriter, committed_shards
from lyrics.store.manifest import SHARD_META_NAME
from lyrics.store.writer import SHARDS_DIR, read_shard_record

InputShard = TarShard | FolderShard
Chunk = dict[str, Any]  # a part as it travels: rows, skips, and one entry per image in every other field


# --- stage 1: read an input shard front to back, in parts of raw inputs (reader actors) ----------------
def part_name(shard: str, index: int) -> str:
    """The cache shard of part ``index`` of an input shard: ``00042.0003``."""
    return f"{shard}.{index:04d}"


class ReadStage:
    """Cuts one input shard into parts of ``part_size`` consecutive inputs (bytes, not yet decoded).

    Reading is cheap next to decoding, so one reader takes a whole shard while the decode actors work
    on its parts in parallel. A part's content depends on the shard's bytes and ``part_size`` alone.
    Parts already committed (a resumed run) are read past, not sent on.
    """

    def __init__(self, shards: tuple[InputShard, ...], part_size: int, shards_dir: Path) -> None:
        self.shards, self.part_size, self.shards_dir = shards, part_size, shards_dir

    def __call__(self, item: dict[str, Any]) -> Iterator[dict[str, Any]]:
        shard = self.shards[item["shard"]]
        inputs: list[WebSample | InputSkip] = []
        index = 0
        for sample in shard.samples():
            if len(inputs) == self.part_size:  # a full part with more to come: not the last
                yield from self._part(shard, index, inputs, last=False)
                index, inputs = index + 1, []
            inputs.append(sample)
        yield from self._part(shard, index, inputs, last=True)

    def _part(self, shard: InputShard, index: int, inputs: list[WebSample | InputSkip], last: bool) -> Iterator[dict[str, Any]]:
        name = part_name(shard.name, index)
        if (self.shards_dir / name / SHARD_META_NAME).is_file():
            return
        yield {"record": {"shard": shard.name, "source": shard.source, "part": index, "name": name, "last": last, "inputs": inputs}}


# --- stage 4: each part written as a cache shard by the worker that holds it (writer actors) ------------
def store_rows(dataset: str, record: Chunk) -> list[dict[str, Any]]:
    rows = []
    for i, r in enumerate(record["rows"]):
        rows.append(
            {
                "id": r["id"],
                "dataset": dataset,
                "shard": record["shard"],
                "key": r["key"],
                "caption": r["caption"],
                "width": r["width"],
                "height": r["height"],
                "tags": record["tags"][i],
                "tag_scores": [float(s) for s in record["tag_scores"][i]],
                "boxes": record["boxes"][i].tolist(),
                "box_labels": record["box_labels"][i],
                "box_scores": record["box_scores"][i].tolist(),
                "spatial_text": record["spatial_text"][i],
                "source": json.dumps({"file": r["file"], **(r["meta"] or {})}, sort_keys=True),
            }
        )
    return rows


TENSOR_KEYS = ("vit_tokens", "gdino_tokens", "gdino_scores", "sam_tokens", "sam_mask", "sam_masks")


class WriteStage:
    """Writes a part as one cache shard, committed atomically, and returns only its counts.

    A retried task rewrites the same content; the first commit is kept (``ShardWriter.commit``).
    ``kill_at`` names a part whose first writer SIGKILLs itself before committing: the resume
    tests' worker death (a marker file makes the retry live).
    """

    def __init__(self, dataset: str, shards_dir: Path, identity: CacheIdentity, kill_at: str | None = None) -> None:
        self.dataset, self.shards_dir, self.identity, self.kill_at = dataset, shards_dir, identity, kill_at

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        return {"written": self.write(item["record"])}

    def write(self, record: Chunk) -> dict[str, Any]:
        """The part as a committed cache shard; its counts."""
        writer = ShardWriter(self.shards_dir, record["name"], record["source"], self.identity)
        try:
            if record["rows"]:
                writer.add_batch(store_rows(self.dataset, record), {k: record[k] for k in TENSOR_KEYS})
            for skip in record["skips"]:
                writer.skip(**skip)
            if record["name"] == self.kill_at:
                marker = self.shards_dir / f".killed-{record['name']}"
                if not marker.exists():
                    marker.touch()
                    os.kill(os.getpid(), signal.SIGKILL)
            committed = writer.commit(inputs=record["inputs"], last=record["last"])
        except BaseException:
            writer.abort()
            raise
        return {"name": committed.name, "rows": committed.rows, "skips": len(committed.skipped), "bytes": size_on_disk(self.shards_dir / committed.name)}


def complete_input_shards(root: Path) -> set[str]:
    """Input shards whose every part is committed: the parts 0..k of the one committed as the last."""
    parts: dict[str, set[int]] = {}
    ends: dict[str, int] = {}
    for name in committed_shards(root):
        shard, _, index = name.rpartition(".")
        if not index.isdigit():
            continue
        parts.setdefault(shard, set()).add(int(index))
        if read_shard_record(root / SHARDS_DIR / name).last:
            ends[shard] = int(index)
    return {shard for shard, end in ends.items() if parts[shard] >= set(range(end + 1))}


def size_on_disk(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size if path.exists() else 0
