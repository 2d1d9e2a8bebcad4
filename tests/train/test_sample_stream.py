"""The trainers' sample stream: a resumed stream continues the uninterrupted one, in both read orders."""

import itertools

import pytest
from torch.utils.data import Dataset

from lyrics.config import ReadingConfig
from lyrics.train.cache_data import SampleStream, StreamData


class Numbers(Dataset):
    def __len__(self) -> int:
        return 23

    def __getitem__(self, index: int) -> int:
        return index


@pytest.mark.parametrize("order", [ReadingConfig(), ReadingConfig(block_rows=4, window_blocks=2)])
def test_a_stream_started_at_sample_s_is_the_uninterrupted_stream_from_s(order):
    for rank in range(2):
        whole = list(itertools.islice(SampleStream(23, seed=3, rank=rank, world_size=2, order=order), 60))
        for start in (0, 5, 12, 31):
            resumed = list(itertools.islice(SampleStream(23, seed=3, rank=rank, world_size=2, start=start, order=order), 60 - start))
            assert resumed == whole[start:]
    one_epoch = [list(itertools.islice(SampleStream(23, seed=3, rank=r, world_size=2, order=order), 12)) for r in range(2)]
    assert set(one_epoch[0]) | set(one_epoch[1]) == set(range(23))


def test_reader_threads_give_the_batches_of_the_training_loop_itself():
    batches = {}
    for threads in (0, 2):
        data = StreamData(Numbers(), list, micro_batch=4, reading=ReadingConfig(threads=threads), seed=1)
        batches[threads] = list(itertools.islice(data.loader(start=6, rank=1, world_size=2), 10))
    assert batches[0] == batches[2] and all(len(b) == 4 for b in batches[0])
