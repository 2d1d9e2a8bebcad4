"""Cache storage options and reader throughput, measured side by side in one run.

    python bench/store.py [--samples 128] [--out bench/results]

1. Writes the same samples (paper shapes: 257 x 1024 ViT tokens, 900 x 260 Grounding-DINO
   tokens, 32 x 260 SAM-HQ tokens) with each storage option and reports bytes per sample on disk
   and fidelity against the fp32 originals (max abs error, mean per-token cosine).
2. Reads the fp16 cache through ``CacheDataset`` + ``DataLoader`` in shuffled order with 0 and
   2 workers, beside a plain sequential read of the same files, and prints the ratio.

The feature values are synthetic (heavy-tailed, with outlier channels, see store/synthetic.py);
with a real extraction cache the fidelity numbers will differ. Both reads run warm (page cache).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from lyrics.store import CacheDataset, CacheIdentity, CacheWriter, ShardShuffleSampler, StorageOptions, lyrics_schema
from lyrics.store.codecs import select_top_q
from lyrics.store.reader import pad_collate
from lyrics.store.synthetic import synthetic_rows, synthetic_tensors

FULL_Q, TOP_Q = 900, 100
SHARD_ROWS, BATCH = 64, 16
OPTIONS = {
    "fp16": StorageOptions(),
    "int8": StorageOptions(dtype="int8"),
    f"fp16 + top-{TOP_Q}": StorageOptions(top_q=TOP_Q),
    f"int8 + top-{TOP_Q}": StorageOptions(dtype="int8", top_q=TOP_Q),
}
FLOAT_FIELDS = ("vit_tokens", "gdino_tokens", "sam_tokens")


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def write_cache(root: Path, storage: StorageOptions, samples: int) -> dict[str, np.ndarray]:
    """Write ``samples`` rows in shards of SHARD_ROWS; return the fp32 originals as stored (top-Q applied)."""
    schema = lyrics_schema(gdino_queries=storage.top_q or FULL_Q)
    writer = CacheWriter(root, CacheIdentity(schema, storage, {"bench": True}, {"synthetic": "seed:0"}))
    originals: dict[str, list[np.ndarray]] = {name: [] for name in FLOAT_FIELDS}
    for shard_no, start in enumerate(range(0, samples, SHARD_ROWS)):
        with writer.open_shard(f"{shard_no:05d}", "synthetic") as shard:
            for b in range(start, min(start + SHARD_ROWS, samples), BATCH):
                n = min(BATCH, samples - b)
                tensors = synthetic_tensors(lyrics_schema(gdino_queries=FULL_Q), n, seed=b)
                if storage.top_q:
                    tensors["gdino_tokens"] = select_top_q(tensors["gdino_tokens"], tensors["gdino_scores"], storage.top_q)
                shard.add_batch(synthetic_rows("bench", f"{shard_no:05d}", b, n, seed=b), tensors)
                for name in FLOAT_FIELDS:
                    originals[name].append(tensors[name])
    writer.finalize()
    return {name: np.concatenate(parts) for name, parts in originals.items()}


def fidelity(root: Path, originals: dict[str, np.ndarray]) -> tuple[float, float]:
    ds = CacheDataset(root, fields=FLOAT_FIELDS)
    max_err, cosines = 0.0, []
    for i in range(len(ds)):
        item = ds[i]
        for name in FLOAT_FIELDS:
            x, y = originals[name][i], item[name].float().numpy()
            max_err = max(max_err, float(np.abs(x - y).max()))
            cos = (x * y).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1) + 1e-12)
            cosines.append(cos)
    return max_err, float(np.concatenate(cosines).mean())


def reader_throughput(root: Path, workers: int) -> float:
    ds = CacheDataset(root)
    loader = DataLoader(ds, batch_size=8, sampler=ShardShuffleSampler(len(ds), seed=0), num_workers=workers, collate_fn=pad_collate)
    start = time.perf_counter()
    count = sum(len(batch["id"]) for batch in loader)
    return count / (time.perf_counter() - start)


def raw_read_mb_s(root: Path) -> float:
    files = sorted(p for p in (root / "shards").rglob("*") if p.is_file())
    start = time.perf_counter()
    total = sum(len(p.read_bytes()) for p in files)
    return total / 1e6 / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-store-"))
    results: dict[str, object] = {"samples": args.samples, "storage": {}, "reader": {}}
    try:
        print(f"storage options, {args.samples} samples at paper shapes (synthetic features)")
        print(f"{'option':<16}{'KB/sample':>12}{'vs fp16':>9}{'max abs err':>13}{'mean cos':>11}")
        for label, storage in OPTIONS.items():
            root = work / label.replace(" ", "")
            originals = write_cache(root, storage, args.samples)
            size = dir_bytes(root / "shards") / args.samples
            err, cos = fidelity(root, originals)
            base = results["storage"].get("fp16", {}).get("bytes_per_sample", size)  # type: ignore[union-attr]
            results["storage"][label] = {"bytes_per_sample": size, "max_abs_error": err, "mean_cosine": cos}  # type: ignore[index]
            print(f"{label:<16}{size / 1024:>12.1f}{size / base:>9.2f}{err:>13.4f}{cos:>11.6f}")

        fp16 = work / "fp16"
        bytes_per_sample = dir_bytes(fp16 / "shards") / args.samples
        raw_read_mb_s(fp16)  # warm the page cache so both sides read from memory
        raw = raw_read_mb_s(fp16)
        print(f"\nreader, fp16 cache, shuffled order, batch 8 (raw sequential read of the same files: {raw:.0f} MB/s)")
        print(f"{'workers':<10}{'samples/s':>11}{'MB/s':>9}{'reader/raw':>12}")
        for workers in (0, 2):
            rate = reader_throughput(fp16, workers)
            mb_s = rate * bytes_per_sample / 1e6
            results["reader"][f"workers={workers}"] = {"samples_per_s": rate, "mb_per_s": mb_s, "ratio_to_raw": mb_s / raw}  # type: ignore[index]
            print(f"{workers:<10}{rate:>11.1f}{mb_s:>9.1f}{mb_s / raw:>12.3f}")
        results["raw_sequential_mb_per_s"] = raw
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "store.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out / 'store.json'}")


if __name__ == "__main__":
    main()
