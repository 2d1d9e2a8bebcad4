"""Cache storage options and reader throughput, measured side by side in one run.

    python bench/store.py [--samples 512] [--out bench/results]

1. Storage: writes the same samples (paper shapes: 257 x 1024 ViT tokens, 900 x 260 Grounding-DINO
   tokens, 32 x 260 SAM-HQ tokens, 32 x 64 x 64 masks) with each storage option, and reports bytes
   per sample on disk, fidelity against the fp32 originals (max abs error, mean per-token cosine)
   and the training fields' read rate (random order, 2 reader threads).
2. Reader: the fields the trainers read, from the default option (fp16, features uncompressed),
   through ``CacheDataset`` with batch 32 and ``pad_collate``: by ``ThreadedBatches`` (0 and 2
   threads, what the trainers use) and by a DataLoader with 2 worker processes, in the fully random
   order and in the block order (``ShardShuffleSampler(block_rows, window_blocks)``). Beside each,
   in the same order with the same loader and collate: the reader a user would write by hand (the
   same tensors as one uncompressed ``.npy`` per shard and field, memory-mapped), and a plain
   sequential read of the same files on one core.

The feature values are synthetic (heavy-tailed, with outlier channels, see store/synthetic.py);
with a real extraction cache the fidelity numbers will differ. Every read is warm (page cache): this
measures the reader's CPU cost, not a disk.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from lyrics.store import (
    WORKER_START,
    CacheDataset,
    CacheIdentity,
    CacheWriter,
    ShardShuffleSampler,
    StorageOptions,
    lyrics_schema,
)
from lyrics.store.codecs import select_top_q
from lyrics.store.loader import ThreadedBatches
from lyrics.store.reader import pad_collate
from lyrics.store.synthetic import synthetic_rows, synthetic_tensors
from lyrics.store.writer import ROWS_NAME, SHARDS_DIR, TENSORS_NAME
from lyrics.train.cache_data import PRETRAIN_FIELDS
from torch.utils.data import BatchSampler, DataLoader, Dataset

FULL_Q, TOP_Q = 900, 100
SHARD_ROWS, WRITE_BATCH, READ_BATCH = 64, 16, 32
BLOCK_ROWS, WINDOW_BLOCKS = 16, 4
OPTIONS = {
    "fp16": StorageOptions(),
    "fp16 lz4": StorageOptions(compression="lz4"),
    "fp16 zstd-3": StorageOptions(compression="zstd"),
    "int8": StorageOptions(dtype="int8"),
    "int8 zstd-3": StorageOptions(dtype="int8", compression="zstd"),
    f"fp16 top-{TOP_Q}": StorageOptions(top_q=TOP_Q),
    f"int8 top-{TOP_Q}": StorageOptions(dtype="int8", top_q=TOP_Q),
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
            for b in range(start, min(start + SHARD_ROWS, samples), WRITE_BATCH):
                n = min(WRITE_BATCH, samples - b)
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
    for start in range(0, len(ds), READ_BATCH):
        for i, item in enumerate(ds.__getitems__(range(start, min(start + READ_BATCH, len(ds)))), start):
            for name in FLOAT_FIELDS:
                x, y = originals[name][i], item[name].float().numpy()
                max_err = max(max_err, float(np.abs(x - y).max()))
                cos = (x * y).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1) + 1e-12)
                cosines.append(cos)
    return max_err, float(np.concatenate(cosines).mean())


class NpyMemmapShards(Dataset):
    """The reader a user would write by hand: each shard's tensors as uncompressed ``.npy`` files,
    memory-mapped; rows from the same Parquet files; the same items and batched reads as ``CacheDataset``."""

    def __init__(self, folder: Path, shard_rows: Sequence[int]) -> None:
        self.folder, self.offsets = folder, np.cumsum([0, *shard_rows]).tolist()
        self.shards: dict[int, tuple[dict[str, list], dict[str, np.ndarray]]] = {}

    def __len__(self) -> int:
        return self.offsets[-1]

    def _shard(self, shard: int) -> tuple[dict[str, list], dict[str, np.ndarray]]:
        if shard not in self.shards:
            path = self.folder / f"{shard:05d}"
            columns = pq.read_table(path / ROWS_NAME).to_pydict()
            self.shards[shard] = (
                columns,
                {p.stem: np.load(p, mmap_mode="r") for p in sorted(path.glob("*.npy"))},
            )
        return self.shards[shard]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        located = [(int(np.searchsorted(self.offsets, i, side="right")) - 1, i) for i in indices]
        wanted: dict[int, list[int]] = {}
        for shard, index in located:
            wanted.setdefault(shard, []).append(index - self.offsets[shard])
        read = {}
        for shard, rows in wanted.items():
            unique = sorted(set(rows))
            columns, arrays = self._shard(shard)
            read[shard] = (
                {row: k for k, row in enumerate(unique)},
                columns,
                {name: array[unique] for name, array in arrays.items()},
            )
        items = []
        for shard, index in located:
            row = index - self.offsets[shard]
            position, columns, arrays = read[shard]
            item = {column: values[row] for column, values in columns.items()}
            item.update({name: torch.from_numpy(values[position[row]]) for name, values in arrays.items()})
            items.append(item)
        return items


def write_npy_copy(cache: Path, folder: Path) -> NpyMemmapShards:
    """The cache's tensors as one ``.npy`` per shard and field, its rows as the same Parquet files."""
    ds = CacheDataset(cache, fields=PRETRAIN_FIELDS)
    for shard_no, name in enumerate(ds.shard_names):
        start, stop = ds.offsets[shard_no], ds.offsets[shard_no + 1]
        items = ds.__getitems__(range(start, stop))
        out = folder / f"{shard_no:05d}"
        out.mkdir(parents=True)
        shutil.copy(cache / SHARDS_DIR / name / ROWS_NAME, out / ROWS_NAME)
        for f in ds.fields:
            np.save(
                out / f"{f.name}.npy",
                np.stack([item[f.name].numpy() for item in items]),
            )
    return NpyMemmapShards(folder, [s.rows for s in ds.manifest.shards])


