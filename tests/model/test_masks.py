"""The four objectives' attention masks, cell by cell, against matrices written out by hand.

Tiny layout: 2 visual queries (V), 2 grounding queries (G), text length 7, a batch of two:
- sample 0: spatial S = 3 ([BOS] s s), caption C = 3 ([CLS] c [SEP]), 1 padding position (P);
- sample 1: spatial S = 2, caption C = 2, 3 padding positions.
Rows attend to columns; "1" = may attend. Spaces only group the columns by segment.
"""

from __future__ import annotations

import pytest
import torch

from lyrics.model.masks import PAD, MaskLayout, icg_mask, itc_mask, itm_mask, msp_mask, self_attend_empty_rows

MASKS = {"itc": itc_mask, "itm": itm_mask, "icg": icg_mask, "msp": msp_mask}

# fmt: off
# ---- with grounding queries: columns V V | G G | S.. | C.. | P..
# sample 0: columns  VV GG SSS CCC P        sample 1: columns  VV GG SS CC PPP
EXPECTED_GROUNDING = {
    # Queries see queries, text (S and C) sees text, nothing across.
    "itc": (
        ["11 11 000 000 0",  # V
         "11 11 000 000 0",  # V
         "11 11 000 000 0",  # G
         "11 11 000 000 0",  # G
         "00 00 111 111 0",  # S [BOS]
         "00 00 111 111 0",  # S
         "00 00 111 111 0",  # S
         "00 00 111 111 0",  # C [CLS]
         "00 00 111 111 0",  # C
         "00 00 111 111 0",  # C [SEP]
         "00 00 000 000 1"],  # P: itself only
        ["11 11 00 00 000",
         "11 11 00 00 000",
         "11 11 00 00 000",
         "11 11 00 00 000",
         "00 00 11 11 000",
         "00 00 11 11 000",
         "00 00 11 11 000",
         "00 00 11 11 000",
         "00 00 00 00 100",
         "00 00 00 00 010",
         "00 00 00 00 001"],
    ),
    # Regions {V, C} and {G, S}; V and G apart, S and C apart.
    "itm": (
        ["11 00 000 111 0",  # V
         "11 00 000 111 0",  # V
         "00 11 111 000 0",  # G
         "00 11 111 000 0",  # G
         "00 11 111 000 0",  # S
         "00 11 111 000 0",  # S
         "00 11 111 000 0",  # S
         "11 00 000 111 0",  # C
         "11 00 000 111 0",  # C
         "11 00 000 111 0",  # C
         "00 00 000 000 1"],  # P
        ["11 00 00 11 000",
         "11 00 00 11 000",
         "00 11 11 00 000",
         "00 11 11 00 000",
         "00 11 11 00 000",
         "00 11 11 00 000",
         "11 00 00 11 000",
         "11 00 00 11 000",
         "00 00 00 00 100",
         "00 00 00 00 010",
         "00 00 00 00 001"],
    ),
    # Queries see queries only; C sees all queries and C causally; S is seen by nobody, sees itself.
    "icg": (
        ["11 11 000 000 0",  # V
         "11 11 000 000 0",  # V
         "11 11 000 000 0",  # G
         "11 11 000 000 0",  # G
         "00 00 100 000 0",  # S: itself only
         "00 00 010 000 0",  # S
         "00 00 001 000 0",  # S
         "11 11 000 100 0",  # C [DEC]
         "11 11 000 110 0",  # C
         "11 11 000 111 0",  # C [SEP]
         "00 00 000 000 1"],  # P
        ["11 11 00 00 000",
         "11 11 00 00 000",
         "11 11 00 00 000",
         "11 11 00 00 000",
         "00 00 10 00 000",
         "00 00 01 00 000",
         "11 11 00 10 000",
         "11 11 00 11 000",
         "00 00 00 00 100",
         "00 00 00 00 010",
         "00 00 00 00 001"],
    ),
    # Queries and S all see each other; C is seen by nobody, sees itself.
    "msp": (
        ["11 11 111 000 0",  # V
         "11 11 111 000 0",  # V
         "11 11 111 000 0",  # G
         "11 11 111 000 0",  # G
         "11 11 111 000 0",  # S [MLM]
         "11 11 111 000 0",  # S
         "11 11 111 000 0",  # S
         "00 00 000 100 0",  # C: itself only
         "00 00 000 010 0",  # C
         "00 00 000 001 0",  # C
         "00 00 000 000 1"],  # P
        ["11 11 11 00 000",
         "11 11 11 00 000",
         "11 11 11 00 000",
         "11 11 11 00 000",
         "11 11 11 00 000",
         "11 11 11 00 000",
         "00 00 00 10 000",
         "00 00 00 01 000",
         "00 00 00 00 100",
         "00 00 00 00 010",
         "00 00 00 00 001"],
    ),
}

