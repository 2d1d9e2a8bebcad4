"""Decoding untrusted image bytes into upright RGB, or a reason why not.

Every frozen model's preprocessing starts from the one ``PIL.Image`` this returns, so an image is
decoded once. The pixel limit is checked from the header, before the pixels are decoded, so a
decompression bomb costs nothing.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lyrics.data.webdataset import IMAGE_EXTENSIONS, iter_shard

RejectReason = Literal["empty", "not_an_image", "too_large", "truncated", "corrupt"]


class ImageRejected(ValueError):
    """An input that cannot become a row; ``reason`` is a short category for the manifest."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Upright RGB from encoded bytes: EXIF orientation applied, CMYK / 16-bit / alpha / palette / gray handled."""
    if not data:
        raise ImageRejected("empty", "zero-byte file")
    try:
        with warnings.catch_warnings():
            # Pillow warns (and at 2x its own limit raises) on large images; we apply our own limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageRejected("too_large", str(e)) from None
    except UnidentifiedImageError:
        raise ImageRejected("not_an_image", f"not a recognised image format ({len(data)} bytes)") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageRejected("too_large", f"{width} x {height} = {width * height:,} pixels exceeds the limit of {max_pixels:,}")
    try:
        image.load()
    except OSError as e:
        reason: RejectReason = "truncated" if "truncated" in str(e) else "corrupt"
        raise ImageRejected(reason, str(e)) from None
    return to_rgb(ImageOps.exif_transpose(image))


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # Pillow's convert() clips 16-bit values at 255; scale the full range down instead.
        pixels = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
        return Image.fromarray(np.clip(pixels * (255.0 / peak), 0, 255).round().astype(np.uint8)).convert("RGB")
    if image.mode == "F":
        return Image.fromarray(np.clip(np.asarray(image), 0, 255).round().astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels over white, as a browser shows them.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, P, CMYK, YCbCr, 1


def load_images(sources: Mapping[str, tuple[str, str]], max_pixels: int = 89_478_485) -> dict[str, Image.Image]:
    """id -> decoded image of cache rows, from (file, key) of each row's ``source``: the file is the
    image itself (image-folder data sets) or the input tar, which is read once for all its keys."""
    by_shard: dict[str, dict[str, str]] = {}
    images = {}
    for uid, (file, key) in sources.items():
        if Path(file).suffix.lower().lstrip(".") in IMAGE_EXTENSIONS:
            images[uid] = decode_image(Path(file).read_bytes(), max_pixels)
        else:
            by_shard.setdefault(file, {})[key] = uid
    for shard, keys in by_shard.items():
        for sample in iter_shard(Path(shard)):
            if sample.key in keys:
                images[keys[sample.key]] = decode_image(sample.image_bytes, max_pixels)
    return images
