"""COCO captions (`captions_*.json`) and the Karpathy split (`dataset_coco.json`), both read into
one record per image: id, image path, captions, split."""

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from lyrics.data.errors import DataFormatError
from lyrics.data.jsonfile import read_json


@dataclass(frozen=True)
class CaptionedImage:
    image_id: int
    file_path: Path
    captions: tuple[str, ...]
    split: str | None
    domain: str | None = None  # NoCaps: in-domain, near-domain or out-domain (its CIDEr is reported per domain)


class _CocoImage(BaseModel):
    id: int
    file_name: str
    domain: str | None = None  # NoCaps' extension of the COCO format


class _CocoCaption(BaseModel):
    image_id: int
    caption: str


class _CocoCaptionsFile(BaseModel):
    images: list[_CocoImage]
    annotations: list[_CocoCaption]


class _KarpathySentence(BaseModel):
    raw: str


class _KarpathyImage(BaseModel):
    filepath: str
    filename: str
    cocoid: int
    split: str
    sentences: list[_KarpathySentence]


class _KarpathyFile(BaseModel):
    images: list[_KarpathyImage]


def read_coco_captions(path: Path, image_dir: Path, split: str | None = None) -> list[CaptionedImage]:
    """Images of a COCO captions file in file order; `file_name` is resolved under `image_dir`.
    The file does not say its split, so the caller may (e.g. "val" for captions_val2014.json)."""
    document = read_json(path, _CocoCaptionsFile)
    captions: dict[int, list[str]] = defaultdict(list)
    image_ids = {image.id for image in document.images}
    for annotation in document.annotations:
        if annotation.image_id not in image_ids:
            raise DataFormatError(
                f"{path}: a caption refers to image id {annotation.image_id}, which is not in `images`"
            )
        captions[annotation.image_id].append(annotation.caption)
    return [
        CaptionedImage(image.id, Path(image_dir) / image.file_name, tuple(captions[image.id]), split, image.domain)
        for image in document.images
    ]


def read_karpathy_split(path: Path, image_root: Path) -> list[CaptionedImage]:
    """Images of a Karpathy `dataset_coco.json`; `filepath/filename` is resolved under `image_root`
    (the COCO folder holding train2014/ and val2014/). Splits are train, val, test and restval."""
    document = read_json(path, _KarpathyFile)
    return [
        CaptionedImage(
            image.cocoid,
            Path(image_root) / image.filepath / image.filename,
            tuple(sentence.raw for sentence in image.sentences),
            image.split,
        )
        for image in document.images
    ]
