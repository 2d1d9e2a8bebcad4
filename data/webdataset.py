"""Stream img2dataset WebDataset shards: tar files whose members `KEY.jpg`, `KEY.txt` (caption)
and `KEY.json` (metadata) are adjacent, one group of members per sample.

A shard is untrusted input, and one bad sample must cost only itself: reading a shard yields, in
order, a `WebSample` or an `InputSkip` (key, file, reason) for every group of members it holds.
A sample with no image, a key seen before in the shard (the first one is kept), a member name that
leaves the shard (`../`, an absolute path), an unreadable caption or metadata member: each is a skip
of its own. A damaged tar keeps everything read before the damage; the sample cut by it, and any
bytes after it that are not tar members, are skips too.
"""

import glob
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePosixPath

from braceexpand import braceexpand
from PIL import Image

from lyrics.data.errors import DataFormatError

# What img2dataset writes, by its `encode_format` option: preferred when a sample has several images.
IMG2DATASET_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
# Members that are never the image.
TEXT_EXTENSIONS = frozenset({"txt", "json"})
_GLOB_CHARACTERS = frozenset("*?[")


@cache
def image_extensions() -> frozenset[str]:
    """Every file extension Pillow can open (gif, bmp, tif, ...), lower case, without the dot."""
    Image.init()
    return frozenset(ext.lstrip(".") for ext, fmt in Image.EXTENSION.items() if fmt in Image.OPEN)


@dataclass(frozen=True)
class WebSample:
    key: str
    shard: str  # the file the bytes came from: the tar, or the image itself (data/image_folder.py)
    image_bytes: bytes = field(repr=False)  # a repr of megabytes helps nobody
    caption: str | None
    meta: dict


@dataclass(frozen=True)
class InputSkip:
    """An input that cannot become a sample; ``reason`` starts with a short category (``duplicate_key: ...``)."""

    key: str
    file: str
    reason: str


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

    def samples(self) -> Iterator[WebSample | InputSkip]:
        return iter_shard(self.path)


def iter_webdataset(pattern: str | Path) -> Iterator[WebSample]:
    """Every readable sample of every shard that `pattern` expands to, in shard order (skips left out)."""
    for shard in expand_shards(pattern):
        yield from (sample for sample in iter_shard(shard) if isinstance(sample, WebSample))


def iter_shard(shard: Path) -> Iterator[WebSample | InputSkip]:
    """A sample or a skip for every group of adjacent members of one tar, streamed (read once, front to back)."""
    seen: set[str] = set()
    reader = _MemberGroups(shard)
    for key, members in reader:
        if key in seen:
            yield InputSkip(key, f"{shard}:{key}", f"duplicate_key: sample {key} appeared earlier in this shard; the first is kept")
            continue
        seen.add(key)
        yield _to_sample(shard, key, members)
    yield from reader.lost


class _MemberGroups:
    """(key, {extension: bytes}) per run of adjacent members sharing a key; after iterating, ``lost``
    lists what a damaged tar lost (the group the damage cut, and unreadable bytes after the last member)."""

    def __init__(self, shard: Path) -> None:
        self.shard = shard
        self.lost: list[InputSkip] = []

    def __iter__(self) -> Iterator[tuple[str, dict[str, bytes]]]:
        key: str | None = None
        members: dict[str, bytes] = {}
        cut = False  # True while a member's data is being read: damage there cuts the sample `key`
        offset = 0
        try:
            with tarfile.open(self.shard, mode="r|*") as tar:
                for member in tar:
                    offset = member.offset
                    member_key, extension = _split_name(member.name)
                    if member_key != key and key is not None:
                        yield key, members
                        members = {}
                    key = member_key
                    if member.isfile():  # links and folders carry no sample data
                        cut = True
                        members[extension.lower()] = tar.extractfile(member).read()
                        cut = False
                self._check_tail(tar)
        except (tarfile.TarError, OSError, EOFError) as error:
            if cut:
                self.lost.append(InputSkip(key, f"{self.shard}:{key}", f"damaged_tar: sample {key} is cut by the damage ({error})"))
            else:
                self.lost.append(InputSkip(f"@{offset}", str(self.shard), f"damaged_tar: nothing after the member at byte {offset} could be read ({error})"))
        if key is not None and not cut:
            yield key, members

    def _check_tail(self, tar: tarfile.TarFile) -> None:
        """Tar iteration stops quietly at a header it cannot parse: bytes after the end other than zero padding are lost data."""
        offset, lost = tar.offset, 0
        while block := tar.fileobj.read(1 << 20):
            lost += len(block) - block.count(0)
        if lost:
            self.lost.append(InputSkip(f"@{offset}", str(self.shard), f"damaged_tar: {lost} bytes after byte {offset} are not tar members"))


def _split_name(name: str) -> tuple[str, str]:
    """WebDataset convention: the key ends at the first dot of the file name ("a/b.seg.png" -> ("a/b", "seg.png"))."""
    directory, _, base = name.rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), extension


def _unsafe(key: str) -> bool:
    path = PurePosixPath(key)
    return path.is_absolute() or ".." in path.parts or "\\" in key or not key.strip("./")


def _to_sample(shard: Path, key: str, members: dict[str, bytes]) -> WebSample | InputSkip:
    where = f"{shard}:{key}"
    if _unsafe(key):
        return InputSkip(key, where, f"unsafe_key: member names of {key!r} leave the shard (absolute or '..')")
    image = image_member(members)
    if image is None:
        return InputSkip(key, where, f"no_image: the sample has only {', '.join(sorted(members)) or 'non-file members'}")
    try:
        caption = members["txt"].decode("utf-8") if "txt" in members else None
    except UnicodeDecodeError as error:
        return InputSkip(key, where, f"bad_caption: {key}.txt is not UTF-8 text ({error})")
    try:
        meta = json.loads(members["json"]) if "json" in members else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return InputSkip(key, where, f"bad_metadata: {key}.json is not valid JSON ({error})")
    if not isinstance(meta, dict):
        return InputSkip(key, where, f"bad_metadata: {key}.json is not a JSON object")
    return WebSample(key=key, shard=str(shard), image_bytes=members[image], caption=caption, meta=meta)


def image_member(members: dict[str, bytes]) -> str | None:
    """The extension of the sample's image: img2dataset's first, then any format Pillow opens, then any
    member that is not text (decoding decides what it is: the extension may lie)."""
    for candidates in (IMG2DATASET_EXTENSIONS, sorted(image_extensions()), sorted(members)):
        found = next((ext for ext in candidates if ext in members and ext not in TEXT_EXTENSIONS), None)
        if found is not None:
            return found
    return None
