"""Benchmark formats on hand-written files in the upstream layouts: NoCaps (COCO captions), VizWiz,
OCR-VQA, MME's release folder, VQAv2 test-dev (no annotations) and RefCOCO's one read of instances."""

import json
import re
from pathlib import Path

import pytest

from lyrics.data.errors import DataFormatError
from lyrics.data.instruction_templates import IMAGE_TOKEN, TEMPLATES
from lyrics.data.refcoco import read_refcoco
from lyrics.evaluate.benchmarks import load_items
from lyrics.evaluate.scoring import score

VQA_TEMPLATE = "<Image>Based on the image, respond to this question with a short answer: {question}. Answer:"


def _write(path: Path, document) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return path


# --- coco_captions (NoCaps val) ---------------------------------------------------------------
def _nocaps_image(id: int, open_images_id: str, domain: str = "near-domain") -> dict:
    return {
        "id": id, "open_images_id": open_images_id, "height": 683, "width": 1024, "license": 0,
        "coco_url": f"https://s3.amazonaws.com/nocaps/val/{open_images_id}.jpg", "file_name": f"{open_images_id}.jpg",
        "date_captured": "2018-11-06 11:04:33", "domain": domain,
    }  # fmt: skip


def test_coco_captions_nocaps(tmp_path: Path):
    path = _write(tmp_path / "nocaps_val_4500_captions.json", {
        "licenses": [], "info": {"version": "0.1"},
        "images": [_nocaps_image(0, "0013ea2087020901"), _nocaps_image(1, "002d9e8d9d2a3b2c")],
        "annotations": [
            {"image_id": 1, "caption": "A red car on a street.", "id": 0},
            {"image_id": 0, "caption": "A baby is standing in front of a house.", "id": 1},
            {"image_id": 0, "caption": "A little girl in a white shirt.", "id": 2},
        ],
    })  # fmt: skip
    items = load_items("coco_captions", {"annotations": path}, "val")  # the split is not used
    assert [(i.id, i.image, i.target) for i in items] == [
        ("0", "0013ea2087020901", {"references": ["A baby is standing in front of a house.", "A little girl in a white shirt."], "domain": "near-domain"}),
        ("1", "002d9e8d9d2a3b2c", {"references": ["A red car on a street."], "domain": "near-domain"}),
    ]
    assert {i.prompt for i in items} == {TEMPLATES["caption"][0]}
    assert items == load_items("coco_captions", {"annotations": path}, None)


def test_nocaps_cider_is_reported_overall_and_per_domain_each_domain_scored_alone(tmp_path: Path):
    from lyrics.evaluate.captioning import caption_scores
    from lyrics.evaluate.scoring import score

    domains = ["in-domain", "out-domain", "in-domain", "out-domain"]
    references = [["a dog runs on the grass", "a brown dog running"], ["a red car parked on a street", "a car by the road"],
                  ["two cats sleep on a sofa", "cats asleep on a couch"], ["a plate of food on a table", "food on a plate"]]  # fmt: skip
    path = _write(tmp_path / "nocaps_val_4500_captions.json", {
        "images": [_nocaps_image(i, f"img{i}", domain) for i, domain in enumerate(domains)],
        "annotations": [{"image_id": i, "caption": c, "id": 10 * i + j} for i, refs in enumerate(references) for j, c in enumerate(refs)],
    })  # fmt: skip
    items = load_items("coco_captions", {"annotations": path}, None)
    predictions = ["a dog running on grass", "a car on a street", "a cat on a sofa", "a plate of food"]
    metrics = score("caption", items, predictions)
    assert set(metrics["domains"]) == {"in-domain", "out-domain"}
    for name, part in (("in-domain", [0, 2]), ("out-domain", [1, 3])):
        alone = caption_scores({str(i): predictions[i] for i in part}, {str(i): references[i] for i in part}).as_percent()
        assert metrics["domains"][name] == {**alone, "images": 2}
    everything = caption_scores({str(i): p for i, p in enumerate(predictions)}, {str(i): r for i, r in enumerate(references)}).as_percent()
    assert metrics["CIDEr"] == everything["CIDEr"] != metrics["domains"]["in-domain"]["CIDEr"]