def make_loader(dataset: Dataset, sampler: ShardShuffleSampler, loader: str, workers: int) -> Iterable[dict[str, Any]]:
    """``threads``: ``ThreadedBatches`` (what the trainers use); ``processes``: a DataLoader with worker processes."""
    if loader == "threads":
        return ThreadedBatches(
            dataset,
            BatchSampler(sampler, READ_BATCH, drop_last=False),
            pad_collate,
            threads=workers,
        )
    return DataLoader(dataset, batch_size=READ_BATCH, sampler=sampler, num_workers=workers, collate_fn=pad_collate,
                      persistent_workers=workers > 0, multiprocessing_context=WORKER_START if workers else None)  # fmt: skip


def read_rate(dataset: Dataset, loader: str, workers: int, block_rows: int, epochs: int = 4) -> tuple[float, float]:
    """(samples/s, samples per CPU-second of this process) of the best epoch after the first, which
    starts the workers and opens the shards as the first steps of a training run do. Best of
    several: this VM's memory manager evicts page cache now and then, which only ever slows a read."""
    sampler = ShardShuffleSampler(len(dataset), seed=0, block_rows=block_rows, window_blocks=WINDOW_BLOCKS if block_rows > 1 else 1)
    batches = make_loader(dataset, sampler, loader, workers)
    rates = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        wall, cpu = time.perf_counter(), time.process_time()
        count = sum(len(batch["id"]) for batch in batches)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if epoch:
            rates.append((count / wall, count / cpu))
    return max(rates)


def raw_read_mb_s(files: Sequence[Path]) -> float:
    """One core reading the files front to back into one reused buffer: the page cache's copy speed."""
    buffer = bytearray(max(p.stat().st_size for p in files))
    start, total = time.perf_counter(), 0
    for path in files:
        with open(path, "rb", buffering=0) as f:
            total += f.readinto(buffer)
    return total / 1e6 / (time.perf_counter() - start)


