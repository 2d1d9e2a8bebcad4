"""The sample's img2dataset shards, read back with the project's WebDataset reader."""

import hashlib
import io
import json
import tarfile

import pyarrow.parquet as pq
import pytest

from lyrics.data.errors import DataFormatError
from lyrics.data.webdataset import expand_shards, iter_shard, iter_webdataset


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


@pytest.mark.parametrize(
    ("members", "problem"),
    [
        ({"a.txt": b"no image"}, "sample a has no image member"),
        ({"a.jpg": b"1", "a.json": b"{"}, "a.json is not valid JSON"),
        ({"a.jpg": b"1", "b.jpg": b"2", "a.txt": b"late"}, "members of sample a are not adjacent"),
    ],
)
def test_malformed_shards_are_refused_naming_the_shard(tmp_path, members, problem):
    shard = tmp_path / "00000.tar"
    write_tar(shard, members)
    with pytest.raises(DataFormatError, match=problem) as error:
        list(iter_shard(shard))
    assert str(error.value).startswith(str(shard))


def test_a_file_that_is_not_a_tar_is_refused(tmp_path):
    shard = tmp_path / "00000.tar"
    shard.write_bytes(b"not a tar file at all" * 40)
    with pytest.raises(DataFormatError, match="not a readable tar file"):
        list(iter_shard(shard))