def test_coco_captions_image_without_caption(tmp_path: Path):
    path = _write(tmp_path / "nocaps_val_4500_captions.json", {
        "images": [_nocaps_image(0, "a"), _nocaps_image(7, "b")],
        "annotations": [{"image_id": 0, "caption": "x", "id": 0}],
    })  # fmt: skip
    with pytest.raises(DataFormatError, match=f"^{re.escape(str(path))}: 1 image\\(s\\) have no caption: 7$"):
        load_items("coco_captions", {"annotations": path}, None)


# --- vizwiz -----------------------------------------------------------------------------------
def _vizwiz_answers(*answers: str) -> list[dict]:
    return [{"answer": answer, "answer_confidence": "yes"} for answer in answers]


def test_vizwiz(tmp_path: Path):
    first = ["unanswerable"] * 8 + ["blank", "nothing"]
    second = ["soda"] * 6 + ["coke"] * 4
    path = _write(tmp_path / "val.json", [
        {"image": "VizWiz_val_00000000.jpg", "question": "Ok. There is another picture I hope it is a better one.",
         "answers": _vizwiz_answers(*first), "answer_type": "unanswerable", "answerable": 0},
        {"image": "VizWiz_val_00000001.jpg", "question": "What is this?",
         "answers": _vizwiz_answers(*second), "answer_type": "other", "answerable": 1},
    ])  # fmt: skip
    items = load_items("vizwiz", {"questions": path}, "val")  # the split is not used
    assert [(i.id, i.image, i.target) for i in items] == [
        ("VizWiz_val_00000000", "VizWiz_val_00000000", {"answers": first}),
        ("VizWiz_val_00000001", "VizWiz_val_00000001", {"answers": second}),
    ]
    assert VQA_TEMPLATE in TEMPLATES["vqa"]
    assert items[1].prompt == VQA_TEMPLATE.format(question="What is this?")
    assert score("vqa", items, ["unanswerable", "soda"])["accuracy"] == pytest.approx(100.0)


def test_vizwiz_test_file_is_refused(tmp_path: Path):
    path = _write(tmp_path / "test.json", [
        {"image": "VizWiz_test_00000000.jpg", "question": "What color is this?"},
        {"image": "VizWiz_test_00000001.jpg", "question": "What is it?"},
    ])  # fmt: skip
    with pytest.raises(
        DataFormatError,
        match=f"^{re.escape(str(path))}: 2 question\\(s\\) have no answers .*: VizWiz_test_00000000, VizWiz_test_00000001$",
    ):
        load_items("vizwiz", {"questions": path}, None)


# --- ocrvqa -----------------------------------------------------------------------------------
def _ocrvqa_book(split: int, questions: list[str], answers: list[str]) -> dict:
    return {
        "imageURL": "http://ecx.images-amazon.com/images/I/51l6XU8MUKL.jpg", "questions": questions, "answers": answers,
        "title": "A Book", "authorName": "An Author", "genre": "Literature & Fiction", "split": split,
    }  # fmt: skip


@pytest.fixture
def ocrvqa_dataset(tmp_path: Path) -> Path:
    return _write(tmp_path / "dataset.json", {
        "1000022183": _ocrvqa_book(1, ["Who wrote this book?", "Is this a judicial book?"], ["Lisa Pliscou", "No"]),
        "0001713353": _ocrvqa_book(3, ["What is the title of this book?", "What is the genre of this book?"],
                                   ["The Cleanest Race", "Children's Books"]),
        "0006483135": _ocrvqa_book(3, ["Is this a comedy book?"], ["Yes"]),
    })  # fmt: skip


def test_ocrvqa(ocrvqa_dataset: Path):
    items = load_items("ocrvqa", {"dataset": ocrvqa_dataset}, "test")
    assert [(i.id, i.image, i.target) for i in items] == [
        ("0001713353-0", "0001713353", {"answer": "The Cleanest Race"}),
        ("0001713353-1", "0001713353", {"answer": "Children's Books"}),
        ("0006483135-0", "0006483135", {"answer": "Yes"}),
    ]
    assert items[1].prompt == VQA_TEMPLATE.format(question="What is the genre of this book?")
    assert [i.id for i in load_items("ocrvqa", {"dataset": ocrvqa_dataset}, "train")] == ["1000022183-0", "1000022183-1"]
    assert len(load_items("ocrvqa", {"dataset": ocrvqa_dataset}, None)) == 5
    assert score("exact_match", items, ["the cleanest race", "Comics", "yes"])["correct"] == 2