def shards_per_batch(num_rows: int, block_rows: int) -> float:
    """Mean number of distinct shards in a batch of the order (how random the order is)."""
    sampler = ShardShuffleSampler(
        num_rows,
        seed=0,
        block_rows=block_rows,
        window_blocks=WINDOW_BLOCKS if block_rows > 1 else 1,
    )
    order = np.array(list(sampler))
    batches = [order[i : i + READ_BATCH] // SHARD_ROWS for i in range(0, len(order), READ_BATCH)]
    return float(np.mean([len(set(b.tolist())) for b in batches]))


def storage_table(work: Path, samples: int, results: dict[str, Any]) -> None:
    print(f"storage options, {samples} samples at paper shapes (synthetic features), shards of {SHARD_ROWS}")
    print(f"{'option':<14}{'KB/sample':>11}{'vs fp16':>9}{'max abs err':>13}{'mean cos':>10}{'read/s':>9}")
    for label, storage in OPTIONS.items():
        root = work / label.replace(" ", "_")
        originals = write_cache(root, storage, samples)
        size = dir_bytes(root / SHARDS_DIR) / samples
        err, cos = fidelity(root, originals)
        rate, _ = read_rate(CacheDataset(root, fields=PRETRAIN_FIELDS), "threads", 2, 1)
        base = results["storage"].get("fp16", {}).get("bytes_per_sample", size)
        results["storage"][label] = {
            "bytes_per_sample": size,
            "max_abs_error": err,
            "mean_cosine": cos,
            "train_read_samples_per_s": rate,
        }
        print(f"{label:<14}{size / 1024:>11.1f}{size / base:>9.2f}{err:>13.4f}{cos:>10.6f}{rate:>9.0f}")
        if label not in ("fp16", "int8"):
            shutil.rmtree(root)
    print("(read/s: the training fields, random order, 2 reader threads)")


def reader_table(work: Path, samples: int, results: dict[str, Any]) -> None:
    cache = work / "fp16"
    npy = write_npy_copy(cache, work / "npy")
    arrays = [a for name in PRETRAIN_FIELDS for a in (cache / SHARDS_DIR).glob(f"*/{TENSORS_NAME}/{name}")]
    files = [p for a in arrays for p in (a / "c").rglob("*") if p.is_file()]  # the shard files: chunks + index
    bytes_per_sample = sum(p.stat().st_size for p in files) / samples
    raw_read_mb_s(files)  # warm the page cache: every read below comes from memory
    raw = max(raw_read_mb_s(files) for _ in range(5))
    cores = os.cpu_count() or 1
    print(f"\nreader of the training fields {', '.join(PRETRAIN_FIELDS)} ({bytes_per_sample / 1e6:.2f} MB/sample), batch {READ_BATCH}, "
          f"{cores} cores; raw sequential read of their files: {raw:.0f} MB/s on one core")  # fmt: skip
    print(f"{'order':<20}{'loader':<12}{'samples/s':>10}{'MB/s':>7}{'per core':>9}{'/raw':>6}{'npy memmap':>11}{'/npy':>6}")
    runs = {}
    for order, block in (
        ("random", 1),
        (f"blocks {BLOCK_ROWS}x{WINDOW_BLOCKS}", BLOCK_ROWS),
    ):
        for loader, workers in (("threads", 0), ("threads", 2), ("processes", 2)):
            rate, per_cpu_s = read_rate(CacheDataset(cache, fields=PRETRAIN_FIELDS), loader, workers, block)
            npy_rate, _ = read_rate(npy, loader, workers, block)
            per_core = per_cpu_s if workers == 0 else rate / cores
            run = {"samples_per_s": rate, "mb_per_s": rate * bytes_per_sample / 1e6, "per_core_samples_per_s": per_core,
                   "ratio_to_raw": per_core * bytes_per_sample / 1e6 / raw, "npy_memmap_samples_per_s": npy_rate, "ratio_to_npy_memmap": rate / npy_rate}  # fmt: skip
            label = f"{loader} {workers}"
            runs[f"{order}, {label}"] = run
            print(
                f"{order:<20}{label:<12}{rate:>10.0f}{run['mb_per_s']:>7.0f}{per_core:>9.0f}{run['ratio_to_raw']:>6.2f}{npy_rate:>11.0f}{run['ratio_to_npy_memmap']:>6.2f}"
            )
    print("(per core: samples/s over the cores; with 0 threads, samples per CPU-second of the process. /raw: per core, against one core's raw read)")
    # A LAION-size cache has far more shards than stay open: every batch then opens shards again.
    for order, block in (("random", 1), (f"blocks {BLOCK_ROWS}x{WINDOW_BLOCKS}", BLOCK_ROWS)):
        rate, _ = read_rate(CacheDataset(cache, fields=PRETRAIN_FIELDS, open_shards=2), "threads", 2, block)
        runs[f"{order}, threads 2, 2 shards open"] = {"samples_per_s": rate}
        print(f"{order:<20}{'threads 2':<12}{rate:>10.0f}   with only 2 of the {len(arrays) // len(PRETRAIN_FIELDS)} shards kept open (a cache of many shards)")
    training = runs["random, threads 2"]  # what the trainers run (training.reader_threads: 2)
    results["reader"] = {
        "per_core_samples_per_s": training["per_core_samples_per_s"],
        "ratio_to_raw": training["ratio_to_raw"],
        "ratio_to_npy_memmap": training["ratio_to_npy_memmap"],
        "measured_as": f"training fields, random order, 2 reader threads, batch {READ_BATCH}; per core = samples/s / {cores} cores",
        "runs": runs,
    }
    results["raw_sequential_mb_per_s"] = raw
    results["train_bytes_per_sample"] = bytes_per_sample
    rate, _ = read_rate(CacheDataset(work / "int8", fields=PRETRAIN_FIELDS), "threads", 2, 1)
    results["reader"]["int8_samples_per_s"] = rate
    print(f"int8 cache (dequantised to float32), random order, 2 threads: {rate:.0f} samples/s ({rate / cores:.0f} per core)")
    random_shards, block_shards = (
        shards_per_batch(samples, 1),
        shards_per_batch(samples, BLOCK_ROWS),
    )
    results["order"] = {
        "shards_per_batch_random": random_shards,
        "shards_per_batch_blocks": block_shards,
        "block_rows": BLOCK_ROWS,
        "window_blocks": WINDOW_BLOCKS,
    }
    print(f"how random: a batch of {READ_BATCH} draws from {random_shards:.1f} of {-(-samples // SHARD_ROWS)} shards in the random order, "
          f"{block_shards:.1f} in the block order")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-store-"))
    results: dict[str, Any] = {
        "samples": args.samples,
        "shard_rows": SHARD_ROWS,
        "read_batch": READ_BATCH,
        "storage": {},
    }
    try:
        storage_table(work, args.samples, results)
        reader_table(work, args.samples, results)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    spec = importlib.util.spec_from_file_location("bench_extract", Path(__file__).with_name("extract.py"))
    bench_extract = sys.modules["bench_extract"] = importlib.util.module_from_spec(spec)  # bench/ is no package
    spec.loader.exec_module(bench_extract)
    bench_extract.write_results(args.out, "store.json", results)


if __name__ == "__main__":
    main()
