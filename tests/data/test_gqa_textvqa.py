"""GQA and TextVQA, whose layouts are not VQAv2's: tiny files of each public format convert to one
example per question keyed by the image file's stem, with GQA's one answer or TextVQA's majority;
malformed files and the answerless test splits stop with a message naming the file."""

import json

import pytest

from lyrics.data import convert
from lyrics.data.errors import DataFormatError
from lyrics.data.gqa import read_gqa
from lyrics.data.instruction_templates import IMAGE_TOKEN, TEMPLATES, TEXT_VQA, VQA
from lyrics.data.instructions import MissingImagesError, from_vqa, read_jsonl
from lyrics.data.textvqa import read_textvqa
from lyrics.data.vqa import VqaQuestion

# A few of the many fields of GQA's questions that the reader ignores.
_GQA_EXTRA = {"isBalanced": True, "types": {"structural": "verify"}, "semantic": [], "annotations": {}, "groups": {}}
GQA = {
    "201307251": {"imageId": "n161313", "question": "Is it overcast?", "answer": "no", "fullAnswer": "No, it is clear."},
    "201640614": {"imageId": "n235859", "question": "Who is wearing the dress?", "answer": "woman", "fullAnswer": "The woman is wearing a dress."},
    "20968379": {"imageId": "2354786", "question": "Is the sky dark?", "answer": "yes", "fullAnswer": "Yes, the sky is dark."},
}
TEXTVQA_ANSWERS = {  # question id -> (ten answers, expected target)
    34602: (["nous les gosses"] * 7 + ["nous les", "les gosses", "nous les gosses!"], "nous les gosses"),
    34603: (["dakota"] * 4 + ["dakota digital"] * 6, "dakota digital"),
    34604: (["stop", "stop sign", "stop sign", "stop"] + ["go"] * 2 + ["stop", "stop sign", "red", "halt"], "stop"),  # 3-3 tie: first given
    34605: (["1"] * 10, "1"),
}
TEXTVQA_IMAGES = {34602: "0054c91397f2fe05", 34603: "005635e119b9f32f", 34604: "00685bc495504d61", 34605: "00685bc495504d61"}


def gqa_file(tmp_path, questions=GQA, name="testdev_balanced_questions.json"):
    path = tmp_path / name
    path.write_text(json.dumps({qid: {**_GQA_EXTRA, **question} for qid, question in questions.items()}))
    return path


def textvqa_file(tmp_path, data=None, name="TextVQA_0.5.1_train.json"):
    if data is None:
        data = [
            {
                "question_id": qid,
                "image_id": TEXTVQA_IMAGES[qid],
                "question": f"what is written on sign {qid}?",
                "answers": answers,
                "image_width": 1024,
                "image_height": 664,
                "image_classes": ["Street sign"],
                "set_name": "train",
            }
            for qid, (answers, _) in TEXTVQA_ANSWERS.items()
        ]
    path = tmp_path / name
    path.write_text(json.dumps({"dataset_name": "textvqa", "dataset_type": "train", "dataset_version": "0.5.1", "data": data}))
    return path


def run(*argv):
    convert.main([str(arg) for arg in argv])


def prompt(example):
    return example.turns[0][0]


def test_gqa_one_vqa_example_per_question(tmp_path):
    out = tmp_path / "gqa.jsonl"
    run("gqa", "--questions", gqa_file(tmp_path), "--out", out)
    examples = read_jsonl(out)  # read_jsonl also refuses repeated ids
    assert [example.id for example in examples] == [f"gqa/vqa/{qid}" for qid in GQA]
    for example, question in zip(examples, GQA.values(), strict=True):
        assert (example.task, example.source, example.image) == (VQA, "gqa", question["imageId"])
        assert prompt(example) in {template.format(question=question["question"]) for template in TEMPLATES[VQA]}
        assert prompt(example).startswith(IMAGE_TOKEN)
        assert example.turns[0][1] == question["answer"]


