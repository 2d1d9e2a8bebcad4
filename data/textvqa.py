"""TextVQA: `TextVQA_0.5.1_{split}.json`, its questions in a `data` list, ten human answers each.

The image is named by `image_id`, a hex string that is the stem of the image file
(train_images/<image_id>.jpg), so it is the join key itself; VQAv2's numeric ids and separate
annotations file do not apply. The test file is released without answers; its questions are read
with none (`answers` empty), and the converters refuse them.
"""

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from lyrics.data.jsonfile import read_json


@dataclass(frozen=True)
class TextVqaQuestion:
    question_id: int
    image_id: str  # "0054c91397f2fe05": the image file's stem
    question: str
    answers: tuple[str, ...]  # the ten human answers; empty in the test split


class _Question(BaseModel):
    # image_width, image_height, ocr_tokens, image_classes, flickr urls, ... are not used here
    question_id: int
    image_id: str
    question: str
    answers: list[str] = []  # absent from the test file


class _File(BaseModel):
    data: list[_Question]


def read_textvqa(path: Path) -> list[TextVqaQuestion]:
    """Every question of a TextVQA file, in file order."""
    return [
        TextVqaQuestion(q.question_id, q.image_id, q.question, tuple(q.answers))
        for q in read_json(path, _File).data
    ]
