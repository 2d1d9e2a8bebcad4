"""Load and validate the hand-written annotations of the sample set (`annotations.yaml`)."""

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from lyrics.data.errors import DataFormatError, describe_validation_error
from lyrics.data.sample.photos import split_source

DEFAULT_ANNOTATIONS_PATH = Path(__file__).with_name("annotations.yaml")
VQA_ANSWER_COUNT = 10  # VQAv2 collects ten human answers per question

Text = Annotated[str, Field(min_length=1)]


class AnnotationError(DataFormatError):
    """The annotations file is malformed; the message names the file and the image key."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QuestionAnswer(_Model):
    question: Text
    answer_type: Literal["yes/no", "number", "other"]
    answers: dict[Text, StrictInt]  # answer -> how many of the ten annotators gave it

    @field_validator("answers", mode="before")
    @classmethod
    def _answers_are_text(cls, answers: object) -> object:
        # YAML reads unquoted yes / no / 2 as booleans and numbers.
        if isinstance(answers, dict):
            for answer in answers:
                if not isinstance(answer, str):
                    raise ValueError(f"answer {answer!r} is not text; quote it in the YAML")
        return answers

    @model_validator(mode="after")
    def _ten_answers(self) -> "QuestionAnswer":
        if any(count < 1 for count in self.answers.values()):
            raise ValueError(f"answer counts must be positive: {self.answers}")
        total = sum(self.answers.values())
        if total != VQA_ANSWER_COUNT:
            raise ValueError(f"answer counts sum to {total}, expected {VQA_ANSWER_COUNT}: {self.answers}")
        return self

    @property
    def ranked_answers(self) -> list[str]:
        """Answers from the most to the least frequent, ties in alphabetical order."""
        return sorted(self.answers, key=lambda answer: (-self.answers[answer], answer))

    @property
    def multiple_choice_answer(self) -> str:
        return self.ranked_answers[0]

    @property
    def ten_answers(self) -> list[str]:
        return [answer for answer in self.ranked_answers for _ in range(self.answers[answer])]


class SampleObject(_Model):
    label: Text
    box: tuple[StrictInt, StrictInt, StrictInt, StrictInt]  # x1, y1, x2, y2 pixels
    refs: list[Text] = Field(min_length=1)

    @model_validator(mode="after")
    def _box_is_ordered(self) -> "SampleObject":
        x1, y1, x2, y2 = self.box
        if not (0 <= x1 < x2 and 0 <= y1 < y2):
            raise ValueError(
                f"box {list(self.box)} of {self.label!r} is not [x1, y1, x2, y2] "
                "with 0 <= x1 < x2 and 0 <= y1 < y2"
            )
        return self


class SampleImage(_Model):
    key: Annotated[str, Field(pattern=r"^[a-z0-9_]+$")]
    source: Text
    split: Literal["train", "val", "test"]
    captions: list[Text] = Field(min_length=2)
    detail: Text
    objects: list[SampleObject] = []
    # Labels of things the photo shows more of than are boxed (a face's eyes, the 19 coins left
    # unboxed): the evaluation files never ask about them as absent, nor count them.
    unboxed: list[Text] = []
    qa: list[QuestionAnswer] = []

    @field_validator("source")
    @classmethod
    def _source_is_known(cls, source: str) -> str:
        split_source(source)
        return source


@dataclass(frozen=True)
class SampleAnnotations:
    path: Path
    images: tuple[SampleImage, ...]

    def check_photo_size(self, image: SampleImage, size: tuple[int, int]) -> None:
        """Every box of `image` lies inside its photo of `size` (width, height)."""
        width, height = size
        for item in image.objects:
            x1, y1, x2, y2 = item.box
            if x2 > width or y2 > height:
                raise AnnotationError(
                    f"{self.path}: image {image.key!r}: box {list(item.box)} of {item.label!r} "
                    f"is outside the {width}x{height} photo"
                )


def load_annotations(path: Path = DEFAULT_ANNOTATIONS_PATH) -> SampleAnnotations:
    """Parse and validate `path`; box-inside-photo is checked by `check_photo_size`."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise AnnotationError(f"{path}: cannot read the annotations ({error})") from error
    if not isinstance(document, dict) or set(document) != {"images"} or not isinstance(document["images"], list):
        raise AnnotationError(f"{path}: expected a mapping with a single `images:` list")
    images = tuple(_validate_image(path, index, raw) for index, raw in enumerate(document["images"]))
    duplicates = [key for key, count in Counter(image.key for image in images).items() if count > 1]
    if duplicates:
        raise AnnotationError(f"{path}: image {duplicates[0]!r}: duplicate key")
    return SampleAnnotations(path, images)


def _validate_image(path: Path, index: int, raw: object) -> SampleImage:
    key = raw.get("key") if isinstance(raw, dict) else None
    name = f"image {key!r}" if isinstance(key, str) else f"image #{index}"
    try:
        return SampleImage.model_validate(raw)
    except ValidationError as error:
        raise AnnotationError(f"{path}: {name}: {describe_validation_error(error)}") from error
