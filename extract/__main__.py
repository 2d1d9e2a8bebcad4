"""`make extract DATA=<name>`: run the frozen models once over a data source and write its cache.

    python -m lyrics.extract --data sample [--profile tiny] [--cache DIR] [--config pipelines.yaml]

Local Ray by default; set RAY_ADDRESS to run on a cluster. A rerun resumes: committed shards
are kept, partial ones redone.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from lyrics.config import ConfigError, load_config
from lyrics.extract.job import ExtractJob, run
from lyrics.store import CacheMismatchError


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m lyrics.extract", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="sample", help="a dataset registered in pipelines.yaml")
    parser.add_argument("--profile", help="model profile (default: extraction.profile)")
    parser.add_argument("--cache", type=Path, help="cache root (default: {root}/cache/<data>/<profile>-<settings hash>)")
    parser.add_argument("--config", type=Path, help="pipelines file (default: the repository's pipelines.yaml)")
    args = parser.parse_args()

    try:
        config = load_config(args.config)
        job = ExtractJob.plan(config, args.data, args.profile, args.cache)  # refuses bad input before any work
    except ConfigError as e:
        sys.exit(f"error: {e}")
    print(f"extract {job.dataset}: {len(job.shards)} shard(s), profile {job.profile} -> {job.cache_root}")
    try:
        manifest = run(job)
    except (ConfigError, CacheMismatchError) as e:  # ConfigError: also a Ray cluster that cannot be joined
        sys.exit(f"error: {e}")
    reasons = Counter(skip.reason.split(":")[0] for skip in manifest.skipped)
    print(f"rows {manifest.rows}, skipped {len(manifest.skipped)} {dict(reasons) or ''}".rstrip())
    for skip in manifest.skipped:
        print(f"  skipped {skip.file}: {skip.reason}")
    print(f"cache: {job.cache_root}")


if __name__ == "__main__":
    main()
