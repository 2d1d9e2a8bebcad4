"""The sample build's evaluation files (`eval/`): POPE's three settings balanced per image with
negatives that the image does not show, MME's yes/no pairs with counts equal to the annotated
boxes, and ScienceQA problems that the project's reader accepts, each answer the majority one."""

import json
import re
from collections import Counter, defaultdict

import pytest

from lyrics.data.instructions import read_scienceqa
from lyrics.data.sample.build import INDEX_FILE
from lyrics.data.sample.documents import MME_SUFFIX, POPE_SETTINGS, SCIENCEQA_IMAGE

EVAL_FILES = ("eval/pope.json", "eval/mme.json", "eval/scienceqa/problems.json", "eval/scienceqa/images.json")
_POPE_TEXT = re.compile(r"Is there a (.+) in the image\?")
_NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9}


@pytest.fixture(scope="module")
def pope(sample_dir):
    return json.loads((sample_dir / "eval" / "pope.json").read_text())


@pytest.fixture(scope="module")
def mme(sample_dir):
    return json.loads((sample_dir / "eval" / "mme.json").read_text())


@pytest.fixture(scope="module")
def by_file(annotations):
    return {f"{image.key}.jpg": image for image in annotations.images}


def pope_label(record: dict) -> str:
    return _POPE_TEXT.fullmatch(record["text"]).group(1)


def plural_forms(label: str) -> set[str]:
    """The label as a count question may name it (the sample's labels take -s, or -man -> -men)."""
    return {label, f"{label}s", f"{label.removesuffix('man')}men"}


def pope_negatives(records: list[dict]) -> dict[str, list[str]]:
    negatives = defaultdict(list)
    for record in records:
        if record["label"] == "no":
            negatives[record["image"]].append(pope_label(record))
    return negatives


def test_files_are_in_the_index_with_their_counts(sample_dir, pope, mme):
    index = json.loads((sample_dir / INDEX_FILE).read_text())
    assert set(EVAL_FILES) <= set(index["files"])
    assert index["pope"] == sum(len(records) for records in pope.values())
    assert index["mme"] == len(mme)
    assert index["scienceqa"] == len(json.loads((sample_dir / "eval" / "scienceqa" / "problems.json").read_text()))


@pytest.mark.parametrize("setting", POPE_SETTINGS)
def test_pope_setting_is_balanced_and_never_asks_a_shown_label_as_absent(pope, by_file, setting):
    records = pope[setting]
    assert records, setting
    assert [record["question_id"] for record in records] == list(range(1, len(records) + 1))
    answers = defaultdict(Counter)
    for record in records:
        image = by_file[record["image"]]
        label = pope_label(record)
        shown = {item.label for item in image.objects}
        answers[record["image"]][record["label"]] += 1
        if record["label"] == "yes":
            assert label in shown, (setting, record)
        else:
            assert record["label"] == "no"
            assert label not in shown and label not in image.unboxed, (setting, record)
    for image, counts in answers.items():
        assert counts["yes"] == counts["no"], (setting, image)
        labels = [pope_label(record) for record in records if record["image"] == image]
        assert len(labels) == len(set(labels)), (setting, image)  # each label asked once per image


def test_pope_random_and_popular_ask_every_distinct_label(pope, annotations):
    for setting in ("random", "popular"):
        asked = Counter(record["image"] for record in pope[setting] if record["label"] == "yes")
        assert asked == {f"{image.key}.jpg": len({item.label for item in image.objects}) for image in annotations.images}


def test_pope_settings_sample_differently(pope):
    random, popular, adversarial = (pope_negatives(pope[setting]) for setting in POPE_SETTINGS)
    assert any(adversarial[image] != random[image] for image in adversarial)
    assert any(popular[image] != random[image] for image in popular)


def test_mme_has_one_yes_and_one_no_per_subtask_and_image(mme, annotations):
    pairs = defaultdict(list)
    for record in mme:
        assert record["question"].endswith(MME_SUFFIX)
        pairs[record["subtask"], record["image"]].append(record["answer"])
    assert {subtask for subtask, _ in pairs} == {"existence", "count"}
    assert all(sorted(answers) == ["No", "Yes"] for answers in pairs.values())
    assert {image for subtask, image in pairs if subtask == "existence"} == {
        f"{image.key}.jpg" for image in annotations.images
    }


def test_mme_count_yes_is_the_annotated_box_count(mme, by_file):
    counted = [record for record in mme if record["subtask"] == "count"]
    assert counted
    for yes, no in zip(counted[0::2], counted[1::2]):
        assert (yes["answer"], no["answer"], yes["image"]) == ("Yes", "No", no["image"])
        image = by_file[yes["image"]]
        question = yes["question"].removesuffix(MME_SUFFIX)
        number, name = re.fullmatch(r"(?:Is|Are) there (\w+) (.+) in this image\?", question).groups()
        (label,) = {item.label for item in image.objects if name in plural_forms(item.label)}
        assert label not in image.unboxed
        assert _NUMBERS[number] == sum(item.label == label for item in image.objects), yes
        (no_number,) = re.findall(r"there (\w+) ", no["question"])
        assert _NUMBERS[no_number] == _NUMBERS[number] + 1


def test_mme_existence_asks_a_shown_label_yes_and_an_absent_one_no(mme, by_file):
    for record in mme:
        if record["subtask"] != "existence":
            continue
        image = by_file[record["image"]]
        question = record["question"].removesuffix(MME_SUFFIX)
        label = re.fullmatch(r"(?:Is there an? |Are there )(.+) in this image\?", question).group(1)
        if record["answer"] == "Yes":
            assert label in {item.label for item in image.objects}
        else:
            assert label not in {item.label for item in image.objects} | set(image.unboxed)


def test_scienceqa_problems_read_back_with_the_majority_answer(sample_dir, annotations):
    problems = read_scienceqa(sample_dir / "eval" / "scienceqa" / "problems.json")
    images = json.loads((sample_dir / "eval" / "scienceqa" / "images.json").read_text())
    assert [problem.pid for problem in problems] == list(images)
    questions = {f"{image.key}-{n}": (image.key, qa) for image in annotations.images for n, qa in enumerate(image.qa)}
    assert len(problems) == len(questions)  # every sample question has distractors
    places = set()
    for problem in problems:
        key, qa = questions[problem.pid]
        assert images[problem.pid] == key
        assert (problem.question, problem.image, problem.split) == (qa.question, SCIENCEQA_IMAGE, "test")
        assert problem.choices[problem.answer] == qa.multiple_choice_answer
        assert len(set(problem.choices)) == len(problem.choices)
        if qa.answer_type == "yes/no":
            assert problem.choices == ("yes", "no")
        else:
            assert 2 <= len(problem.choices) <= 4
            distractors = set(problem.choices) - {qa.multiple_choice_answer}
            assert not distractors & set(qa.answers), problem  # no annotator gave a distractor
            places.add(problem.answer)
    assert len(places) > 1, "the majority answer always takes the same place"
