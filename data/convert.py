"""`python -m lyrics.data.convert <format> ... --out FILE.jsonl [--source NAME]`: turn a public
annotation format into stage 2's one instruction format (JSONL, data/instructions.py).

    coco-captions --captions captions_train2014.json
    coco-captions --captions dataset_coco.json --karpathy --split train
    vqa           --questions Q.json --annotations A.json --image-names captions_train2014.json [--text-vqa]
    gqa           --questions testdev_balanced_questions.json
    textvqa       --questions TextVQA_0.5.1_train.json
    refcoco       --refs 'refs(unc).json' --instances instances.json --split train
    llava         --conversations llava_instruct_150k.json
    scienceqa     --problems problems.json --split train

A file that holds evaluation splits beside its training one (a Karpathy file, RefCOCO refs,
ScienceQA problems) needs `--split`, so that a forgotten flag cannot put benchmark items into
training; `--split all` keeps every split on purpose.

An example names its image by file name stem (the join key with the feature cache), so the image
files themselves are not read; `--images` only says where the file names are resolved.
"""

import argparse
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import TypeVar

from pydantic import BaseModel

from lyrics.data.coco import read_coco_captions, read_karpathy_split
from lyrics.data.errors import DataFormatError
from lyrics.data.gqa import read_gqa
from lyrics.data.instruction_templates import TEXT_VQA, VQA
from lyrics.data.instructions import (
    AnsweredQuestion,
    Instruction,
    MissingImagesError,
    from_coco_captions,
    from_llava,
    from_refcoco,
    from_scienceqa,
    from_vqa,
    read_scienceqa,
    write_jsonl,
)
from lyrics.data.jsonfile import read_json
from lyrics.data.llava import read_llava
from lyrics.data.refcoco import read_refcoco
from lyrics.data.textvqa import read_textvqa
from lyrics.data.vqa import read_vqa

T = TypeVar("T")
Q = TypeVar("Q", bound=AnsweredQuestion)
_LISTED = 10  # repeated ids named in an error
ALL_SPLITS = "all"  # --split all: every split of the file, chosen on purpose
_MAIN_INPUT = {  # the argument naming the file the examples' ids come from
    "coco-captions": "captions",
    "vqa": "questions",
    "gqa": "questions",
    "textvqa": "questions",
    "refcoco": "refs",
    "llava": "conversations",
    "scienceqa": "problems",
}


class _Image(BaseModel):
    id: int
    file_name: str


class _Images(BaseModel):
    """Any COCO-style file (captions, instances) read for its `images` list only."""

    images: list[_Image]


# --- one function per format -------------------------------------------------------------------
def coco_captions(
    captions: Path, images: Path, source: str = "coco", karpathy: bool = False, split: str | None = None
) -> list[Instruction]:
    """A COCO captions file, or with `karpathy` a Karpathy `dataset_coco.json` (whose images of
    `split` are kept, which it then needs; `images` is the folder holding train2014/ and val2014/)."""
    if karpathy:
        if split is None:
            raise ValueError(f"{captions}: a Karpathy file holds the val and test splits too; name the split to keep")
        captioned = _of_split(read_karpathy_split(captions, images), split, captions)
    else:
        if split is not None:
            raise ValueError("only a Karpathy file has splits to select")
        captioned = read_coco_captions(captions, images)
    return from_coco_captions(captioned, source)


def vqa(
    questions: Path, annotations: Path, image_names: Path, source: str | None = None, text_vqa: bool = False
) -> list[Instruction]:
    """VQAv2-style questions and annotations (VQAv2, OK-VQA); image ids are named by the `images`
    list of a COCO-style file. `text_vqa` uses the text-reading templates."""
    records = read_vqa(questions, annotations)
    keys = {image.id: PurePosixPath(image.file_name).stem for image in read_json(image_names, _Images).images}
    task = TEXT_VQA if text_vqa else VQA
    with _naming(questions, image_names):
        return from_vqa(records, keys, source or ("textvqa" if text_vqa else "vqav2"), task)


