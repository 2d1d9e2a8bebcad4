"""Batches of a cache read by threads of the training process, in order, a few batches ahead.

Why threads and not DataLoader worker processes (measured by ``python bench/store.py``): a cached
sample is about 1 MB of fp16 tokens that need no decoding, so reading is memory traffic. A worker
process has to put every batch into fresh shared memory, and those page faults cost more than the
read itself (0.9 ms per sample against 0.5 ms here), which halved the throughput of two workers.
tensorstore reads in C++ threads without the GIL, so two Python threads keep both cores busy and
the batch never leaves the process. It also spares the fork problem of tensorstore's threads.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import Any

from torch.utils.data import Dataset


def read_batch(dataset: Dataset, indices: Sequence[int]) -> list[Any]:
    """The items at ``indices``, in one batched read where the dataset has ``__getitems__``."""
    if hasattr(dataset, "__getitems__"):
        return dataset.__getitems__(list(indices))
    return [dataset[i] for i in indices]


class ThreadedBatches:
    """Iterates ``collate(items)`` for each list of indices ``batches`` yields, read by ``threads``
    threads (0: in the calling thread) with up to ``prefetch`` batches in flight, in order."""

    def __init__(
        self,
        dataset: Dataset,
        batches: Iterable[Sequence[int]],
        collate: Callable[[list], Any],
        threads: int = 2,
        prefetch: int = 4,
    ) -> None:
        if threads < 0 or prefetch < 1:
            raise ValueError(f"threads must be >= 0 and prefetch >= 1, got {threads} and {prefetch}")
        self.dataset, self.batches, self.collate = dataset, batches, collate
        self.threads, self.prefetch = threads, max(prefetch, threads)

    def _load(self, indices: Sequence[int]) -> Any:
        return self.collate(read_batch(self.dataset, indices))

    def __iter__(self) -> Iterator[Any]:
        if self.threads == 0:
            yield from map(self._load, self.batches)
            return
        batches = iter(self.batches)
        with ThreadPoolExecutor(self.threads, thread_name_prefix="cache-reader") as pool:
            pending: deque[Future] = deque(pool.submit(self._load, b) for b in islice(batches, self.prefetch))
            try:
                while pending:
                    batch = pending.popleft().result()
                    for indices in islice(batches, 1):
                        pending.append(pool.submit(self._load, indices))
                    yield batch
            finally:  # the consumer stopped early (an endless stream at max_steps): drop what is queued
                for future in pending:
                    future.cancel()
