"""The one instruction format of stage 2 (JSONL) and the converters into it from the project's readers.

An example is one or more (human, assistant) turns: the trainer puts the loss on the assistant
tokens only, so the split into turns is what says which tokens are responses. When the example has
an image, `<Image>` (where the soft visual tokens go) is in its first human turn, once. Boxes, in
prompts and answers alike, are spatial text, `<Bbox>(x1,y1),(x2,y2)</Box>`, normalised by the
image's width and height to [0, 999].

The join key, `image`, is the image's file name without folder or extension ("astronaut",
"COCO_train2014_000000000009"; for ScienceQA, whose files are all `image.png`, the problem id).
It is chosen because every source names its images by file while only the COCO family has numeric
ids, and because a cache row can compute it: `image_key` reads it from a WebDataset sample's
metadata, which a cache row keeps in its `source` column. `require_images` then stops a run whose
examples have no cache row, naming the missing images.
"""

import json
import os
from collections import Counter
from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError

from lyrics.data.boxes import Box
from lyrics.data.coco import CaptionedImage
from lyrics.data.errors import DataFormatError, describe_validation_error
from lyrics.data.instruction_templates import (
    CAPTION,
    GROUNDED_CAPTION,
    IMAGE_TOKEN,
    MULTIPLE_CHOICE,
    REC,
    TEMPLATES,
    TEXT_VQA,
    VQA,
    render,
)
from lyrics.data.jsonfile import read_json
from lyrics.data.llava import IMAGE_PLACEHOLDER, Conversation
from lyrics.data.refcoco import ReferringExpression
from lyrics.spatial_text import format_box

CONVERSATION = "conversation"  # LLaVA-style data, kept in its own wording (no template)
TASKS = (*TEMPLATES, CONVERSATION)
OPTION_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_LISTED_MISSING = 10  # enough names to find the problem without flooding the terminal

Size = tuple[int, int]  # (width, height) in pixels


class MissingImagesError(LookupError):
    """Examples refer to images that have no cache row (or no size, or no name); the message names them."""


