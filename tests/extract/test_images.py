"""Decoding the fuzz set: every bad input becomes upright RGB or a categorized rejection."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from lyrics.extract.images import ImageRejected, decode_image, to_rgb

LIMIT = 89_478_485


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
    Image.new("CMYK", (3, 3), (0, 255, 255, 0)).save(buf, "JPEG")
    red = decode_image(buf.getvalue(), LIMIT).getpixel((1, 1))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60


def test_pixel_limit_is_checked_before_decoding():
    buf = io.BytesIO()
    Image.new("L", (100, 100)).save(buf, "PNG")
    with pytest.raises(ImageRejected, match=r"too_large: 100 x 100 = 10,000 pixels exceeds the limit of 9,999"):
        decode_image(buf.getvalue(), 9_999)
