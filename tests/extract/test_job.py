"""The extract phase end to end: `make extract` on the sample and the fuzz set, SIGKILL + resume, then `make pretrain`.

The runs use a copy of pipelines.yaml whose root is a temporary folder (LYRICS_CONFIG), with at
most 4 objects per image so that SAM-HQ's decoder keeps the suite quick, and parts of 4 inputs so
that every input shard is cut into several cache shards.
"""

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from lyrics.config import REPO_ROOT, load_config
from lyrics.extract.cache_location import default_cache_root
from lyrics.extract.cache_location import fingerprints
from lyrics.spatial_text import parse_objects
from lyrics.store import CacheDataset, CacheExpectation, read_manifest
from tests.config_file import write_test_config
from tests.console import alarming_lines

MAX_OBJECTS = 4
PART_SIZE = 4  # inputs per cache shard; batches of 3 images, so a part holds a full and a partial batch


@dataclass
class InputShard:
    """An input shard's parts in a manifest, taken together."""

    parts: list
    inputs: int
    rows: int
    skipped: list


def input_shard(manifest, name: str) -> InputShard:
    parts = [s for s in manifest.shards if s.name.startswith(name + ".")]
    return InputShard(parts, sum(p.inputs for p in parts), sum(p.rows for p in parts), [skip for p in parts for skip in p.skipped])


@pytest.fixture(scope="module")
def config_path(tmp_path_factory) -> Path:
    def edit(raw: dict) -> None:
        raw["extraction"].update(profile="tiny", max_objects=MAX_OBJECTS, batch_size=3, part_size=PART_SIZE)
        raw["datasets"]["photos"] = {"format": "folder", "path": "{root}/photos", "key": "path", "produced_by": "the folder test"}
        raw["datasets"]["cluster"] = {"format": "folder", "path": "{root}/cluster"}

    path = write_test_config(tmp_path_factory.mktemp("extract"), edit)
    return path


def environment(config_path: Path) -> dict[str, str]:
    return {**os.environ, "LYRICS_CONFIG": str(config_path), "OMP_NUM_THREADS": "1"}


