"""Decoding untrusted image bytes into upright RGB, or a reason why not.

Every frozen model's preprocessing starts from the one ``PIL.Image`` this returns, so an image is
decoded once. The limits are checked from the header, before the pixels are decoded, so a
decompression bomb costs nothing, and so is the shape: an image with a side under
``min_image_side`` pixels or longer than ``max_aspect_ratio`` times its other side is refused.
At the default ratio of 50 every model still sees at least 20 pixels across (SAM-HQ resizes the
long side to 1024, Grounding-DINO caps it at 1333) and CLIP's short-side resize stays under
12,000 x 224 pixels; a 10000 x 1 strip would give zero-pixel sides and a 2,240,000-pixel-wide CLIP
input.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lyrics.config import ExtractionConfig
from lyrics.data.webdataset import WebSample, image_extensions, iter_shard

RejectReason = Literal["empty", "not_an_image", "too_large", "too_small", "extreme_aspect_ratio", "truncated", "corrupt", "preprocess_failed"]


class ImageRejected(ValueError):
    """An input that cannot become a row; ``reason`` is a short category for the manifest."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageLimits:
    """What an input image may be (``extraction`` settings of pipelines.yaml)."""

    max_pixels: int
    min_side: int
    max_aspect_ratio: float

    @classmethod
    def of(cls, settings: ExtractionConfig) -> ImageLimits:
        return cls(settings.max_image_pixels, settings.min_image_side, settings.max_aspect_ratio)

    def check(self, width: int, height: int) -> None:
        if width * height > self.max_pixels:
            raise ImageRejected("too_large", f"{width} x {height} = {width * height:,} pixels exceeds the limit of {self.max_pixels:,}")
        if min(width, height) < self.min_side:
            raise ImageRejected("too_small", f"{width} x {height}: a side is under {self.min_side} pixels")
        if max(width, height) > self.max_aspect_ratio * min(width, height):
            raise ImageRejected("extreme_aspect_ratio", f"{width} x {height}: one side is over {self.max_aspect_ratio:g} times the other")


DEFAULT_LIMITS = ImageLimits.of(ExtractionConfig())
_PILLOW_LIMIT = threading.Lock()


@contextmanager
def _without_pillow_limit() -> Iterator[None]:
    """Pillow refuses images over twice its own MAX_IMAGE_PIXELS in ``open``; ours (checked right after,
    before any pixel is decoded) is the one that applies and names the configured limit."""
    with _PILLOW_LIMIT, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def decode_image(data: bytes, limits: ImageLimits = DEFAULT_LIMITS) -> Image.Image:
    """Upright RGB from encoded bytes: EXIF orientation applied, CMYK / 16-bit / alpha / palette / gray handled."""
    if not data:
        raise ImageRejected("empty", "zero-byte file")
    try:
        with _without_pillow_limit():
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageRejected("not_an_image", f"not a recognised image format ({len(data)} bytes)") from None
    except (OSError, ValueError, SyntaxError) as e:  # a header Pillow recognises but cannot parse
        raise ImageRejected("corrupt", f"{type(e).__name__}: {e}") from None
    limits.check(*image.size)
    try:
        image.load()
        return to_rgb(ImageOps.exif_transpose(image))
    except OSError as e:
        reason: RejectReason = "truncated" if "truncated" in str(e) else "corrupt"
        raise ImageRejected(reason, str(e)) from None
    except (ValueError, SyntaxError, EOFError) as e:  # damaged data or a pixel mode some decoders report otherwise
        raise ImageRejected("corrupt", f"{type(e).__name__}: {e}") from None


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


def load_images(sources: Mapping[str, tuple[str, str]], limits: ImageLimits = DEFAULT_LIMITS) -> dict[str, Image.Image]:
    """id -> decoded image of cache rows, from (file, key) of each row's ``source``: the file is the
    image itself (image-folder data sets) or the input tar, which is read once for all its keys."""
    by_shard: dict[str, dict[str, str]] = {}
    images = {}
    for uid, (file, key) in sources.items():
        if Path(file).suffix.lower().lstrip(".") in image_extensions():
            images[uid] = decode_image(Path(file).read_bytes(), limits)
        else:
            by_shard.setdefault(file, {})[key] = uid
    for shard, keys in by_shard.items():
        for sample in iter_shard(Path(shard)):
            if isinstance(sample, WebSample) and sample.key in keys:
                images[keys.pop(sample.key)] = decode_image(sample.image_bytes, limits)  # pop: the first of a repeated key, as extracted
    return images
