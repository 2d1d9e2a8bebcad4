"""bench/gpu_check.py: says so and stops without CUDA; its code runs whole on the tiny profile on the CPU."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from lyrics.config import REPO_ROOT

SCRIPT = REPO_ROOT / "bench" / "gpu_check.py"
STAGES = ("decode+preprocess", "clip", "ram", "gdino", "sam")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=False, cwd=REPO_ROOT)


def test_without_cuda_it_says_so_and_exits_0(tmp_path: Path) -> None:
    done = run("--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "no CUDA device here" in done.stdout and "Nothing run" in done.stdout
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_cpu_rehearsal_measures_every_part(tmp_path: Path) -> None:
    done = run("--cpu-rehearsal", "--images", "2", "--batch-sizes", "1", "2", "--stage1-steps", "2", "--stage2-steps", "1", "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    r = json.loads((tmp_path / "gpu_check.json").read_text())
    assert r["profile"].startswith("tiny") and r["machine"]["device"] == "cpu"
    assert set(r["extraction"]) == {"1", "2"}
    for run_ in r["extraction"].values():
        assert run_["images"] == 2 and run_["images_per_s"] > 0 and run_["peak_gpu_memory_gib"] is None
        assert set(run_["stage_images_per_s"]) == set(STAGES) and all(v > 0 for v in run_["stage_images_per_s"].values())
    for name in ("clip", "sam"):
        agreement = r["bf16_vs_fp32"][name]
        assert agreement["tokens"] > 0, name  # the tiny profile's calibrated weights find boxes on the sample photos
        assert 0 < agreement["max_abs_diff"] < agreement["max_abs_value"], name  # bf16 really ran, and stayed close
        assert 0.99 < agreement["cosine_min"] <= agreement["cosine_mean"] <= 1 + 1e-9, name
    assert r["stage1"]["steps"] == 2 and r["stage2"]["steps"] == 1
    for stage in ("stage1", "stage2"):
        assert r[stage]["steps_per_s"] > 0 and math.isfinite(r[stage]["last_loss"]) and r[stage]["trained_parameters"] > 0
    assert r["stage2"]["tokens_per_step"] > r["stage2"]["batch"] * 32  # at least the visual tokens of each example
    assert "whole check" in done.stdout and "bf16 autocast vs float32" in done.stdout
