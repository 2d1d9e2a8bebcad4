"""Decoding the fuzz set: every bad input becomes upright RGB or a categorized rejection."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from lyrics.data.webdataset import WebSample, iter_shard
from lyrics.extract.images import DEFAULT_LIMITS, ImageLimits, ImageRejected, decode_image, to_rgb

LIMIT = DEFAULT_LIMITS


@pytest.fixture(scope="module")
def fuzz(sample_dir):
    root = sample_dir / "fuzz"
    return root, json.loads((root / "expected.json").read_text())


def test_every_fuzz_input_is_decoded_or_rejected_as_expected(fuzz):
    root, expected = fuzz
    for key, case in expected["samples"].items():
        data = (root / case["file"]).read_bytes()
        if case["expect"] == "skip":
            with pytest.raises(ImageRejected) as err:
                decode_image(data, LIMIT)
            assert err.value.reason == case["reason"], case["name"]
        else:
            image = decode_image(data, LIMIT)
            assert image.mode == "RGB" and list(image.size) == case["size"], case["name"]


def test_exif_rotation_restores_the_upright_photo(fuzz, sample_dir):
    root, expected = fuzz
    case = next(c for c in expected["samples"].values() if c["name"] == "exif_rotated")
    upright = decode_image((root / case["file"]).read_bytes(), LIMIT)
    stored = Image.open(root / case["file"])
    assert stored.size == upright.size[::-1]  # the pixels are stored rotated


def test_sixteen_bit_keeps_its_range_instead_of_clipping():
    ramp = (np.arange(256 * 4, dtype=np.uint32).reshape(4, 256) * 64).astype(np.uint16)
    rgb = np.asarray(to_rgb(Image.frombytes("I;16", (256, 4), ramp.tobytes())))
    assert rgb.shape == (4, 256, 3) and rgb.max() > 250 and rgb.min() == 0
    assert np.all(np.diff(rgb[0, :, 0].astype(int)) >= 0)  # still a ramp, not saturated at 255


def test_alpha_is_composited_over_white_and_cmyk_converted():
    rgba = Image.new("RGBA", (2, 1), (255, 0, 0, 0))
    rgba.putpixel((1, 0), (0, 0, 255, 255))
    assert list(to_rgb(rgba).getdata()) == [(255, 255, 255), (0, 0, 255)]
    buf = io.BytesIO()
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(buf, "JPEG")
    red = decode_image(buf.getvalue(), LIMIT).getpixel((1, 1))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60


def test_pixel_limit_is_checked_before_decoding():
    buf = io.BytesIO()
    Image.new("L", (100, 100)).save(buf, "PNG")
    with pytest.raises(ImageRejected, match=r"too_large: 100 x 100 = 10,000 pixels exceeds the limit of 9,999"):
        decode_image(buf.getvalue(), ImageLimits(9_999, 8, 50))


def test_every_hostile_input_that_reaches_decoding_is_rgb_or_rejected_as_expected(sample_dir):
    """GIF, BMP, TIFF, PNG under .jpg and WebP under .bin decode; strips, a 4 x 4 image and a bomb are refused
    from the header, the bomb under the configured limit (Pillow's own refusal would name its own)."""
    inputs = json.loads((sample_dir / "fuzz" / "hostile.json").read_text())["inputs"]
    samples = list(iter_shard(sample_dir / "fuzz" / "webdataset" / "00001.tar"))
    decoded = 0
    for entry, sample in zip(inputs, samples):
        if not isinstance(sample, WebSample):
            continue
        if entry["outcome"] == "row":
            image = decode_image(sample.image_bytes, LIMIT)
            assert image.mode == "RGB" and image.size == (150, 100), entry["members"]
            decoded += 1
        else:
            with pytest.raises(ImageRejected) as err:
                decode_image(sample.image_bytes, LIMIT)
            assert err.value.reason == entry["outcome"], entry["members"]
            if entry["outcome"] == "too_large":
                assert "20000 x 10000 = 200,000,000 pixels exceeds the limit of 89,478,485" in str(err.value)
    assert decoded == 6


@pytest.mark.parametrize(
    ("size", "reason"),
    [((7, 100), "too_small"), ((100, 7), "too_small"), ((8, 401), "extreme_aspect_ratio"), ((401, 8), "extreme_aspect_ratio")],
)
def test_shape_limits(size, reason):
    buf = io.BytesIO()
    Image.new("RGB", size).save(buf, "PNG")
    with pytest.raises(ImageRejected) as err:
        decode_image(buf.getvalue(), LIMIT)
    assert err.value.reason == reason
    Image.new("RGB", (8, 400)).save(buf := io.BytesIO(), "PNG")
    assert decode_image(buf.getvalue(), LIMIT).size == (8, 400)  # at the limits: kept