def extract(config_path: Path, data: str, cache: Path | None = None) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "lyrics.extract", "--data", data] + (["--cache", str(cache)] if cache else [])
    return subprocess.run(args, env=environment(config_path), capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def sample_extraction(config_path) -> subprocess.CompletedProcess:
    """`make extract DATA=sample` with the test configuration: builds the sample set, then extracts."""
    result = subprocess.run(["make", "extract", "DATA=sample"], cwd=REPO_ROOT, env=environment(config_path), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def sample_cache(config_path, sample_extraction) -> Path:
    return default_cache_root(load_config(config_path), "sample", "tiny")


def test_make_extract_prints_no_error_or_library_warning(sample_extraction):
    """Ray's once-per-process notice about Ray Data's actors, its progress-bar and token notes, the
    frozen models' FutureWarnings: none reaches a newcomer's terminal; our bar and summary do."""
    output = sample_extraction.stdout + sample_extraction.stderr
    assert alarming_lines(output) == []
    assert "extract sample:" in output and "rows 16, skipped 0" in output


def test_sample_cache_has_every_image_with_consistent_fields(config_path, sample_cache):
    config = load_config(config_path)
    manifest = read_manifest(sample_cache)
    assert manifest.complete and manifest.rows == 16 and not manifest.skipped
    assert [s.name for s in manifest.shards] == ["00000.0000", "00000.0001", "00001.0000", "00001.0001"]
    assert [(s.inputs, s.last) for s in manifest.shards] == [(4, False), (4, True)] * 2
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


@pytest.fixture(scope="module")
def fuzz_extraction(config_path, sample_cache) -> tuple[subprocess.CompletedProcess, Path]:
    """`make extract DATA=fuzz`: the odd-image shard and the hostile shard (data/sample/fuzz.py)."""
    result = extract(config_path, "fuzz")
    return result, default_cache_root(load_config(config_path), "fuzz", "tiny")


def test_fuzz_inputs_are_rows_or_listed_skips(config_path, fuzz_extraction):
    result, cache = fuzz_extraction
    assert result.returncode == 0, result.stderr[-3000:]
    fuzz_dir = load_config(config_path).path("{root}/data/sample/fuzz")
    expected = json.loads((fuzz_dir / "expected.json").read_text())["samples"]
    manifest = read_manifest(cache)
    assert all(shard.inputs == shard.rows + len(shard.skipped) for shard in manifest.shards)  # nothing vanishes
    odd = input_shard(manifest, "00000")
    assert [p.inputs for p in odd.parts[:-1]] == [PART_SIZE] * (len(odd.parts) - 1) and odd.parts[-1].last
    skipped = {s.id.rsplit("/", 1)[1]: s.reason.split(":")[0] for s in odd.skipped}
    assert odd.inputs == len(expected)
    assert skipped == {key: case["reason"] for key, case in expected.items() if case["expect"] == "skip"}
    rows = {item["key"]: item for item in (CacheDataset(cache, fields=["sam_mask"])[i] for i in range(manifest.rows))}
    for key, case in expected.items():
        if case["expect"] == "ok":
            assert [rows[key]["width"], rows[key]["height"]] == case["size"], case["name"]  # upright RGB size
    missing = [key for key, case in expected.items() if case["missing_caption"]]
    assert rows[missing[0]]["caption"] is None
    assert manifest.extra["missing_caption"] == [rows[missing[0]]["id"]]
    assert "skipped" in result.stdout and "truncated" in result.stdout


def test_a_hostile_shard_costs_each_bad_input_only_itself(config_path, fuzz_extraction):
    """Every input of the hostile shard is a row or a skip with its own key and reason, and the job ends with 0."""
    result, cache = fuzz_extraction
    assert result.returncode == 0, result.stderr[-3000:]
    inputs = json.loads(load_config(config_path).path("{root}/data/sample/fuzz/hostile.json").read_text())["inputs"]
    manifest = read_manifest(cache)
    shard = input_shard(manifest, "00001")
    assert len(shard.parts) == 4
    assert shard.inputs == len(inputs) == shard.rows + len(shard.skipped) == 15
    table = CacheDataset(cache).rows(["id", "key", "caption"]).to_pylist()
    rows = [row for row in table if row["id"].startswith("fuzz/00001/")]
    found = [(row["key"], "row") for row in rows] + [(skip.id.split("/", 2)[2], skip.reason.split(":")[0]) for skip in shard.skipped]
    assert sorted(found) == sorted((entry["key"], entry["outcome"]) for entry in inputs)
    duplicate = next(row for row in rows if row["key"] == "000010001")
    assert duplicate["caption"] == "Input 1: row."  # the first of the repeated key is the one kept
    bomb = next(skip for skip in shard.skipped if skip.reason.startswith("too_large"))
    assert "exceeds the limit of 89,478,485" in bomb.reason  # the configured limit, not Pillow's
    assert all(skip.file.endswith("00001.tar") or ":" in skip.file for skip in shard.skipped)


def test_a_model_failing_on_one_image_skips_that_image_only(config_path, sample_cache):
    """A model stage that raises on one image of a part: that image becomes a skip with the stage and the
    error, the others get the outputs a part without it gets."""
    import torch

    from lyrics.extract.images import load_images
    from lyrics.extract.job import run_model_on_part
    from lyrics.extract.refiner import load_stage, preprocessors
    from lyrics.extract.cache_location import STAGES

    config = load_config(config_path)
    clip = load_stage(config, "tiny", "clip", device="cpu")
    prepare = preprocessors(config, "tiny")
    items = [CacheDataset(sample_cache)[i] for i in range(5)]
    images = load_images({it["id"]: (json.loads(it["source"])["file"], it["key"]) for it in items})

    def part(indices: list[int]) -> dict:
        """A part as the decode stage hands it on: rows, each model's uint8 inputs, sizes."""
        record = {"shard": "00000", "source": "s", "part": 0, "name": "00000.0000", "last": True, "skips": [], "inputs": len(indices)}
        record["rows"] = [{"id": items[i]["id"], "file": "f", "key": items[i]["key"]} for i in indices]
        record["sizes"] = [images[items[i]["id"]].size for i in indices]
        for name in STAGES:
            record[f"{name}_images"] = [prepare[name].resize(images[items[i]["id"]]) for i in indices]
        return record

    bad = clip.preprocess.normalize(part([1])["clip_images"][0])

    class FailsOnOneImage:
        device, preprocess = clip.device, clip.preprocess

        def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
            if any(torch.equal(p, bad) for p in pixels):
                raise ValueError("height and width must be > 0")
            return clip(pixels)

    # Batches of 3: the failing image's batch [0, 1, 2] is rerun image by image, [3, 4] runs whole.
    out = run_model_on_part("clip", FailsOnOneImage(), part([0, 1, 2, 3, 4]), config.extraction)
    assert [r["id"] for r in out["rows"]] == [items[i]["id"] for i in (0, 2, 3, 4)]
    (skip,) = out["skips"]
    assert skip["id"] == items[1]["id"] and skip["reason"] == "model_failed: clip: ValueError: height and width must be > 0"
    reference = run_model_on_part("clip", clip, part([0, 2, 3, 4]), config.extraction)
    assert np.allclose(out["vit_tokens"], reference["vit_tokens"], atol=1e-5)
    assert len(out["sam_images"]) == len(out["gdino_images"]) == len(out["sizes"]) == 4  # the later stages' inputs follow the rows
    assert "clip_images" not in out  # consumed: later stages do not carry it


def test_a_failed_cluster_connection_stops_with_one_line_and_leaves_nothing(config_path, sample_cache, tmp_path):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cache = tmp_path / "never"
    env = {**environment(config_path), "RAY_ADDRESS": f"127.0.0.1:{port}"}
    result = subprocess.run([sys.executable, "-m", "lyrics.extract", "--data", "sample", "--cache", str(cache)],
                            env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[0].startswith(f"error: RAY_ADDRESS=127.0.0.1:{port}: no Ray head answers there")
    assert "Traceback" not in result.stderr and not cache.exists()


def test_a_checkpoint_made_from_another_seed_is_refused(config_path, sample_cache, tmp_path):
    """The tiny profile with seed 1 pointing at the seed-0 checkpoints: refused, not silently reused."""
    raw = yaml.safe_load(config_path.read_text())
    raw["profiles"]["tiny"]["seed"] = 1
    other = tmp_path / "pipelines.yaml"
    other.write_text(yaml.safe_dump(raw))
    result = extract(other, "sample", tmp_path / "cache")
    assert result.returncode == 1 and not (tmp_path / "cache").exists()
    assert "checkpoint was made with random seed 0, but the profile's seed is 1" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_fingerprints_hash_the_checkpoints_content(config_path, sample_cache):
    from lyrics.extract.checkpoints import component_spec, content_hash

    config = load_config(config_path)
    for name, fingerprint in read_manifest(sample_cache).identity.fingerprints.items():
        assert fingerprint.startswith(content_hash(component_spec(config, "tiny", name).checkpoint) + "/arch:")


def test_missing_dataset_files_stop_at_once_naming_the_path(config_path):
    result = extract(config_path, "laion")
    assert result.returncode != 0
    assert "data/laion400m/{00000..41407}.tar" in result.stderr and "img2dataset" in result.stderr
    assert "Traceback" not in result.stderr.splitlines()[-1]


@pytest.mark.slow  # another extraction: `make test-slow` keeps `make test` under 15 minutes
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


def assert_same_cache(a_root: Path, b_root: Path) -> None:
    """Every shard record, row column and tensor equal, bitwise."""
    assert read_manifest(b_root).shards == read_manifest(a_root).shards
    a, b = CacheDataset(a_root), CacheDataset(b_root)
    assert len(a) == len(b) == 16
    for i in range(len(a)):
        x, y = a[i], b[i]
        for key in x:
            if hasattr(x[key], "numpy"):
                assert np.array_equal(x[key].numpy(), y[key].numpy()), (x["id"], key)
            else:
                assert x[key] == y[key], (x["id"], key)


def killed_run(config_path: Path, cache: Path, env: dict[str, str]) -> int:
    """The extract command with a fault injected; its Ray processes are stopped with it."""
    args = [sys.executable, "-m", "lyrics.extract", "--data", "sample", "--cache", str(cache)]
    proc = subprocess.Popen(args, env={**environment(config_path), **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    code = proc.wait(timeout=900)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the Ray processes a dead driver had started
    except ProcessLookupError:
        pass
    return code


@pytest.mark.slow  # two more extractions: `make test-slow` keeps `make test` under 15 minutes
def test_driver_sigkill_then_resume_equals_the_uninterrupted_cache(config_path, sample_cache, tmp_path):
    cache = tmp_path / "resumed"
    # The driver SIGKILLs itself as soon as it learns that part 00000.0001 is committed.
    assert killed_run(config_path, cache, {"LYRICS_EXTRACT_KILL_AT": "00000.0001"}) == -signal.SIGKILL
    shards = cache / "shards"
    assert (shards / "00000.0001" / "shard.json").exists()
    assert not read_manifest(cache).complete

    result = extract(config_path, "sample", cache)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not any(p.name.startswith(".tmp-") for p in shards.iterdir())
    assert_same_cache(sample_cache, cache)


@pytest.mark.slow  # a third extraction of the sample: `make test-slow` keeps `make test` under 15 minutes
def test_worker_sigkill_mid_write_then_the_cache_equals_the_uninterrupted_one(config_path, sample_cache, tmp_path):
    """The worker writing part 00001.0000 dies before its commit: Ray retries the part (or a rerun does), and
    the cache is the same; the dead writer's half-written folder is gone."""
    cache = tmp_path / "worker-killed"
    code = killed_run(config_path, cache, {"LYRICS_EXTRACT_KILL_WORKER_AT": "00001.0000"})
    assert (cache / "shards" / ".killed-00001.0000").exists(), "the writer should have been killed"
    if code != 0:  # the job gave up on the part: the rerun redoes it
        result = extract(config_path, "sample", cache)
        assert result.returncode == 0, result.stderr[-3000:]
    assert not any(p.name.startswith(".tmp-") for p in (cache / "shards").iterdir())
    assert_same_cache(sample_cache, cache)


def test_workers_write_the_cache_and_the_driver_gets_no_tensor(config_path, sample_cache, tmp_path):
    """The job with null model stages (bench/extract.py's pipeline measurement), in this process: every
    part is written by a worker, and what reaches the driver holds no array."""
    import ray

    from lyrics.extract.job import ExtractJob, run_with_stats

    config = load_config(config_path)
    job = ExtractJob.plan(config, "sample", "tiny", tmp_path / "null")
    try:
        manifest, stats = run_with_stats(job, progress=False, null_models=True)
    finally:
        ray.shutdown()
    assert stats.driver_tensor_bytes == 0 and stats.parts == 4 and stats.rows == manifest.rows == 16
    assert stats.bytes_written == sum(f.stat().st_size for f in (tmp_path / "null" / "shards").rglob("*") if f.is_file())
    assert set(manifest.identity.fingerprints.values()) == {"null model"}  # never mistaken for features
    item = CacheDataset(tmp_path / "null")[0]
    assert item["vit_tokens"].shape == (257, 64) and item["tags"] == [] and item["spatial_text"] == ""


def test_a_part_committed_twice_keeps_the_first(tmp_path):
    """A retried write of a part that an earlier attempt committed: harmless, the first copy stays."""
    from lyrics.store import CacheIdentity, ShardWriter, lyrics_schema
    from lyrics.store.codecs import StorageOptions

    identity = CacheIdentity(lyrics_schema(vit_tokens=2, vit_width=4, gdino_queries=3, max_objects=2, mask_grid=2), StorageOptions(), {}, {})
    (tmp_path / "shards").mkdir()
    first, second = (ShardWriter(tmp_path / "shards", "00000.0000", "src", identity) for _ in range(2))
    first.skip("a", "f", "r1")
    second.skip("a", "f", "r2")
    assert first.commit(inputs=1).skipped[0].reason == "r1"
    assert second.commit(inputs=1).skipped[0].reason == "r1"  # the committed record, not the second copy
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["00000.0000"]


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
    monkeypatch.setenv("LYRICS_SAM_PATH", str(tmp_path / "no-sam-here"))
    config = load_config(config_path)
    with pytest.raises(ConfigError) as error:
        ExtractJob.plan(config, "sample", profile="paper")
    message = str(error.value)
    assert message.startswith(f"{config_path.resolve()}: profile 'paper': checkpoints missing:")
    assert "no-clip-here: clip checkpoint not found (set LYRICS_CLIP_PATH" in message
    assert "no-sam-here: sam checkpoint not found (set LYRICS_SAM_PATH" in message  # every missing one, not the first


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
    # Lightning's TPU note, its logging-service tip and its torch deprecation are gone; its GPU line stays.
    for result in (first, again):
        assert alarming_lines(result.stdout + result.stderr) == []
        assert "GPU available: False, used: False" in result.stdout + result.stderr


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


@pytest.mark.cluster  # two minutes of Ray nodes: `make test-slow`, which CI runs after `make test`
def test_the_readmes_two_node_cluster_writes_the_cache_one_process_writes(config_path, sample_cache, tmp_path):
    """README's cluster commands, as written, on a machine that holds a Ray token (so the head turns token
    authentication on), with a second Ray node on the same machine: the cache equals a one-process one, file for file."""
    import shutil
    import socket

    config = load_config(config_path)
    photos = config.path("{root}/cluster")
    photos.mkdir(exist_ok=True)
    for image in sorted(config.path("{root}/data/sample/images").glob("*.jpg"))[:4]:
        shutil.copy(image, photos / image.name)
    one = tmp_path / "one-process"
    result = extract(config_path, "cluster", one)
    assert result.returncode == 0, result.stderr[-3000:]

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    home = tmp_path / "home"
    env = {**environment(config_path), "HOME": str(home), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("RAY_AUTH_MODE", None)

    def sh(command: str) -> subprocess.CompletedProcess:
        return subprocess.run(command, shell=True, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)

    assert sh("ray get-auth-token --generate").returncode == 0 and (home / ".ray" / "auth_token").is_file()
    try:
        head = sh(f"ray start --head --port={port}")
        assert head.returncode == 0, head.stderr[-2000:]
        node = sh(f"RAY_AUTH_MODE=token ray start --address=127.0.0.1:{port}")
        assert node.returncode == 0, node.stderr[-2000:]
        job = sh(f"RAY_ADDRESS=127.0.0.1:{port} make extract DATA=cluster")
        assert job.returncode == 0, job.stdout[-2000:] + job.stderr[-2000:]
        status = sh("RAY_AUTH_MODE=token ray status --address=127.0.0.1:" + str(port))
        assert status.stdout.count("node_") >= 2, status.stdout  # two nodes took part in the cluster
    finally:
        sh("ray stop --force")
    cluster = default_cache_root(config, "cluster", "tiny")
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(cluster) for p in cluster.rglob("*") if p.is_file())
    assert len(files) > 10 and read_manifest(one).rows == 4
    for relative in files:
        assert (one / relative).read_bytes() == (cluster / relative).read_bytes(), relative
