"""The stage-2 instruction converters on the sample set: counts equal the sources', boxes round-trip
through spatial text, templates are fixed per id, and JSONL files are read back or refused by line."""

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from lyrics.data.coco import read_coco_captions
from lyrics.data.errors import DataFormatError
from lyrics.data.instruction_templates import (
    CAPTION,
    GROUNDED_CAPTION,
    IMAGE_TOKEN,
    MULTIPLE_CHOICE,
    REC,
    TEMPLATES,
    TEXT_VQA,
    VQA,
    template_index,
)
from lyrics.data.instructions import (
    CONVERSATION,
    Instruction,
    MissingImagesError,
    from_coco_captions,
    from_llava,
    from_refcoco,
    from_scienceqa,
    from_vqa,
    image_key,
    majority_answer,
    read_jsonl,
    read_scienceqa,
    require_images,
    write_jsonl,
)
from lyrics.data.llava import IMAGE_PLACEHOLDER, read_llava
from lyrics.data.refcoco import read_refcoco
from lyrics.data.vqa import VqaQuestion, read_vqa
from lyrics.data.webdataset import iter_webdataset
from lyrics.spatial_text import COORD_MAX, find_boxes


@pytest.fixture(scope="module")
def captions(sample_dir):
    return read_coco_captions(sample_dir / "coco" / "captions.json", sample_dir / "images")


@pytest.fixture(scope="module")
def questions(sample_dir):
    return read_vqa(sample_dir / "vqa" / "questions.json", sample_dir / "vqa" / "annotations.json")


@pytest.fixture(scope="module")
def expressions(sample_dir):
    return read_refcoco(sample_dir / "refcoco" / "refs(unc).json", sample_dir / "refcoco" / "instances.json")


@pytest.fixture(scope="module")
def conversations(sample_dir):
    return read_llava(sample_dir / "llava" / "conversations.json", sample_dir / "images")


@pytest.fixture(scope="module")
def shard_meta(sample_dir):
    """The webdataset samples' metadata by join key: what the cache rows carry in `source`."""
    return {image_key(sample.meta): sample.meta for sample in iter_webdataset(sample_dir / "webdataset" / "*.tar")}


@pytest.fixture(scope="module")
def sizes(shard_meta):
    return {key: (meta["width"], meta["height"]) for key, meta in shard_meta.items()}


@pytest.fixture(scope="module")
def image_keys(captions):
    return {image.image_id: image.file_path.stem for image in captions}


@pytest.fixture(scope="module")
def everything(captions, questions, expressions, conversations, sizes, image_keys):
    return (
        from_coco_captions(captions)
        + from_vqa(questions, image_keys)
        + from_refcoco(expressions, sizes)
        + from_llava(conversations)
    )


def prompt(example: Instruction) -> str:
    return example.turns[0][0]


def answer(example: Instruction) -> str:
    return example.turns[0][1]


def test_captions_one_example_per_caption(captions):
    examples = from_coco_captions(captions)
    assert len(examples) == sum(len(image.captions) for image in captions) == 64
    by_image = {image.file_path.stem: image.captions for image in captions}
    for example in examples:
        assert (example.task, example.source, len(example.turns)) == (CAPTION, "coco", 1)
        assert prompt(example) in TEMPLATES[CAPTION]
        assert answer(example) in by_image[example.image]
    assert Counter(example.image for example in examples) == {key: 4 for key in by_image}


def test_vqa_one_example_per_question_with_the_majority_answer(questions, image_keys):
    examples = from_vqa(questions, image_keys)
    assert len(examples) == len(questions) == 48
    for example, question in zip(examples, questions, strict=True):
        assert example.id == f"vqav2/vqa/{question.question_id}"
        assert example.image == image_keys[question.image_id]
        assert question.question in prompt(example) and prompt(example).startswith(IMAGE_TOKEN)
        # the sample has no ties, so the majority is VQAv2's own multiple-choice answer
        assert answer(example) == question.multiple_choice_answer


def test_text_vqa_uses_the_text_reading_templates(questions, image_keys):
    examples = from_vqa(questions, image_keys, source="textvqa", task=TEXT_VQA)
    filled = {template.format(question=q.question) for q in questions for template in TEMPLATES[TEXT_VQA]}
    assert all(prompt(example) in filled and example.task == TEXT_VQA for example in examples)
    with pytest.raises(ValueError, match="task must be"):
        from_vqa(questions, image_keys, task=CAPTION)


