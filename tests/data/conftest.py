"""Shared fixtures: the annotations under test and one sample build per test session."""

from pathlib import Path

import pytest

from lyrics.data.sample.annotations import DEFAULT_ANNOTATIONS_PATH, SampleAnnotations, load_annotations
from lyrics.data.sample.build import build_sample

FIXTURE_ANNOTATIONS_PATH = Path(__file__).with_name("annotations.yaml")


@pytest.fixture(scope="session")
def fixture_annotations_path() -> Path:
    return FIXTURE_ANNOTATIONS_PATH


@pytest.fixture(scope="session")
def packaged_annotations_filled() -> bool:
    return bool(load_annotations(DEFAULT_ANNOTATIONS_PATH).images)


@pytest.fixture(scope="session")
def annotations_path(packaged_annotations_filled: bool) -> Path:
    """The packaged annotations once they are filled in; until then the three-image fixture."""
    return DEFAULT_ANNOTATIONS_PATH if packaged_annotations_filled else FIXTURE_ANNOTATIONS_PATH


@pytest.fixture(scope="session")
def annotations(annotations_path: Path) -> SampleAnnotations:
    return load_annotations(annotations_path)


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory, annotations_path: Path) -> Path:
    out = tmp_path_factory.mktemp("build") / "sample"
    build_sample(out, annotations_path)
    return out
