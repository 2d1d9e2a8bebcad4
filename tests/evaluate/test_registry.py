"""The benchmarks registered in pipelines.yaml: every paper benchmark of Tables 1-3 and 9 is there,
readable by its format, with a paper number beside it; a missing file is named with its source."""

import re

import pytest

from lyrics.config import ConfigError, load_config
from lyrics.data.errors import DataFormatError
from lyrics.evaluate.benchmarks import FORMATS, load_items
from lyrics.evaluate.paper_numbers import PAPER, SAMPLE_REFERENCES
from lyrics.evaluate.run import EvalPlan, benchmark_files

CONFIG = load_config()
RESULTS = {result: (name, split) for name, bench in CONFIG.benchmarks.items() for split, result in bench.result_names(name).items()}


def test_every_paper_result_is_registered_and_every_registered_result_has_a_paper_number():
    real = {result for result in RESULTS if not result.startswith("sample-")}
    assert real - {"vqav2-test-dev"} == set(PAPER)  # test-dev only writes the server's file
    assert {result for result in RESULTS if result.startswith("sample-")} == set(SAMPLE_REFERENCES)
    assert {RESULTS[r][0] for r in PAPER if r.startswith("refcoco")} == {"refcoco", "refcoco+", "refcocog"}


@pytest.mark.parametrize("result", sorted(RESULTS))
def test_file_keys_match_the_format_and_the_images_are_a_registered_data_set(result, tmp_path):
    name, split = RESULTS[result]
    bench = CONFIG.benchmark(name)
    assert bench.format in FORMATS and bench.images in CONFIG.datasets
    files = {key: tmp_path / path.name for key, path in benchmark_files(CONFIG, bench, split).items()}
    assert all("{split}" not in str(path) for path in files.values())
    # The keys pass load_items' check; what stops it is the absent file, named.
    with pytest.raises(DataFormatError, match="|".join(re.escape(str(path)) for path in files.values())):
        load_items(bench.format, files, split)


def test_a_missing_benchmark_file_is_named_with_where_it_comes_from(monkeypatch, tmp_path):
    monkeypatch.setenv("LYRICS_POPE_DIR", str(tmp_path))
    config = load_config()
    with pytest.raises(ConfigError) as error:
        EvalPlan.make(config, "pope")
    message = str(error.value)
    for setting in ("random", "popular", "adversarial"):
        assert f"questions: {tmp_path}/coco_pope_{setting}.json" in message
    assert "They come from: https://github.com/RUCAIBox/POPE" in message
    with pytest.raises(ConfigError) as error:
        EvalPlan.make(config, "refcoco")  # three splits of the same two files: each named once
    assert str(error.value).count("refs(unc).json") == str(error.value).count("instances.json") == 1


def test_folder_data_sets_key_their_images_as_their_annotations_do():
    assert CONFIG.dataset("mme").key == "path"  # evaluate/benchmarks.py keys MME folder images by relative path
    assert CONFIG.dataset("scienceqa-test").key == "parent"  # test/<problem id>/image.png
    assert all(CONFIG.dataset(b.images).format == "folder" for n, b in CONFIG.benchmarks.items() if not n.startswith("sample-"))
