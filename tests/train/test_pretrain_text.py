"""Stage-1 text batching: ``[BOS] spatial_text [CLS] caption [SEP]``, object spans, whole-object truncation."""

from __future__ import annotations

import pytest
import torch

from lyrics.spatial_text import format_objects
from lyrics.train.pretrain_text import PretrainText, TextSettings, encode_pretrain_text

WIDE = TextSettings(max_spatial_tokens=128, max_caption_tokens=32)


def words(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def object_tokens(tokenizer, tag: str, box) -> list[int]:
    return words(tokenizer, format_objects([tag], [box]))


CAT, DOG, PERSON = ("cat", (0.012, 0.345, 1.0, 0.0)), ("dog", (0.001, 0.002, 0.003, 0.004)), ("red car", (0.5, 0.5, 0.6, 0.7))


def spatial(*objects) -> str:
    return format_objects([t for t, _ in objects], [b for _, b in objects])


def test_layout_special_tokens_and_padding(tokenizer, ids):
    texts = [spatial(CAT, DOG), spatial(PERSON)]
    captions = ["a cat chases a dog", "a car"]
    text = encode_pretrain_text(tokenizer, texts, captions, WIDE)
    cat, dog, car = (object_tokens(tokenizer, *o) for o in (CAT, DOG, PERSON))
    want_spatial = [[ids.bos, *cat, *dog], [ids.bos, *car]]
    want_caption = [[ids.cls, *words(tokenizer, c), ids.sep] for c in captions]
    assert text.spatial_lengths.tolist() == [len(s) for s in want_spatial]
    assert text.caption_lengths.tolist() == [len(c) for c in want_caption]
    width = max(len(s) + len(c) for s, c in zip(want_spatial, want_caption))
    assert text.input_ids.shape == text.object_ids.shape == (2, width)
    for row in range(2):
        s, c = int(text.spatial_lengths[row]), int(text.caption_lengths[row])
        assert text.input_ids[row, 0] == ids.bos
        assert text.input_ids[row, s] == ids.cls
        assert text.input_ids[row, s + c - 1] == ids.sep
        assert text.input_ids[row].tolist() == want_spatial[row] + want_caption[row] + [ids.pad] * (width - s - c)
    # The second row is the shorter one: it is padded.
    assert int(text.spatial_lengths[1] + text.caption_lengths[1]) < width


def test_object_ids_mark_each_whole_object_span(tokenizer, ids):
    text = encode_pretrain_text(tokenizer, [spatial(CAT, PERSON, DOG), spatial(DOG)], ["x", "y"], WIDE)
    br, end_br = tokenizer.convert_tokens_to_ids(["<br>", "</br>"])
    lengths = [len(object_tokens(tokenizer, *o)) for o in (CAT, PERSON, DOG)]
    want = [0] + [n for n, length in enumerate(lengths, start=1) for _ in range(length)]
    row = text.object_ids[0].tolist()
    assert row[: len(want)] == want and not any(row[len(want) :])  # caption and padding: 0
    for row in range(2):
        objects, input_ids = text.object_ids[row], text.input_ids[row]
        count = int(objects.max())
        assert count == (3 if row == 0 else 1)
        for number in range(1, count + 1):
            span = (objects == number).nonzero().flatten()
            assert torch.equal(span, torch.arange(int(span[0]), int(span[-1]) + 1))  # contiguous
            assert input_ids[span[0]] == br and input_ids[span[-1]] == end_br
            assert (input_ids[span[1:-1]] != br).all()  # exactly one object per span
        # Everything between [BOS] and [CLS] belongs to some object; nothing else does.
        s = int(text.spatial_lengths[row])
        assert objects[0] == 0 and (objects[1:s] > 0).all() and (objects[s:] == 0).all()


@pytest.mark.parametrize(("room", "kept"), [(0, 2), (-1, 1), (10, 2), (-17, 1)])
def test_objects_that_do_not_fit_are_dropped_whole(tokenizer, ids, room, kept):
    lengths = [len(object_tokens(tokenizer, *o)) for o in (CAT, PERSON, DOG)]
    budget = 1 + lengths[0] + lengths[1] + room  # [BOS] + two objects + room
    text = encode_pretrain_text(
        tokenizer, [spatial(CAT, PERSON, DOG)], ["a cat"], TextSettings(max_spatial_tokens=budget, max_caption_tokens=16)
    )
    s = int(text.spatial_lengths[0])
    assert s == 1 + sum(lengths[:kept]) <= budget
    assert int(text.object_ids.max()) == kept
    end_br = tokenizer.convert_tokens_to_ids("</br>")
    assert text.input_ids[0, s - 1] == end_br  # the spatial text ends on a whole object
    assert text.input_ids[0, s] == ids.cls


def test_no_room_for_any_object_keeps_only_bos(tokenizer, ids):
    text = encode_pretrain_text(tokenizer, [spatial(CAT), ""], ["a", "b"], TextSettings(max_spatial_tokens=5, max_caption_tokens=8))
    assert text.spatial_lengths.tolist() == [1, 1]
    assert text.input_ids[:, 0].tolist() == [ids.bos, ids.bos] and text.input_ids[:, 1].tolist() == [ids.cls, ids.cls]
    assert not text.object_ids.any()


def test_caption_is_truncated_keeping_sep(tokenizer, ids):
    caption = "one two three four five six seven eight nine ten"
    text = encode_pretrain_text(tokenizer, [spatial(CAT)], [caption], TextSettings(max_spatial_tokens=64, max_caption_tokens=6))
    s = int(text.spatial_lengths[0])
    assert text.caption_lengths.tolist() == [6]
    assert text.input_ids[0, s:].tolist() == [ids.cls, *words(tokenizer, "one two three four"), ids.sep]


def test_without_spatial_representation(tokenizer, ids):
    settings = TextSettings(max_spatial_tokens=64, max_caption_tokens=16, spatial_representation=False)
    text = encode_pretrain_text(tokenizer, [spatial(CAT, DOG), spatial(DOG)], ["a cat and a dog", "a dog"], settings)
    assert text.spatial_lengths.tolist() == [0, 0]
    assert ids.bos not in text.input_ids.tolist()[0] + text.input_ids.tolist()[1]
    assert text.input_ids[:, 0].tolist() == [ids.cls, ids.cls]
    assert text.input_ids[0].tolist() == [ids.cls, *words(tokenizer, "a cat and a dog"), ids.sep]
    assert text.input_ids[1].tolist()[: int(text.caption_lengths[1])] == [ids.cls, *words(tokenizer, "a dog"), ids.sep]
    assert not text.object_ids.any()


def test_missing_caption_is_cls_sep(tokenizer, ids):
    text = encode_pretrain_text(tokenizer, [spatial(DOG), spatial(DOG)], [None, ""], WIDE)
    assert text.caption_lengths.tolist() == [2, 2]
    s = int(text.spatial_lengths[0])
    assert text.input_ids[:, s:].tolist() == [[ids.cls, ids.sep]] * 2


def test_mismatched_lengths_are_refused(tokenizer):
    with pytest.raises(ValueError):
        encode_pretrain_text(tokenizer, [spatial(DOG)], ["a", "b"], WIDE)


def test_concat_pads_and_select_picks_rows(tokenizer, ids):
    short = encode_pretrain_text(tokenizer, [spatial(DOG)], ["a dog"], WIDE)
    long = encode_pretrain_text(tokenizer, [spatial(CAT, DOG), spatial(PERSON)], ["a cat and a dog", "a car"], WIDE)
    assert short.input_ids.shape[1] < long.input_ids.shape[1]
    both = PretrainText.concat([short, long], ids.pad)
    width = long.input_ids.shape[1]
    assert both.input_ids.shape == both.object_ids.shape == (3, width)
    n = short.input_ids.shape[1]
    assert torch.equal(both.input_ids[0, :n], short.input_ids[0]) and (both.input_ids[0, n:] == ids.pad).all()
    assert torch.equal(both.object_ids[0, :n], short.object_ids[0]) and (both.object_ids[0, n:] == 0).all()
    assert torch.equal(both.input_ids[1:], long.input_ids) and torch.equal(both.object_ids[1:], long.object_ids)
    assert both.spatial_lengths.tolist() == short.spatial_lengths.tolist() + long.spatial_lengths.tolist()
    assert both.caption_lengths.tolist() == short.caption_lengths.tolist() + long.caption_lengths.tolist()
    # A pad id other than 0 is honoured for the ids (object ids always pad with 0).
    assert (PretrainText.concat([short, long], -7).input_ids[0, n:] == -7).all()

    picked = both.select(torch.tensor([2, 0, 2]))
    for field in ("input_ids", "spatial_lengths", "caption_lengths", "object_ids"):
        rows = getattr(both, field)
        assert torch.equal(getattr(picked, field), torch.stack([rows[2], rows[0], rows[2]])), field