def test_majority_answer_and_its_tie_rule():
    assert majority_answer(["two", "2", "two", "three"]) == "two"
    assert majority_answer(["blue", "red", "red", "blue", "green"]) == "blue"  # tie: first given wins
    assert majority_answer(["red", "blue", "red", "blue", "green"]) == "red"


def test_vqa_question_without_answers_is_refused(image_keys):
    question = VqaQuestion(7, 1, "Why?", "why", "other", "", ())
    with pytest.raises(ValueError, match="questions without answers: 7"):
        from_vqa([question], image_keys)


def test_refcoco_rec_and_grounded_caption_per_expression(expressions, sizes, sample_dir):
    # the sizes from the shard metadata are the instances file's (read raw here, only to check)
    instances = json.loads((sample_dir / "refcoco" / "instances.json").read_text())
    assert sizes == {Path(i["file_name"]).stem: (i["width"], i["height"]) for i in instances["images"]}
    examples = from_refcoco(expressions, sizes)
    rec = [e for e in examples if e.task == REC]
    grounded = [e for e in examples if e.task == GROUNDED_CAPTION]
    assert len(rec) == len(grounded) == len(expressions) == 136
    for item, rec_example, grounded_example in zip(expressions, rec, grounded, strict=True):
        width, height = sizes[Path(item.file_name).stem]
        assert item.expression in prompt(rec_example)
        assert answer(grounded_example) == item.expression
        for text in (answer(rec_example), prompt(grounded_example)):
            [box] = find_boxes(text)
            pixels = (box[0] * width, box[1] * height, box[2] * width, box[3] * height)
            limits = (width, height, width, height)
            for got, want, limit in zip(pixels, item.box_xyxy, limits, strict=True):
                assert abs(got - want) <= limit / COORD_MAX
        assert re.fullmatch(r"<Bbox>\(\d+,\d+\),\(\d+,\d+\)</Box>", answer(rec_example))


def test_llava_conversations_kept_turn_by_turn(conversations):
    examples = from_llava(conversations)
    assert len(examples) == len(conversations) == 16
    for example, conversation in zip(examples, conversations, strict=True):
        texts = [turn.text for turn in conversation.turns]
        texts[0] = texts[0].replace(IMAGE_PLACEHOLDER, IMAGE_TOKEN)
        assert [text for turn in example.turns for text in turn] == texts
        assert example.task == CONVERSATION and example.image == conversation.image_path.stem
        assert prompt(example).startswith(IMAGE_TOKEN) and IMAGE_PLACEHOLDER not in prompt(example)


def test_scienceqa_options_are_lettered(tmp_path):
    problems = {
        "12": {
            "question": "Which is a mammal?",
            "choices": ["trout", "quokka", "gecko"],
            "answer": 1,
            "hint": "Look at the animals.",
            "image": "image.png",
            "split": "train",
            "lecture": "unused",
        },
        "13": {
            "question": "Which is warmer?",
            "choices": ["ice", "tea"],
            "answer": 1,
            "hint": "",
            "image": None,
            "split": "train",
        },
        "14": {
            "question": "Which color is it?",
            "choices": ["blue", "yellow", "pink", "black"],
            "answer": 3,
            "hint": "",
            "image": "image.png",
            "split": "val",
        },
    }
    path = tmp_path / "problems.json"
    path.write_text(json.dumps(problems))
    first, second = from_scienceqa(read_scienceqa(path))  # problem 13 has no image
    assert (first.image, first.task, answer(first), answer(second)) == ("12", MULTIPLE_CHOICE, "B", "D")
    assert "Look at the animals. Which is a mammal?" in prompt(first)
    assert "(A) trout (B) quokka (C) gecko" in prompt(first)
    assert "(A) blue (B) yellow (C) pink (D) black" in prompt(second)

    problems["14"]["answer"] = 4
    path.write_text(json.dumps(problems))
    with pytest.raises(DataFormatError, match=f"^{re.escape(str(path))}: problem 14: answer 4"):
        read_scienceqa(path)


