"""RefCOCO / RefCOCO+ / RefCOCOg: `refs(<split_by>).json` joined with COCO `instances.json`, one
record per referring sentence with its box in [x1, y1, x2, y2] pixels and its image's size, so
that the large instances file is read once.

Upstream ships the refs as a Python pickle (`refs(unc).p`). This project never unpickles files;
the refs are read from the same list of dicts saved as JSON."""

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from lyrics.data.boxes import Box, xywh_to_xyxy
from lyrics.data.errors import DataFormatError
from lyrics.data.jsonfile import read_json

_CONVERSION_HINT = (
    "this project reads the refs as JSON only and never unpickles files. Convert it once, in an "
    "environment you trust, with: python -c \"import json, pickle, sys; "
    "json.dump(pickle.load(open(sys.argv[1], 'rb')), open(sys.argv[2], 'w'))\" "
    "'refs(unc).p' 'refs(unc).json'"
)


@dataclass(frozen=True)
class ReferringExpression:
    ref_id: int
    sent_id: int
    ann_id: int
    image_id: int
    file_name: str
    image_size: tuple[int, int] | None  # (width, height) in pixels; None where instances.json omits them
    expression: str
    box_xyxy: Box
    category: str
    split: str


class _Sentence(BaseModel):
    sent: str
    sent_id: int


class _Ref(BaseModel):
    ref_id: int
    ann_id: int
    image_id: int
    split: str
    sentences: list[_Sentence]


class _Image(BaseModel):
    id: int
    file_name: str
    width: int | None = None  # COCO always has them; hand-made files may not
    height: int | None = None


class _Annotation(BaseModel):
    id: int
    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float]


class _Category(BaseModel):
    id: int
    name: str


class _Instances(BaseModel):
    images: list[_Image]
    annotations: list[_Annotation]
    categories: list[_Category]


def read_refcoco(refs_path: Path, instances_path: Path) -> list[ReferringExpression]:
    """One record per (ref, sentence), in the refs file's order. `expression` is the normalised
    `sent` (lower case, as the benchmarks score it); `file_name` and `image_size` are the COCO image's."""
    if Path(refs_path).suffix == ".p":
        raise DataFormatError(f"{refs_path}: is a pickle; {_CONVERSION_HINT}")
    refs = read_json(refs_path, list[_Ref])
    instances = read_json(instances_path, _Instances)
    images = {image.id: image for image in instances.images}
    annotations = {annotation.id: annotation for annotation in instances.annotations}
    categories = {category.id: category.name for category in instances.categories}
    records = []
    for ref in refs:
        annotation = annotations.get(ref.ann_id)
        if annotation is None or annotation.image_id != ref.image_id or ref.image_id not in images:
            raise DataFormatError(
                f"{refs_path}: ref {ref.ref_id} points at annotation {ref.ann_id} of image "
                f"{ref.image_id}, which {instances_path} does not have"
            )
        if annotation.category_id not in categories:
            raise DataFormatError(
                f"{instances_path}: annotation {annotation.id} has unknown category {annotation.category_id}"
            )
        records.extend(
            ReferringExpression(
                ref_id=ref.ref_id,
                sent_id=sentence.sent_id,
                ann_id=ref.ann_id,
                image_id=ref.image_id,
                file_name=images[ref.image_id].file_name,
                image_size=_size(images[ref.image_id]),
                expression=sentence.sent,
                box_xyxy=xywh_to_xyxy(annotation.bbox),
                category=categories[annotation.category_id],
                split=ref.split,
            )
            for sentence in ref.sentences
        )
    return records


def _size(image: _Image) -> tuple[int, int] | None:
    return None if image.width is None or image.height is None else (image.width, image.height)
