"""A miniature extraction job over a fixed plan of shards, run as a subprocess by the tests.

Usage: python cache_job.py ROOT [--hang-in SHARD]
With --hang-in, the job writes half of that shard, touches ROOT.hanging and sleeps, so the
test can SIGKILL it mid-shard.
"""

import sys
import time
from pathlib import Path

from lyrics.store import CacheIdentity, CacheWriter, StorageOptions, lyrics_schema
from lyrics.store.synthetic import synthetic_rows, synthetic_tensors

SCHEMA = lyrics_schema(vit_tokens=5, vit_width=16, gdino_queries=6, max_objects=3, refiner_width=12, mask_grid=4)
IDENTITY = CacheIdentity(SCHEMA, StorageOptions(samples_per_chunk_file=4), {"profile": "test"}, {"clip": "seed:0"})
PLAN = {"s0": 7, "s1": 5, "s2": 9, "s3": 4}  # shard name -> rows
BATCH = 3


def run(root: Path, hang_in: str | None = None) -> None:
    writer = CacheWriter(root, IDENTITY)
    done = writer.committed()
    for shard_no, (name, count) in enumerate(PLAN.items()):
        if name in done:
            continue
        shard = writer.open_shard(name, source=f"input/{name}.tar")
        for start in range(0, count, BATCH):
            n = min(BATCH, count - start)
            shard.add_batch(synthetic_rows("test", name, start, n, seed=shard_no), synthetic_tensors(SCHEMA, n, seed=shard_no * 1000 + start))
            if name == hang_in and start + n >= count // 2:
                Path(f"{root}.hanging").touch()
                time.sleep(600)
        shard.skip(f"test/{name}/bad", f"input/{name}.tar:bad.jpg", "truncated: image file is truncated")
        shard.commit()
    writer.finalize()


if __name__ == "__main__":
    args = sys.argv[1:]
    run(Path(args[0]), args[2] if len(args) > 2 and args[1] == "--hang-in" else None)