def test_templates_are_fixed_per_id_and_all_used(everything):
    # pinned: the choice depends on the id alone (a hash of it), not on the process's hash seed
    assert template_index(CAPTION, "coco/caption/1-0") == 3
    assert template_index(VQA, "vqav2/vqa/1000") == 7
    assert template_index(REC, "refcoco/rec/0") == 1
    assert template_index(MULTIPLE_CHOICE, "scienceqa/multiple_choice/12") == 2
    for task in (CAPTION, VQA, REC, GROUNDED_CAPTION):
        used = {template_index(task, e.id) for e in everything if e.task == task}
        assert used == set(range(len(TEMPLATES[task]))), task
    for example in everything:
        if example.task == CAPTION:  # a caption prompt is its chosen template, word for word
            assert prompt(example) == TEMPLATES[CAPTION][template_index(CAPTION, example.id)]


def test_conversion_is_deterministic(captions, questions, expressions, conversations, sizes, image_keys, everything):
    again = (
        from_coco_captions(captions)
        + from_vqa(questions, image_keys)
        + from_refcoco(expressions, sizes)
        + from_llava(conversations)
    )
    assert [example.to_json() for example in again] == [example.to_json() for example in everything]


def test_every_image_joins_the_shards(everything, shard_meta):
    assert {example.image for example in everything} == set(shard_meta)
    require_images(everything, set(shard_meta), "the sample cache")
    with pytest.raises(MissingImagesError, match=r"^2 image\(s\) .* no row in the sample cache: astronaut, coffee$"):
        require_images(everything, set(shard_meta) - {"astronaut", "coffee"}, "the sample cache")


def test_image_key_of_an_img2dataset_row():
    source = {
        "file": "/data/00000.tar",
        "url": "http://images.cocodataset.org/train2014/COCO_train2014_000000000009.jpg",
    }
    assert image_key(source) == "COCO_train2014_000000000009"


def test_missing_sizes_and_names_are_refused(expressions, questions, sizes, image_keys):
    with pytest.raises(MissingImagesError, match="have no image size: chelsea$"):
        from_refcoco(expressions, {key: size for key, size in sizes.items() if key != "chelsea"})
    with pytest.raises(MissingImagesError, match="have no image name: 1$"):
        from_vqa(questions, {image_id: key for image_id, key in image_keys.items() if image_id != 1})


def test_jsonl_round_trip(everything, tmp_path):
    path = tmp_path / "instructions.jsonl"
    assert write_jsonl(path, everything) == len(everything) == len(path.read_text().splitlines())
    assert read_jsonl(path) == everything
    assert len({example.id for example in everything}) == len(everything)


GOOD = Instruction("x/caption/1", CAPTION, "astronaut", "x", (("<Image>Describe.", "A woman."),))


@pytest.mark.parametrize(
    ("bad_line", "problem"),
    [
        ("{", "Invalid JSON"),
        (json.dumps({**json.loads(GOOD.to_json()), "id": "x/2", "turns": []}), "has no turns"),
        (json.dumps({**json.loads(GOOD.to_json()), "id": "x/2", "task": "poetry"}), "unknown task 'poetry'"),
        (json.dumps({k: v for k, v in json.loads(GOOD.to_json()).items() if k != "image"}), "image: Field required"),
        (
            json.dumps({**json.loads(GOOD.to_json()), "id": "x/2", "turns": [{"human": "Hi", "assistant": "Hi"}]}),
            "<Image> must be",
        ),
        (GOOD.to_json(), "id x/caption/1 repeats line 1"),
    ],
)
def test_malformed_jsonl_line_is_named(tmp_path, bad_line, problem):
    path = tmp_path / "bad.jsonl"
    other = Instruction("x/conversation/0", CONVERSATION, None, "x", (("Hi", "Hello"),))
    path.write_text(f"{GOOD.to_json()}\n{other.to_json()}\n{bad_line}\n")
    with pytest.raises(DataFormatError, match=f"^{re.escape(str(path))}: line 3: .*{re.escape(problem)}"):
        read_jsonl(path)


def test_instruction_refuses_a_misplaced_image_token():
    with pytest.raises(ValueError, match="first human turn"):
        Instruction("x/1", CONVERSATION, "astronaut", "x", (("Hi", "Hello"), ("<Image>", "Ok")))
    with pytest.raises(ValueError, match="has no image"):
        Instruction("x/1", CONVERSATION, None, "x", (("<Image>Hi", "Hello"),))
