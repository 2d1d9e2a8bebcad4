"""Benchmark files -> EvalItems, on the built sample set (GQA and TextVQA on tiny files here)."""

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from lyrics.data.errors import DataFormatError
from lyrics.data.instruction_templates import IMAGE_TOKEN, TEMPLATES, TEXT_VQA, VQA
from lyrics.evaluate.benchmarks import FORMATS, EvalItem, load_items


def _json(path: Path):
    return json.loads(path.read_text())


def _image_keys(sample_dir: Path) -> set[str]:
    return {path.stem for path in (sample_dir / "images").iterdir()}


def _check_items(items: list[EvalItem], expected: int) -> None:
    assert len(items) == expected > 0
    assert len({item.id for item in items}) == len(items)
    for item in items:
        assert item.prompt.count(IMAGE_TOKEN) == 1 and item.prompt.startswith(IMAGE_TOKEN)
        json.dumps(item.target)  # JSON-serialisable


def _refcoco_files(sample_dir: Path) -> dict[str, Path]:
    return {"refs": sample_dir / "refcoco" / "refs(unc).json", "instances": sample_dir / "refcoco" / "instances.json"}


@pytest.mark.parametrize("split", ["test", "val", None])
def test_refcoco(sample_dir: Path, split: str | None):
    files = _refcoco_files(sample_dir)
    refs = _json(files["refs"])
    expected = sum(len(ref["sentences"]) for ref in refs if split is None or ref["split"] == split)
    items = load_items("refcoco", files, split)
    _check_items(items, expected)
    sentences = {
        str(s["sent_id"]): s["sent"] for ref in refs if split is None or ref["split"] == split for s in ref["sentences"]
    }
    assert {item.id for item in items} == set(sentences)
    keys = _image_keys(sample_dir)
    for item in items:
        assert item.image in keys
        assert item.prompt == TEMPLATES["rec"][0].format(expression=sentences[item.id])
        x1, y1, x2, y2 = item.target["box"]
        width, height = item.target["size"]
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height


def test_refcoco_box_and_size_by_hand(sample_dir: Path):
    files = _refcoco_files(sample_dir)
    instances = _json(files["instances"])
    ref = _json(files["refs"])[0]
    annotation = next(a for a in instances["annotations"] if a["id"] == ref["ann_id"])
    image = next(i for i in instances["images"] if i["id"] == ref["image_id"])
    item = next(i for i in load_items("refcoco", files, None) if i.id == str(ref["sentences"][0]["sent_id"]))
    x, y, w, h = annotation["bbox"]
    assert item.target == {"box": [x, y, x + w, y + h], "size": [image["width"], image["height"]]}
    assert item.image == Path(image["file_name"]).stem


def test_karpathy(sample_dir: Path):
    path = sample_dir / "coco" / "dataset_coco.json"
    images = [image for image in _json(path)["images"] if image["split"] == "test"]
    items = load_items("karpathy", {"annotations": path}, "test")
    _check_items(items, len(images))
    assert [item.id for item in items] == [str(image["cocoid"]) for image in images]
    assert [item.image for item in items] == [Path(image["filename"]).stem for image in images]
    assert [item.target["references"] for item in items] == [[s["raw"] for s in image["sentences"]] for image in images]
    assert {item.prompt for item in items} == {TEMPLATES["caption"][0]}


@pytest.mark.parametrize("names", ["coco/captions.json", "refcoco/instances.json"])
def test_vqa(sample_dir: Path, names: str):
    files = {
        "questions": sample_dir / "vqa" / "questions.json",
        "annotations": sample_dir / "vqa" / "annotations.json",
        "image_names": sample_dir / names,
    }
    questions = _json(files["questions"])["questions"]
    answers = {a["question_id"]: [x["answer"] for x in a["answers"]] for a in _json(files["annotations"])["annotations"]}
    items = load_items("vqa", files, "val")  # the split is not used: a VQA file is one split
    _check_items(items, len(questions))
    keys = _image_keys(sample_dir)
    template = "<Image>Based on the image, respond to this question with a short answer: {question}. Answer:"
    assert template in TEMPLATES[VQA]
    for item, question in zip(items, questions):
        assert item.id == str(question["question_id"])
        assert item.image in keys
        assert item.prompt == template.format(question=question["question"])
        assert item.target == {"answers": answers[question["question_id"]], "question_id": question["question_id"]}
        assert len(item.target["answers"]) == 10


def test_vqa_image_without_a_name(sample_dir: Path, tmp_path: Path):
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"images": [{"id": 1, "file_name": "astronaut.jpg"}]}))
    files = {
        "questions": sample_dir / "vqa" / "questions.json",
        "annotations": sample_dir / "vqa" / "annotations.json",
        "image_names": names,
    }
    with pytest.raises(DataFormatError, match=f"^{re.escape(str(names))}: has no file name"):
        load_items("vqa", files, None)


