"""Write WebDataset shards the way img2dataset does, byte for byte reproducibly."""

import io
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lyrics.data.sample.encode import json_bytes

# img2dataset keys: the shard number then the index inside the shard, zero padded.
SHARD_DIGITS = 5
INDEX_DIGITS = 4

# The per-shard parquet that img2dataset writes next to each tar.
PARQUET_SCHEMA = pa.schema(
    [
        ("url", pa.string()),
        ("key", pa.string()),
        ("caption", pa.string()),
        ("status", pa.string()),
        ("error_message", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("original_width", pa.int64()),
        ("original_height", pa.int64()),
        ("sha256", pa.string()),
    ]
)


@dataclass(frozen=True)
class ShardSample:
    key: str
    image_extension: str  # "jpg" as img2dataset writes; the fuzz set also has "png"
    image_bytes: bytes
    caption: str | None  # None leaves out the .txt member
    meta: dict  # the .json member


def shard_name(shard_id: int) -> str:
    return f"{shard_id:0{SHARD_DIGITS}d}"


def sample_key(shard_id: int, index: int) -> str:
    return f"{shard_id:0{SHARD_DIGITS}d}{index:0{INDEX_DIGITS}d}"


def sample_members(sample: ShardSample) -> list[tuple[str, bytes]]:
    """(member name, bytes) of one sample, by extension like webdataset's TarWriter."""
    members = {sample.image_extension: sample.image_bytes, "json": json_bytes(sample.meta)}
    if sample.caption is not None:
        members["txt"] = sample.caption.encode("utf-8")
    return [(f"{sample.key}.{extension}", members[extension]) for extension in sorted(members)]


def write_tar(path: Path, samples: Sequence[ShardSample]) -> None:
    """A plain ustar file; members in sample order, then by extension."""
    write_members(path, [member for sample in samples for member in sample_members(sample)])


def write_members(path: Path, members: Sequence[tuple[str, bytes]]) -> None:
    """A plain ustar file of these members in this order, with zeroed owners and times so that two
    builds give identical bytes."""
    with tarfile.open(path, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))


def write_img2dataset_shard(folder: Path, shard_id: int, samples: Sequence[ShardSample]) -> None:
    """`NNNNN.tar`, `NNNNN.parquet` and `NNNNN_stats.json`, as one img2dataset shard."""
    name = shard_name(shard_id)
    write_tar(folder / f"{name}.tar", samples)
    rows = [{column: sample.meta[column] for column in PARQUET_SCHEMA.names} for sample in samples]
    pq.write_table(pa.Table.from_pylist(rows, schema=PARQUET_SCHEMA), folder / f"{name}.parquet")
    # img2dataset also records timings and its own config; they are left out to stay reproducible.
    stats = {
        "count": len(samples),
        "successes": len(samples),
        "failed_to_download": 0,
        "failed_to_resize": 0,
        "status_dict": {"success": len(samples)},
    }
    (folder / f"{name}_stats.json").write_bytes(json_bytes(stats))
