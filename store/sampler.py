"""The order a cache is read in: a seeded shuffle over every row of every shard, split across DDP ranks.

Two orders, chosen by ``block_rows``:

- ``block_rows=1`` (default): one permutation of all rows. Fully random; at LAION scale almost every
  sample of a batch sits in a different shard, so a reader opens a shard (~1 ms of Parquet and
  Zarr metadata here) for nearly every sample.
- ``block_rows=B, window_blocks=W``: rows are cut into blocks of B consecutive rows (a block lies in
  one shard, or two), the blocks are permuted, and the rows of each run of W blocks are shuffled
  together: the shuffle buffer of WebDataset, MosaicML Streaming and LitData, made deterministic.
  A batch then draws from about W blocks, and the reader reads each block's rows in one call.
  How random that still is: any two rows of a batch share a block with probability about 1/W,
  against 1/(blocks) for the full shuffle (``bench/store.py`` prints both).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


class ShardShuffleSampler(Sampler[int]):
    """A seeded order over the global index space of all shards, split across DDP ranks.

    Every epoch draws a fresh order (``set_epoch``); rank r takes positions r, r + W, ... so the
    ranks are disjoint and together cover every row once. With ``pad=True`` the list is padded by
    wrapping around so every rank gets the same count (what DDP needs to stay in step).
    """

    def __init__(
        self,
        num_rows: int,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        pad: bool = False,
        block_rows: int = 1,
        window_blocks: int = 1,
    ) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        self.world_size = world_size if world_size is not None else (dist.get_world_size() if distributed else 1)
        self.rank = rank if rank is not None else (dist.get_rank() if distributed else 0)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world size {self.world_size}")
        if block_rows < 1 or window_blocks < 1:
            raise ValueError(f"block_rows and window_blocks must be at least 1, got {block_rows} and {window_blocks}")
        self.num_rows, self.shuffle, self.seed, self.pad = num_rows, shuffle, seed, pad
        self.block_rows, self.window_blocks = block_rows, window_blocks
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_rows))
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.block_rows == 1:
            return torch.randperm(self.num_rows, generator=generator).tolist()
        blocks = torch.randperm(-(-self.num_rows // self.block_rows), generator=generator)
        rows = (blocks[:, None] * self.block_rows + torch.arange(self.block_rows)).flatten()
        window = (torch.arange(len(blocks)) // self.window_blocks).repeat_interleave(self.block_rows)
        keep = rows < self.num_rows  # the last block may be short
        rows, window = rows[keep], window[keep]
        # Shuffle within each run of window_blocks blocks: sort by (window, random key).
        keys = window.double() + torch.rand(len(rows), generator=generator, dtype=torch.float64)
        return rows[torch.argsort(keys)].tolist()

    def __iter__(self) -> Iterator[int]:
        order = self._order()
        if self.pad and order:
            total = -(-self.num_rows // self.world_size) * self.world_size
            order = (order * (total // len(order) + 1))[:total]
        return iter(order[self.rank :: self.world_size])

    def __len__(self) -> int:
        if self.pad:
            return -(-self.num_rows // self.world_size)
        return len(range(self.rank, self.num_rows, self.world_size))