# ---- without grounding queries (the ablation): V takes G's role. columns V V | S.. | C.. | P..
EXPECTED_NO_GROUNDING = {
    "itc": (
        ["11 000 000 0",  # V
         "11 000 000 0",  # V
         "00 111 111 0",  # S
         "00 111 111 0",
         "00 111 111 0",
         "00 111 111 0",  # C
         "00 111 111 0",
         "00 111 111 0",
         "00 000 000 1"],  # P
        ["11 00 00 000",
         "11 00 00 000",
         "00 11 11 000",
         "00 11 11 000",
         "00 11 11 000",
         "00 11 11 000",
         "00 00 00 100",
         "00 00 00 010",
         "00 00 00 001"],
    ),
    # V <-> C and V <-> S; S and C still apart.
    "itm": (
        ["11 111 111 0",  # V
         "11 111 111 0",  # V
         "11 111 000 0",  # S
         "11 111 000 0",
         "11 111 000 0",
         "11 000 111 0",  # C
         "11 000 111 0",
         "11 000 111 0",
         "00 000 000 1"],  # P
        ["11 11 11 000",
         "11 11 11 000",
         "11 11 00 000",
         "11 11 00 000",
         "11 00 11 000",
         "11 00 11 000",
         "00 00 00 100",
         "00 00 00 010",
         "00 00 00 001"],
    ),
    "icg": (
        ["11 000 000 0",  # V
         "11 000 000 0",  # V
         "00 100 000 0",  # S: itself only
         "00 010 000 0",
         "00 001 000 0",
         "11 000 100 0",  # C causal
         "11 000 110 0",
         "11 000 111 0",
         "00 000 000 1"],  # P
        ["11 00 00 000",
         "11 00 00 000",
         "00 10 00 000",
         "00 01 00 000",
         "11 00 10 000",
         "11 00 11 000",
         "00 00 00 100",
         "00 00 00 010",
         "00 00 00 001"],
    ),
    "msp": (
        ["11 111 000 0",  # V
         "11 111 000 0",  # V
         "11 111 000 0",  # S
         "11 111 000 0",
         "11 111 000 0",
         "00 000 100 0",  # C: itself only
         "00 000 010 0",
         "00 000 001 0",
         "00 000 000 1"],  # P
        ["11 11 00 000",
         "11 11 00 000",
         "11 11 00 000",
         "11 11 00 000",
         "00 00 10 000",
         "00 00 01 000",
         "00 00 00 100",
         "00 00 00 010",
         "00 00 00 001"],
    ),
}
# fmt: on


def layout(num_grounding: int) -> MaskLayout:
    return MaskLayout(num_visual=2, num_grounding=num_grounding, spatial_lengths=[3, 2], caption_lengths=[3, 2], text_length=7)


def as_tensor(rows: list[str]) -> torch.Tensor:
    return torch.tensor([[c == "1" for c in row.replace(" ", "")] for row in rows])


def expected(name: str, num_grounding: int) -> torch.Tensor:
    table = EXPECTED_GROUNDING if num_grounding else EXPECTED_NO_GROUNDING
    return torch.stack([as_tensor(rows) for rows in table[name]])


def mismatches(got: torch.Tensor, want: torch.Tensor) -> list[tuple[int, int, int]]:
    return [tuple(i) for i in (got != want).nonzero().tolist()]


@pytest.mark.parametrize("num_grounding", [2, 0])
@pytest.mark.parametrize("name", MASKS)
def test_mask_cell_by_cell(name: str, num_grounding: int) -> None:
    got = MASKS[name](layout(num_grounding))
    want = expected(name, num_grounding)
    assert got.dtype == torch.bool and got.shape == want.shape
    assert mismatches(got, want) == [], "(sample, row, column) cells that differ"