def test_pope(sample_dir: Path):
    path = sample_dir / "eval" / "pope.json"
    document = _json(path)
    every = load_items("pope", {"questions": path}, None)
    _check_items(every, sum(len(records) for records in document.values()))
    for setting, records in document.items():
        items = load_items("pope", {"questions": path}, setting)
        _check_items(items, len(records))
        labels = Counter(item.target["label"] for item in items)
        assert labels["yes"] == labels["no"] == len(items) / 2
        for item, record in zip(items, records):
            assert item.id == f"{setting}-{record['question_id']}"
            assert item.image == Path(record["image"]).stem
            assert item.prompt == IMAGE_TOKEN + record["text"]
            assert item.target == {"label": record["label"], "setting": setting}


def test_pope_jsonl(sample_dir: Path, tmp_path: Path):
    records = _json(sample_dir / "eval" / "pope.json")["popular"]
    path = tmp_path / "coco_pope_popular.json"  # the official files are JSONL despite the name
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    items = load_items("pope", {"questions": path}, None)
    _check_items(items, len(records))
    assert {item.target["setting"] for item in items} == {"popular"}
    assert items[0].id == f"popular-{records[0]['question_id']}"
    assert {item.target["setting"] for item in load_items("pope", {"questions": path}, "mine")} == {"mine"}

    one = tmp_path / "one.jsonl"  # a single line parses as one JSON object: still a record
    one.write_text(json.dumps(records[0]) + "\n")
    assert [item.target for item in load_items("pope", {"questions": one}, None)] == [
        {"label": records[0]["label"], "setting": "one"}
    ]


def test_mme(sample_dir: Path):
    path = sample_dir / "eval" / "mme.json"
    records = _json(path)
    items = load_items("mme", {"questions": path}, None)
    _check_items(items, len(records))
    for item, record in zip(items, records):
        stem = Path(record["image"]).stem
        assert item.id == f"{record['subtask']}-{stem}-{record['answer']}"
        assert item.image == stem
        assert item.prompt == IMAGE_TOKEN + record["question"]
        assert item.target == {"subtask": record["subtask"], "answer": record["answer"], "image": record["image"]}


def test_scienceqa(sample_dir: Path):
    problems_path = sample_dir / "eval" / "scienceqa" / "problems.json"
    images_path = sample_dir / "eval" / "scienceqa" / "images.json"
    problems = _json(problems_path)
    images = _json(images_path)
    kept = [pid for pid, p in problems.items() if p["split"] == "test" and p.get("image")]
    items = load_items("scienceqa", {"problems": problems_path, "images": images_path}, "test")
    _check_items(items, len(kept))
    assert [item.id for item in items] == kept
    keys = _image_keys(sample_dir)
    for item in items:
        problem = problems[item.id]
        assert item.image == images[item.id] and item.image in keys
        assert item.target["options"] == problem["choices"]
        letter = item.target["answer"]
        assert item.target["options"][ord(letter) - ord("A")] == problem["choices"][problem["answer"]]
        options = " ".join(f"({chr(ord('A') + i)}) {c}" for i, c in enumerate(problem["choices"]))
        question = f"{problem['hint']} {problem['question']}".strip()
        assert item.prompt == TEMPLATES["multiple_choice"][0].format(question=question, options=options)

    without_names = load_items("scienceqa", {"problems": problems_path}, None)
    assert [item.image for item in without_names] == [item.id for item in without_names]


def test_scienceqa_skips_problems_without_an_image(tmp_path: Path):
    problem = {"question": "Which?", "choices": ["a", "b"], "answer": 1, "hint": "Look.", "split": "test"}
    path = tmp_path / "problems.json"
    path.write_text(json.dumps({"1": {**problem, "image": "image.png"}, "2": {**problem, "image": None}, "3": problem}))
    (item,) = load_items("scienceqa", {"problems": path}, "test")
    assert (item.id, item.image, item.target) == ("1", "1", {"answer": "B", "options": ["a", "b"]})
    assert "Look. Which?" in item.prompt and "(A) a (B) b" in item.prompt

    images = tmp_path / "images.json"
    images.write_text(json.dumps({"2": "x"}))
    with pytest.raises(DataFormatError, match=f"^{re.escape(str(images))}: names no image for 1 problem"):
        load_items("scienceqa", {"problems": path, "images": images}, None)


