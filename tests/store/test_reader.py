"""Reader coverage with DataLoader workers and DDP ranks, padding collate, fingerprint refusal."""

import numpy as np
import pytest
from torch.utils.data import DataLoader

from lyrics.store import WORKER_START, CacheDataset, CacheExpectation, CacheIdentity, CacheMismatchError, CacheWriter, ShardShuffleSampler, StorageOptions, lyrics_schema
from lyrics.store.reader import pad_collate
from lyrics.store.synthetic import synthetic_rows, synthetic_tensors

SCHEMA = lyrics_schema(vit_tokens=3, vit_width=8, gdino_queries=4, max_objects=2, refiner_width=6, mask_grid=4)
SHARDS = {"a": 5, "b": 8, "c": 4}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("reader") / "cache"
    writer = CacheWriter(root, CacheIdentity(SCHEMA, StorageOptions(samples_per_chunk_file=4), {"profile": "tiny"}, {"clip": "seed:0", "ram": "seed:0"}))
    for n, (name, count) in enumerate(SHARDS.items()):
        with writer.open_shard(name, f"{name}.tar") as shard:
            shard.add_batch(synthetic_rows("t", name, 0, count, seed=n), synthetic_tensors(SCHEMA, count, seed=n))
    writer.finalize()
    return root


def all_ids(root) -> list[str]:
    return CacheDataset(root).rows(["id"]).column("id").to_pylist()


def test_random_access_by_global_index(cache):
    ds = CacheDataset(cache)
    assert len(ds) == 17
    assert ds.locate(0) == (0, 0) and ds.locate(5) == (1, 0) and ds.locate(16) == (2, 3)
    assert ds[6]["id"] == "t/b/000000001" and ds[16]["id"] == "t/c/000000003"
    with pytest.raises(IndexError, match="out of range"):
        ds[17]


def test_sampler_shuffles_across_shards_and_reshuffles_per_epoch(cache):
    sampler = ShardShuffleSampler(17, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(17)) and first != list(range(17))
    shard_of = [CacheDataset(cache).locate(i)[0] for i in first[:8]]
    assert len(set(shard_of)) > 1, "the first indices of an epoch should come from several shards"
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0)
    assert list(sampler) == first


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_workers_cover_every_row_once(cache, workers):
    ds = CacheDataset(cache)
    loader = DataLoader(ds, batch_size=4, sampler=ShardShuffleSampler(len(ds), seed=1), num_workers=workers, collate_fn=pad_collate,
                        multiprocessing_context=WORKER_START if workers else None)
    seen = [i for batch in loader for i in batch["id"]]
    assert sorted(seen) == sorted(all_ids(cache))


def test_two_ranks_are_disjoint_and_complete(cache):
    ds = CacheDataset(cache)
    ranks = [list(ShardShuffleSampler(len(ds), seed=5, rank=r, world_size=2)) for r in range(2)]
    assert not set(ranks[0]) & set(ranks[1])
    assert sorted(ranks[0] + ranks[1]) == list(range(17))
    padded = [list(ShardShuffleSampler(len(ds), seed=5, rank=r, world_size=2, pad=True)) for r in range(2)]
    assert len(padded[0]) == len(padded[1]) == 9 and set(padded[0]) | set(padded[1]) == set(range(17))
    # Each rank through its own DataLoader with workers: together every row exactly once.
    seen = []
    for r in range(2):
        loader = DataLoader(ds, batch_size=3, sampler=ShardShuffleSampler(len(ds), seed=5, rank=r, world_size=2), num_workers=2, collate_fn=pad_collate,
                            multiprocessing_context=WORKER_START)
        seen += [i for batch in loader for i in batch["id"]]
    assert sorted(seen) == sorted(all_ids(cache))


def test_pad_collate_pads_boxes_and_stacks_tensors(cache):
    ds = CacheDataset(cache)
    items = [ds[i] for i in range(4)]
    batch = pad_collate(items)
    counts = [len(it["boxes"]) for it in items]
    assert batch["vit_tokens"].shape == (4, 3, 8) and batch["sam_mask"].dtype.is_floating_point is False
    assert batch["boxes"].shape == (4, max(counts), 4)
    assert batch["box_mask"].sum(1).tolist() == counts
    for it, boxes, mask in zip(items, batch["boxes"], batch["box_mask"]):
        assert np.allclose(boxes[mask].numpy(), np.array(it["boxes"], dtype=np.float32).reshape(-1, 4))
        assert not boxes[~mask].any()


def test_fields_subset_reads_only_those(cache):
    item = CacheDataset(cache, fields=["sam_tokens"])[0]
    assert "sam_tokens" in item and "vit_tokens" not in item
    with pytest.raises(KeyError, match="no tensor fields"):
        CacheDataset(cache, fields=["nope"])


def test_mismatched_fingerprint_or_schema_is_refused_naming_both_sides(cache):
    CacheDataset(cache, expect=CacheExpectation(fingerprints={"clip": "seed:0"}, tensor_shapes={"vit_tokens": (3, 8)}))
    with pytest.raises(CacheMismatchError) as err:
        CacheDataset(cache, expect=CacheExpectation(fingerprints={"clip": "sha256:0123", "sam": "seed:1"}))
    message = str(err.value)
    assert str(cache) in message
    assert "fingerprint of clip: cache seed:0, expected sha256:0123" in message
    assert "fingerprint of sam: cache <absent>, expected seed:1" in message
    with pytest.raises(CacheMismatchError, match=r"schema version: cache 1, expected 2"):
        CacheDataset(cache, expect=CacheExpectation(schema_version=2))
    with pytest.raises(CacheMismatchError, match=r"shape of vit_tokens: cache \(3, 8\), expected \(257, 1024\)"):
        CacheDataset(cache, expect=CacheExpectation(tensor_shapes={"vit_tokens": (257, 1024)}))


def test_missing_cache_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nothing")):
        CacheDataset(tmp_path / "nothing")


def test_block_order_is_a_seeded_permutation_of_local_runs():
    sampler = ShardShuffleSampler(103, seed=7, block_rows=8, window_blocks=3)
    first = list(sampler)
    assert sorted(first) == list(range(103)) and first == list(ShardShuffleSampler(103, seed=7, block_rows=8, window_blocks=3))
    positions: dict[int, list[int]] = {}
    for position, row in enumerate(first):
        positions.setdefault(row // 8, []).append(position)
    # A block's 8 consecutive rows are read within one window of 3 blocks (24 positions).
    assert all(max(p) - min(p) < 24 for p in positions.values())
    assert len({row // 8 for row in first[:24]}) == 3
    assert first[:24] != sorted(first[:24]), "rows inside a window are shuffled"
    sampler.set_epoch(1)
    assert list(sampler) != first
    ranks = [list(ShardShuffleSampler(103, seed=7, rank=r, world_size=2, block_rows=8, window_blocks=3)) for r in range(2)]
    assert not set(ranks[0]) & set(ranks[1]) and sorted(ranks[0] + ranks[1]) == list(range(103))


def test_block_settings_below_one_are_refused():
    with pytest.raises(ValueError, match="block_rows and window_blocks must be at least 1, got 0 and 1"):
        ShardShuffleSampler(10, block_rows=0)
