"""Byte-stable encoders: the same input gives the same bytes on every run."""

import hashlib
import io
import json

from PIL import Image

JPEG_QUALITY = 95


def jpeg_bytes(image: Image.Image, **options: object) -> bytes:
    """JPEG with fixed encoder settings and no metadata beyond what `options` adds (e.g. exif)."""
    settings = {"quality": JPEG_QUALITY, "subsampling": "4:2:0", "optimize": False, "progressive": False}
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **(settings | options))
    return buffer.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def json_bytes(document: object) -> bytes:
    return (json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
