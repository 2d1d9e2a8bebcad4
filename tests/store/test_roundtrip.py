"""Values survive the store: bitwise for fp16, bounded error for int8, top-Q keeps the best queries."""

import numpy as np
import pytest

from lyrics.store import CacheDataset, CacheIdentity, CacheWriter, StorageOptions, lyrics_schema
from lyrics.store.codecs import dequantize_int8, quantize_int8, select_top_q
from lyrics.store.synthetic import synthetic_rows, synthetic_tensors

SCHEMA = lyrics_schema(vit_tokens=5, vit_width=32, gdino_queries=6, max_objects=3, refiner_width=20, mask_grid=4)


def write(root, storage: StorageOptions, schema=SCHEMA, extra_queries: int = 0, count: int = 10):
    writer = CacheWriter(root, CacheIdentity(schema, storage, {}, {}))
    rows = synthetic_rows("t", "s0", 0, count, seed=1)
    tensors = synthetic_tensors(schema, count, seed=2, extra_queries=extra_queries)
    with writer.open_shard("s0", "in.tar") as shard:
        shard.add_batch(rows[:4], {k: v[:4] for k, v in tensors.items()})
        shard.add_batch(rows[4:], {k: v[4:] for k, v in tensors.items()})
    writer.finalize()
    return rows, tensors, CacheDataset(root)


def test_fp16_round_trip_is_bitwise(tmp_path):
    rows, tensors, ds = write(tmp_path / "c", StorageOptions())
    assert len(ds) == 10
    for i in range(10):
        item = ds[i]
        for f in SCHEMA.tensors:
            expected = tensors[f.name].astype(bool if f.kind == "mask" else np.float16)
            assert item[f.name].numpy().dtype == expected.dtype
            assert np.array_equal(item[f.name].numpy().view(np.uint8), expected[i].view(np.uint8)), f.name
        assert item["id"] == rows[i]["id"]
        assert np.allclose(np.array(item["boxes"]).reshape(-1, 4), np.array(rows[i]["boxes"]).reshape(-1, 4))
        assert item["box_labels"] == rows[i]["box_labels"] and item["source"] == rows[i]["source"]


def test_int8_error_is_bounded_per_token(tmp_path):
    _, tensors, ds = write(tmp_path / "c", StorageOptions(dtype="int8"))
    for i in range(10):
        for name in ("vit_tokens", "gdino_tokens", "sam_tokens"):
            x = tensors[name][i]
            y = ds[i][name].float().numpy()
            bound = np.abs(x).max(axis=-1, keepdims=True) / 127 / 2  # half a quantization step
            fp16_slack = np.abs(x) * 2**-10 + 1e-6
            assert np.all(np.abs(x - y) <= bound + fp16_slack), name
        assert np.array_equal(ds[i]["sam_mask"].numpy(), tensors["sam_mask"][i])


def test_quantize_int8_handles_zero_tokens_and_extremes():
    x = np.array([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5]], dtype=np.float32)
    q, scale = quantize_int8(x)
    assert q.dtype == np.int8 and q[0].tolist() == [0, 0, 0]
    assert q[1].tolist() == [64, -127, 32] and scale[1] == pytest.approx(2 / 127)
    assert np.allclose(dequantize_int8(q, scale)[1], [1.0079, -2.0, 0.5039], atol=1e-3)


def test_top_q_keeps_best_queries_in_score_order(tmp_path):
    tokens = np.arange(2 * 5 * 2, dtype=np.float32).reshape(2, 5, 2)
    scores = np.array([[0.1, 0.9, 0.5, 0.9, 0.2], [1, 0, 0, 0, 0]], dtype=np.float32)
    kept = select_top_q(tokens, scores, 3)
    assert kept[0].tolist() == [tokens[0, 1].tolist(), tokens[0, 3].tolist(), tokens[0, 2].tolist()]  # ties keep order
    assert kept[1, 0].tolist() == tokens[1, 0].tolist()

    schema = lyrics_schema(vit_tokens=5, vit_width=32, gdino_queries=2, max_objects=3, refiner_width=20, mask_grid=4)
    _, t, ds = write(tmp_path / "c", StorageOptions(top_q=2), schema=schema, extra_queries=4)
    best = select_top_q(t["gdino_tokens"], t["gdino_scores"], 2).astype(np.float16)
    assert ds[3]["gdino_tokens"].shape == (2, 20)
    assert np.array_equal(ds[3]["gdino_tokens"].numpy(), best[3])


def test_wrong_shapes_and_columns_are_refused(tmp_path):
    writer = CacheWriter(tmp_path / "c", CacheIdentity(SCHEMA, StorageOptions(), {}, {}))
    shard = writer.open_shard("s0", "in.tar")
    rows = synthetic_rows("t", "s0", 0, 2, seed=0)
    tensors = synthetic_tensors(SCHEMA, 2, seed=0)
    bad = dict(tensors, vit_tokens=tensors["vit_tokens"][:, :4])
    with pytest.raises(ValueError, match=r"vit_tokens.*\(2, 4, 32\).*\(2, 5, 32\)"):
        shard.add_batch(rows, bad)
    with pytest.raises(ValueError, match=r"missing columns \['caption'\]"):
        shard.add_batch([{k: v for k, v in r.items() if k != "caption"} for r in rows], tensors)
    with pytest.raises(ValueError, match="storage dtype"):
        StorageOptions(dtype="bf16")