def test_gqa(tmp_path: Path):
    path = tmp_path / "testdev_balanced_questions.json"
    path.write_text(json.dumps({
        "20968379": {"imageId": "n288870", "question": "Do the shorts have dark color?", "answer": "yes", "types": {}},
        "201640614": {"imageId": "2354786", "question": "Who is wearing the shirt?", "answer": "girl"},
    }))  # fmt: skip
    items = load_items("gqa", {"questions": path}, None)
    _check_items(items, 2)
    assert [(i.id, i.image, i.target) for i in items] == [
        ("20968379", "n288870", {"answer": "yes"}),
        ("201640614", "2354786", {"answer": "girl"}),
    ]
    template = "<Image>Based on the image, respond to this question with a short answer: {question}. Answer:"
    assert items[1].prompt == template.format(question="Who is wearing the shirt?")

    path.write_text(json.dumps({"1": {"imageId": "n1", "question": "What?"}}))  # a test file: no answers
    with pytest.raises(DataFormatError, match=f"^{re.escape(str(path))}: 1 question"):
        load_items("gqa", {"questions": path}, None)


def test_textvqa(tmp_path: Path):
    path = tmp_path / "TextVQA_0.5.1_val.json"
    answers = ["nokia"] * 7 + ["nokia phone"] * 3
    path.write_text(json.dumps({"dataset_name": "textvqa", "data": [
        {"question_id": 34602, "image_id": "0054c91397f2fe05", "question": "what is the brand?", "answers": answers},
        {"question_id": 34603, "image_id": "005635e119b9f32f", "question": "what does it say?", "answers": ["stop"] * 10},
    ]}))  # fmt: skip
    items = load_items("textvqa", {"questions": path}, None)
    _check_items(items, 2)
    assert [(i.id, i.image) for i in items] == [("34602", "0054c91397f2fe05"), ("34603", "005635e119b9f32f")]
    assert items[0].target == {"answers": answers}
    template = "<Image>Analyze the textual content in this image and provide a short answer to: {question}."
    assert template in TEMPLATES[TEXT_VQA]
    assert items[0].prompt == template.format(question="what is the brand?")

    path.write_text(json.dumps({"data": [{"question_id": 1, "image_id": "a", "question": "what?"}]}))
    with pytest.raises(DataFormatError, match="no answers"):
        load_items("textvqa", {"questions": path}, None)


@pytest.mark.parametrize(
    ("format", "files", "split", "found"),
    [
        ("refcoco", lambda d: _refcoco_files(d), "testA", "test, train, val"),
        ("karpathy", lambda d: {"annotations": d / "coco" / "dataset_coco.json"}, "testB", "restval|test, train, val"),
        ("scienceqa", lambda d: {"problems": d / "eval" / "scienceqa" / "problems.json"}, "minival", "test"),
        ("pope", lambda d: {"questions": d / "eval" / "pope.json"}, "randm", "adversarial, popular, random|random, popular, adversarial"),
    ],
)
def test_unknown_split_lists_those_present(sample_dir: Path, format: str, files, split: str, found: str):
    files = files(sample_dir)
    main = next(iter(files.values()))
    with pytest.raises(DataFormatError) as raised:
        load_items(format, files, split)
    message = str(raised.value)
    assert message.startswith(f"{main}: ") and repr(split) in message
    assert re.search(rf"\(the file has: ({found})\)", message), message


def test_unknown_format_and_wrong_files(sample_dir: Path):
    with pytest.raises(ValueError, match="unknown benchmark format 'coco'; formats: " + ", ".join(FORMATS)):
        load_items("coco", {}, None)
    with pytest.raises(ValueError, match="missing instances"):
        load_items("refcoco", {"refs": sample_dir / "refcoco" / "refs(unc).json"}, None)
    with pytest.raises(ValueError, match="unknown image_name"):
        load_items("mme", {"questions": sample_dir / "eval" / "mme.json", "image_name": sample_dir}, None)


def test_missing_file_names_it(tmp_path: Path):
    path = tmp_path / "absent.json"
    for format in ("mme", "pope", "gqa"):
        with pytest.raises(DataFormatError, match=f"^{re.escape(str(path))}: cannot read"):
            load_items(format, {"questions": path}, None)


def test_repeated_ids_are_refused(tmp_path: Path):
    path = tmp_path / "mme.json"
    record = {"subtask": "existence", "image": "a.jpg", "question": "Is there a cat?", "answer": "Yes"}
    path.write_text(json.dumps([record, record]))
    with pytest.raises(DataFormatError, match="repeated item id"):
        load_items("mme", {"questions": path}, None)

    record = {**record, "question": f"{IMAGE_TOKEN} Is there a cat?", "answer": "No"}
    path.write_text(json.dumps([record]))
    with pytest.raises(DataFormatError, match="once"):
        load_items("mme", {"questions": path}, None)
