"""Fixtures of the data tests: the small three-image annotations file used for error cases."""

from pathlib import Path

import pytest

from lyrics.data.sample.annotations import SampleAnnotations, load_annotations

FIXTURE_ANNOTATIONS_PATH = Path(__file__).with_name("annotations.yaml")


@pytest.fixture(scope="session")
def fixture_annotations_path() -> Path:
    return FIXTURE_ANNOTATIONS_PATH


@pytest.fixture(scope="session")
def annotations(annotations_path: Path) -> SampleAnnotations:
    return load_annotations(annotations_path)
