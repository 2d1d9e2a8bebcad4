"""Bad and unusual inputs for the extract phase, with what it must do with each.

Two shards: `00000.tar` holds odd images (`expected.json`: truncated, CMYK, 16-bit, EXIF-rotated,
...), each also a loose file under `images/`; `00001.tar` is a hostile img2dataset shard
(`hostile.json`, one entry per input in order): images in other formats and under a lying
extension, a sample with no image, a repeated key, 10000 x 1, 1 x 10000 and 5000 x 20 strips, a
4 x 4 image, a bomb past Pillow's own limit, a member named `../`, and the tar cut inside its last
sample.

The cases are made from fixed package photos, independent of annotations.yaml, so that the
expectations stay put when the annotations change."""

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lyrics.data.sample.encode import jpeg_bytes, json_bytes, png_bytes, sha256_hex
from lyrics.data.sample.photos import open_photo
from lyrics.data.sample.shards import ShardSample, sample_key, sample_members, shard_name, write_members, write_tar

COLOR_SOURCE = "skimage:chelsea.png"  # 451 x 300: not square, so a wrong rotation shows
GRAY_SOURCE = "skimage:camera.png"
LARGE_SIZE = (12000, 9000)
# Pillow's decompression-bomb limit (Image.MAX_IMAGE_PIXELS): the large case is above it.
MAX_PIXELS = 89_478_485
EXIF_ORIENTATION_TAG = 0x0112
ROTATED_90_CLOCKWISE = 6  # EXIF Orientation: the viewer turns the stored pixels 90 degrees clockwise


@dataclass(frozen=True)
class FuzzCase:
    name: str
    extension: str
    data: bytes
    expect: str  # "ok" or "skip"
    size: tuple[int, int] | None = None  # width, height of the upright RGB image when "ok"
    reason: str | None = None  # truncated / empty / not_an_image / too_large when "skip"
    caption: str | None = "A close-up of a tabby cat."


