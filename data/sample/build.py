"""Build the sample data set folder: the annotated photos written in every public format the
pipeline reads, the stage-2 instruction files made from those, the POPE, MME and ScienceQA
evaluation files (`eval/`), plus the fuzz set. The build is deterministic (two builds are byte-identical)
and atomic: it is written into a temporary sibling folder that is renamed into place once
complete, with a `.complete` marker inside."""

import json
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from PIL import Image

from lyrics.data.instructions import write_jsonl
from lyrics.data.sample import documents
from lyrics.data.sample.annotations import DEFAULT_ANNOTATIONS_PATH, SampleAnnotations, load_annotations
from lyrics.data.sample.encode import jpeg_bytes, json_bytes, sha256_hex
from lyrics.data.sample.fuzz import write_fuzz
from lyrics.data.sample.instructions import sample_instructions
from lyrics.data.sample.photos import open_photo
from lyrics.data.sample.shards import ShardSample, sample_key, write_img2dataset_shard

INDEX_FILE = "sample.json"
COMPLETE_MARKER = ".complete"
SHARD_COUNT = 2


@dataclass(frozen=True)
class SampleIndex:
    """The content of `sample.json`: counts, and the sha256 of every other file in the folder."""

    images: int
    captions: int
    objects: int
    refs: int
    questions: int
    instructions: int
    pope: int  # questions over POPE's three settings
    mme: int  # questions
    scienceqa: int  # problems
    files: dict[str, str]


def is_complete(folder: Path) -> bool:
    """Whether `folder` holds a finished build (and not one that stopped halfway) of this version:
    an index without a field of `SampleIndex` comes from an older build that lacks those files."""
    folder = Path(folder)
    if not (folder / COMPLETE_MARKER).is_file():
        return False
    try:
        index = json.loads((folder / INDEX_FILE).read_text())
    except (OSError, ValueError):
        return False
    return {field.name for field in fields(SampleIndex)} <= set(index)


def build_sample(out: Path, annotations_path: Path = DEFAULT_ANNOTATIONS_PATH) -> SampleIndex:
    """Write the sample set into `out`, replacing a previous build there."""
    out = Path(out).absolute()
    annotations = load_annotations(annotations_path)
    if len(annotations.images) < SHARD_COUNT:
        raise ValueError(f"{annotations.path}: needs at least {SHARD_COUNT} images, one per WebDataset shard")
    photos = {image.key: open_photo(image.source) for image in annotations.images}
    for image in annotations.images:
        annotations.check_photo_size(image, photos[image.key].size)
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.building.", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the build is meant to be shared
    try:
        index = _write_all(staging, annotations, photos)
        (staging / COMPLETE_MARKER).write_bytes(b"")
        _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return index


def _write_all(root: Path, annotations: SampleAnnotations, photos: dict[str, Image.Image]) -> SampleIndex:
    images = annotations.images
    sizes = {key: photo.size for key, photo in photos.items()}
    jpegs = {key: jpeg_bytes(photo) for key, photo in photos.items()}
    _write(root / documents.IMAGE_FOLDER, {documents.file_name(image): jpegs[image.key] for image in images})
    _write_webdataset(root / "webdataset", annotations, jpegs, sizes)
    _write(root / "coco", {
        "captions.json": json_bytes(documents.coco_captions(annotations, sizes)),
        "dataset_coco.json": json_bytes(documents.karpathy_split(annotations)),
    })
    _write(root / "refcoco", {
        "instances.json": json_bytes(documents.refcoco_instances(annotations, sizes)),
        "refs(unc).json": json_bytes(documents.refcoco_refs(annotations)),
    })
    _write(root / "vqa", {
        "questions.json": json_bytes(documents.vqa_questions(annotations)),
        "annotations.json": json_bytes(documents.vqa_annotations(annotations)),
    })
    _write(root / "llava", {"conversations.json": json_bytes(documents.llava_conversations(annotations))})
    instructions = _write_instructions(root, sizes)
    pope = documents.pope_questions(annotations)
    mme = documents.mme_questions(annotations)
    scienceqa = documents.scienceqa_problems(annotations)
    _write(root / "eval", {"pope.json": json_bytes(pope), "mme.json": json_bytes(mme)})
    _write(root / "eval" / "scienceqa", {
        "problems.json": json_bytes(scienceqa),
        "images.json": json_bytes(documents.scienceqa_images(annotations)),
    })
    write_fuzz(root / "fuzz")
    index = SampleIndex(
        images=len(images),
        captions=sum(len(image.captions) for image in images),
        objects=sum(len(image.objects) for image in images),
        refs=sum(len(item.refs) for image in images for item in image.objects),
        questions=sum(len(image.qa) for image in images),
        instructions=instructions,
        pope=sum(len(records) for records in pope.values()),
        mme=len(mme),
        scienceqa=len(scienceqa),
        files={
            path.relative_to(root).as_posix(): sha256_hex(path.read_bytes())
            for path in sorted(root.rglob("*"))
            if path.is_file()
        },
    )
    (root / INDEX_FILE).write_bytes(json_bytes(asdict(index)))
    return index


def _write_webdataset(
    folder: Path, annotations: SampleAnnotations, jpegs: dict[str, bytes], sizes: dict[str, tuple[int, int]]
) -> None:
    """The images split in order over SHARD_COUNT img2dataset shards, first caption as `.txt`."""
    folder.mkdir()
    per_shard = math.ceil(len(annotations.images) / SHARD_COUNT)
    for shard_id in range(SHARD_COUNT):
        samples = []
        for index, image in enumerate(annotations.images[shard_id * per_shard : (shard_id + 1) * per_shard]):
            key = sample_key(shard_id, index)
            width, height = sizes[image.key]
            meta = {
                "url": image.source,
                "key": key,
                "caption": image.captions[0],
                "status": "success",
                "error_message": None,
                "width": width,
                "height": height,
                "original_width": width,
                "original_height": height,
                "exif": None,
                "sha256": sha256_hex(jpegs[image.key]),
                "sample_key": image.key,
            }
            samples.append(ShardSample(key, "jpg", jpegs[image.key], image.captions[0], meta))
        write_img2dataset_shard(folder, shard_id, samples)


def _write_instructions(root: Path, sizes: dict[str, tuple[int, int]]) -> int:
    """`instructions/<split>.jsonl`, read back from the public-format files just written (so they
    must come first); returns the number of examples."""
    folder = root / "instructions"
    folder.mkdir()
    return sum(
        write_jsonl(folder / f"{split}.jsonl", examples) for split, examples in sample_instructions(root, sizes).items()
    )


def _write(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)


def _check_replaceable(out: Path) -> None:
    """Only an earlier build (or an empty folder) is replaced, never a folder of other files."""
    if out.exists() and not ((out / INDEX_FILE).is_file() or (out.is_dir() and not any(out.iterdir()))):
        raise FileExistsError(f"{out} exists and is not a sample build; refusing to replace it")


def _move_into_place(staging: Path, out: Path) -> None:
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        out.rename(old / out.name)
        staging.rename(out)
        shutil.rmtree(old)
    else:
        staging.rename(out)
