"""Batched and memory-mapped reads, storage compression, reader threads: the same values every way."""

import json
import threading

import numpy as np
import pytest
import torch
import zarr

from lyrics.store import CacheDataset, CacheIdentity, CacheWriter, ConcatCaches, StorageOptions, ThreadedBatches, lyrics_schema, read_manifest
from lyrics.store.reader import pad_collate
from lyrics.store.synthetic import synthetic_rows, synthetic_tensors
from lyrics.store.writer import SHARDS_DIR, TENSORS_NAME
from lyrics.store.zarr_mmap import mapped_array

SCHEMA = lyrics_schema(vit_tokens=3, vit_width=8, gdino_queries=4, max_objects=2, refiner_width=6, mask_grid=4)
SHARDS = {"a": 5, "b": 8, "c": 4}


def write(root, storage: StorageOptions):
    writer = CacheWriter(root, CacheIdentity(SCHEMA, storage, {"profile": "tiny"}, {"clip": "seed:0"}))
    for n, (name, count) in enumerate(SHARDS.items()):
        with writer.open_shard(name, f"{name}.tar") as shard:
            shard.add_batch(synthetic_rows("t", name, 0, count, seed=n), synthetic_tensors(SCHEMA, count, seed=n))
    writer.finalize()
    return root


def originals() -> dict[str, np.ndarray]:
    parts = [synthetic_tensors(SCHEMA, count, seed=n) for n, count in enumerate(SHARDS.values())]
    return {f.name: np.concatenate([p[f.name] for p in parts]) for f in SCHEMA.tensors}


@pytest.fixture(scope="module", params=["none", "lz4", "zstd"])
def cache(request, tmp_path_factory):
    # 4 samples per Zarr shard file: shards a and b span two files each.
    return write(tmp_path_factory.mktemp(request.param) / "cache", StorageOptions(compression=request.param, samples_per_chunk_file=4))


def test_every_compression_returns_the_float16_values_exactly(cache):
    ds, want = CacheDataset(cache), originals()
    items = ds.__getitems__(range(len(ds)))
    for f in SCHEMA.tensors:
        got = np.stack([item[f.name].numpy() for item in items])
        expected = want[f.name].astype(np.float16) if f.kind == "float" else want[f.name].astype(bool)
        assert got.dtype == expected.dtype and np.array_equal(got, expected), f.name


def test_raw_arrays_are_memory_mapped_and_compressed_ones_are_not(cache):
    compression = read_manifest(cache).identity.storage.compression
    for f in SCHEMA.tensors:
        mapped = mapped_array(cache / SHARDS_DIR / "b" / TENSORS_NAME / f.name)
        assert (mapped is not None) == (f.kind == "float" and compression == "none"), f.name


def test_a_mapped_row_is_the_row_zarr_reads(tmp_path):
    root = write(tmp_path / "cache", StorageOptions(samples_per_chunk_file=3))
    for name in ("vit_tokens", "gdino_tokens", "sam_tokens"):
        folder = root / SHARDS_DIR / "b" / TENSORS_NAME / name
        mapped, reference = mapped_array(folder), zarr.open_array(folder, mode="r")
        for row in range(SHARDS["b"]):  # rows of three Zarr shard files, the last one partial
            assert np.array_equal(mapped.row(row), reference[row])


def test_batched_reads_equal_single_reads_in_any_order_with_repeats(cache):
    ds = CacheDataset(cache)
    order = [16, 0, 6, 6, 12, 3, 16, 9]  # across shards, out of order, repeated
    batched = ds.__getitems__(order)
    for index, item in zip(order, batched):
        single = CacheDataset(cache)[index]
        assert item["id"] == single["id"] and item["boxes"] == single["boxes"]
        for f in SCHEMA.tensors:
            assert torch.equal(item[f.name], single[f.name])


def test_few_open_shards_evict_and_reopen_with_the_same_values(cache):
    small, large = CacheDataset(cache, open_shards=1), CacheDataset(cache)
    order = [0, 16, 6, 1, 15, 7]
    for index in order:
        assert torch.equal(small[index]["vit_tokens"], large[index]["vit_tokens"])
    assert len(small._open) == 1


