"""`python -m lyrics.data.convert`: each public format of the sample set becomes an instruction JSONL
that reads back with the sources' counts and the format's tasks; bad input stops with one line
naming the file."""

import json
import subprocess
import sys
from collections import Counter

import pytest

from lyrics.data import convert
from lyrics.data.coco import read_karpathy_split
from lyrics.data.instruction_templates import CAPTION, GROUNDED_CAPTION, MULTIPLE_CHOICE, REC, TEXT_VQA, VQA
from lyrics.data.instructions import CONVERSATION, read_jsonl
from lyrics.data.refcoco import read_refcoco


def run(*argv):
    convert.main([str(arg) for arg in argv])


def tasks(path):
    return Counter(example.task for example in read_jsonl(path))


def test_coco_captions(sample_dir, tmp_path):
    out = tmp_path / "coco.jsonl"
    run("coco-captions", "--captions", sample_dir / "coco" / "captions.json", "--images", sample_dir / "images", "--out", out)
    document = json.loads((sample_dir / "coco" / "captions.json").read_text())
    assert tasks(out) == {CAPTION: len(document["annotations"])}
    assert {example.source for example in read_jsonl(out)} == {"coco"}


def test_karpathy_split(sample_dir, tmp_path):
    out = tmp_path / "nested" / "karpathy.jsonl"  # the folder is made
    karpathy = sample_dir / "coco" / "dataset_coco.json"
    run("coco-captions", "--captions", karpathy, "--images", sample_dir, "--karpathy", "--split", "train", "--out", out)
    train = [image for image in read_karpathy_split(karpathy, sample_dir) if image.split == "train"]
    examples = read_jsonl(out)
    assert tasks(out) == {CAPTION: sum(len(image.captions) for image in train)}
    assert {example.image for example in examples} == {image.file_path.stem for image in train}


@pytest.mark.parametrize(("flag", "task", "source"), [((), VQA, "vqav2"), (("--text-vqa",), TEXT_VQA, "textvqa")])
def test_vqa(sample_dir, tmp_path, flag, task, source):
    out = tmp_path / "vqa.jsonl"
    vqa = sample_dir / "vqa"
    names = sample_dir / "coco" / "captions.json"
    run("vqa", "--questions", vqa / "questions.json", "--annotations", vqa / "annotations.json", "--image-names", names, *flag, "--out", out)
    questions = json.loads((vqa / "questions.json").read_text())["questions"]
    assert tasks(out) == {task: len(questions)}
    assert {example.source for example in read_jsonl(out)} == {source}


def test_vqa_image_without_a_name(sample_dir, tmp_path):
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"images": [{"id": 1, "file_name": "astronaut.jpg"}]}))
    vqa = sample_dir / "vqa"
    with pytest.raises(SystemExit, match=r"^error: .*names\.json.*have no image name"):
        run("vqa", "--questions", vqa / "questions.json", "--annotations", vqa / "annotations.json", "--image-names", names, "--out", tmp_path / "x.jsonl")
    assert not (tmp_path / "x.jsonl").exists()


def test_refcoco_split_and_source(sample_dir, tmp_path):
    refs, instances = sample_dir / "refcoco" / "refs(unc).json", sample_dir / "refcoco" / "instances.json"
    out = tmp_path / "refcoco.jsonl"
    run("refcoco", "--refs", refs, "--instances", instances, "--split", "val", "--source", "refcoco+", "--out", out)
    val = [item for item in read_refcoco(refs, instances) if item.split == "val"]
    assert 0 < len(val) < len(read_refcoco(refs, instances))
    assert tasks(out) == {REC: len(val), GROUNDED_CAPTION: len(val)}
    assert {example.source for example in read_jsonl(out)} == {"refcoco+"}


def test_refcoco_needs_a_split(sample_dir, tmp_path, capsys):
    """The refs file holds val and test beside train: without --split nothing is written, and
    `--split all` keeps every split on purpose."""
    refs, instances = sample_dir / "refcoco" / "refs(unc).json", sample_dir / "refcoco" / "instances.json"
    out = tmp_path / "refcoco.jsonl"
    with pytest.raises(SystemExit) as exit:
        run("refcoco", "--refs", refs, "--instances", instances, "--out", out)
    assert exit.value.code == 2 and "--split" in capsys.readouterr().err
    assert not out.exists()
    run("refcoco", "--refs", refs, "--instances", instances, "--split", "all", "--out", out)
    expressions = read_refcoco(refs, instances)
    assert len({item.split for item in expressions}) == 3
    assert tasks(out) == {REC: len(expressions), GROUNDED_CAPTION: len(expressions)}


@pytest.mark.parametrize("flags", [("--karpathy",), ("--split", "train")])
def test_karpathy_and_split_go_together(sample_dir, tmp_path, capsys, flags):
    with pytest.raises(SystemExit) as exit:
        run("coco-captions", "--captions", sample_dir / "coco" / "dataset_coco.json", *flags, "--out", tmp_path / "x.jsonl")
    assert exit.value.code == 2 and "--split selects a Karpathy split" in capsys.readouterr().err


def test_refcoco_unknown_split(sample_dir, tmp_path):
    refs, instances = sample_dir / "refcoco" / "refs(unc).json", sample_dir / "refcoco" / "instances.json"
    with pytest.raises(SystemExit, match=r"refs\(unc\)\.json: no records of split 'trian'"):
        run("refcoco", "--refs", refs, "--instances", instances, "--split", "trian", "--out", tmp_path / "x.jsonl")


def test_llava_end_to_end(sample_dir, tmp_path):
    """The one run through `python -m`, as a user types it."""
    out = tmp_path / "llava.jsonl"
    conversations = sample_dir / "llava" / "conversations.json"
    command = [sys.executable, "-m", "lyrics.data.convert", "llava", "--conversations", str(conversations), "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    count = len(json.loads(conversations.read_text()))
    assert tasks(out) == {CONVERSATION: count}
    assert f"{count} examples" in result.stdout and str(out) in result.stdout


def test_scienceqa(tmp_path):
    problems = tmp_path / "problems.json"
    problem = {"question": "Which is a mammal?", "choices": ["cat", "trout"], "answer": 0, "hint": "", "split": "train"}
    problems.write_text(json.dumps({"7": {**problem, "image": "image.png"}, "8": {**problem, "image": None}}))
    out = tmp_path / "scienceqa.jsonl"
    run("scienceqa", "--problems", problems, "--split", "train", "--out", out)
    (example,) = read_jsonl(out)  # the problem without an image is left out
    assert (example.task, example.image, example.turns[0][1]) == (MULTIPLE_CHOICE, "7", "A")
    assert "(A) cat (B) trout" in example.turns[0][0]


def test_missing_input_names_the_file(tmp_path, capsys):
    missing = tmp_path / "no_such_captions.json"
    with pytest.raises(SystemExit) as exit:
        run("coco-captions", "--captions", missing, "--out", tmp_path / "x.jsonl")
    message = str(exit.value.code)
    assert message.startswith("error: ") and str(missing) in message and "Traceback" not in message
    assert not (tmp_path / "x.jsonl").exists()


def test_repeated_ids_are_refused(tmp_path):
    conversations = tmp_path / "conversations.json"
    turn = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]
    conversations.write_text(json.dumps([{"id": "a", "conversations": turn}, {"id": "a", "conversations": turn}]))
    with pytest.raises(SystemExit, match=r"^error: .*conversations\.json: examples would repeat ids .*llava/conversation/a"):
        run("llava", "--conversations", conversations, "--out", tmp_path / "x.jsonl")
