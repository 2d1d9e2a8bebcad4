"""The sample's img2dataset shards, read back with the project's WebDataset reader."""

import hashlib
import io
import json
import tarfile

import pyarrow.parquet as pq
import pytest

from lyrics.data.errors import DataFormatError
from lyrics.data.webdataset import InputSkip, WebSample, expand_shards, image_member, iter_shard, iter_webdataset


def test_shards_hold_every_image_with_caption_and_metadata(sample_dir, annotations):
    shards = expand_shards(sample_dir / "webdataset" / "{00000..00001}.tar")
    assert len(shards) >= 2
    samples = list(iter_webdataset(sample_dir / "webdataset" / "*.tar"))
    assert [sample.meta["sample_key"] for sample in samples] == [image.key for image in annotations.images]
    for sample, image in zip(samples, annotations.images):
        assert sample.caption == image.captions[0] == sample.meta["caption"]
        assert sample.meta["sha256"] == hashlib.sha256(sample.image_bytes).hexdigest()
        assert sample.meta["key"] == sample.key and sample.meta["status"] == "success"
        assert sample.image_bytes == (sample_dir / "images" / f"{image.key}.jpg").read_bytes()
    assert all(len(sample.key) == 9 for sample in samples)
    assert {sample.key[:5] for sample in samples} == {"00000", "00001"}


@pytest.mark.parametrize("shard", ["00000", "00001"])
def test_tar_members_are_img2dataset_triples_with_neutral_owners(sample_dir, shard):
    with tarfile.open(sample_dir / "webdataset" / f"{shard}.tar") as tar:
        members = tar.getmembers()
    keys = sorted({member.name.split(".")[0] for member in members})
    assert [member.name for member in members] == [f"{key}.{ext}" for key in keys for ext in ("jpg", "json", "txt")]
    assert all((m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "") for m in members)
    table = pq.read_table(sample_dir / "webdataset" / f"{shard}.parquet")
    assert table.column("key").to_pylist() == keys
    assert set(table.column("status").to_pylist()) == {"success"}
    stats = json.loads((sample_dir / "webdataset" / f"{shard}_stats.json").read_text())
    assert stats["count"] == stats["successes"] == len(keys)


def test_patterns_that_match_nothing_name_the_pattern(sample_dir):
    with pytest.raises(DataFormatError, match=r"\{00000\.\.00002\}.tar: no shard matches .*00002.tar"):
        expand_shards(sample_dir / "webdataset" / "{00000..00002}.tar")
    with pytest.raises(DataFormatError, match=r"nothing-\*.tar"):
        expand_shards(sample_dir / "webdataset" / "nothing-*.tar")


def write_tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_optional_caption_and_metadata(tmp_path):
    shard = tmp_path / "00000.tar"
    write_tar(shard, {"a.jpg": b"1", "a.txt": b"first", "b.jpg": b"2", "b.json": b'{"x": 1}', "c.png": b"3"})
    samples = list(iter_shard(shard))
    assert [(s.key, s.image_bytes, s.caption, s.meta) for s in samples] == [
        ("a", b"1", "first", {}),
        ("b", b"2", None, {"x": 1}),
        ("c", b"3", None, {}),
    ]
    assert {sample.shard for sample in samples} == {str(shard)}


def outcomes(shard) -> list[tuple[str, str]]:
    """(key, "row" or the skip's reason category) per input, in order."""
    return [(s.key, "row" if isinstance(s, WebSample) else s.reason.split(":")[0]) for s in iter_shard(shard)]


@pytest.mark.parametrize(
    ("members", "expected"),
    [
        ({"a.txt": b"no image", "b.jpg": b"2"}, [("a", "no_image"), ("b", "row")]),
        ({"a.jpg": b"1", "a.json": b"{", "b.jpg": b"2"}, [("a", "bad_metadata"), ("b", "row")]),
        ({"a.jpg": b"1", "a.txt": b"\xff\xfe", "b.jpg": b"2"}, [("a", "bad_caption"), ("b", "row")]),
        ({"a.jpg": b"1", "b.jpg": b"2", "a.txt": b"late", "c.jpg": b"3"}, [("a", "row"), ("b", "row"), ("a", "duplicate_key"), ("c", "row")]),
        ({"../up/a.jpg": b"1", "/abs/b.jpg": b"2", "c.jpg": b"3"}, [("../up/a", "unsafe_key"), ("/abs/b", "unsafe_key"), ("c", "row")]),
        ({"a.gif": b"1", "b.tif": b"2", "c.weird": b"3", "c.txt": b"t"}, [("a", "row"), ("b", "row"), ("c", "row")]),
    ],
)
def test_a_bad_sample_is_a_skip_of_its_own_and_the_rest_of_the_shard_is_read(tmp_path, members, expected):
    shard = tmp_path / "00000.tar"
    write_tar(shard, members)
    assert outcomes(shard) == expected
    skips = [s for s in iter_shard(shard) if isinstance(s, InputSkip)]
    assert all(s.file.startswith(str(shard)) for s in skips)


def test_the_image_member_prefers_img2dataset_formats_then_any_pillow_format():
    assert image_member({"json": b"", "png": b"", "gif": b""}) == "png"
    assert image_member({"txt": b"", "bmp": b"", "zzz": b""}) == "bmp"
    assert image_member({"txt": b"", "zzz": b""}) == "zzz"  # decoding decides what it is
    assert image_member({"txt": b"", "json": b""}) is None


def test_a_damaged_tar_keeps_what_came_before_and_counts_what_it_cut(tmp_path):
    shard = tmp_path / "00000.tar"
    write_tar(shard, {"a.jpg": b"1" * 600, "b.jpg": b"2" * 3000, "c.jpg": b"3" * 600})
    data = shard.read_bytes()
    shard.write_bytes(data[: data.index(b"2" * 3000) + 1500])  # cut inside b's image
    assert outcomes(shard) == [("a", "row"), ("b", "damaged_tar")]
    garbled = bytearray(data)
    header = garbled.index(b"c.jpg")
    garbled[header : header + 100] = b"\xff" * 100  # c's header: tar reading stops there without an error
    shard.write_bytes(bytes(garbled))
    assert outcomes(shard) == [("a", "row"), ("b", "row"), (f"@{header}", "damaged_tar")]


def test_a_file_that_is_not_a_tar_is_one_skip(tmp_path):
    shard = tmp_path / "00000.tar"
    shard.write_bytes(b"not a tar file at all" * 40)
    ((key, reason),) = outcomes(shard)
    assert key == "@0" and reason == "damaged_tar"
