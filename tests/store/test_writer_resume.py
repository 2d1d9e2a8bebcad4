"""Atomic shard commits, crash + resume equality, and refusing to resume a different cache."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lyrics.store import CacheDataset, CacheIdentity, CacheIncompleteError, CacheMismatchError, CacheWriter, StorageOptions, read_manifest

JOB = Path(__file__).with_name("cache_job.py")


def run_job(root: Path, hang_in: str | None = None) -> subprocess.Popen:
    args = [sys.executable, str(JOB), str(root)] + (["--hang-in", hang_in] if hang_in else [])
    return subprocess.Popen(args)


def kill_mid_shard(root: Path, shard: str) -> None:
    proc = run_job(root, hang_in=shard)
    deadline = time.time() + 120
    while not Path(f"{root}.hanging").exists():
        assert proc.poll() is None, "the job ended before reaching the shard it should hang in"
        assert time.time() < deadline, "the job never reached the hang point"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def read_all(root: Path) -> list[dict]:
    ds = CacheDataset(root)
    return [ds[i] for i in range(len(ds))]


def test_killed_writer_leaves_no_visible_shard(tmp_path):
    root = tmp_path / "cache"
    kill_mid_shard(root, "s1")
    shards = root / "shards"
    assert sorted(p.name for p in shards.iterdir() if not p.name.startswith(".")) == ["s0"]
    assert any(p.name.startswith(".tmp-s1-") for p in shards.iterdir()), "the partial shard should exist under its temporary name"
    manifest = read_manifest(root)
    assert not manifest.complete and manifest.rows == 0
    with pytest.raises(CacheIncompleteError, match="incomplete"):
        CacheDataset(root)
    # Reopening for writing removes the partial shard.
    from cache_job import IDENTITY  # noqa: E402  (the job's own identity)

    CacheWriter(root, IDENTITY)
    assert not any(p.name.startswith(".tmp-") for p in shards.iterdir())


def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path):
    clean, resumed = tmp_path / "clean", tmp_path / "resumed"
    assert run_job(clean).wait() == 0
    kill_mid_shard(resumed, "s2")
    assert run_job(resumed).wait() == 0

    a, b = read_manifest(clean), read_manifest(resumed)
    assert a.complete and b.complete
    assert a.shards == b.shards and a.rows == b.rows == 25
    assert len(b.skipped) == 4
    items_a, items_b = read_all(clean), read_all(resumed)
    assert [x["id"] for x in items_a] == [x["id"] for x in items_b]
    assert len({x["id"] for x in items_b}) == 25
    for x, y in zip(items_a, items_b):
        for key in x:
            if hasattr(x[key], "numpy"):
                assert np.array_equal(x[key].numpy(), y[key].numpy()), key
            else:
                assert x[key] == y[key], key


def test_resume_with_other_settings_is_refused(tmp_path):
    root = tmp_path / "cache"
    assert run_job(root).wait() == 0
    from cache_job import IDENTITY

    other = CacheIdentity(IDENTITY.schema, StorageOptions(dtype="int8", samples_per_chunk_file=4), IDENTITY.extraction, {"clip": "sha256:abc"})
    with pytest.raises(CacheMismatchError) as err:
        CacheWriter(root, other)
    message = str(err.value)
    assert str(root) in message and "sha256:abc" in message and "seed:0" in message and "int8" in message


def test_committing_a_shard_twice_is_refused(tmp_path):
    root = tmp_path / "cache"
    assert run_job(root).wait() == 0
    from cache_job import IDENTITY

    with pytest.raises(FileExistsError, match="already committed"):
        CacheWriter(root, IDENTITY).open_shard("s0", "again")