def test_ocrvqa_split_the_file_lacks(ocrvqa_dataset: Path):
    for split in ("val", "testA"):
        with pytest.raises(
            DataFormatError, match=f"^{re.escape(str(ocrvqa_dataset))}: no records of split '{split}' \\(the file has: test, train\\)$"
        ):
            load_items("ocrvqa", {"dataset": ocrvqa_dataset}, split)


def test_ocrvqa_malformed(tmp_path: Path):
    path = _write(tmp_path / "dataset.json", {"1": _ocrvqa_book(2, ["Who wrote this book?", "Why?"], ["Me"])})
    with pytest.raises(DataFormatError, match=f"^{re.escape(str(path))}: image 1: 2 questions but 1 answers$"):
        load_items("ocrvqa", {"dataset": path}, "val")
    _write(path, {"1": _ocrvqa_book(4, ["Who?"], ["Me"])})
    with pytest.raises(DataFormatError, match=f"^{re.escape(str(path))}: 1.split: "):
        load_items("ocrvqa", {"dataset": path}, None)


# --- mme: the official release folder ---------------------------------------------------------
def _mme_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not decoded here")


def _mme_questions(path: Path, *lines: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


@pytest.fixture
def mme_folder(tmp_path: Path) -> Path:
    """Both layouts: images and txt side by side (existence, count, code_reasoning), and images/ beside
    questions_answers_YN/ (artwork); existence and count share a stem, as in the release."""
    root = tmp_path / "MME_Benchmark_release_version"
    _mme_image(root / "existence" / "000000006040.jpg")
    _mme_questions(root / "existence" / "000000006040.txt",
                   "Is there a train in this image? Please answer yes or no.\tYes",
                   "Is there a bed in this image? Please answer yes or no.\tNo")  # fmt: skip
    _mme_image(root / "count" / "000000006040.jpg")
    (root / "count" / "000000006040.txt").write_text(  # Windows line ends, a trailing blank line
        "Are there two trains in the image? Please answer yes or no.\tYes \r\n"
        "Are there three trains in the image? Please answer yes or no.\tNo\r\n\r\n"
    )
    _mme_image(root / "artwork" / "images" / "10002.jpg")
    _mme_questions(root / "artwork" / "questions_answers_YN" / "10002.txt",
                   "Does this artwork exist in the form of painting? Please answer yes or no.\tYes",
                   "Does this artwork exist in the form of glassware? Please answer yes or no.\tNo")  # fmt: skip
    _mme_image(root / "code_reasoning" / "0020.png")
    _mme_questions(root / "code_reasoning" / "0020.txt",
                   "The image shows a python code. Will the number 3 appear in the output? Please answer yes or no.\tYes",
                   "The image shows a python code. Will the number 4 appear in the output? Please answer yes or no.\tNo")  # fmt: skip
    (root / "readme.txt").write_text("not a subtask")
    (root / "__MACOSX" / "existence").mkdir(parents=True)  # left by a zip made on a Mac: not a subtask
    return root


def test_mme_folder(mme_folder: Path):
    items = load_items("mme", {"folder": mme_folder}, None)
    assert [(i.id, i.image, i.target) for i in items] == [  # perception, then cognition, in the official order
        ("existence-000000006040-0", "existence/000000006040", {"subtask": "existence", "answer": "Yes", "image": "000000006040.jpg"}),
        ("existence-000000006040-1", "existence/000000006040", {"subtask": "existence", "answer": "No", "image": "000000006040.jpg"}),
        ("count-000000006040-0", "count/000000006040", {"subtask": "count", "answer": "Yes", "image": "000000006040.jpg"}),
        ("count-000000006040-1", "count/000000006040", {"subtask": "count", "answer": "No", "image": "000000006040.jpg"}),
        ("artwork-10002-0", "artwork/images/10002", {"subtask": "artwork", "answer": "Yes", "image": "10002.jpg"}),
        ("artwork-10002-1", "artwork/images/10002", {"subtask": "artwork", "answer": "No", "image": "10002.jpg"}),
        ("code_reasoning-0020-0", "code_reasoning/0020", {"subtask": "code_reasoning", "answer": "Yes", "image": "0020.png"}),
        ("code_reasoning-0020-1", "code_reasoning/0020", {"subtask": "code_reasoning", "answer": "No", "image": "0020.png"}),
    ]  # fmt: skip
    assert items[0].prompt == IMAGE_TOKEN + "Is there a train in this image? Please answer yes or no."
    assert items[3].prompt == IMAGE_TOKEN + "Are there three trains in the image? Please answer yes or no."
    metrics = score("mme", items, ["Yes", "No", "Yes", "Yes", "yes", "no", "No", "No"])
    assert metrics["subtasks"]["existence"]["score"] == pytest.approx(200.0)
    assert metrics["subtasks"]["count"]["score"] == pytest.approx(50.0)  # 1 of 2 questions, 0 of 1 image
    assert metrics["perception"] == pytest.approx(450.0) and metrics["cognition"] == pytest.approx(50.0)


def test_mme_folder_question_file_without_image(mme_folder: Path):
    text = mme_folder / "artwork" / "questions_answers_YN" / "10003.txt"
    _mme_questions(text, "Is this a painting? Please answer yes or no.\tYes")
    with pytest.raises(DataFormatError, match=f"^{re.escape(str(text))}: has no image in .*artwork/images \\(10003.jpg or 10003.jpeg or 10003.png\\)$"):
        load_items("mme", {"folder": mme_folder}, None)
    _mme_image(mme_folder / "artwork" / "images" / "10003.jpg")
    _mme_image(mme_folder / "artwork" / "images" / "10003.png")
    with pytest.raises(DataFormatError, match=f"^{re.escape(str(text))}: has several images in .*: 10003.jpg, 10003.png$"):
        load_items("mme", {"folder": mme_folder}, None)


@pytest.mark.parametrize(
    ("line", "number"),
    [("Is there a train in this image?", 2), ("Is there a train in this image?\tMaybe", 2), ("\tYes", 2)],
)
def test_mme_folder_malformed_line(mme_folder: Path, line: str, number: int):
    text = mme_folder / "existence" / "000000006040.txt"
    _mme_questions(text, "Is there a bed in this image? Please answer yes or no.\tNo", line)
    with pytest.raises(DataFormatError, match=f"^{re.escape(str(text))}: line {number}: not 'question<TAB>Yes'"):
        load_items("mme", {"folder": mme_folder}, None)
    text.write_text("\n")
    with pytest.raises(DataFormatError, match=f"^{re.escape(str(text))}: holds no question$"):
        load_items("mme", {"folder": mme_folder}, None)


def test_mme_folder_without_subtasks(mme_folder: Path, tmp_path: Path):
    (mme_folder / "posters" / "images").mkdir(parents=True)
    (mme_folder / "posters" / "questions_answers_YN").mkdir()
    with pytest.raises(DataFormatError, match=f"^{re.escape(str(mme_folder / 'posters' / 'questions_answers_YN'))}: no question files"):
        load_items("mme", {"folder": mme_folder}, None)

    empty = tmp_path / "empty"
    (empty / "eval_tool").mkdir(parents=True)
    with pytest.raises(DataFormatError, match=f"^{re.escape(str(empty))}: holds none of the MME subtask folders \\(existence, count, "):
        load_items("mme", {"folder": empty}, None)
    with pytest.raises(DataFormatError, match=f"^{re.escape(str(mme_folder / 'readme.txt'))}: is not a folder"):
        load_items("mme", {"folder": mme_folder / "readme.txt"}, None)


def test_mme_questions_or_folder(mme_folder: Path, tmp_path: Path):
    questions = _write(tmp_path / "mme.json", [])
    with pytest.raises(ValueError, match=r"^format 'mme': files missing one of questions, folder \(expected: questions \| folder\)$"):
        load_items("mme", {}, None)
    with pytest.raises(ValueError, match=r"files questions and folder are alternatives: give one \(expected: questions \| folder\)$"):
        load_items("mme", {"questions": questions, "folder": mme_folder}, None)
    with pytest.raises(ValueError, match=r"files missing one of questions, folder; unknown images "):
        load_items("mme", {"images": mme_folder}, None)


# --- vqa: test-dev, without annotations ---------------------------------------------------------
def test_vqa_test_dev_without_annotations(tmp_path: Path):
    questions = _write(tmp_path / "v2_OpenEnded_mscoco_test-dev2015_questions.json", {
        "info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}, "data_subtype": "test-dev2015",
        "questions": [
            {"image_id": 262144, "question": "What is the man doing?", "question_id": 262144000},
            {"image_id": 262146, "question": "Is it sunny?", "question_id": 262146001},
        ],
    })  # fmt: skip
    names = _write(tmp_path / "image_info_test-dev2015.json", {"images": [
        {"id": 262144, "file_name": "COCO_test2015_000000262144.jpg", "width": 640, "height": 480},
        {"id": 262146, "file_name": "COCO_test2015_000000262146.jpg", "width": 640, "height": 480},
    ]})  # fmt: skip
    items = load_items("vqa", {"questions": questions, "image_names": names}, None)
    assert [(i.id, i.image, i.target) for i in items] == [
        ("262144000", "COCO_test2015_000000262144", {"answers": [], "question_id": 262144000}),
        ("262146001", "COCO_test2015_000000262146", {"answers": [], "question_id": 262146001}),
    ]
    assert items[1].prompt == VQA_TEMPLATE.format(question="Is it sunny?")
    with pytest.raises(ValueError, match=r"files missing image_names \(expected: questions, image_names, annotations \(optional\)\)"):
        load_items("vqa", {"questions": questions}, None)


def test_vqa_scores_with_question_ids(sample_dir: Path):
    files = {
        "questions": sample_dir / "vqa" / "questions.json",
        "annotations": sample_dir / "vqa" / "annotations.json",
        "image_names": sample_dir / "coco" / "captions.json",
    }
    items = load_items("vqa", files, None)
    assert all(isinstance(i.target["question_id"], int) and str(i.target["question_id"]) == i.id for i in items)
    best = [max(set(i.target["answers"]), key=i.target["answers"].count) for i in items]
    assert score("vqa", items, best)["total"] == len(items)


# --- refcoco: sizes from the one read of instances.json -----------------------------------------
def _refcoco_files(tmp_path: Path, image: dict) -> dict[str, Path]:
    refs = _write(tmp_path / "refs(unc).json", [
        {"ref_id": 0, "ann_id": 5, "image_id": 9, "split": "testA", "category_id": 1, "file_name": "x_9_5.jpg",
         "sentences": [{"sent": "man on the left", "sent_id": 3, "tokens": []}, {"sent": "left guy", "sent_id": 4, "tokens": []}]},
    ])  # fmt: skip
    instances = _write(tmp_path / "instances.json", {
        "images": [image],
        "annotations": [{"id": 5, "image_id": 9, "category_id": 1, "bbox": [10.0, 20.0, 30.0, 40.0], "area": 1200.0, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "person", "supercategory": "person"}],
    })  # fmt: skip
    return {"refs": refs, "instances": instances}


def test_refcoco_reads_instances_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    files = _refcoco_files(tmp_path, {"id": 9, "file_name": "COCO_train2014_000000000009.jpg", "width": 640, "height": 480})
    assert {e.image_size for e in read_refcoco(files["refs"], files["instances"])} == {(640, 480)}
    reads = []
    original = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self.name) or original(self))
    items = load_items("refcoco", files, "testA")
    assert reads.count("instances.json") == 1
    assert [(i.id, i.image, i.target) for i in items] == [
        (id, "COCO_train2014_000000000009", {"box": [10.0, 20.0, 40.0, 60.0], "size": [640, 480]}) for id in ("3", "4")
    ]