@dataclass(frozen=True)
class Instruction:
    id: str  # unique in a file: "<source>/<task>/<id in the source>"
    task: str  # one of TASKS
    image: str | None  # the join key; None for a text-only conversation
    source: str  # the dataset it came from: coco, vqav2, gqa, refcoco+, llava, scienceqa, ...
    turns: tuple[tuple[str, str], ...]  # (human, assistant) pairs

    def __post_init__(self) -> None:
        problem = _problem(self)
        if problem:
            raise ValueError(f"instruction {self.id}: {problem}")

    def to_json(self) -> str:
        """One line of JSON (no newline)."""
        turns = [{"human": human, "assistant": assistant} for human, assistant in self.turns]
        record = {"id": self.id, "task": self.task, "image": self.image, "source": self.source, "turns": turns}
        return json.dumps(record, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "Instruction":
        """Raises ValueError (pydantic's ValidationError is one) on a malformed record."""
        record = _Record.model_validate_json(text)
        turns = tuple((turn.human, turn.assistant) for turn in record.turns)
        return cls(record.id, record.task, record.image, record.source, turns)


class _Turn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    human: str
    assistant: str


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    task: str
    image: str | None
    source: str
    turns: list[_Turn]


def _problem(example: Instruction) -> str | None:
    if example.task not in TASKS:
        return f"unknown task {example.task!r} (one of {', '.join(TASKS)})"
    if not example.turns:
        return "has no turns"
    image_tokens = sum(text.count(IMAGE_TOKEN) for turn in example.turns for text in turn)
    if example.image is None and image_tokens:
        return f"has no image but its turns hold {IMAGE_TOKEN}"
    if example.image is not None and (image_tokens != 1 or IMAGE_TOKEN not in example.turns[0][0]):
        return f"has an image, so {IMAGE_TOKEN} must be in its first human turn and nowhere else"
    return None


def write_jsonl(path: Path, examples: Iterable[Instruction]) -> int:
    """One example per line, written to a temporary file and renamed into place, so that a crash
    never leaves half a file; returns the number written."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    count = 0
    with temporary.open("w", encoding="utf-8") as out:
        for example in examples:
            out.write(example.to_json() + "\n")
            count += 1
    temporary.replace(path)
    return count


def read_jsonl(path: Path) -> list[Instruction]:
    """Every example of a JSONL file; a malformed line or a repeated id raises DataFormatError
    naming the file and the line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataFormatError(f"{path}: cannot read the file ({error})") from error
    examples: list[Instruction] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        try:
            example = Instruction.from_json(line)
        except ValidationError as error:
            raise DataFormatError(f"{path}: line {number}: {describe_validation_error(error)}") from error
        except ValueError as error:
            raise DataFormatError(f"{path}: line {number}: {error}") from error
        if example.id in first_line:
            raise DataFormatError(f"{path}: line {number}: id {example.id} repeats line {first_line[example.id]}")
        first_line[example.id] = number
        examples.append(example)
    return examples


# --- the join key ------------------------------------------------------------------------------
def image_key(meta: Mapping[str, Any]) -> str:
    """The join key of a WebDataset sample's metadata, or of a cache row's `source` (which holds
    that metadata): the sample set's `sample_key`, else the file name stem of img2dataset's `url`."""
    if "sample_key" in meta:
        return str(meta["sample_key"])
    return PurePosixPath(str(meta["url"])).stem


def require_images(examples: Iterable[Instruction], available: Collection[str], cache: str) -> None:
    """Stop before training when an example's image has no row in the cache named `cache`."""
    _require((example.image for example in examples if example.image is not None), available, f"have no row in {cache}")


def _require(keys: Iterable[Hashable], available: Collection[Hashable], what: str) -> None:
    missing = sorted({str(key) for key in keys if key not in available})
    if missing:
        listed = ", ".join(missing[:_LISTED_MISSING])
        more = f" and {len(missing) - _LISTED_MISSING} more" if len(missing) > _LISTED_MISSING else ""
        raise MissingImagesError(f"{len(missing)} image(s) of the examples {what}: {listed}{more}")


# --- converters --------------------------------------------------------------------------------
def from_coco_captions(images: Iterable[CaptionedImage], source: str = "coco") -> list[Instruction]:
    """One captioning example per caption (so every caption of an image is a target)."""
    return [
        _single(f"{source}/{CAPTION}/{image.image_id}-{index}", CAPTION, image.file_path.stem, source, caption.strip())
        for image in images
        for index, caption in enumerate(image.captions)
    ]


class AnsweredQuestion(Protocol):
    """What `from_vqa` reads of a question. VqaQuestion (VQAv2, OK-VQA), GqaQuestion and
    TextVqaQuestion all have it, so the one converter serves their three file layouts."""

    @property
    def question_id(self) -> int | str: ...

    @property
    def image_id(self) -> int | str: ...

    @property
    def question(self) -> str: ...

    @property
    def answers(self) -> Sequence[str]: ...


def from_vqa(
    questions: Sequence[AnsweredQuestion],
    image_keys: Mapping[int, str] | None = None,
    source: str = "vqav2",
    task: str = VQA,
) -> list[Instruction]:
    """One example per question, answered by `majority_answer`; `task` is VQA or TEXT_VQA (the
    text-reading templates). VQAv2 and OK-VQA give only COCO image ids, so `image_keys` maps them
    to join keys (e.g. from the COCO captions file). GQA and TextVQA (data/gqa.py, data/textvqa.py)
    have layouts of their own but name each image file by its id, so there the id, a string, is the
    join key and `image_keys` is left out."""
    if task not in (VQA, TEXT_VQA):
        raise ValueError(f"task must be {VQA!r} or {TEXT_VQA!r}, not {task!r}")
    keys: Mapping[Any, str] = image_keys if image_keys is not None else {
        question.image_id: question.image_id for question in questions if isinstance(question.image_id, str)
    }  # without `image_keys` a numeric id is no file name: it stays missing and is named here
    _require((question.image_id for question in questions), keys, "have no image name")
    unanswered = [str(question.question_id) for question in questions if not question.answers]
    if unanswered:
        raise ValueError(f"questions without answers: {', '.join(unanswered[:_LISTED_MISSING])}")
    return [
        _single(
            f"{source}/{task}/{question.question_id}",
            task,
            keys[question.image_id],
            source,
            majority_answer(question.answers),
            question=question.question,
        )
        for question in questions
    ]


def majority_answer(answers: Sequence[str]) -> str:
    """The most frequent of the human answers; a tie goes to the answer given first (annotator
    order, fixed by the file), so a rebuild gives the same targets."""
    return Counter(answers).most_common(1)[0][0]  # equal counts keep first-seen order


def from_refcoco(
    expressions: Iterable[ReferringExpression], sizes: Mapping[str, Size], source: str = "refcoco"
) -> list[Instruction]:
    """Two examples per referring expression (one per sentence of a ref): REC (expression -> box)
    and grounded captioning (box -> expression). `sizes` maps join keys to (width, height): the
    instances file's (`ReferringExpression.image_size`) or, where it lacks them, the cache rows'."""
    expressions = list(expressions)
    _require((PurePosixPath(item.file_name).stem for item in expressions), sizes, "have no image size")
    examples = []
    for item in expressions:
        key = PurePosixPath(item.file_name).stem
        box = format_box(_normalise(item.box_xyxy, sizes[key]))
        examples.append(_single(f"{source}/{REC}/{item.sent_id}", REC, key, source, box, expression=item.expression))
        examples.append(
            _single(
                f"{source}/{GROUNDED_CAPTION}/{item.sent_id}", GROUNDED_CAPTION, key, source, item.expression, bbox=box
            )
        )
    return examples


def from_llava(conversations: Iterable[Conversation], source: str = "llava") -> list[Instruction]:
    """One example per conversation, turn by turn; LLaVA's `<image>` becomes `<Image>` in place.
    Text-only conversations are kept without an image."""
    examples = []
    for conversation in conversations:
        texts = [turn.text for turn in conversation.turns]  # the reader checked human, gpt alternation
        image = None if conversation.image_path is None else conversation.image_path.stem
        if image is not None:
            texts[0] = texts[0].replace(IMAGE_PLACEHOLDER, IMAGE_TOKEN, 1)
        turns = tuple(zip(texts[0::2], texts[1::2]))
        examples.append(Instruction(f"{source}/{CONVERSATION}/{conversation.id}", CONVERSATION, image, source, turns))
    return examples


@dataclass(frozen=True)
class ScienceQuestion:
    pid: str
    question: str
    hint: str  # ScienceQA's context, often empty
    choices: tuple[str, ...]
    answer: int  # index into choices
    image: str | None  # "image.png" under <split>/<pid>/, or None for a text-only problem
    split: str


class _Problem(BaseModel):
    question: str
    choices: list[str]
    answer: int
    hint: str = ""
    image: str | None = None
    split: str


def read_scienceqa(path: Path) -> list[ScienceQuestion]:
    """ScienceQA's `problems.json` (problem id -> problem), in file order; the fields not used
    here (lecture, solution, subject, ...) are ignored."""
    problems = read_json(path, dict[str, _Problem])
    for pid, problem in problems.items():
        if not 2 <= len(problem.choices) <= len(OPTION_LETTERS):
            raise DataFormatError(f"{path}: problem {pid} has {len(problem.choices)} choices")
        if not 0 <= problem.answer < len(problem.choices):
            raise DataFormatError(
                f"{path}: problem {pid}: answer {problem.answer} is not one of its {len(problem.choices)} choices"
            )
    return [
        ScienceQuestion(pid, p.question, p.hint, tuple(p.choices), p.answer, p.image, p.split)
        for pid, p in problems.items()
    ]


def from_scienceqa(problems: Iterable[ScienceQuestion], source: str = "scienceqa") -> list[Instruction]:
    """Multiple-choice examples of the problems with an image: options lettered "(A) x (B) y" (the
    paper's "(a) blue (b) yellow", in capitals) and the answer's letter as the response. The hint
    comes before the question; problems without an image are left out."""
    return [
        _single(
            f"{source}/{MULTIPLE_CHOICE}/{problem.pid}",
            MULTIPLE_CHOICE,
            problem.pid,
            source,
            OPTION_LETTERS[problem.answer],
            **scienceqa_fields(problem),
        )
        for problem in problems
        if problem.image is not None
    ]


def scienceqa_fields(problem: ScienceQuestion) -> dict[str, str]:
    """The multiple-choice template's fields of a problem: `question` (the hint, then the
    question) and `options` ("(A) x (B) y"), shared by training (`from_scienceqa`) and evaluation."""
    return {
        "question": f"{problem.hint} {problem.question}".strip(),
        "options": " ".join(f"({letter}) {choice}" for letter, choice in zip(OPTION_LETTERS, problem.choices)),
    }


def _single(example_id: str, task: str, image: str, source: str, answer: str, **fields: str) -> Instruction:
    """A one-turn example whose prompt is the task's template chosen by the example's id."""
    return Instruction(example_id, task, image, source, ((render(task, example_id, **fields), answer),))


def _normalise(box: Box, size: Size) -> Box:
    width, height = size
    x1, y1, x2, y2 = box
    return (x1 / width, y1 / height, x2 / width, y2 / height)