def gqa(questions: Path, source: str = "gqa") -> list[Instruction]:
    """A GQA questions file: one VQA example per question, its one answer the target. The
    `imageId`s are the join keys, so no file of image names is needed."""
    records = _answered(read_gqa(questions), questions)
    with _naming(questions):
        return from_vqa(records, source=source)


def textvqa(questions: Path, source: str = "textvqa") -> list[Instruction]:
    """A TextVQA file (train or val): one text-reading example per question, answered by the
    majority of its ten answers. The `image_id`s are the join keys."""
    records = _answered(read_textvqa(questions), questions)
    with _naming(questions):
        return from_vqa(records, source=source, task=TEXT_VQA)


def _answered(records: list[Q], path: Path) -> list[Q]:
    """Refuse a file whose questions lack answers (GQA's and TextVQA's test splits are released
    without them) instead of writing examples with no target or silently dropping some."""
    unanswered = [str(record.question_id) for record in records if not record.answers]
    if unanswered:
        listed = ", ".join(unanswered[:_LISTED]) + (" ..." if len(unanswered) > _LISTED else "")
        raise DataFormatError(
            f"{path}: {len(unanswered)} of {len(records)} questions have no answers ({listed}); "
            "a test split is released without them and cannot become training examples"
        )
    return records


def refcoco(refs: Path, instances: Path, split: str, source: str = "refcoco") -> list[Instruction]:
    """RefCOCO / RefCOCO+ / RefCOCOg refs (as JSON) with the COCO instances file, whose images'
    width and height normalise the boxes; `split` keeps the refs of that split."""
    expressions = _of_split(read_refcoco(refs, instances), split, refs)
    sizes = {PurePosixPath(item.file_name).stem: item.image_size for item in expressions if item.image_size is not None}
    with _naming(refs, instances):
        return from_refcoco(expressions, sizes, source)


def llava(conversations: Path, images: Path, source: str = "llava") -> list[Instruction]:
    """LLaVA conversations, kept in their own wording."""
    with _naming(conversations):
        return from_llava(read_llava(conversations, images), source)


def scienceqa(problems: Path, split: str, source: str = "scienceqa") -> list[Instruction]:
    """ScienceQA's `problems.json`: the problems with an image of `split`."""
    return from_scienceqa(_of_split(read_scienceqa(problems), split, problems), source)


def _of_split(records: Iterable[T], split: str, path: Path) -> list[T]:
    """The records of `split` (every one for `all`); a split the file does not have is an error, so
    a misspelt name does not write an empty file."""
    records = list(records)
    if split == ALL_SPLITS:
        return records
    kept = [record for record in records if record.split == split]  # type: ignore[attr-defined]
    if not kept:
        found = sorted({str(record.split) for record in records})  # type: ignore[attr-defined]
        raise DataFormatError(f"{path}: no records of split {split!r} (the file has: {', '.join(found) or 'none'})")
    return kept


@contextmanager
def _naming(*paths: Path):
    """Converter errors (missing image names or sizes, malformed examples) as DataFormatErrors
    that name the input files."""
    try:
        yield
    except DataFormatError:
        raise
    except (MissingImagesError, ValueError) as error:
        raise DataFormatError(f"{', '.join(str(path) for path in paths)}: {error}") from error