def test_refcoco_image_without_size(tmp_path: Path):
    files = _refcoco_files(tmp_path, {"id": 9, "file_name": "COCO_train2014_000000000009.jpg"})
    assert {e.image_size for e in read_refcoco(files["refs"], files["instances"])} == {None}
    with pytest.raises(DataFormatError, match=f"^{re.escape(str(files['instances']))}: 1 image\\(s\\) have no width and height.*: 9$"):
        load_items("refcoco", files, None)


def test_an_answer_that_is_not_a_string_is_named_by_its_item(tmp_path: Path):
    """A None from a failed generation or an edited predictions file stops scoring with the item's id,
    for every metric, instead of an AttributeError from inside a normaliser."""
    path = _write(tmp_path / "val.json", [
        {"image": "VizWiz_val_00000000.jpg", "question": "What is this?", "answers": _vizwiz_answers(*["soda"] * 10),
         "answer_type": "other", "answerable": 1},
    ])  # fmt: skip
    items = load_items("vizwiz", {"questions": path}, "val")
    with pytest.raises(TypeError, match=r"1 prediction\(s\) are not strings \(item 'VizWiz_val_00000000': NoneType None\)"):
        score("vqa", items, [None])
    with pytest.raises(ValueError, match="2 predictions for 1 items"):
        score("vqa", items, ["soda", "soda"])
