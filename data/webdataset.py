"""Stream img2dataset WebDataset shards: tar files whose members `KEY.jpg`, `KEY.txt` (caption)
and `KEY.json` (metadata) are adjacent, one group of members per sample."""

import glob
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from braceexpand import braceexpand

from lyrics.data.errors import DataFormatError

# img2dataset writes one of these, depending on its `encode_format` option.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
_GLOB_CHARACTERS = frozenset("*?[")


@dataclass(frozen=True)
class WebSample:
    key: str
    shard: str  # the file the bytes came from: the tar, or the image itself (data/image_folder.py)
    image_bytes: bytes = field(repr=False)  # a repr of megabytes helps nobody
    caption: str | None
    meta: dict


def expand_shards(pattern: str | Path) -> list[Path]:
    """Shard paths of a brace pattern (`/data/{00000..00009}.tar`) and/or glob (`/data/*.tar`).

    Every brace-expanded literal path must exist and every glob must match, so that a typo
    fails here rather than silently training on fewer shards."""
    shards: list[Path] = []
    for expanded in braceexpand(str(pattern)):
        if _GLOB_CHARACTERS.isdisjoint(expanded):
            matches = [expanded] if Path(expanded).is_file() else []
        else:
            matches = sorted(glob.glob(expanded))
        if not matches:
            raise DataFormatError(f"{pattern}: no shard matches {expanded}")
        shards.extend(Path(match) for match in matches)
    return list(dict.fromkeys(shards))


@dataclass(frozen=True)
class TarShard:
    """One tar of a WebDataset as an input shard of the extract job (data/image_folder.py has the other kind)."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name.split(".")[0]  # "00042.tar" -> "00042": the cache shard it becomes

    @property
    def source(self) -> str:
        return str(self.path)

    def samples(self) -> Iterator[WebSample]:
        return iter_shard(self.path)


def iter_webdataset(pattern: str | Path) -> Iterator[WebSample]:
    """Every sample of every shard that `pattern` expands to, in shard order."""
    for shard in expand_shards(pattern):
        yield from iter_shard(shard)


def iter_shard(shard: Path) -> Iterator[WebSample]:
    """The samples of one tar shard, streamed (the tar is read once, front to back)."""
    seen: set[str] = set()
    try:
        with tarfile.open(shard, mode="r|*") as tar:
            for key, members in _group_members(tar):
                if key in seen:
                    raise DataFormatError(f"{shard}: members of sample {key} are not adjacent")
                seen.add(key)
                yield _to_sample(shard, key, members)
    except (tarfile.TarError, OSError) as error:
        raise DataFormatError(f"{shard}: not a readable tar file ({error})") from error


def _group_members(tar: tarfile.TarFile) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per run of adjacent members sharing a key."""
    key: str | None = None
    members: dict[str, bytes] = {}
    for member in tar:
        if not member.isfile():
            continue
        # WebDataset convention: the key ends at the first dot of the file name.
        directory, _, name = member.name.rpartition("/")
        stem, _, extension = name.partition(".")
        member_key = f"{directory}/{stem}" if directory else stem
        if member_key != key and key is not None:
            yield key, members
            members = {}
        key = member_key
        members[extension.lower()] = tar.extractfile(member).read()
    if key is not None:
        yield key, members


def _to_sample(shard: Path, key: str, members: dict[str, bytes]) -> WebSample:
    image_bytes = next((members[ext] for ext in IMAGE_EXTENSIONS if ext in members), None)
    if image_bytes is None:
        raise DataFormatError(
            f"{shard}: sample {key} has no image member (one of {', '.join(IMAGE_EXTENSIONS)}); "
            f"it has {', '.join(sorted(members))}"
        )
    caption = _decode_caption(shard, key, members["txt"]) if "txt" in members else None
    meta = _parse_meta(shard, key, members["json"]) if "json" in members else {}
    return WebSample(key=key, shard=str(shard), image_bytes=image_bytes, caption=caption, meta=meta)


def _decode_caption(shard: Path, key: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataFormatError(f"{shard}: {key}.txt is not UTF-8 text ({error})") from error


def _parse_meta(shard: Path, key: str, raw: bytes) -> dict:
    try:
        meta = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataFormatError(f"{shard}: {key}.json is not valid JSON ({error})") from error
    if not isinstance(meta, dict):
        raise DataFormatError(f"{shard}: {key}.json is not a JSON object")
    return meta
