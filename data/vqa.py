"""VQAv2: the questions file joined with the annotations file by question id."""

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from lyrics.data.errors import DataFormatError
from lyrics.data.jsonfile import read_json


@dataclass(frozen=True)
class VqaQuestion:
    question_id: int
    image_id: int
    question: str
    question_type: str
    answer_type: str
    multiple_choice_answer: str
    answers: tuple[str, ...]  # the ten human answers, scored by the VQA accuracy min(#matches / 3, 1)


class VqaQuestionText(BaseModel):
    """A question as the questions file has it (test-dev: all there is)."""

    question_id: int
    image_id: int
    question: str


class _QuestionsFile(BaseModel):
    questions: list[VqaQuestionText]


class _Answer(BaseModel):
    answer: str


class _Annotation(BaseModel):
    question_id: int
    image_id: int
    question_type: str
    answer_type: str
    multiple_choice_answer: str
    answers: list[_Answer]


class _AnnotationsFile(BaseModel):
    annotations: list[_Annotation]


def read_vqa_questions(questions_path: Path) -> list[VqaQuestionText]:
    """The questions file alone, in its order."""
    return read_json(questions_path, _QuestionsFile).questions


def read_vqa(questions_path: Path, annotations_path: Path) -> list[VqaQuestion]:
    """Every question of `questions_path` with its annotation, in the questions file's order."""
    questions = read_vqa_questions(questions_path)
    annotations_file = read_json(annotations_path, _AnnotationsFile)
    annotations = {annotation.question_id: annotation for annotation in annotations_file.annotations}
    records = []
    for question in questions:
        annotation = annotations.get(question.question_id)
        if annotation is None or annotation.image_id != question.image_id:
            raise DataFormatError(
                f"{questions_path}: question {question.question_id} (image {question.image_id}) "
                f"has no annotation for that image in {annotations_path}"
            )
        records.append(
            VqaQuestion(
                question_id=question.question_id,
                image_id=question.image_id,
                question=question.question,
                question_type=annotation.question_type,
                answer_type=annotation.answer_type,
                multiple_choice_answer=annotation.multiple_choice_answer,
                answers=tuple(answer.answer for answer in annotation.answers),
            )
        )
    return records
