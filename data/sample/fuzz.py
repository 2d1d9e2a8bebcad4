"""Bad and unusual inputs for the extract phase, with what it must do with each (`expected.json`).

The cases are made from fixed package photos, independent of annotations.yaml, so that the
expectations stay put when the annotations change."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lyrics.data.sample.encode import jpeg_bytes, json_bytes, png_bytes, sha256_hex
from lyrics.data.sample.photos import open_photo
from lyrics.data.sample.shards import ShardSample, sample_key, shard_name, write_tar

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
