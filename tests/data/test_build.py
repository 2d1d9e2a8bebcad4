"""The built sample set: every format loads with the project's readers (and pycocotools), the
counts equal the annotations', and two builds are byte-identical."""

import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image
from pycocotools.coco import COCO

from lyrics.data.boxes import xywh_to_xyxy, xyxy_to_xywh
from lyrics.data.coco import read_coco_captions, read_karpathy_split
from lyrics.data.llava import IMAGE_PLACEHOLDER, read_llava
from lyrics.data.refcoco import read_refcoco
from lyrics.data.sample.documents import tokenize
from lyrics.data.sample.build import COMPLETE_MARKER, INDEX_FILE, build_sample, is_complete
from lyrics.data.vqa import read_vqa


def file_hashes(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_build_is_complete_and_indexed(sample_dir, annotations):
    assert is_complete(sample_dir)
    index = json.loads((sample_dir / INDEX_FILE).read_text())
    assert index["images"] == len(annotations.images)
    assert index["objects"] == sum(len(image.objects) for image in annotations.images)
    assert index["refs"] == sum(len(item.refs) for image in annotations.images for item in image.objects)
    assert index["questions"] == sum(len(image.qa) for image in annotations.images)
    listed = file_hashes(sample_dir)
    del listed[INDEX_FILE], listed[COMPLETE_MARKER]
    assert index["files"] == listed
    assert not list(sample_dir.parent.glob(".*building*")), "the staging folder was left behind"


def test_images_are_rgb_jpegs_of_the_photo_size(sample_dir, annotations):
    for image in annotations.images:
        with Image.open(sample_dir / "images" / f"{image.key}.jpg") as photo:
            assert (photo.format, photo.mode) == ("JPEG", "RGB")
            annotations.check_photo_size(image, photo.size)


def test_coco_captions(sample_dir, annotations):
    coco = COCO(str(sample_dir / "coco" / "captions.json"))
    assert sorted(coco.getImgIds()) == list(range(1, len(annotations.images) + 1))
    images = read_coco_captions(sample_dir / "coco" / "captions.json", sample_dir / "images")
    assert [list(image.captions) for image in images] == [image.captions for image in annotations.images]
    for image in images:
        assert image.file_path.is_file()
        assert [ann["caption"] for ann in coco.imgToAnns[image.image_id]] == list(image.captions)


def test_karpathy_split(sample_dir, annotations):
    images = read_karpathy_split(sample_dir / "coco" / "dataset_coco.json", sample_dir)
    assert [(image.image_id, image.split) for image in images] == [
        (image_id, image.split) for image_id, image in enumerate(annotations.images, start=1)
    ]
    assert [list(image.captions) for image in images] == [image.captions for image in annotations.images]
    assert all(image.file_path.is_file() for image in images)


def test_refcoco_instances_and_refs(sample_dir, annotations):
    instances_path = sample_dir / "refcoco" / "instances.json"
    refs_path = sample_dir / "refcoco" / "refs(unc).json"
    coco = COCO(str(instances_path))
    refs = json.loads(refs_path.read_text())
    assert len(coco.getAnnIds()) == len(refs) == sum(len(image.objects) for image in annotations.images)
    assert {ref["ann_id"] for ref in refs} <= set(coco.getAnnIds())
    assert all(coco.anns[ref["ann_id"]]["image_id"] == ref["image_id"] for ref in refs)
    assert sorted(category["name"] for category in coco.loadCats(coco.getCatIds())) == sorted(
        {item.label for image in annotations.images for item in image.objects}
    )
    # Every annotated expression comes back once, with its object's box after xyxy -> xywh -> xyxy.
    expected = [
        (image.key + ".jpg", ref, tuple(map(float, item.box)), image.split, item.label)
        for image in annotations.images
        for item in image.objects
        for ref in item.refs
    ]
    records = read_refcoco(refs_path, instances_path)
    assert len(records) == len(expected)
    for record, (file_name, raw, box, split, label) in zip(records, expected):
        assert (record.file_name, record.box_xyxy, record.split, record.category) == (file_name, box, split, label)
        assert record.expression == " ".join(tokenize(raw))
        assert coco.anns[record.ann_id]["bbox"] == list(xyxy_to_xywh(box))


def test_box_conversions_round_trip(annotations):
    for image in annotations.images:
        for item in image.objects:
            assert xywh_to_xyxy(xyxy_to_xywh(item.box)) == item.box


def test_vqa(sample_dir, annotations):
    records = read_vqa(sample_dir / "vqa" / "questions.json", sample_dir / "vqa" / "annotations.json")
    expected = [(image_id, qa) for image_id, image in enumerate(annotations.images, start=1) for qa in image.qa]
    assert len(records) == len(expected)
    for record, (image_id, qa) in zip(records, expected):
        assert (record.image_id, record.question, record.answer_type) == (image_id, qa.question, qa.answer_type)
        assert len(record.answers) == 10
        assert {answer: record.answers.count(answer) for answer in record.answers} == qa.answers
        assert record.multiple_choice_answer == qa.multiple_choice_answer
        assert record.question_id // 1000 == image_id
    assert len({record.question_id for record in records}) == len(records)


def test_llava(sample_dir, annotations):
    conversations = read_llava(sample_dir / "llava" / "conversations.json", sample_dir / "images")
    assert [conversation.id for conversation in conversations] == [image.key for image in annotations.images]
    for conversation, image in zip(conversations, annotations.images):
        assert conversation.image_path.is_file()
        assert IMAGE_PLACEHOLDER in conversation.turns[0].text
        assert conversation.turns[1].text == image.detail
        assert len(conversation.turns) == 2 + 2 * len(image.qa)
        assert [turn.text for turn in conversation.turns[3::2]] == [qa.multiple_choice_answer for qa in image.qa]


def test_two_builds_are_byte_identical(sample_dir, annotations_path, tmp_path):
    second = tmp_path / "again"
    build_sample(second, annotations_path)
    assert file_hashes(second) == file_hashes(sample_dir)


def test_rebuild_replaces_an_earlier_build_but_not_other_folders(tmp_path, fixture_annotations_path):
    out = tmp_path / "sample"
    build_sample(out, fixture_annotations_path)
    (out / "stale.txt").write_text("left from an earlier build")
    build_sample(out, fixture_annotations_path)
    assert is_complete(out) and not (out / "stale.txt").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("not a sample build")
    with pytest.raises(FileExistsError, match="not a sample build"):
        build_sample(other, fixture_annotations_path)
    assert (other / "notes.txt").exists()
