"""The fuzz set: every case exists as a loose file and in the shard, and is what expected.json says."""

import io
import json
import warnings

import pytest
from PIL import Image, ImageOps

from lyrics.data.sample.fuzz import COLOR_SOURCE, EXIF_ORIENTATION_TAG, LARGE_SIZE
from lyrics.data.sample.photos import open_photo
from lyrics.data.webdataset import InputSkip, iter_shard

SKIP_REASONS = {"truncated", "empty", "not_an_image", "too_large"}


@pytest.fixture(scope="module")
def expected(sample_dir) -> dict:
    return json.loads((sample_dir / "fuzz" / "expected.json").read_text())


@pytest.fixture(scope="module")
def cases(expected) -> dict[str, dict]:
    """Fuzz entries by case name."""
    return {entry["name"]: entry for entry in expected["samples"].values()}


def open_case(sample_dir, entry: dict) -> Image.Image:
    return Image.open(sample_dir / "fuzz" / entry["file"])


def test_expectations_are_consistent(expected, sample_dir):
    assert len(expected["samples"]) == 10
    for key, entry in expected["samples"].items():
        assert (sample_dir / "fuzz" / entry["file"]).is_file(), key
        assert entry["member"].startswith(f"{key}.")
        if entry["expect"] == "ok":
            assert entry["reason"] is None and len(entry["size"]) == 2, key
        else:
            assert entry["expect"] == "skip" and entry["reason"] in SKIP_REASONS and entry["size"] is None, key
    assert [entry["name"] for entry in expected["samples"].values() if entry["missing_caption"]] == ["missing_caption"]


def test_shard_holds_the_loose_files_and_captions(expected, sample_dir):
    samples = list(iter_shard(sample_dir / "fuzz" / "webdataset" / "00000.tar"))
    assert [sample.key for sample in samples] == sorted(expected["samples"])
    for sample in samples:
        entry = expected["samples"][sample.key]
        assert sample.image_bytes == (sample_dir / "fuzz" / entry["file"]).read_bytes()
        assert (sample.caption is None) == entry["missing_caption"]
        assert sample.meta["sample_key"] == entry["name"]


def test_every_ok_case_decodes_to_its_expected_upright_rgb_size(expected, sample_dir):
    for entry in expected["samples"].values():
        if entry["expect"] == "ok":
            with open_case(sample_dir, entry) as image:
                upright = ImageOps.exif_transpose(image).convert("RGB")
            assert list(upright.size) == entry["size"], entry["name"]


def test_truncated_jpeg_fails_to_load(cases, sample_dir):
    with open_case(sample_dir, cases["truncated"]) as image, pytest.raises(OSError, match="truncated"):
        image.load()


@pytest.mark.parametrize("name", ["empty", "not_an_image"])
def test_non_images_fail_to_open(cases, sample_dir, name):
    with pytest.raises(Image.UnidentifiedImageError):
        open_case(sample_dir, cases[name])
    assert cases[name]["reason"] == name


def test_empty_case_is_zero_bytes(cases, sample_dir):
    assert (sample_dir / "fuzz" / cases["empty"]["file"]).stat().st_size == 0


def test_exif_case_is_stored_rotated_with_orientation_6(cases, sample_dir):
    with open_case(sample_dir, cases["exif_rotated"]) as image:
        assert image.getexif()[EXIF_ORIENTATION_TAG] == 6
        assert image.size == tuple(reversed(cases["exif_rotated"]["size"]))
        upright = ImageOps.exif_transpose(image)
    reference = open_photo(COLOR_SOURCE)
    assert upright.size == reference.size
    # JPEG is lossy: compare the mean absolute difference, not exact pixels.
    difference = sum(abs(a - b) for a, b in zip(upright.convert("L").getdata(), reference.convert("L").getdata()))
    assert difference / (reference.width * reference.height) < 4


@pytest.mark.parametrize(("name", "mode"), [("cmyk", "CMYK"), ("gray16", "I;16"), ("rgba", "RGBA"), ("grayscale", "L")])
def test_unusual_modes(cases, sample_dir, name, mode):
    with open_case(sample_dir, cases[name]) as image:
        assert image.mode == mode
        image.load()


def test_large_case_declares_its_size_in_a_small_file(cases, expected, sample_dir):
    entry = cases["too_large"]
    assert (sample_dir / "fuzz" / entry["file"]).stat().st_size < 500_000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with open_case(sample_dir, entry) as image:
            assert image.size == LARGE_SIZE == (12000, 9000)
    assert LARGE_SIZE[0] * LARGE_SIZE[1] > expected["max_pixels"]


@pytest.fixture(scope="module")
def hostile(sample_dir) -> list[dict]:
    return json.loads((sample_dir / "fuzz" / "hostile.json").read_text())["inputs"]


def test_the_hostile_shard_holds_each_input_in_order_and_is_cut_inside_the_last(hostile, sample_dir):
    read = list(iter_shard(sample_dir / "fuzz" / "webdataset" / "00001.tar"))
    assert [entry["key"] for entry in hostile] == [item.key for item in read]  # no input is merged or lost by the reader
    last = read[-1]
    assert hostile[-1]["outcome"] == "damaged_tar" and isinstance(last, InputSkip) and last.reason.startswith("damaged_tar")
    outcomes = {entry["outcome"] for entry in hostile}
    assert outcomes >= {"row", "no_image", "duplicate_key", "too_small", "extreme_aspect_ratio", "too_large", "unsafe_key", "damaged_tar"}
    extensions = {name.rsplit(".", 1)[1] for entry in hostile if entry["outcome"] == "row" for name in entry["members"]}
    assert {"gif", "bmp", "tif", "bin"} <= extensions
    keys = [entry["key"] for entry in hostile]
    duplicate = next(entry for entry in hostile if entry["outcome"] == "duplicate_key")
    assert keys.index(duplicate["key"]) < keys.index(duplicate["key"], keys.index(duplicate["key"]) + 1) - 1  # not adjacent


def test_the_bomb_is_past_pillows_own_refusal(hostile, sample_dir):
    bomb = next(i for i, entry in enumerate(hostile) if entry["outcome"] == "too_large")
    sample = list(iter_shard(sample_dir / "fuzz" / "webdataset" / "00001.tar"))[bomb]
    assert len(sample.image_bytes) < 100_000
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(sample.image_bytes))
