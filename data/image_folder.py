"""Image folders as input shards: a benchmark's images (COCO val2014/, GQA images/, MME's subtask
folders) cut into fixed-size virtual shards, so the extract job treats them as it treats tars.

Files are listed recursively in sorted order, so the same folder always gives the same shards and a
resumed extraction skips exactly the shards it committed. Each sample's `sample_key` (the join key
of instructions and benchmarks, data/instructions.py `image_key`) is made from its path by the data
set's `key` rule:

    stem    "val2014/COCO_val2014_000000000042.jpg" -> "COCO_val2014_000000000042"  (the default)
    parent  "test/1234/image.png"                    -> "1234"  (ScienceQA: one folder per problem)
    path    "existence/images/000000006040.jpg"      -> "existence/images/000000006040"  (MME: stems repeat)

Captions are optional: a JSONL or Parquet file with an `image` column (the path relative to the
folder) and a `caption` column.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
import pyarrow.parquet as pq

from lyrics.config import FolderKey
from lyrics.data.errors import DataFormatError
from lyrics.data.webdataset import InputSkip, WebSample, image_extensions

SHARD_SIZE = 1000  # images per virtual shard: a resumable unit of about a minute of GPU work


@dataclass(frozen=True)
class FolderShard:
    name: str  # "00000": the cache shard it becomes
    root: str
    files: tuple[str, ...]  # POSIX paths relative to root
    keys: tuple[str, ...]  # the join key of each file
    captions: tuple[str | None, ...]

    @property
    def source(self) -> str:
        return f"{self.root} [{self.files[0]} .. {self.files[-1]}]"

    def samples(self) -> Iterator[WebSample | InputSkip]:
        """A sample per file; a file that cannot be read (permissions, I/O error) is a skip, not a failure of the shard."""
        for relative, key, caption in zip(self.files, self.keys, self.captions):
            path = Path(self.root) / relative
            try:
                data = path.read_bytes()
            except OSError as error:
                yield InputSkip(key, str(path), f"unreadable: {error.strerror or error}")
                continue
            meta = {"url": relative, "sample_key": key}
            yield WebSample(key=key, shard=str(path), image_bytes=data, caption=caption, meta=meta)


def folder_key(relative: str, rule: FolderKey) -> str:
    path = PurePosixPath(relative)
    if rule == "stem":
        return path.stem
    if rule == "parent":
        return path.parent.name
    return str(path.with_suffix(""))


def folder_shards(root: Path, rule: FolderKey = "stem", captions: Path | None = None, shard_size: int = SHARD_SIZE) -> list[FolderShard]:
    """The folder's images in shards of `shard_size`; a key used by two files is refused (the join would be ambiguous)."""
    if not root.is_dir():
        raise DataFormatError(f"{root}: not a folder")
    files = sorted(
        str(path.relative_to(root).as_posix())
        for path in root.rglob("*")
        if path.suffix.lower().lstrip(".") in image_extensions() and path.is_file()
    )
    if not files:
        raise DataFormatError(f"{root}: no image files (no file with an extension Pillow opens: jpg, png, webp, gif, bmp, tif, ...)")
    keys = [folder_key(f, rule) for f in files]
    first: dict[str, str] = {}
    clashes = [f"{first[k]} and {f}" for f, k in zip(files, keys) if first.setdefault(k, f) != f]
    if clashes:
        raise DataFormatError(
            f"{root}: {len(clashes)} image(s) share a join key under key rule {rule!r} (e.g. {clashes[0]}); "
            "choose another `key` for this data set"
        )
    texts = read_captions(captions) if captions else {}
    return [
        FolderShard(
            f"{number:05d}", str(root), tuple(files[start : start + shard_size]), tuple(keys[start : start + shard_size]),
            tuple(texts.get(f) for f in files[start : start + shard_size]),
        )
        for number, start in enumerate(range(0, len(files), shard_size))
    ]  # fmt: skip


def read_captions(path: Path) -> Mapping[str, str]:
    """image (path relative to the folder) -> caption, from JSONL or Parquet."""
    if path.suffix == ".parquet":
        try:
            table = pq.read_table(path, columns=["image", "caption"])
        except (OSError, KeyError, ValueError) as error:
            raise DataFormatError(f"{path}: not a Parquet file with `image` and `caption` columns ({error})") from error
        return dict(zip(table.column("image").to_pylist(), table.column("caption").to_pylist()))
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataFormatError(f"{path}: cannot read the captions file ({error})") from error
    captions = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            captions[str(record["image"])] = str(record["caption"])
        except (ValueError, KeyError, TypeError) as error:
            raise DataFormatError(f"{path}: line {number}: not a JSON object with `image` and `caption` ({error})") from error
    return captions
