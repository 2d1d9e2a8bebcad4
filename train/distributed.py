"""Gathering a batch across data-parallel ranks: with gradients for ITC, without for ITM's negatives."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.nn.functional import all_gather as all_gather_autograd


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` concatenated along dim 0, in rank order; gradients flow back to each owner."""
    if rank_and_world()[1] == 1:
        return x
    return torch.cat(all_gather_autograd(x), dim=0)


@torch.no_grad()
def gather_padded(x: torch.Tensor, pad_value: float | bool = 0) -> torch.Tensor:
    """Every rank's ``x`` (B, T, ...) concatenated along dim 0, dim 1 right-padded to the longest T."""
    world = rank_and_world()[1]
    if world == 1:
        return x
    if x.dtype == torch.bool:  # not every backend gathers bool
        return gather_padded(x.long(), int(pad_value)).bool()
    lengths = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(lengths, torch.tensor([x.shape[1]], device=x.device))
    longest = int(max(length.item() for length in lengths))
    padding = [0, 0] * (x.dim() - 2) + [0, longest - x.shape[1]]
    padded = F.pad(x, padding, value=pad_value)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat(parts, dim=0)
