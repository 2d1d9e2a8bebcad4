"""ITC across two gloo ranks equals ITC on the whole batch in one process; padded gathers of uneven tensors.

Each rank writes plain numbers to a JSON file; the parent process asserts.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from lyrics.train.distributed import gather_padded, gather_with_grad, rank_and_world
from lyrics.train.objectives import ImageInputs, itc_loss

WORLD, LOCAL, DIM, TEMP = 2, 3, 8, 0.07


def full_features() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    z_image = F.normalize(torch.randn(WORLD * LOCAL, DIM, generator=generator), dim=-1)
    z_text = F.normalize(torch.randn(WORLD * LOCAL, DIM, generator=generator), dim=-1)
    return z_image, z_text


def worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, init_method=f"tcp://127.0.0.1:{port}")
    try:
        result: dict = {"rank_and_world": list(rank_and_world())}
        # ITC on this rank's half, negatives gathered with gradients.
        z_image, z_text = full_features()
        rows = slice(rank * LOCAL, (rank + 1) * LOCAL)
        local_image = z_image[rows].clone().requires_grad_(True)
        local_text = z_text[rows].clone().requires_grad_(True)
        itc = itc_loss(local_image, local_text, torch.tensor(TEMP))
        itc.loss.backward()
        result.update(
            loss=itc.loss.item(),
            targets=itc.targets.tolist(),
            sim_shape=list(itc.sim_i2t.shape),
            grad_image=local_image.grad.tolist(),
            grad_text=local_text.grad.tolist(),
        )
        gathered = gather_with_grad(torch.full((2, 1), float(rank)))
        result["gather_with_grad"] = gathered.flatten().tolist()

        # Uneven text lengths: rank 0 has 3 positions, rank 1 has 5.
        length = 3 if rank == 0 else 5
        ids = torch.full((2, length), rank + 1, dtype=torch.long)
        result["padded_ids"] = gather_padded(ids, -1).tolist()
        features = torch.full((2, length, 4), float(rank + 1))
        result["padded_features"] = gather_padded(features, 0.5).tolist()
        flags = torch.ones(2, length, dtype=torch.bool)
        padded_flags = gather_padded(flags, False)
        result["padded_flags_dtype"] = str(padded_flags.dtype)
        result["padded_flags"] = padded_flags.tolist()

        # Refiner tokens of uneven counts: the gathered mask hides the padding.
        objects = 2 if rank == 0 else 3
        image = ImageInputs(
            torch.full((2, 5, 16), float(rank)), torch.full((2, objects, 260), float(rank)), torch.ones(2, objects, dtype=torch.bool)
        ).gather()
        result["image_shapes"] = [list(image.vit_tokens.shape), list(image.refiner_tokens.shape), list(image.refiner_mask.shape)]
        result["image_mask"] = image.refiner_mask.tolist()
        result["image_vit_rows"] = image.vit_tokens[:, 0, 0].tolist()
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    # The spawned ranks unpickle ``worker`` by importing this module under pytest's name for it
    # (tests.train.test_itc_gather): they inherit sys.path, which must hold the repository root.
    root = str(Path(__file__).resolve().parents[2])
    if root not in sys.path:
        sys.path.append(root)
    out = tmp_path_factory.mktemp("itc_gather")
    mp.spawn(worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]


def single_process() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    z_image, z_text = full_features()
    z_image.requires_grad_(True)
    z_text.requires_grad_(True)
    loss = itc_loss(z_image, z_text, torch.tensor(TEMP)).loss
    loss.backward()
    return loss.detach(), z_image.grad, z_text.grad


def test_outside_a_process_group_there_is_one_rank():
    assert rank_and_world() == (0, 1)
    x = torch.randn(2, 3)
    assert gather_with_grad(x) is x and gather_padded(x) is x


def test_ranks_see_their_place(ranks):
    assert [r["rank_and_world"] for r in ranks] == [[0, WORLD], [1, WORLD]]
    for r in ranks:
        assert r["gather_with_grad"] == [0.0, 0.0, 1.0, 1.0]  # in rank order


def test_distributed_itc_loss_equals_the_whole_batch_loss(ranks):
    full_loss, _, _ = single_process()
    mean = sum(r["loss"] for r in ranks) / WORLD
    assert abs(mean - full_loss.item()) < 1e-6
    assert ranks[0]["loss"] != pytest.approx(ranks[1]["loss"])  # the halves differ: the mean is a real check


def test_targets_are_offset_by_the_rank(ranks):
    for rank, r in enumerate(ranks):
        assert r["targets"] == [rank * LOCAL + i for i in range(LOCAL)]
        assert r["sim_shape"] == [LOCAL, WORLD * LOCAL]


def test_gradients_equal_world_size_times_the_whole_batch_gradient(ranks):
    """all_gather's backward sums every rank's gradient for a rank's rows: sum_r dL_r/dx = WORLD * dL/dx."""
    _, grad_image, grad_text = single_process()
    for rank, r in enumerate(ranks):
        rows = slice(rank * LOCAL, (rank + 1) * LOCAL)
        assert torch.allclose(torch.tensor(r["grad_image"]), WORLD * grad_image[rows], atol=1e-6)
        assert torch.allclose(torch.tensor(r["grad_text"]), WORLD * grad_text[rows], atol=1e-6)
    assert grad_image.abs().max() > 1e-3  # not a trivially zero gradient


def test_gather_padded_pads_uneven_lengths(ranks):
    for r in ranks:
        assert r["padded_ids"] == [[1, 1, 1, -1, -1]] * 2 + [[2] * 5] * 2
        features = torch.tensor(r["padded_features"])
        assert features.shape == (4, 5, 4)
        assert (features[:2, :3] == 1).all() and (features[:2, 3:] == 0.5).all() and (features[2:] == 2).all()
        assert r["padded_flags_dtype"] == "torch.bool"
        assert r["padded_flags"] == [[True] * 3 + [False] * 2] * 2 + [[True] * 5] * 2


def test_image_inputs_gather(ranks):
    for r in ranks:
        assert r["image_shapes"] == [[4, 5, 16], [4, 3, 260], [4, 3]]
        assert r["image_mask"] == [[True, True, False]] * 2 + [[True] * 3] * 2
        assert r["image_vit_rows"] == [0.0, 0.0, 1.0, 1.0]
