"""GQA: a `{split}_balanced_questions.json` (or `_all_`) file, question id -> question.

Unlike VQAv2 there is no annotations file to join and no numeric image id: `imageId` is the stem
of the image file (images/<imageId>.jpg), so it is the join key itself. Each question has one
answer, scored by exact match. The test and challenge files are released without answers; their
questions are read with none (`answers` empty), and the converters refuse them.
"""

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field

from lyrics.data.jsonfile import read_json


@dataclass(frozen=True)
class GqaQuestion:
    question_id: str
    image_id: str  # GQA's imageId ("n161313", "2354786"): the image file's stem
    question: str
    answer: str | None  # None in the test and challenge files

    @property
    def answers(self) -> tuple[str, ...]:
        """The one answer as the list `from_vqa` takes (its majority is itself)."""
        return () if self.answer is None else (self.answer,)


class _Question(BaseModel):
    # fullAnswer, semantic, types, annotations, ... are not used here and are ignored
    image_id: str = Field(alias="imageId")
    question: str
    answer: str | None = None


def read_gqa(path: Path) -> list[GqaQuestion]:
    """Every question of a GQA questions file, in file order."""
    questions = read_json(path, dict[str, _Question])
    return [GqaQuestion(qid, q.image_id, q.question, q.answer) for qid, q in questions.items()]