@pytest.mark.parametrize("num_grounding", [2, 0])
@pytest.mark.parametrize("name", MASKS)
def test_padding_never_visible_and_no_empty_row(name: str, num_grounding: int) -> None:
    mask = MASKS[name](layout(num_grounding))
    pad = layout(num_grounding).segments() == PAD
    for b in range(2):
        real_rows, pad_cols = ~pad[b], pad[b]
        assert not mask[b][real_rows][:, pad_cols].any()
        # A padding row sees exactly itself.
        assert torch.equal(mask[b][pad[b]], torch.eye(mask.shape[-1], dtype=torch.bool)[pad[b]])
    assert mask.any(dim=-1).all()


def test_icg_is_causal_over_the_caption_and_blind_to_spatial_text() -> None:
    mask = icg_mask(layout(2))
    q, s, c = 4, 3, 3  # sample 0: caption at 7..9
    caption = mask[0, q + s : q + s + c, q + s : q + s + c]
    assert torch.equal(caption, torch.ones(c, c, dtype=torch.bool).tril())
    assert mask[0, q + s :, :q][: c].all()  # every caption token sees every query
    assert not mask[0, :q, q:].any()  # queries never see text
    spatial_cols = mask[0, :, q : q + s]
    assert torch.equal(spatial_cols, torch.eye(mask.shape[-1], dtype=torch.bool)[:, q : q + s])  # S: only itself


def test_msp_is_blind_to_the_caption() -> None:
    mask = msp_mask(layout(2))
    q, s, c = 4, 3, 3
    caption_cols = mask[0, :, q + s : q + s + c]
    assert torch.equal(caption_cols, torch.eye(mask.shape[-1], dtype=torch.bool)[:, q + s : q + s + c])
    assert mask[0, : q + s, : q + s].all()


def test_self_attend_empty_rows_only_touches_empty_rows() -> None:
    mask = as_tensor(["011", "000", "100"])[None]
    assert torch.equal(self_attend_empty_rows(mask), as_tensor(["011", "010", "100"])[None])


@pytest.mark.parametrize(
    ("spatial", "caption", "text_length"),
    [([0, 2], [3, 2], 7), ([3, 2], [0, 2], 7), ([4, 2], [4, 2], 7), ([3], [3, 2], 7)],
)
def test_layout_rejects_inconsistent_lengths(spatial: list[int], caption: list[int], text_length: int) -> None:
    with pytest.raises(ValueError):
        MaskLayout(num_visual=2, num_grounding=2, spatial_lengths=spatial, caption_lengths=caption, text_length=text_length)


