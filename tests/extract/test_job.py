"""The extract phase end to end: `make extract` on the sample and the fuzz set, SIGKILL + resume, then `make pretrain`.

The runs use a copy of pipelines.yaml whose root is a temporary folder (LYRICS_CONFIG), with at
most 4 objects per image so that SAM-HQ's decoder keeps the suite quick.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from lyrics.config import DEFAULT_CONFIG, REPO_ROOT, load_config
from lyrics.extract.cache_location import default_cache_root
from lyrics.extract.cache_location import fingerprints
from lyrics.spatial_text import parse_objects
from lyrics.store import CacheDataset, CacheExpectation, read_manifest

MAX_OBJECTS = 4


@pytest.fixture(scope="module")
def config_path(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("extract")
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["root"] = str(root)
    raw["extraction"].update(profile="tiny", max_objects=MAX_OBJECTS, batch_size=4)
    raw["datasets"]["photos"] = {"format": "folder", "path": "{root}/photos", "key": "path", "produced_by": "the folder test"}
    for component in raw["profiles"]["tiny"].values():
        if isinstance(component, dict):  # architecture files stay the repository's
            component["arch"] = str(REPO_ROOT / component["arch"])
    path = root / "pipelines.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def environment(config_path: Path) -> dict[str, str]:
    return {**os.environ, "LYRICS_CONFIG": str(config_path), "OMP_NUM_THREADS": "1"}


def extract(config_path: Path, data: str, cache: Path | None = None) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "lyrics.extract", "--data", data] + (["--cache", str(cache)] if cache else [])
    return subprocess.run(args, env=environment(config_path), capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def sample_cache(config_path) -> Path:
    """`make extract DATA=sample` with the test configuration: builds the sample set, then extracts."""
    result = subprocess.run(["make", "extract", "DATA=sample"], cwd=REPO_ROOT, env=environment(config_path), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    config = load_config(config_path)
    return default_cache_root(config, "sample", "tiny")


def test_sample_cache_has_every_image_with_consistent_fields(config_path, sample_cache):
    config = load_config(config_path)
    manifest = read_manifest(sample_cache)
    assert manifest.complete and manifest.rows == 16 and not manifest.skipped
    assert [s.name for s in manifest.shards] == ["00000", "00001"]
    assert manifest.identity.fingerprints == fingerprints(config, "tiny")

    expect = CacheExpectation(fingerprints=fingerprints(config, "tiny"), tensor_shapes={"vit_tokens": (257, 64), "sam_tokens": (MAX_OBJECTS, 260)})
    ds = CacheDataset(sample_cache, expect=expect)
    ids = [ds[i]["id"] for i in range(len(ds))]
    assert len(set(ids)) == 16 and ids[0] == "sample/00000/000000000"
    for i in range(len(ds)):
        item = ds[i]
        boxes = np.asarray(item["boxes"], dtype=np.float32).reshape(-1, 4)
        assert len(boxes) <= MAX_OBJECTS and len(boxes) == len(item["box_labels"]) == len(item["box_scores"])
        assert np.all((boxes >= 0) & (boxes <= 1)) and np.all(boxes[:, 2:] >= boxes[:, :2])
        assert all(s >= config.extraction.detection.box_threshold for s in item["box_scores"])
        assert item["sam_mask"].sum().item() == len(boxes)
        assert torch_equal(item["sam_tokens"][: len(boxes), 256:].float().numpy(), boxes, atol=1e-3)
        assert not item["sam_tokens"][len(boxes) :].any()
        assert all(item["sam_masks"][n].any() for n in range(len(boxes)))  # every object has a mask
        parsed = parse_objects(item["spatial_text"])
        assert [label for label, _ in parsed] == item["box_labels"]
        assert torch_equal(np.array([b for _, b in parsed]).reshape(-1, 4), boxes, atol=1 / 999)
        assert item["caption"] and item["width"] > 0 and json.loads(item["source"])["sample_key"]
    assert sum(len(ds[i]["tags"]) > 0 for i in range(len(ds))) >= 12  # RAM++ tags most photos


def torch_equal(a: np.ndarray, b: np.ndarray, atol: float) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, atol=atol))


def test_fuzz_inputs_are_rows_or_listed_skips(config_path, sample_cache):
    result = extract(config_path, "fuzz")
    assert result.returncode == 0, result.stderr[-3000:]
    config = load_config(config_path)
    fuzz_dir = config.path("{root}/data/sample/fuzz")
    expected = json.loads((fuzz_dir / "expected.json").read_text())["samples"]
    cache = default_cache_root(config, "fuzz", "tiny")
    manifest = read_manifest(cache)
    skipped = {s.id.rsplit("/", 1)[1]: s.reason.split(":")[0] for s in manifest.skipped}
    assert manifest.rows + len(skipped) == len(expected)  # nothing vanishes
    assert skipped == {key: case["reason"] for key, case in expected.items() if case["expect"] == "skip"}
    rows = {item["key"]: item for item in (CacheDataset(cache, fields=["sam_mask"])[i] for i in range(manifest.rows))}
    for key, case in expected.items():
        if case["expect"] == "ok":
            assert [rows[key]["width"], rows[key]["height"]] == case["size"], case["name"]  # upright RGB size
    missing = [key for key, case in expected.items() if case["missing_caption"]]
    assert rows[missing[0]]["caption"] is None
    assert manifest.extra["missing_caption"] == [rows[missing[0]]["id"]]
    assert "skipped" in result.stdout and "truncated" in result.stdout


def test_missing_dataset_files_stop_at_once_naming_the_path(config_path):
    result = extract(config_path, "laion")
    assert result.returncode != 0
    assert "data/laion400m/{00000..41407}.tar" in result.stderr and "img2dataset" in result.stderr
    assert "Traceback" not in result.stderr.splitlines()[-1]


def test_an_image_folder_is_extracted_as_its_images_are_from_tars(config_path, sample_cache):
    """A `format: folder` data set (how benchmark images come): rows keyed by the folder's key rule,
    a broken file skipped and counted, and the same features as the same bytes read from a tar."""
    from lyrics.data.instructions import image_key
    from lyrics.data.webdataset import iter_shard
    from lyrics.extract.images import load_images

    config = load_config(config_path)
    photos = config.path("{root}/photos")
    tar_rows = {row["key"]: row for row in CacheDataset(sample_cache).rows(["key", "source"]).to_pylist()[:3]}
    tar = json.loads(next(iter(tar_rows.values()))["source"])["file"]
    copied = {}
    for sample in iter_shard(Path(tar)):
        if sample.key in tar_rows:
            path = photos / ("a" if len(copied) % 2 else "b") / f"{sample.key}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(sample.image_bytes)
            copied[f"{path.parent.name}/{sample.key}"] = sample.key
    (photos / "b" / "broken.jpg").write_bytes(b"not an image")
    result = extract(config_path, "photos")
    assert result.returncode == 0, result.stderr[-3000:]
    root = default_cache_root(config, "photos", "tiny")
    (skip,) = read_manifest(root).skipped
    assert skip.file.endswith("photos/b/broken.jpg:b/broken") and skip.reason.startswith("not_an_image")
    folder, tars = CacheDataset(root), CacheDataset(sample_cache)
    tar_index = {row["key"]: i for i, row in enumerate(tars.rows(["key"]).to_pylist())}
    keys = [image_key(json.loads(source)) for source in folder.rows(["source"]).column("source").to_pylist()]
    assert sorted(keys) == sorted(copied)
    for i, key in enumerate(keys):
        mine, theirs = folder[i], tars[tar_index[copied[key]]]
        assert mine["tags"] == theirs["tags"] and mine["spatial_text"] == theirs["spatial_text"], key
        assert np.allclose(mine["vit_tokens"].float().numpy(), theirs["vit_tokens"].float().numpy(), rtol=2e-3, atol=2e-3), key
        source = json.loads(mine["source"])
        image = load_images({key: (source["file"], mine["key"])})[key]
        assert source["file"] == str(photos / f"{key}.jpg") and image.size == (mine["width"], mine["height"])


def test_sigkill_then_resume_equals_the_uninterrupted_cache(config_path, sample_cache, tmp_path):
    cache = tmp_path / "resumed"
    args = [sys.executable, "-m", "lyrics.extract", "--data", "sample", "--cache", str(cache)]
    # The driver SIGKILLs itself right after writing the first chunk of the second shard.
    env = {**environment(config_path), "LYRICS_EXTRACT_KILL_AT": "00001:0"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    assert proc.wait(timeout=900) == -signal.SIGKILL
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the Ray processes the dead driver had started
    except ProcessLookupError:
        pass
    shards = cache / "shards"
    assert (shards / "00000" / "shard.json").exists() and not (shards / "00001").exists()
    assert any(p.name.startswith(".tmp-00001-") for p in shards.iterdir()), "the second shard should be half written"
    assert not read_manifest(cache).complete

    result = extract(config_path, "sample", cache)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not any(p.name.startswith(".tmp-") for p in shards.iterdir())
    a, b = CacheDataset(sample_cache), CacheDataset(cache)
    assert read_manifest(cache).shards == read_manifest(sample_cache).shards
    assert len(a) == len(b) == 16
    for i in range(len(a)):
        x, y = a[i], b[i]
        for key in x:
            if hasattr(x[key], "numpy"):
                assert np.array_equal(x[key].numpy(), y[key].numpy()), (x["id"], key)
            else:
                assert x[key] == y[key], (x["id"], key)


def test_online_refine_of_one_image_matches_its_cache_row(config_path, sample_cache):
    from lyrics.extract.refiner import FrozenModels, refine
    from lyrics.extract.images import load_images

    config = load_config(config_path)
    models = FrozenModels.load(config, "tiny", device="cpu")
    item = CacheDataset(sample_cache)[5]
    image = load_images({item["id"]: (json.loads(item["source"])["file"], item["key"])})[item["id"]]
    refined = refine(image, models)
    assert refined.tags == item["tags"] and refined.box_labels == item["box_labels"]
    assert refined.spatial_text == item["spatial_text"]
    assert np.allclose(refined.boxes, np.asarray(item["boxes"]).reshape(-1, 4), atol=1e-4)
    assert np.allclose(refined.vit_tokens, item["vit_tokens"].float().numpy(), rtol=2e-3, atol=2e-3)
    assert np.allclose(refined.sam_tokens, item["sam_tokens"].float().numpy(), rtol=2e-3, atol=2e-3)
    assert np.array_equal(refined.sam_mask, item["sam_mask"].numpy())


def test_missing_real_checkpoints_are_refused_before_any_work(config_path, monkeypatch, tmp_path):
    from lyrics.config import ConfigError
    from lyrics.extract.job import ExtractJob

    monkeypatch.setenv("LYRICS_CLIP_PATH", str(tmp_path / "no-clip-here"))
    config = load_config(config_path)
    with pytest.raises(ConfigError, match=r"profile 'paper': .*no-clip-here: clip checkpoint not found \(set LYRICS_CLIP_PATH"):
        ExtractJob.plan(config, "sample", profile="paper")


def test_make_pretrain_trains_from_the_cache_make_extract_wrote(config_path, sample_cache):
    """Phase 2a after phase 1, as a user runs them: `make pretrain`; a rerun resumes and has nothing left to do."""
    command = ["make", "pretrain", "ARGS=--steps 2"]
    first = subprocess.run(command, cwd=REPO_ROOT, env=environment(config_path), capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    run_dir = load_config(config_path).path("{root}/runs/pretrain-tiny")
    assert f"stage 1: {run_dir / 'stage1'}" in first.stdout
    assert (run_dir / "loss_curve.png").is_file() and (run_dir / "stage1" / "model.safetensors").is_file()
    again = subprocess.run(command, cwd=REPO_ROOT, env=environment(config_path), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "Restoring states from the checkpoint" in again.stdout + again.stderr


def test_the_rec_grid_reads_the_images_back_from_the_cache_rows_sources(config_path, sample_cache, tmp_path):
    """make eval's REC picture on a real cache: each answer's image found through its row's source (the tar)."""
    from PIL import Image

    from lyrics.evaluate.run import PREDICTIONS, REC_GRID, draw_rec_grid_of
    from lyrics.train.finetune_data import row_index

    cache = CacheDataset(sample_cache)
    rows = row_index(cache)
    keys = sorted(rows)[:3]
    table = cache.rows(["width", "height"]).to_pylist()
    sizes = {key: (table[rows[key]]["width"], table[rows[key]]["height"]) for key in keys}
    records = [{"id": str(i), "image": key, "prompt": "<Image>In the given image, could you find and tell me the coordinates of it?",
                "prediction": "<Bbox>(100,100),(500,500)</Bbox>", "target": {"box": [0.0, 0.0, 10.0, 10.0], "size": list(sizes[key])}}
               for i, key in enumerate(keys)]  # fmt: skip
    (tmp_path / PREDICTIONS).write_text("".join(json.dumps(r) + "\n" for r in records))
    png = draw_rec_grid_of(tmp_path, cache, rows)
    assert png == tmp_path / REC_GRID
    assert Image.open(png).size == (4 * 4.0 * 80, 1 * 4.4 * 80)  # one row of four panels at 80 dpi
