"""Benchmark files -> evaluation items: one prompt, image join key and scoring target per question.

`load_items(format, files, split)` reads a benchmark's annotation files with the project's readers
(data/*.py) and returns `EvalItem`s, in file order. An item's `image` is the join key with the
feature cache, the image file name's stem (data/instructions.py), except for MME's release folder,
whose file names repeat across subtasks: there it is the image's path relative to the folder,
without extension ("artwork/images/10002"), as the extract phase keys that folder's rows. Its
`prompt` is the first human turn, holding `<Image>` once. Prompts are fixed, never drawn per item,
so that a score does not depend on template luck:

- refcoco: the first REC template; karpathy, coco_captions: the first captioning template;
- vqa, gqa, vizwiz, ocrvqa: the VQA template "Based on the image, respond to this question with a
  short answer: {question}. Answer:"; textvqa: its text-reading analogue "Analyze the textual
  content in this image and provide a short answer to: {question}.";
- scienceqa: the first multiple-choice template, filled in as training fills it (hint, question,
  options "(A) x (B) y");
- pope, mme: `<Image>` and the benchmark's own question, as the official scripts ask it.

Targets (JSON-serialisable) by format:

    refcoco        {"box": [x1, y1, x2, y2] pixels, "size": [width, height]}
    karpathy       {"references": [every raw sentence]}
    coco_captions  {"references": [every caption of the image]}
    vqa            {"answers": [the ten human answers], "question_id": int}; answers [] without
                   annotations (test-dev: the server scores a submission, not load_items' caller)
    textvqa        {"answers": [the ten human answers]}
    vizwiz         {"answers": [the ten human answers]}  ("unanswerable" among them, scored as any)
    gqa            {"answer": the one answer}
    ocrvqa         {"answer": the one answer}
    scienceqa      {"answer": letter, "options": [choices]}
    pope           {"label": "yes" | "no", "setting": "random" | "popular" | "adversarial" | ...}
    mme            {"subtask": ..., "answer": "Yes" | "No", "image": the image's file name}

Files by format (keys of `files`; `?` marks an optional one, `|` two of which exactly one is given):

    refcoco        refs ('refs(unc).json', the refs pickle saved as JSON), instances (COCO instances.json)
    karpathy       annotations (dataset_coco.json)
    coco_captions  annotations (a COCO captions file, e.g. NoCaps' nocaps_val_4500_captions.json)
    vqa            questions, annotations? (absent for test-dev), image_names (any COCO-style file
                   with an `images` list, e.g. image_info_test-dev2015.json)
    gqa            questions ({split}_balanced_questions.json)
    textvqa        questions (TextVQA_0.5.1_{split}.json)
    vizwiz         questions (VizWiz's {split}.json)
    ocrvqa         dataset (OCR-VQA's dataset.json; images/<image id>.jpg, so the image id is the key)
    scienceqa      problems (problems.json), images? (problem id -> image key; default: the problem id)
    pope           questions (a JSON object setting -> records, or an official POPE JSONL file)
    mme            questions (a JSON list of {subtask, image, question, answer})
                   | folder (the official MME_Benchmark_release_version/: a folder per subtask
                   holding <image>.txt files of "question<TAB>Yes|No" lines, beside the images or
                   in questions_answers_YN/ beside images/)

`split` selects refcoco's refs split, karpathy's images split, OCR-VQA's split (train, val, test:
the file's 1, 2, 3), scienceqa's problems split and the POPE setting (all of them when None). The
other files are one split each, so `split` is not used there. A split the file does not have is a
DataFormatError listing those it has. Ids are the files' question (or image, for captions and
VizWiz) ids; OCR-VQA's are "<image id>-<question index>", MME's "<subtask>-<image stem>-<answer>"
for the JSON list and "<subtask>-<image stem>-<question index>" for the folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, TypeAdapter, ValidationError

from lyrics.data.coco import CaptionedImage, read_coco_captions, read_karpathy_split
from lyrics.data.errors import DataFormatError, describe_validation_error
from lyrics.data.gqa import read_gqa
from lyrics.data.instruction_templates import CAPTION, IMAGE_TOKEN, MULTIPLE_CHOICE, REC, TEMPLATES, TEXT_VQA, VQA
from lyrics.data.instructions import OPTION_LETTERS, read_scienceqa, scienceqa_fields
from lyrics.data.jsonfile import read_json
from lyrics.data.refcoco import read_refcoco
from lyrics.data.textvqa import read_textvqa
from lyrics.data.vqa import VqaQuestion, VqaQuestionText, read_vqa, read_vqa_questions
from lyrics.evaluate.mme import COGNITION, PERCEPTION

FORMATS = (
    "refcoco", "karpathy", "coco_captions", "vqa", "gqa", "textvqa", "vizwiz", "ocrvqa", "scienceqa", "pope", "mme",
)  # fmt: skip
POPE_SETTINGS = ("random", "popular", "adversarial")
OCRVQA_SPLITS = {1: "train", 2: "val", 3: "test"}  # dataset.json's `split` values
MME_QUESTIONS_FOLDER = "questions_answers_YN"  # beside images/ in artwork, celebrity, landmark, posters, scene
MME_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
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
    image: str  # the join key: the image file name's stem ("astronaut"; see the module docstring)
    prompt: str  # the first human turn, holding <Image> once
    target: dict[str, Any]  # JSON-serialisable, per format (see the module docstring)


# --- file readers of the formats without a project reader -------------------------------------
class _NamedImage(BaseModel):
    id: int
    file_name: str


class _NamedImages(BaseModel):
    """Any COCO-style file (captions, instances) read for its `images` list only."""

    images: list[_NamedImage]


class _VizWizAnswer(BaseModel):
    answer: str


class _VizWizQuestion(BaseModel):
    image: str
    question: str
    answers: list[_VizWizAnswer] = []  # absent from the test file


class _OcrVqaImage(BaseModel):
    questions: list[str]
    answers: list[str]
    split: Literal[1, 2, 3]


class _OcrVqaEntry(NamedTuple):
    image_id: str
    image: _OcrVqaImage
    split: str  # the name of image.split, which _of_split selects by


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
    unsized = sorted({str(item.image_id) for item in expressions if item.image_size is None})
    if unsized:
        raise DataFormatError(
            f"{instances}: {len(unsized)} image(s) have no width and height, which REC scoring needs: "
            f"{', '.join(unsized[:_LISTED])}"
        )
    return [
        EvalItem(
            id=str(item.sent_id),
            image=_stem(item.file_name),
            prompt=REC_PROMPT.format(expression=item.expression),
            target={"box": [float(v) for v in item.box_xyxy], "size": list(item.image_size)},
        )
        for item in expressions
    ]


def _karpathy(files: Mapping[str, Path], split: str | None) -> list[EvalItem]:
    path = files["annotations"]
    return _caption_items(_of_split(read_karpathy_split(path, Path(".")), split, path))


def _coco_captions(files: Mapping[str, Path], split: str | None) -> list[EvalItem]:
    path = files["annotations"]
    images = read_coco_captions(path, Path("."))
    uncaptioned = [str(image.image_id) for image in images if not image.captions]
    if uncaptioned:  # an image without references cannot be scored (a test file has no `annotations` at all)
        raise DataFormatError(f"{path}: {len(uncaptioned)} image(s) have no caption: {', '.join(uncaptioned[:_LISTED])}")
    return _caption_items(images)


def _caption_items(images: list[CaptionedImage]) -> list[EvalItem]:
    return [
        EvalItem(
            str(image.image_id), image.file_path.stem, CAPTION_PROMPT,
            {"references": list(image.captions), **({"domain": image.domain} if image.domain else {})},
        )
        for image in images
    ]  # fmt: skip


def _vqa(files: Mapping[str, Path], split: str | None) -> list[EvalItem]:
    questions, names = files["questions"], files["image_names"]
    records: Sequence[VqaQuestion | VqaQuestionText]
    answers: dict[int, list[str]] = {}  # none for test-dev: released without them, the server scores it
    if "annotations" in files:
        records = annotated = read_vqa(questions, files["annotations"])
        answers = {q.question_id: list(q.answers) for q in annotated}
    else:
        records = read_vqa_questions(questions)  # test-dev: no annotations file to join
    keys = {image.id: _stem(image.file_name) for image in read_json(names, _NamedImages).images}
    missing = sorted({str(q.image_id) for q in records if q.image_id not in keys})
    if missing:
        raise DataFormatError(
            f"{names}: has no file name for {len(missing)} image id(s) of {questions}: {', '.join(missing[:_LISTED])}"
        )
    return [
        EvalItem(
            id=str(q.question_id),
            image=keys[q.image_id],
            prompt=VQA_PROMPT.format(question=q.question),
            target={"answers": answers.get(q.question_id, []), "question_id": q.question_id},
        )
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


def _vizwiz(files: Mapping[str, Path], split: str | None) -> list[EvalItem]:
    path = files["questions"]
    records = read_json(path, list[_VizWizQuestion])
    _require_answers(path, [_stem(q.image) for q in records if not q.answers])
    return [
        EvalItem(
            id=_stem(q.image),  # one question per image in VizWiz
            image=_stem(q.image),
            prompt=VQA_PROMPT.format(question=q.question),
            target={"answers": [a.answer for a in q.answers]},
        )
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


def _ocrvqa(files: Mapping[str, Path], split: str | None) -> list[EvalItem]:
    path = files["dataset"]
    entries = [
        _OcrVqaEntry(image_id, image, OCRVQA_SPLITS[image.split])
        for image_id, image in read_json(path, dict[str, _OcrVqaImage]).items()
    ]
    items = []
    for image_id, image, _ in _of_split(entries, split, path):
        if len(image.questions) != len(image.answers):
            raise DataFormatError(
                f"{path}: image {image_id}: {len(image.questions)} questions but {len(image.answers)} answers"
            )
        items.extend(
            EvalItem(f"{image_id}-{index}", image_id, VQA_PROMPT.format(question=question), {"answer": answer})
            for index, (question, answer) in enumerate(zip(image.questions, image.answers))
        )
    return items


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
    if "folder" in files:
        return _mme_folder(files["folder"])
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


def _mme_folder(root: Path) -> list[EvalItem]:
    """The official release folder: subtasks in the official order, question files by name."""
    if not root.is_dir():
        raise DataFormatError(f"{root}: is not a folder (expected MME_Benchmark_release_version/)")
    subtasks = [name for name in (*PERCEPTION, *COGNITION) if (root / name).is_dir()]
    if not subtasks:
        raise DataFormatError(f"{root}: holds none of the MME subtask folders ({', '.join((*PERCEPTION, *COGNITION))})")
    items = []
    for subtask in subtasks:
        folder = root / subtask
        if (folder / MME_QUESTIONS_FOLDER).is_dir():
            questions, images = folder / MME_QUESTIONS_FOLDER, folder / "images"
        else:
            questions, images = folder, folder
        texts = sorted(questions.glob("*.txt"))
        if not texts:
            raise DataFormatError(f"{questions}: no question files (<image>.txt) of MME subtask {subtask}")
        for text in texts:
            image = _mme_image(text, images)
            key = image.relative_to(root).with_suffix("").as_posix()  # stems repeat across subtasks
            items.extend(
                EvalItem(
                    id=f"{subtask}-{text.stem}-{index}",
                    image=key,
                    prompt=IMAGE_TOKEN + question,
                    target={"subtask": subtask, "answer": answer, "image": image.name},
                )
                for index, (question, answer) in enumerate(_mme_questions(text))
            )
    return items


def _mme_image(text: Path, folder: Path) -> Path:
    """The one image of `folder` named like the question file `text`."""
    found = [folder / (text.stem + suffix) for suffix in MME_IMAGE_SUFFIXES if (folder / (text.stem + suffix)).is_file()]
    if not found:
        names = " or ".join(text.stem + suffix for suffix in MME_IMAGE_SUFFIXES)
        raise DataFormatError(f"{text}: has no image in {folder} ({names})")
    if len(found) > 1:  # the extract phase would key both by the same path
        raise DataFormatError(f"{text}: has several images in {folder}: {', '.join(path.name for path in found)}")
    return found[0]


def _mme_questions(text: Path) -> list[tuple[str, str]]:
    """(question, "Yes" | "No") of each "question<TAB>answer" line."""
    try:
        lines = text.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataFormatError(f"{text}: cannot read the file ({error})") from error
    pairs = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        question, tab, answer = line.rpartition("\t")
        if not tab or not question.strip() or answer.strip().lower() not in ("yes", "no"):
            raise DataFormatError(f"{text}: line {number}: not 'question<TAB>Yes' or 'question<TAB>No': {line!r}")
        pairs.append((question.strip(), answer.strip().capitalize()))
    if not pairs:
        raise DataFormatError(f"{text}: holds no question")
    return pairs


Reader = Callable[[Mapping[str, Path], str | None], list[EvalItem]]


@dataclass(frozen=True)
class _Format:
    read: Reader
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    one_of: tuple[str, ...] = ()  # alternative forms of the main file: exactly one is given


_FORMATS: dict[str, _Format] = {
    "refcoco": _Format(_refcoco, ("refs", "instances")),
    "karpathy": _Format(_karpathy, ("annotations",)),
    "coco_captions": _Format(_coco_captions, ("annotations",)),
    "vqa": _Format(_vqa, ("questions", "image_names"), optional=("annotations",)),
    "gqa": _Format(_gqa, ("questions",)),
    "textvqa": _Format(_textvqa, ("questions",)),
    "vizwiz": _Format(_vizwiz, ("questions",)),
    "ocrvqa": _Format(_ocrvqa, ("dataset",)),
    "scienceqa": _Format(_scienceqa, ("problems",), optional=("images",)),
    "pope": _Format(_pope, ("questions",)),
    "mme": _Format(_mme, one_of=("questions", "folder")),
}
assert tuple(_FORMATS) == FORMATS


def load_items(format: str, files: Mapping[str, Path], split: str | None) -> list[EvalItem]:
    """The items of a benchmark, in file order (see the module docstring for the files and the
    targets of each format). Raises ValueError for an unknown format or wrong file keys, and
    DataFormatError, naming the file, for a missing or malformed file or a split it does not have."""
    if format not in _FORMATS:
        raise ValueError(f"unknown benchmark format {format!r}; formats: {', '.join(FORMATS)}")
    spec = _FORMATS[format]
    chosen = [key for key in spec.one_of if key in files]
    missing = [key for key in spec.required if key not in files]
    unknown = sorted(key for key in files if key not in (*spec.one_of, *spec.required, *spec.optional))
    problems = [f"missing {', '.join(missing)}"] if missing else []
    if spec.one_of and not chosen:
        problems.append(f"missing one of {', '.join(spec.one_of)}")
    if len(chosen) > 1:
        problems.append(f"{' and '.join(chosen)} are alternatives: give one")
    if unknown:
        problems.append(f"unknown {', '.join(unknown)}")
    if problems:
        alternatives = [" | ".join(spec.one_of)] if spec.one_of else []
        expected = ", ".join([*alternatives, *spec.required, *(f"{key} (optional)" for key in spec.optional)])
        raise ValueError(f"format {format!r}: files {'; '.join(problems)} (expected: {expected})")
    items = spec.read({key: Path(value) for key, value in files.items()}, split)
    _check(items, files[(chosen or spec.required)[0]])
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