def test_threads_reading_together_get_what_one_reader_gets(cache):
    ds, reference = CacheDataset(cache), CacheDataset(cache)
    results, errors = {}, []

    def read(start):
        try:
            results[start] = [ds[(start + k) % len(ds)]["id"] for k in range(40)]
        except Exception as e:  # surfaced by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=read, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for start, ids in results.items():
        assert ids == [reference[(start + k) % len(reference)]["id"] for k in range(40)]


def test_int8_is_dequantised_in_float32_so_tiny_scales_keep_their_values(tmp_path):
    tensors = synthetic_tensors(SCHEMA, 2, seed=0)
    tensors["vit_tokens"] = tensors["vit_tokens"] * 1e-7  # scales far below float16's normal range (6e-5)
    writer = CacheWriter(tmp_path / "cache", CacheIdentity(SCHEMA, StorageOptions(dtype="int8"), {"profile": "tiny"}, {}))
    with writer.open_shard("a", "a.tar") as shard:
        shard.add_batch(synthetic_rows("t", "a", 0, 2, seed=0), tensors)
    writer.finalize()
    got = torch.stack([CacheDataset(tmp_path / "cache")[i]["vit_tokens"] for i in range(2)])
    assert got.dtype == torch.float32
    x = torch.from_numpy(tensors["vit_tokens"])
    step = x.abs().amax(-1, keepdim=True) / 127
    assert ((got - x).abs() <= step / 2 + 1e-12).all(), "each value within half a quantisation step"


def test_a_cache_written_before_the_compression_setting_reads_as_zstd(tmp_path):
    root = write(tmp_path / "cache", StorageOptions(compression="zstd"))
    manifest = json.loads((root / "manifest.json").read_text())
    del manifest["storage"]["compression"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert read_manifest(root).identity.storage.compression == "zstd"
    assert CacheDataset(root)[0]["id"] == "t/a/000000000"


def test_unknown_compression_is_refused():
    with pytest.raises(ValueError, match="storage compression must be 'none', 'lz4' or 'zstd', got 'brotli'"):
        StorageOptions(compression="brotli")


def test_concatenated_caches_pass_batches_on_in_order(tmp_path):
    first, second = write(tmp_path / "one", StorageOptions()), write(tmp_path / "two", StorageOptions(compression="zstd"))
    both = ConcatCaches([CacheDataset(first), CacheDataset(second)])
    order = [20, 3, 17, 33, 0, 16]
    assert [item["id"] for item in both.__getitems__(order)] == [both[i]["id"] for i in order]


@pytest.mark.parametrize("threads", [0, 1, 3])
def test_threaded_batches_keep_the_order_of_the_batches(cache, threads):
    ds = CacheDataset(cache)
    batches = [[5, 1], [16, 0, 7], [2], [9, 10, 11, 12]]
    got = [b["id"] for b in ThreadedBatches(ds, batches, pad_collate, threads=threads, prefetch=2)]
    assert got == [[ds[i]["id"] for i in batch] for batch in batches]


def test_threaded_batches_stop_early_and_raise_the_readers_error(cache):
    ds = CacheDataset(cache)
    stream = iter(ThreadedBatches(ds, ([i] for i in range(10**9)), pad_collate, threads=2))
    assert next(stream)["id"] == [ds[0]["id"]]
    stream.close()  # an endless stream stopped at max_steps: returns, no thread left reading
    with pytest.raises(IndexError, match="index 17 out of range"):
        list(ThreadedBatches(ds, [[0], [17]], pad_collate, threads=2))


def test_rows_zarr_did_not_store_read_as_the_fill_value(tmp_path):
    tensors = synthetic_tensors(SCHEMA, 9, seed=0)
    tensors["sam_tokens"][1] = 0  # one all-zero row in a file of others
    tensors["sam_tokens"][4:8] = 0  # a whole Zarr shard file of zeros: Zarr writes no file at all
    writer = CacheWriter(tmp_path / "cache", CacheIdentity(SCHEMA, StorageOptions(samples_per_chunk_file=4), {"profile": "tiny"}, {}))
    with writer.open_shard("a", "a.tar") as shard:
        shard.add_batch(synthetic_rows("t", "a", 0, 9, seed=0), tensors)
    writer.finalize()
    ds = CacheDataset(tmp_path / "cache")
    got = np.stack([item["sam_tokens"].numpy() for item in ds.__getitems__(range(9))])
    assert np.array_equal(got, tensors["sam_tokens"].astype(np.float16))
