"""The readers refuse malformed files with errors that name the file and the problem."""

import json
import re

import pytest

from lyrics.data.coco import read_coco_captions, read_karpathy_split
from lyrics.data.errors import DataFormatError
from lyrics.data.llava import read_llava
from lyrics.data.refcoco import read_refcoco
from lyrics.data.vqa import read_vqa


def write_json(path, document) -> object:
    path.write_text(json.dumps(document))
    return path


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataFormatError, match=f"{re.escape(str(tmp_path / 'nope.json'))}: cannot read the file"):
        read_karpathy_split(tmp_path / "nope.json", tmp_path)


def test_invalid_json_is_named(tmp_path):
    path = tmp_path / "captions.json"
    path.write_text("{")
    with pytest.raises(DataFormatError, match=f"^{re.escape(str(path))}: .*Invalid JSON"):
        read_coco_captions(path, tmp_path)


def test_missing_field_is_located(tmp_path):
    path = write_json(tmp_path / "dataset_coco.json", {"images": [{"filepath": "val2014", "filename": "a.jpg"}]})
    with pytest.raises(DataFormatError, match=f"^{re.escape(str(path))}: images.0.cocoid: Field required"):
        read_karpathy_split(path, tmp_path)


def test_caption_of_unknown_image(tmp_path):
    path = write_json(tmp_path / "captions.json", {"images": [], "annotations": [{"image_id": 7, "caption": "x"}]})
    with pytest.raises(DataFormatError, match=f"^{re.escape(str(path))}: a caption refers to image id 7"):
        read_coco_captions(path, tmp_path)


def test_refcoco_pickle_is_refused_with_conversion_advice(tmp_path):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(b"\x80\x04not read")
    with pytest.raises(DataFormatError) as error:
        read_refcoco(path, tmp_path / "instances.json")
    message = str(error.value)
    assert message.startswith(f"{path}: is a pickle")
    assert "JSON only" in message and "json.dump" in message


def test_ref_to_missing_annotation_names_both_files(tmp_path):
    refs = write_json(
        tmp_path / "refs(unc).json",
        [{"ref_id": 0, "ann_id": 5, "image_id": 1, "split": "val", "sentences": [{"sent": "x", "sent_id": 0}]}],
    )
    instances = write_json(
        tmp_path / "instances.json",
        {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [], "categories": []},
    )
    with pytest.raises(DataFormatError, match=f"^{re.escape(str(refs))}: ref 0 points at annotation 5 .* {re.escape(str(instances))}"):
        read_refcoco(refs, instances)


def test_question_without_annotation_names_both_files(tmp_path):
    questions = write_json(tmp_path / "q.json", {"questions": [{"image_id": 1, "question": "Why?", "question_id": 1000}]})
    annotations = write_json(tmp_path / "a.json", {"annotations": []})
    with pytest.raises(DataFormatError, match=f"^{re.escape(str(questions))}: question 1000 .* {re.escape(str(annotations))}"):
        read_vqa(questions, annotations)


@pytest.mark.parametrize(
    ("turns", "problem"),
    [
        ([{"from": "human", "value": "Describe it."}, {"from": "gpt", "value": "A cat."}], "lacks <image>"),
        ([{"from": "human", "value": "<image>\nHi"}, {"from": "human", "value": "Hi"}], "does not alternate"),
        ([{"from": "robot", "value": "<image>"}], "conversations.0.from"),
    ],
)
def test_malformed_llava_conversation(tmp_path, turns, problem):
    path = write_json(tmp_path / "llava.json", [{"id": "x1", "image": "a.jpg", "conversations": turns}])
    with pytest.raises(DataFormatError, match=problem) as error:
        read_llava(path, tmp_path)
    assert str(error.value).startswith(str(path))


def test_text_only_llava_conversation_has_no_image(tmp_path):
    turns = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]
    path = write_json(tmp_path / "llava.json", [{"id": 3, "conversations": turns}])
    [conversation] = read_llava(path, tmp_path)
    assert (conversation.id, conversation.image_path, conversation.turns[1].text) == ("3", None, "Hello.")
