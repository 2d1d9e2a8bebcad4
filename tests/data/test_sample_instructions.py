"""The sample build's stage-2 instruction files: one per split, each example on an image of that
split, as many examples per task as the annotations imply, and REC boxes that match the
annotated pixel boxes."""

import json

import pytest
from PIL import Image

from lyrics.data.instruction_templates import CAPTION, GROUNDED_CAPTION, REC, VQA
from lyrics.data.instructions import CONVERSATION, read_jsonl
from lyrics.data.sample.build import INDEX_FILE
from lyrics.data.sample.documents import tokenize
from lyrics.data.sample.instructions import SPLITS, sample_instructions
from lyrics.spatial_text import COORD_MAX, find_boxes


@pytest.fixture(scope="module")
def written(sample_dir):
    return {split: read_jsonl(sample_dir / "instructions" / f"{split}.jsonl") for split in SPLITS}


@pytest.fixture(scope="module")
def sizes(sample_dir, annotations):
    sizes = {}
    for image in annotations.images:
        with Image.open(sample_dir / "images" / f"{image.key}.jpg") as photo:
            sizes[image.key] = photo.size
    return sizes


def test_files_hold_what_the_converters_make(sample_dir, written, sizes):
    assert written == sample_instructions(sample_dir, sizes)
    index = json.loads((sample_dir / INDEX_FILE).read_text())
    assert index["instructions"] == sum(len(examples) for examples in written.values())
    assert {f"instructions/{split}.jsonl" for split in SPLITS} <= set(index["files"])


@pytest.mark.parametrize("split", SPLITS)
def test_examples_are_on_images_of_their_split(written, annotations, split):
    keys = {image.key for image in annotations.images if image.split == split}
    assert {example.image for example in written[split]} == keys


@pytest.mark.parametrize("split", SPLITS)
def test_counts_per_task_follow_the_annotations(written, annotations, split):
    images = [image for image in annotations.images if image.split == split]
    refs = sum(len(item.refs) for image in images for item in image.objects)
    expected = {
        CAPTION: sum(len(image.captions) for image in images),
        VQA: sum(len(image.qa) for image in images),
        REC: refs,
        GROUNDED_CAPTION: refs,
        CONVERSATION: len(images),
    }
    counts = {task: 0 for task in expected}
    for example in written[split]:
        counts[example.task] += 1
    assert counts == expected


def test_rec_boxes_are_the_annotated_boxes_normalised(written, annotations, sizes):
    # RefCOCO sentence ids count the annotated refs in the YAML's order, from 0.
    annotated = [
        (image.key, ref, item.box) for image in annotations.images for item in image.objects for ref in item.refs
    ]
    rec = [example for examples in written.values() for example in examples if example.task == REC]
    assert len(rec) == len(annotated)
    for example in rec:
        key, ref, (x1, y1, x2, y2) = annotated[int(example.id.rsplit("/", 1)[1])]
        ((prompt, answer),) = example.turns
        assert example.image == key
        assert " ".join(tokenize(ref)) in prompt
        width, height = sizes[key]
        (box,) = find_boxes(answer)
        assert box == pytest.approx((x1 / width, y1 / height, x2 / width, y2 / height), abs=1 / COORD_MAX)
