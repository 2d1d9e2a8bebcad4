"""Benchmark files -> evaluation items: one prompt, image join key and scoring target per question.

`load_items(format, files, split)` reads a benchmark's annotation files with the project's readers
(data/*.py) and returns `EvalItem`s, in file order. An item's `image` is the join key with the
feature cache, the image file name's stem (data/instructions.py), and its `prompt` is the first
human turn, holding `<Image>` once. Prompts are fixed, never drawn per item, so that a score does not
depend on template luck:

- refcoco: the first REC template; karpathy: the first captioning template;
- vqa, gqa: the VQA template "Based on the image, respond to this question with a short answer:
  {question}. Answer:"; textvqa: its text-reading analogue "Analyze the textual content in this
  image and provide a short answer to: {question}.";
- scienceqa: the first multiple-choice template, filled in as training fills it (hint, question,
  options "(A) x (B) y");
- pope, mme: `<Image>` and the benchmark's own question, as the official scripts ask it.

Targets (JSON-serialisable) by format:

    refcoco    {"box": [x1, y1, x2, y2] pixels, "size": [width, height]}
    karpathy   {"references": [every raw sentence]}
    vqa        {"answers": [the ten human answers]}
    textvqa    {"answers": [the ten human answers]}
    gqa        {"answer": the one answer}
    scienceqa  {"answer": letter, "options": [choices]}
    pope       {"label": "yes" | "no", "setting": "random" | "popular" | "adversarial" | ...}
    mme        {"subtask": ..., "answer": "Yes" | "No", "image": the file's image name}

Files by format (keys of `files`; `?` marks an optional one):

    refcoco    refs ('refs(unc).json', the refs pickle saved as JSON), instances (COCO instances.json)
    karpathy   annotations (dataset_coco.json)
    vqa        questions, annotations, image_names (any COCO-style file with an `images` list)
    gqa        questions ({split}_balanced_questions.json)
    textvqa    questions (TextVQA_0.5.1_{split}.json)
    scienceqa  problems (problems.json), images? (problem id -> image key; default: the problem id)
    pope       questions (a JSON object setting -> records, or an official POPE JSONL file)
    mme        questions (a JSON list of {subtask, image, question, answer})

`split` selects refcoco's refs split, karpathy's images split, scienceqa's problems split and the
POPE setting (all of them when None). VQA, GQA, TextVQA and MME files are one split each, so
`split` is not used there. A split the file does not have is a DataFormatError listing those it has.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from lyrics.data.coco import read_karpathy_split
from lyrics.data.errors import DataFormatError, describe_validation_error
from lyrics.data.gqa import read_gqa
from lyrics.data.instruction_templates import CAPTION, IMAGE_TOKEN, MULTIPLE_CHOICE, REC, TEMPLATES, TEXT_VQA, VQA
from lyrics.data.instructions import OPTION_LETTERS, read_scienceqa, scienceqa_fields
from lyrics.data.jsonfile import read_json
from lyrics.data.refcoco import read_refcoco
from lyrics.data.textvqa import read_textvqa
from lyrics.data.vqa import read_vqa

FORMATS = ("refcoco", "karpathy", "vqa", "gqa", "textvqa", "scienceqa", "pope", "mme")
POPE_SETTINGS = ("random", "popular", "adversarial")
_LISTED = 10  # ids named in an error


def _template(task: str, text: str) -> str:
    """`text`, checked to be one of the task's templates (so that the prompts stay the paper's)."""
    if text not in TEMPLATES[task]:
        raise RuntimeError(f"{text!r} is not a {task} template of lyrics.data.instruction_templates")
    return text


REC_PROMPT = TEMPLATES[REC][0]
CAPTION_PROMPT = TEMPLATES[CAPTION][0]
VQA_PROMPT = _template(VQA, "<Image>Based on the image, respond to this question with a short answer: {question}. Answer:")
TEXT_VQA_PROMPT = _template(
    TEXT_VQA, "<Image>Analyze the textual content in this image and provide a short answer to: {question}."
)
MULTIPLE_CHOICE_PROMPT = TEMPLATES[MULTIPLE_CHOICE][0]


@dataclass(frozen=True)
class EvalItem:
    id: str  # unique within the benchmark
    image: str  # the join key: the image file name's stem ("astronaut")
    prompt: str  # the first human turn, holding <Image> once
    target: dict[str, Any]  # JSON-serialisable, per format (see the module docstring)


# --- file readers of the formats without a project reader -------------------------------------
class _SizedImage(BaseModel):
    id: int
    file_name: str
    width: int
    height: int


class _SizedImages(BaseModel):
    images: list[_SizedImage]


class _NamedImage(BaseModel):
    id: int
    file_name: str


class _NamedImages(BaseModel):
    """Any COCO-style file (captions, instances) read for its `images` list only."""

    images: list[_NamedImage]


class _PopeRecord(BaseModel):
    question_id: int | str
    image: str
    text: str
    label: str


class _MmeRecord(BaseModel):
    subtask: str
    image: str
    question: str
    answer: str


_POPE_SETTINGS_FILE = TypeAdapter(dict[str, list[_PopeRecord]])
_POPE_RECORD = TypeAdapter(_PopeRecord)


# --- the formats ------------------------------------------------------------------------------
def _stem(name: str) -> str:
    return PurePosixPath(name).stem


def _of_split(records: list[Any], split: str | None, path: Path, what: str = "split") -> list[Any]:
    """The records of `split` (all when None); a split the file does not have is an error."""
    if split is None:
        return records
    kept = [record for record in records if record.split == split]
    if not kept:
        found = sorted({str(record.split) for record in records})
        raise DataFormatError(f"{path}: no records of {what} {split!r} (the file has: {', '.join(found) or 'none'})")
    return kept


def _refcoco(files: Mapping[str, Path], split: str | None) -> list[EvalItem]:
    refs, instances = files["refs"], files["instances"]
    expressions = _of_split(read_refcoco(refs, instances), split, refs)
    sizes = {image.id: (image.width, image.height) for image in read_json(instances, _SizedImages).images}
    return [
        EvalItem(
            id=str(item.sent_id),
            image=_stem(item.file_name),
            prompt=REC_PROMPT.format(expression=item.expression),
            target={"box": [float(v) for v in item.box_xyxy], "size": list(sizes[item.image_id])},
        )
        for item in expressions
    ]


def _karpathy(files: Mapping[str, Path], split: str | None) -> list[EvalItem]:
    path = files["annotations"]
    images = _of_split(read_karpathy_split(path, Path(".")), split, path)
    return [
        EvalItem(str(image.image_id), image.file_path.stem, CAPTION_PROMPT, {"references": list(image.captions)})
        for image in images
    ]


def _vqa(files: Mapping[str, Path], split: str | None) -> list[EvalItem]:
    questions, names = files["questions"], files["image_names"]
    records = read_vqa(questions, files["annotations"])
    keys = {image.id: _stem(image.file_name) for image in read_json(names, _NamedImages).images}
    missing = sorted({str(q.image_id) for q in records if q.image_id not in keys})
    if missing:
        raise DataFormatError(
            f"{names}: has no file name for {len(missing)} image id(s) of {questions}: {', '.join(missing[:_LISTED])}"
        )
    return [
        EvalItem(str(q.question_id), keys[q.image_id], VQA_PROMPT.format(question=q.question), {"answers": list(q.answers)})
        for q in records
    ]


def _textvqa(files: Mapping[str, Path], split: str | None) -> list[EvalItem]:
    path = files["questions"]
    records = read_textvqa(path)
    _require_answers(path, [str(q.question_id) for q in records if not q.answers])
    return [
        EvalItem(str(q.question_id), q.image_id, TEXT_VQA_PROMPT.format(question=q.question), {"answers": list(q.answers)})
        for q in records
    ]


def _gqa(files: Mapping[str, Path], split: str | None) -> list[EvalItem]:
    path = files["questions"]
    records = read_gqa(path)
    _require_answers(path, [q.question_id for q in records if q.answer is None])
    return [
        EvalItem(q.question_id, q.image_id, VQA_PROMPT.format(question=q.question), {"answer": q.answer})
        for q in records
    ]


def _require_answers(path: Path, unanswered: list[str]) -> None:
    if unanswered:
        raise DataFormatError(
            f"{path}: {len(unanswered)} question(s) have no answers (a test split is released without them): "
            f"{', '.join(unanswered[:_LISTED])}"
        )


def _scienceqa(files: Mapping[str, Path], split: str | None) -> list[EvalItem]:
    path = files["problems"]
    problems = [p for p in _of_split(read_scienceqa(path), split, path) if p.image is not None]
    if "images" in files:
        keys = read_json(files["images"], dict[str, str])
        missing = [p.pid for p in problems if p.pid not in keys]
        if missing:
            raise DataFormatError(
                f"{files['images']}: names no image for {len(missing)} problem(s) of {path}: {', '.join(missing[:_LISTED])}"
            )
    else:
        keys = {p.pid: p.pid for p in problems}
    return [
        EvalItem(
            id=p.pid,
            image=keys[p.pid],
            prompt=MULTIPLE_CHOICE_PROMPT.format(**scienceqa_fields(p)),
            target={"answer": OPTION_LETTERS[p.answer], "options": list(p.choices)},
        )
        for p in problems
    ]


def _pope(files: Mapping[str, Path], split: str | None) -> list[EvalItem]:
    path = Path(files["questions"])
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataFormatError(f"{path}: cannot read the file ({error})") from error
    settings = _pope_settings(text, path)
    if settings is not None:  # the JSON object form: setting -> records
        if split is not None:
            if split not in settings:
                raise DataFormatError(
                    f"{path}: no POPE setting {split!r} (the file has: {', '.join(settings) or 'none'})"
                )
            settings = {split: settings[split]}
    else:  # an official POPE JSONL file, one setting
        settings = {split or _pope_setting_of(path): _pope_lines(text, path)}
    items = []
    for setting, records in settings.items():
        for record in records:
            label = record.label.strip().lower()
            if label not in ("yes", "no"):
                raise DataFormatError(f"{path}: question {record.question_id} ({setting}): label {record.label!r} is not yes or no")
            items.append(
                EvalItem(
                    id=f"{setting}-{record.question_id}",
                    image=_stem(record.image),
                    prompt=IMAGE_TOKEN + record.text,
                    target={"label": label, "setting": setting},
                )
            )
    return items


def _pope_settings(text: str, path: Path) -> dict[str, list[_PopeRecord]] | None:
    """The records by setting when `text` is one JSON object of lists, else None (JSONL)."""
    try:
        document = json.loads(text)
    except ValueError:
        return None  # several lines of JSON
    if not isinstance(document, dict) or not all(isinstance(value, list) for value in document.values()):
        return None  # a one-line JSONL file
    try:
        return _POPE_SETTINGS_FILE.validate_python(document)
    except ValidationError as error:
        raise DataFormatError(f"{path}: {describe_validation_error(error)}") from error


def _pope_lines(text: str, path: Path) -> list[_PopeRecord]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append(_POPE_RECORD.validate_json(line))
            except ValidationError as error:
                raise DataFormatError(f"{path}: line {number}: {describe_validation_error(error)}") from error
    return records


def _pope_setting_of(path: Path) -> str:
    """The setting an official file's name says ("coco_pope_random.json" -> "random"), else its stem."""
    last = path.stem.rsplit("_", 1)[-1]
    return last if last in POPE_SETTINGS else path.stem


