"""Image folders as input shards: sorted listing, shard cut, join keys, captions, refusals."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lyrics.data.errors import DataFormatError
from lyrics.data.image_folder import folder_key, folder_shards
from lyrics.data.webdataset import InputSkip


def make_tree(root, names):
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode())  # content = own name, so a sample shows which file it read
    return root


def test_files_are_sorted_recursive_images_cut_into_shards(tmp_path):
    make_tree(tmp_path, ["b/2.jpg", "a/1.PNG", "c.webp", "notes.txt", "a/3.jpeg"])
    shards = folder_shards(tmp_path, shard_size=2)
    assert [s.name for s in shards] == ["00000", "00001"]
    assert [s.files for s in shards] == [("a/1.PNG", "a/3.jpeg"), ("b/2.jpg", "c.webp")]
    samples = [sample for shard in shards for sample in shard.samples()]
    assert [s.key for s in samples] == ["1", "3", "2", "c"]
    assert samples[2].image_bytes == b"b/2.jpg"
    assert samples[2].meta == {"url": "b/2.jpg", "sample_key": "2"}
    assert samples[2].caption is None


@pytest.mark.parametrize(
    ("rule", "expected"),
    [("stem", "image"), ("parent", "1234"), ("path", "test/1234/image")],
)
def test_key_rules(rule, expected):
    assert folder_key("test/1234/image.png", rule) == expected


def test_a_key_shared_by_two_files_is_refused_naming_both(tmp_path):
    make_tree(tmp_path, ["count/images/7.jpg", "existence/7.jpg"])
    with pytest.raises(DataFormatError, match=r"count/images/7.jpg and existence/7.jpg.*choose another `key`"):
        folder_shards(tmp_path)
    assert [s.keys for s in folder_shards(tmp_path, "path")] == [("count/images/7", "existence/7")]


def test_empty_or_missing_folder_is_refused(tmp_path):
    with pytest.raises(DataFormatError, match="not a folder"):
        folder_shards(tmp_path / "absent")
    make_tree(tmp_path, ["readme.txt"])
    with pytest.raises(DataFormatError, match="no image files"):
        folder_shards(tmp_path)


def test_captions_from_jsonl_and_parquet(tmp_path):
    images = make_tree(tmp_path / "images", ["x/1.jpg", "2.jpg"])
    jsonl = tmp_path / "captions.jsonl"
    jsonl.write_text(json.dumps({"image": "x/1.jpg", "caption": "a cat"}) + "\n\n")
    (shard,) = folder_shards(images, captions=jsonl)
    assert shard.captions == (None, "a cat")  # sorted: "2.jpg" < "x/1.jpg"
    parquet = tmp_path / "captions.parquet"
    pq.write_table(pa.table({"image": ["2.jpg"], "caption": ["a dog"]}), parquet)
    (shard,) = folder_shards(images, captions=parquet)
    assert [s.caption for s in shard.samples()] == ["a dog", None]
    jsonl.write_text('{"image": "2.jpg"}\n')
    with pytest.raises(DataFormatError, match=r"captions.jsonl: line 1: not a JSON object with `image` and `caption`"):
        folder_shards(images, captions=jsonl)


def test_a_file_gone_after_listing_is_an_unreadable_skip_not_a_failure(tmp_path):
    make_tree(tmp_path, ["1.jpg", "2.jpg"])
    (shard,) = folder_shards(tmp_path)
    (tmp_path / "1.jpg").unlink()
    first, second = shard.samples()
    assert isinstance(first, InputSkip) and first.key == "1" and first.file.endswith("1.jpg")
    assert first.reason.startswith("unreadable:")
    assert second.image_bytes == b"2.jpg"