# ---- without spatial representation (the Table 4 ablation): every spatial length is 0, and C takes
# S's role. Same two samples without their spatial text, text length 4:
# sample 0: C = 3 ([CLS] c [SEP]), 1 padding position; sample 1: C = 2, 2 padding positions.
# MSP is not run without spatial text (nothing to predict), so only ITC, ITM and ICG are pinned.
# fmt: off
EXPECTED_NO_SPATIAL = {
    # columns VV GG CCC P (sample 0), VV GG CC PP (sample 1)
    2: {
        # Unchanged: queries see queries, the caption sees the caption.
        "itc": (
            ["11 11 000 0",  # V
             "11 11 000 0",  # V
             "11 11 000 0",  # G
             "11 11 000 0",  # G
             "00 00 111 0",  # C [CLS]
             "00 00 111 0",  # C
             "00 00 111 0",  # C [SEP]
             "00 00 000 1"],  # P
            ["11 11 00 00",
             "11 11 00 00",
             "11 11 00 00",
             "11 11 00 00",
             "00 00 11 00",
             "00 00 11 00",
             "00 00 00 10",
             "00 00 00 01"],
        ),
        # Regions {V, C} and {G, C}: G sees C and C sees G; V and G still apart.
        "itm": (
            ["11 00 111 0",  # V
             "11 00 111 0",  # V
             "00 11 111 0",  # G
             "00 11 111 0",  # G
             "11 11 111 0",  # C
             "11 11 111 0",  # C
             "11 11 111 0",  # C
             "00 00 000 1"],  # P
            ["11 00 11 00",
             "11 00 11 00",
             "00 11 11 00",
             "00 11 11 00",
             "11 11 11 00",
             "11 11 11 00",
             "00 00 00 10",
             "00 00 00 01"],
        ),
        # Unchanged: C sees every query and C causally; queries see queries only.
        "icg": (
            ["11 11 000 0",  # V
             "11 11 000 0",  # V
             "11 11 000 0",  # G
             "11 11 000 0",  # G
             "11 11 100 0",  # C [DEC]
             "11 11 110 0",  # C
             "11 11 111 0",  # C [SEP]
             "00 00 000 1"],  # P
            ["11 11 00 00",
             "11 11 00 00",
             "11 11 00 00",
             "11 11 00 00",
             "11 11 10 00",
             "11 11 11 00",
             "00 00 00 10",
             "00 00 00 01"],
        ),
    },
    # Neither grounding queries nor spatial text: columns VV CCC P / VV CC PP.
    0: {
        "itc": (
            ["11 000 0",
             "11 000 0",
             "00 111 0",
             "00 111 0",
             "00 111 0",
             "00 000 1"],
            ["11 00 00",
             "11 00 00",
             "00 11 00",
             "00 11 00",
             "00 00 10",
             "00 00 01"],
        ),
        # One region {V, C}.
        "itm": (
            ["11 111 0",
             "11 111 0",
             "11 111 0",
             "11 111 0",
             "11 111 0",
             "00 000 1"],
            ["11 11 00",
             "11 11 00",
             "11 11 00",
             "11 11 00",
             "00 00 10",
             "00 00 01"],
        ),
        "icg": (
            ["11 000 0",
             "11 000 0",
             "11 100 0",
             "11 110 0",
             "11 111 0",
             "00 000 1"],
            ["11 00 00",
             "11 00 00",
             "11 10 00",
             "11 11 00",
             "00 00 10",
             "00 00 01"],
        ),
    },
}
# fmt: on


def no_spatial_layout(num_grounding: int) -> MaskLayout:
    return MaskLayout(num_visual=2, num_grounding=num_grounding, spatial_lengths=[0, 0], caption_lengths=[3, 2], text_length=4)


def test_no_spatial_layout_has_no_spatial_segment() -> None:
    from lyrics.model.masks import C, G, S, V

    layout = no_spatial_layout(2)
    assert layout.has_spatial is False and MaskLayout(2, 2, [3, 2], [3, 2], 7).has_spatial is True
    assert layout.segments().tolist() == [[V, V, G, G, C, C, C, PAD], [V, V, G, G, C, C, PAD, PAD]]
    assert not (layout.segments() == S).any()


@pytest.mark.parametrize("num_grounding", [2, 0])
@pytest.mark.parametrize("name", ["itc", "itm", "icg"])
def test_no_spatial_mask_cell_by_cell(name: str, num_grounding: int) -> None:
    got = MASKS[name](no_spatial_layout(num_grounding))
    want = torch.stack([as_tensor(rows) for rows in EXPECTED_NO_SPATIAL[num_grounding][name]])
    assert got.dtype == torch.bool and got.shape == want.shape
    assert mismatches(got, want) == [], "(sample, row, column) cells that differ"


@pytest.mark.parametrize("num_grounding", [2, 0])
@pytest.mark.parametrize("name", MASKS)
def test_no_spatial_padding_never_visible_and_no_empty_row(name: str, num_grounding: int) -> None:
    layout = no_spatial_layout(num_grounding)
    mask = MASKS[name](layout)
    pad = layout.segments() == PAD
    for b in range(2):
        assert not mask[b][~pad[b]][:, pad[b]].any()
        assert torch.equal(mask[b][pad[b]], torch.eye(mask.shape[-1], dtype=torch.bool)[pad[b]])
    assert mask.any(dim=-1).all()


def test_no_spatial_itm_keeps_visual_and_grounding_queries_apart() -> None:
    """The caption joins both regions, but a query still never sees the other kind of query."""
    mask = itm_mask(no_spatial_layout(2))
    assert not mask[:, :2, 2:4].any() and not mask[:, 2:4, :2].any()
    assert mask[0, 2:4, 4:7].all() and mask[0, 4:7, 2:4].all()  # G <-> C
    assert mask[0, :2, 4:7].all() and mask[0, 4:7, :2].all()  # V <-> C