def _mme(files: Mapping[str, Path], split: str | None) -> list[EvalItem]:
    path = files["questions"]
    return [
        EvalItem(
            id=f"{record.subtask}-{_stem(record.image)}-{record.answer}",
            image=_stem(record.image),
            prompt=IMAGE_TOKEN + record.question,
            target={"subtask": record.subtask, "answer": record.answer, "image": record.image},
        )
        for record in read_json(path, list[_MmeRecord])
    ]


# format -> (reader, required file keys, optional file keys)
_READERS: dict[str, tuple[Callable[[Mapping[str, Path], str | None], list[EvalItem]], tuple[str, ...], tuple[str, ...]]] = {
    "refcoco": (_refcoco, ("refs", "instances"), ()),
    "karpathy": (_karpathy, ("annotations",), ()),
    "vqa": (_vqa, ("questions", "annotations", "image_names"), ()),
    "gqa": (_gqa, ("questions",), ()),
    "textvqa": (_textvqa, ("questions",), ()),
    "scienceqa": (_scienceqa, ("problems",), ("images",)),
    "pope": (_pope, ("questions",), ()),
    "mme": (_mme, ("questions",), ()),
}
assert tuple(_READERS) == FORMATS


def load_items(format: str, files: Mapping[str, Path], split: str | None) -> list[EvalItem]:
    """The items of a benchmark, in file order (see the module docstring for the files and the
    targets of each format). Raises ValueError for an unknown format or wrong file keys, and
    DataFormatError, naming the file, for a missing or malformed file or a split it does not have."""
    if format not in _READERS:
        raise ValueError(f"unknown benchmark format {format!r}; formats: {', '.join(FORMATS)}")
    reader, required, optional = _READERS[format]
    missing = [key for key in required if key not in files]
    unknown = sorted(key for key in files if key not in required and key not in optional)
    if missing or unknown:
        expected = ", ".join([*required, *(f"{key} (optional)" for key in optional)])
        problems = [f"missing {', '.join(missing)}" if missing else "", f"unknown {', '.join(unknown)}" if unknown else ""]
        raise ValueError(f"format {format!r}: files {'; '.join(p for p in problems if p)} (expected: {expected})")
    items = reader({key: Path(value) for key, value in files.items()}, split)
    _check(items, files[required[0]])
    return items


def _check(items: list[EvalItem], path: Path | str) -> None:
    """Ids unique and one <Image> per prompt, so a scorer can key its results by id."""
    seen: set[str] = set()
    repeated = []
    for item in items:
        if item.id in seen:
            repeated.append(item.id)
        seen.add(item.id)
        if item.prompt.count(IMAGE_TOKEN) != 1:
            raise DataFormatError(f"{path}: item {item.id}: its prompt must hold {IMAGE_TOKEN} once: {item.prompt!r}")
    if repeated:
        raise DataFormatError(f"{path}: {len(repeated)} repeated item id(s): {', '.join(repeated[:_LISTED])}")
