"""Validation of the sample annotations: bad input is refused naming the file and the image."""

from pathlib import Path

import pytest
import yaml

from lyrics.data.sample.annotations import (
    DEFAULT_ANNOTATIONS_PATH,
    VQA_ANSWER_COUNT,
    AnnotationError,
    load_annotations,
)
from lyrics.data.sample.photos import open_photo, resolve_source


@pytest.fixture
def write_variant(tmp_path: Path, fixture_annotations_path: Path):
    """Saves the fixture with `change(document)` applied as a new YAML file; returns its path."""

    def write(change) -> Path:
        document = yaml.safe_load(fixture_annotations_path.read_text())
        change(document)
        path = tmp_path / "annotations.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path

    return write


def first_image(document: dict) -> dict:
    return document["images"][0]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda doc: first_image(doc)["qa"][0]["answers"].update(orange=8), "sum to 9"),
        (lambda doc: first_image(doc)["objects"][0].update(box=[100, 10, 50, 60]), "0 <= x1 < x2"),
        (lambda doc: first_image(doc)["objects"][0].update(box=[1.5, 10, 50, 60]), "box"),
        (lambda doc: first_image(doc).update(captions=["only one"]), "captions"),
        (lambda doc: first_image(doc).update(source="nopackage:x.png"), "unknown package 'nopackage'"),
        (lambda doc: first_image(doc).update(source="skimage:../x.png"), "inside the package's data folder"),
        (lambda doc: first_image(doc).update(split="training"), "split"),
        (lambda doc: first_image(doc).update(colour="red"), "colour"),
        (lambda doc: first_image(doc)["qa"][1].update(answers={True: 10}), "quote it in the YAML"),
        (lambda doc: first_image(doc)["objects"][0].update(refs=[]), "refs"),
    ],
)
def test_invalid_image_is_refused_naming_file_key_and_problem(write_variant, change, problem):
    path = write_variant(change)
    with pytest.raises(AnnotationError) as error:
        load_annotations(path)
    message = str(error.value)
    assert message.startswith(f"{path}: image 'astronaut': ")
    assert problem in message


def test_duplicate_key_is_refused(write_variant):
    path = write_variant(lambda doc: doc["images"][1].update(key="astronaut"))
    with pytest.raises(AnnotationError, match=r"image 'astronaut': duplicate key") as error:
        load_annotations(path)
    assert str(path) in str(error.value)


def test_image_without_key_is_named_by_position(write_variant):
    path = write_variant(lambda doc: doc["images"][2].pop("key"))
    with pytest.raises(AnnotationError, match=r"image #2: key: Field required"):
        load_annotations(path)


def test_box_outside_photo_is_refused_naming_file_and_key(write_variant):
    path = write_variant(lambda doc: first_image(doc)["objects"][1].update(box=[276, 343, 513, 512]))
    annotations = load_annotations(path)  # the size is only known once the photo is resolved
    image = annotations.images[0]
    with pytest.raises(AnnotationError) as error:
        annotations.check_photo_size(image, open_photo(image.source).size)
    assert str(error.value) == f"{path}: image 'astronaut': box [276, 343, 513, 512] of 'helmet' is outside the 512x512 photo"


def test_malformed_yaml_is_refused(tmp_path):
    path = tmp_path / "annotations.yaml"
    path.write_text("images: [\n")
    with pytest.raises(AnnotationError, match=str(path)):
        load_annotations(path)


def test_missing_package_names_what_to_install(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install scikit-learn"):
        resolve_source("sklearn:china.jpg")


def test_answers_rank_by_count_then_alphabetically(fixture_annotations_path):
    qa = load_annotations(fixture_annotations_path).images[2].qa[1]
    assert qa.answers == {"green": 7, "yellow": 2, "yellow green": 1}
    assert qa.multiple_choice_answer == "green"
    assert qa.ten_answers == ["green"] * 7 + ["yellow"] * 2 + ["yellow green"]


def test_fixture_annotations_are_complete(fixture_annotations_path):
    check_complete(fixture_annotations_path)


def test_packaged_annotations_are_complete():
    check_complete(DEFAULT_ANNOTATIONS_PATH)
    assert len(load_annotations(DEFAULT_ANNOTATIONS_PATH).images) >= 12


def check_complete(path: Path) -> None:
    """Every box inside its photo, every ref on an object, >= 2 captions, >= 2 questions of ten answers."""
    annotations = load_annotations(path)
    assert len(annotations.images) >= 2
    for image in annotations.images:
        photo = open_photo(image.source)
        assert photo.mode == "RGB"
        annotations.check_photo_size(image, photo.size)
        assert len(image.captions) >= 2, image.key
        assert len(image.qa) >= 2, image.key
        assert all(sum(qa.answers.values()) == VQA_ANSWER_COUNT for qa in image.qa), image.key
        assert all(len(qa.ten_answers) == VQA_ANSWER_COUNT for qa in image.qa), image.key
        for item in image.objects:
            width, height = photo.size
            x1, y1, x2, y2 = item.box
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height, (image.key, item.label)
            assert item.refs, (image.key, item.label)
