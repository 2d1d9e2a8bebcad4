"""Fixtures shared by every test folder: one build of the embedded sample data set per session."""

from pathlib import Path

import pytest

from lyrics.data.sample.annotations import DEFAULT_ANNOTATIONS_PATH
from lyrics.data.sample.build import build_sample


@pytest.fixture(scope="session")
def annotations_path() -> Path:
    return DEFAULT_ANNOTATIONS_PATH


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory, annotations_path: Path) -> Path:
    out = tmp_path_factory.mktemp("build") / "sample"
    build_sample(out, annotations_path)
    return out