def test_textvqa_majority_answer_and_text_reading_templates(tmp_path):
    out = tmp_path / "textvqa.jsonl"
    run("textvqa", "--questions", textvqa_file(tmp_path), "--out", out)
    examples = read_jsonl(out)
    assert [example.id for example in examples] == [f"textvqa/{TEXT_VQA}/{qid}" for qid in TEXTVQA_ANSWERS]
    for example, (qid, (_, target)) in zip(examples, TEXTVQA_ANSWERS.items(), strict=True):
        assert (example.task, example.source, example.image) == (TEXT_VQA, "textvqa", TEXTVQA_IMAGES[qid])
        question = f"what is written on sign {qid}?"
        assert prompt(example) in {template.format(question=question) for template in TEMPLATES[TEXT_VQA]}
        assert example.turns[0][1] == target


def test_source_can_be_renamed(tmp_path):
    out = tmp_path / "gqa.jsonl"
    run("gqa", "--questions", gqa_file(tmp_path), "--source", "gqa-testdev", "--out", out)
    assert {example.id.split("/")[0] for example in read_jsonl(out)} == {"gqa-testdev"}


def test_readers_keep_the_image_stems_and_answers(tmp_path):
    gqa = read_gqa(gqa_file(tmp_path))
    assert [(q.question_id, q.image_id, q.answers) for q in gqa] == [
        (qid, question["imageId"], (question["answer"],)) for qid, question in GQA.items()
    ]
    textvqa = read_textvqa(textvqa_file(tmp_path))
    assert [(q.question_id, q.image_id, list(q.answers)) for q in textvqa] == [
        (qid, TEXTVQA_IMAGES[qid], answers) for qid, (answers, _) in TEXTVQA_ANSWERS.items()
    ]


def test_malformed_gqa_names_the_file(tmp_path):
    broken = {**GQA, "5": {"question": "Is there a cat?", "answer": "no"}}  # no imageId
    path = gqa_file(tmp_path, broken)
    with pytest.raises(DataFormatError, match=r"testdev_balanced_questions\.json: 5\.imageId: Field required"):
        read_gqa(path)
    with pytest.raises(SystemExit, match=r"^error: .*testdev_balanced_questions\.json: .*imageId"):
        run("gqa", "--questions", path, "--out", tmp_path / "x.jsonl")
    assert not (tmp_path / "x.jsonl").exists()


def test_malformed_textvqa_names_the_file(tmp_path):
    path = textvqa_file(tmp_path, [{"question_id": 1, "image_id": "ab12", "question": "what?", "answers": "stop"}])
    with pytest.raises(DataFormatError, match=r"TextVQA_0\.5\.1_train\.json: data\.0\.answers"):
        read_textvqa(path)
    with pytest.raises(SystemExit, match=r"^error: .*TextVQA_0\.5\.1_train\.json: data\.0\.answers"):
        run("textvqa", "--questions", path, "--out", tmp_path / "x.jsonl")


def test_test_splits_without_answers_are_refused(tmp_path):
    gqa = {qid: {key: value for key, value in q.items() if key not in ("answer", "fullAnswer")} for qid, q in GQA.items()}
    path = gqa_file(tmp_path, gqa, "test_balanced_questions.json")
    assert all(q.answers == () for q in read_gqa(path))  # read, for inference; not converted
    with pytest.raises(SystemExit, match=r"test_balanced_questions\.json: 3 of 3 questions have no answers \(201307251, "):
        run("gqa", "--questions", path, "--out", tmp_path / "x.jsonl")
    path = textvqa_file(tmp_path, [{"question_id": 7, "image_id": "ab12", "question": "what?"}], "TextVQA_0.5.1_test.json")
    with pytest.raises(SystemExit, match=r"TextVQA_0\.5\.1_test\.json: 1 of 1 questions have no answers \(7\)"):
        run("textvqa", "--questions", path, "--out", tmp_path / "x.jsonl")
    assert not (tmp_path / "x.jsonl").exists()


def test_from_vqa_needs_image_keys_for_numeric_ids():
    question = VqaQuestion(7, 9, "Why?", "why", "other", "because", ("because",))
    with pytest.raises(MissingImagesError, match="have no image name: 9"):
        from_vqa([question])
    (example,) = from_vqa([question], {9: "COCO_val2014_000000000009"})
    assert example.image == "COCO_val2014_000000000009"