def fuzz_cases() -> list[FuzzCase]:
    color = open_photo(COLOR_SOURCE)
    gray = open_photo(GRAY_SOURCE).convert("L")
    color_jpeg = jpeg_bytes(color)
    gray_caption = "A black and white photo of a man behind a camera."
    return [
        FuzzCase("truncated", "jpg", color_jpeg[: len(color_jpeg) // 2], "skip", reason="truncated"),
        FuzzCase("empty", "jpg", b"", "skip", reason="empty"),
        FuzzCase("not_an_image", "jpg", b"This is a text file, not a JPEG.\n", "skip", reason="not_an_image"),
        FuzzCase("cmyk", "jpg", jpeg_bytes(color.convert("CMYK")), "ok", size=color.size),
        FuzzCase("gray16", "png", png_bytes(_sixteen_bit(gray)), "ok", size=gray.size, caption=gray_caption),
        FuzzCase("rgba", "png", png_bytes(_with_alpha(color)), "ok", size=color.size),
        FuzzCase("grayscale", "jpg", jpeg_bytes(gray), "ok", size=gray.size, caption=gray_caption),
        FuzzCase("exif_rotated", "jpg", _exif_rotated_jpeg(color), "ok", size=color.size),
        FuzzCase("too_large", "jpg", _large_flat_jpeg(), "skip", reason="too_large", caption="Flat grey."),
        FuzzCase("missing_caption", "jpg", color_jpeg, "ok", size=color.size, caption=None),
    ]


def write_fuzz(folder: Path) -> None:
    """`images/<name>.<ext>`, the same files in `webdataset/00000.tar`, and `expected.json`
    (keyed by sample key; `file` is relative to `folder`)."""
    (folder / "images").mkdir(parents=True)
    (folder / "webdataset").mkdir()
    expected, samples = {}, []
    for index, case in enumerate(fuzz_cases()):
        key = sample_key(0, index)
        file = f"images/{case.name}.{case.extension}"
        (folder / file).write_bytes(case.data)
        meta = {"key": key, "sample_key": case.name, "sha256": sha256_hex(case.data)}
        samples.append(ShardSample(key, case.extension, case.data, case.caption, meta))
        expected[key] = {
            "name": case.name,
            "file": file,
            "member": f"{key}.{case.extension}",
            "expect": case.expect,
            "size": None if case.size is None else list(case.size),
            "reason": case.reason,
            "missing_caption": case.caption is None,
        }
    write_tar(folder / "webdataset" / f"{shard_name(0)}.tar", samples)
    (folder / "expected.json").write_bytes(json_bytes({"max_pixels": MAX_PIXELS, "samples": expected}))
    write_hostile_shard(folder / "webdataset" / f"{shard_name(1)}.tar", folder / "hostile.json")


# Pillow refuses, in Image.open, images over twice its MAX_IMAGE_PIXELS (2 x 89,478,485): the bomb is past that.
BOMB_SIZE = (20000, 10000)


def hostile_inputs() -> list[tuple[list[tuple[str, bytes]], dict]]:
    """(tar members, expectation) per input of the hostile shard, in tar order (before the cut)."""
    photo = open_photo(COLOR_SOURCE).resize((150, 100))

    def encoded(image: Image.Image, fmt: str) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        return buffer.getvalue()

    cases = [  # (extension, image bytes, outcome, key when not the index's)
        ("jpg", jpeg_bytes(photo), "row", None),
        ("gif", encoded(photo.convert("P"), "GIF"), "row", None),
        ("bmp", encoded(photo, "BMP"), "row", None),
        ("tif", encoded(photo, "TIFF"), "row", None),
        ("jpg", png_bytes(photo), "row", None),  # PNG bytes under .jpg: the content decides
        ("bin", encoded(photo, "WEBP"), "row", None),  # an extension Pillow does not know
        ("txt", b"", "no_image", None),  # only a caption
        ("jpg", jpeg_bytes(photo.rotate(180)), "duplicate_key", sample_key(1, 1)),  # input 1's key again, not adjacent
        ("png", png_bytes(Image.new("L", (10000, 1), 200)), "too_small", None),  # zero-pixel sides after any resize
        ("png", png_bytes(Image.new("L", (1, 10000), 200)), "too_small", None),
        ("png", png_bytes(Image.new("L", (5000, 20), 200)), "extreme_aspect_ratio", None),  # 250 : 1
        ("png", png_bytes(Image.new("1", BOMB_SIZE, 0)), "too_large", None),
        ("jpg", jpeg_bytes(photo), "unsafe_key", f"../../escape/{sample_key(1, 12)}"),
        ("png", png_bytes(photo.resize((4, 4))), "too_small", None),
        ("jpg", jpeg_bytes(photo), "damaged_tar", None),  # the tar is cut inside this image
    ]
    inputs = []
    for index, (extension, data, outcome, key) in enumerate(cases):
        key = key or sample_key(1, index)
        if extension == "txt":
            members = [(f"{key}.txt", b"A caption without its image.")]
        else:
            members = sample_members(ShardSample(key, extension, data, f"Input {index}: {outcome}.", {"key": key}))
        inputs.append((members, {"key": key, "members": [name for name, _ in members], "outcome": outcome}))
    return inputs


def write_hostile_shard(tar_path: Path, expected_path: Path) -> None:
    """The hostile shard, cut in the middle of its last sample's image, and what becomes of each input."""
    inputs = hostile_inputs()
    write_members(tar_path, [member for members, _ in inputs for member in members])
    data = tar_path.read_bytes()
    last_image = inputs[-1][0][0][1]
    cut = data.rindex(last_image) + len(last_image) // 2
    tar_path.write_bytes(data[:cut])
    expected_path.write_bytes(json_bytes({"max_pixels": MAX_PIXELS, "inputs": [expectation for _, expectation in inputs]}))


def _sixteen_bit(gray: Image.Image) -> Image.Image:
    """Mode I;16 with the 8-bit values spread over the 16-bit range (x 257)."""
    return Image.fromarray(np.asarray(gray, dtype=np.uint16) * 257)


def _with_alpha(color: Image.Image) -> Image.Image:
    """A left-to-right alpha ramp, so that dropping versus compositing the alpha differ."""
    alpha = Image.linear_gradient("L").rotate(90).resize(color.size)
    rgba = color.convert("RGBA")
    rgba.putalpha(alpha)
    return rgba


def _exif_rotated_jpeg(upright: Image.Image) -> bytes:
    """Pixels stored turned 90 degrees counter-clockwise, with the EXIF tag that turns them back."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = ROTATED_90_CLOCKWISE
    return jpeg_bytes(upright.transpose(Image.Transpose.ROTATE_90), exif=exif.tobytes())


def _large_flat_jpeg() -> bytes:
    """A flat grey picture: every 8x8 block costs about two bits with optimised Huffman tables,
    so 12000 x 9000 pixels fit in about 400 KB."""
    return jpeg_bytes(Image.new("L", LARGE_SIZE, 128), optimize=True)