# --- the command -------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lyrics.data.convert",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    formats = parser.add_subparsers(dest="format", required=True, metavar="FORMAT")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = formats.add_parser(name, help=help, description=help)
        sub.add_argument("--out", type=Path, required=True, help="JSONL file to write (replaced if it exists)")
        sub.add_argument("--source", help="the examples' source name (default: the format's, e.g. coco)")
        return sub

    def images(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--images", type=Path, default=Path("."), help="folder the file names are under")

    sub = command("coco-captions", "COCO captions, or a Karpathy dataset_coco.json")
    sub.add_argument("--captions", type=Path, required=True, help="captions_*.json (or dataset_coco.json)")
    images(sub)
    sub.add_argument("--karpathy", action="store_true", help="--captions is a Karpathy dataset_coco.json")
    sub.add_argument("--split", help="Karpathy split to keep (needed with --karpathy): train, restval, val, test or all")

    sub = command("vqa", "VQAv2-style questions and annotations (VQAv2, OK-VQA)")
    sub.add_argument("--questions", type=Path, required=True, help="questions JSON")
    sub.add_argument("--annotations", type=Path, required=True, help="annotations JSON")
    sub.add_argument(
        "--image-names", type=Path, required=True, help="COCO-style JSON whose `images` map ids to file names"
    )
    sub.add_argument("--text-vqa", action="store_true", help="text-reading templates (task text_vqa)")

    sub = command("gqa", "GQA questions (one answer each, images named by imageId)")
    sub.add_argument("--questions", type=Path, required=True, help="{split}_balanced_questions.json")

    sub = command("textvqa", "TextVQA questions (majority of ten answers, text-reading templates)")
    sub.add_argument("--questions", type=Path, required=True, help="TextVQA_0.5.1_{train,val}.json")

    sub = command("refcoco", "RefCOCO / RefCOCO+ / RefCOCOg")
    sub.add_argument("--refs", type=Path, required=True, help="refs(<split_by>).json")
    sub.add_argument("--instances", type=Path, required=True, help="COCO instances JSON (boxes, image sizes)")
    sub.add_argument("--split", required=True, help="refs split to keep: train, val, testA, ... or all")

    sub = command("llava", "LLaVA conversations")
    sub.add_argument("--conversations", type=Path, required=True, help="LLaVA JSON list of conversations")
    images(sub)

    sub = command("scienceqa", "ScienceQA problems with an image, as multiple choice")
    sub.add_argument("--problems", type=Path, required=True, help="problems.json")
    sub.add_argument("--split", required=True, help="split to keep: train, val, test, minitrain, ... or all")
    return parser


def _convert(args: argparse.Namespace) -> list[Instruction]:
    source = {} if args.source is None else {"source": args.source}
    if args.format == "coco-captions":
        return coco_captions(args.captions, args.images, karpathy=args.karpathy, split=args.split, **source)
    if args.format == "vqa":
        return vqa(args.questions, args.annotations, args.image_names, text_vqa=args.text_vqa, **source)
    if args.format == "gqa":
        return gqa(args.questions, **source)
    if args.format == "textvqa":
        return textvqa(args.questions, **source)
    if args.format == "refcoco":
        return refcoco(args.refs, args.instances, split=args.split, **source)
    if args.format == "llava":
        return llava(args.conversations, args.images, **source)
    return scienceqa(args.problems, split=args.split, **source)


def _repeated_ids(examples: Sequence[Instruction]) -> list[str]:
    return [name for name, count in Counter(example.id for example in examples).items() if count > 1]


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.format == "coco-captions" and args.karpathy != (args.split is not None):
        parser.error("--split selects a Karpathy split: --karpathy needs it, and it needs --karpathy")
    try:
        examples = _convert(args)
    except (DataFormatError, MissingImagesError) as error:
        sys.exit(f"error: {error}")
    repeated = _repeated_ids(examples)
    if repeated:
        where = getattr(args, _MAIN_INPUT[args.format])
        sys.exit(f"error: {where}: examples would repeat ids (read_jsonl refuses that): {', '.join(repeated[:_LISTED])}")
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        count = write_jsonl(args.out, examples)
    except OSError as error:
        sys.exit(f"error: {args.out}: cannot write the file ({error.strerror or error})")
    tasks = ", ".join(f"{task} {n}" for task, n in Counter(example.task for example in examples).items())
    print(f"{count} examples ({tasks or 'none'}) -> {args.out}")


if __name__ == "__main__":
    main()
