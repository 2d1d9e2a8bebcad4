"""Stage-1 training runs from a cache: outputs, exact resume, refusals before work, the ablations.

The cache is synthetic (the store's synthetic rows and features, with spatial text made from its
boxes) but carries the tiny profile's real identity, so the trainer checks it as it would a real one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from synthetic_cache import ROWS, write_cache, write_config

from lyrics.config import REPO_ROOT, ConfigError, load_config
from lyrics.extract.cache_location import default_cache_root
from lyrics.model.pretraining import load_stage1
from lyrics.store import CacheMismatchError, CacheWriter, read_manifest
from lyrics.train.loss_curve import metrics_files, read_losses
from lyrics.train.pretrain import PretrainPlan, prepare, train

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    config = load_config(write_config(root))
    write_cache(config)
    return root, config


def fit(plan: PretrainPlan, **kwargs) -> Path:
    return train(plan, prepare(plan), progress=False, **kwargs)


def logged(run_dir: Path) -> dict[int, dict[str, float]]:
    """{step: {train/<loss>: value}} over every launch of the run (a later launch wins)."""
    losses = read_losses(metrics_files(run_dir / "logs" / "csv"))
    return {step: {f"train/{name}": by_step[step] for name, by_step in losses.items() if step in by_step} for step in sorted({s for v in losses.values() for s in v})}


def test_a_run_logs_every_loss_draws_its_curve_and_saves_stage1(setup):
    root, config = setup
    plan = PretrainPlan.make(config, run_dir=root / "runs" / "plain")
    assert plan.accumulate == 2 and plan.recipe.steps == 4
    stage1 = fit(plan)
    metrics = logged(plan.run_dir)
    assert sorted(metrics) == [0, 1, 2, 3]
    for values in metrics.values():
        assert {"train/itc", "train/itm", "train/icg", "train/msp", "train/loss", "train/temp"} <= set(values)
        parts = sum(values[f"train/{k}"] for k in ("itc", "itm", "icg", "msp"))
        assert values["train/loss"] == pytest.approx(parts, rel=1e-5)
        assert all(np.isfinite(v) for v in values.values())
    assert (plan.run_dir / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((plan.run_dir / "logs" / "tensorboard").glob("version_0/events.out.tfevents.*"))
    assert sorted(p.name for p in (plan.run_dir / "checkpoints").iterdir()) == ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt", "last.ckpt"]
    model, tokenizer = load_stage1(stage1)
    assert model.mqformer.config.use_grounding and model.spatial_representation and len(tokenizer) == model.mqformer.config.vocab_size
    json.loads((plan.run_dir / "run.json").read_text())  # the settings a resume is checked against


class CrashAt(L.Callback):
    """Fails like a killed job: after the checkpoint at step 2, in the middle of step 3."""

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == 3:
            raise RuntimeError("simulated crash")


def test_a_resumed_run_ends_exactly_where_an_uninterrupted_one_does(setup):
    root, config = setup
    straight = PretrainPlan.make(config, run_dir=root / "runs" / "straight")
    resumed = PretrainPlan.make(config, run_dir=root / "runs" / "resumed")
    fit(straight)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(resumed, callbacks=[CrashAt()])
    assert not (resumed.run_dir / "stage1").exists()
    assert prepare(resumed).resume == resumed.run_dir / "checkpoints" / "last.ckpt"
    fit(resumed)
    a, b = load_stage1(straight.run_dir / "stage1")[0].state_dict(), load_stage1(resumed.run_dir / "stage1")[0].state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    # The same batches and the same random draws: the logged losses agree step by step; the crashed
    # launch's steps 0-2 and the resumed launch's 2-3 are both kept.
    assert len(metrics_files(resumed.run_dir / "logs" / "csv")) == 2
    assert logged(straight.run_dir) == logged(resumed.run_dir)


def test_a_run_with_changed_settings_is_refused(setup):
    root, config = setup
    run_dir = root / "runs" / "plain"  # finished by the first test with 4 steps
    if not (run_dir / "run.json").exists():
        fit(PretrainPlan.make(config, run_dir=run_dir))
    with pytest.raises(ConfigError, match=r"run\.json: this run was started with other settings \(recipe\.steps: 4 -> 6\).*--restart"):
        prepare(PretrainPlan.make(config, steps=6, run_dir=run_dir))
    assert prepare(PretrainPlan.make(config, steps=6, run_dir=run_dir), restart=True).resume is None
    assert not run_dir.exists()  # --restart deletes the old run


def test_bad_input_is_refused_before_training(setup):
    root, config = setup
    with pytest.raises(FileNotFoundError, match=r"cache/coco/tiny-\w+/manifest\.json: no cache manifest"):
        prepare(PretrainPlan.make(config, datasets=["coco"], run_dir=root / "runs" / "coco"))
    # A cache of other extraction settings (4 objects per image) read by a model expecting 6.
    other = load_config(write_config(root, lambda raw: raw["extraction"].update(max_objects=6)))
    with pytest.raises(CacheMismatchError, match=r"shape of sam_tokens: cache \(4, 260\), expected \(6, 260\)") as error:
        prepare(PretrainPlan.make(other, caches=[default_cache_root(config, "sample", "tiny")], run_dir=root / "runs" / "other"))
    assert str(default_cache_root(config, "sample", "tiny")) in str(error.value)
    # The MQ-Former's image width must be the cache's.
    arch = json.loads((REPO_ROOT / "model/configs/tiny.json").read_text()) | {"vision_width": 32}
    (root / "narrow.json").write_text(json.dumps(arch))
    narrow = load_config(write_config(root, lambda raw: raw["profiles"]["tiny"]["qformer"].update(arch=str(root / "narrow.json"))))
    with pytest.raises(ConfigError, match=r"narrow\.json: vision_width 32, but profile tiny's CLIP tokens are 64 wide"):
        PretrainPlan.make(narrow)
    long_text = load_config(write_config(root, lambda raw: raw["training"]["pretrain"]["recipes"]["tiny"].update(max_spatial_tokens=500)))
    with pytest.raises(ConfigError, match=r"max_spatial_tokens \+ max_caption_tokens = 532 exceeds the MQ-Former's 512 positions"):
        PretrainPlan.make(long_text)
    assert not (root / "runs" / "coco").exists() and not (root / "runs" / "other").exists()


def test_a_cache_extracted_with_other_settings_is_refused_naming_each_difference(setup, caplog):
    root, config = setup
    cache = default_cache_root(config, "sample", "tiny")

    def change(raw: dict) -> None:
        raw["extraction"]["detection"] = {"box_threshold": 0.3}
        raw["extraction"]["storage"]["dtype"] = "int8"

    other = load_config(write_config(root, change))
    with pytest.raises(CacheMismatchError) as error:
        prepare(PretrainPlan.make(other, caches=[cache], run_dir=root / "runs" / "settings"))
    problems = str(error.value).splitlines()[1:]
    assert problems == [
        "  extraction.detection.box_threshold: cache 0.25, expected 0.3",
        '  storage.dtype: cache "fp16", expected "int8"',
        "  (pass --accept-cache-settings to train on it knowingly)",
    ]
    with caplog.at_level("WARNING"):
        prepared = prepare(PretrainPlan.make(other, caches=[cache], run_dir=root / "runs" / "settings"), accept_cache_settings=True)
    assert len(prepared.dataset) == ROWS - 1  # the row without a caption is left out
    assert "accepted although extracted with other settings" in caplog.text and "storage.dtype" in caplog.text


def test_an_incomplete_cache_is_a_one_line_error(setup, tmp_path):
    root, config = setup
    writer = CacheWriter(tmp_path / "cache", read_manifest(default_cache_root(config, "sample", "tiny")).identity)
    with writer.open_shard("00000", source="never finished"):
        pass  # a committed shard, but no finalize: the extraction is still running (or died)
    args = [sys.executable, "-m", "lyrics.train.pretrain", "--config", str(config.source), "--cache", str(tmp_path / "cache"), "--run", str(tmp_path / "run")]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'cache'}: the cache is incomplete (its extraction has not finished); run the extract phase again to resume it"]


@pytest.mark.parametrize("grounding, spatial, suffix", [(False, True, "-no-grounding"), (True, False, "-no-spatial")])
def test_ablations_train_from_the_same_cache(setup, grounding, spatial, suffix):
    root, config = setup
    plan = PretrainPlan.make(config, steps=1, grounding_queries=grounding, spatial_representation=spatial)
    assert plan.run_dir.name == f"pretrain-tiny{suffix}"
    model, _ = load_stage1(fit(plan))
    assert model.mqformer.config.use_grounding is grounding and (model.itm_head_grounding is not None) is grounding
    assert model.spatial_representation is spatial
    assert not any("crossattention_grounding" in name for name, _ in model.named_parameters()) or grounding
    assert ("train/msp" in logged(plan.run_dir)[0]) is spatial


def test_ddp_on_two_cpu_processes_trains_through_the_command(setup):
    """`training.strategy: ddp` with two gloo processes, launched as a user launches it (the CLI re-executes itself per rank)."""
    root, _ = setup

    def two_processes(raw):
        raw["training"].update(devices=2, strategy="ddp")
        raw["training"]["pretrain"]["recipes"]["tiny"].update(steps=2, micro_batch=1, checkpoint_every=2)

    path = write_config(root, two_processes)
    run_dir = root / "runs" / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "lyrics.train.pretrain", "--config", str(path), "--run", str(run_dir)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("stage 1: ") == 1  # rank 0 reports; rank 1 trains silently
    assert json.loads((run_dir / "run.json").read_text())["processes"] == 2
    assert "distributed_backend=gloo" in result.stderr and "All distributed processes registered" in result.stderr
    assert sorted(logged(run_dir)) == [0, 1]
    model, _ = load_stage1(run_dir / "stage1")
    assert model.mqformer.config.use_grounding
