"""Self-attention masks of the four pretraining objectives (SPEC section 4, paper section 3.2 / Figure 3).

The MQ-Former runs one self-attention over ``[V; G; S; C; padding]``:

- V: the visual queries, G: the grounding queries (absent when ``num_grounding == 0``);
- S: the spatial segment, ``[BOS]`` (``[MLM]`` in MSP) + spatial text tokens;
- C: the caption segment, ``[CLS]`` (``[DEC]`` in ICG) + caption tokens + ``[SEP]``;
- padding up to the batch's text length.

Every mask is boolean (B, L, L), True = the row may attend to the column, the layout
``MQFormer.forward`` takes. Each objective is a table "which segment sees which"; one builder turns
a table into a mask. Common to all objectives:

- padding columns are never visible; a row left with no visible column (padding rows, and the
  blinded segment of ICG and MSP) attends to itself only, so that no softmax row is all-masked.
  Those rows' outputs feed no loss and no other row reads them.
- queries see all queries (V <-> G) except in ITM, where the paper's regions keep them apart.

Without grounding queries (the ablation), the visual queries take over the grounding queries' role:
each table's G row and G column are merged into V's. Per objective this means: ITC and ICG are
unchanged (queries were already one block); ITM lets V see and be seen by both S and C (S and C
still do not see each other); MSP is unchanged (V <-> S).

Without spatial representation (the other ablation: every spatial length is 0), the caption takes
over S's role the same way: ITM lets G see and be seen by C too; ITC and ICG are unchanged; MSP has
nothing to predict and is not run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

# Segment ids, the indices of the visibility tables.
V, G, S, C, PAD = range(5)
_NUM_SEGMENTS = 5


@dataclass(frozen=True)
class MaskLayout:
    """Where the segments lie in ``[V; G; S; C; padding]`` for each sample of a batch.

    ``spatial_lengths`` and ``caption_lengths`` (B,) count S and C per sample, special tokens
    included; ``text_length`` is the padded text length (the input_ids' width). Spatial lengths are
    all >= 1 (S holds at least [BOS]) or all 0 (the "without spatial representation" ablation);
    caption lengths are all >= 1 in the objectives and all 0 in stage 2, where the MQ-Former reads
    the spatial text alone (``extraction_mask``).
    """

    num_visual: int
    num_grounding: int
    spatial_lengths: torch.Tensor
    caption_lengths: torch.Tensor
    text_length: int

    def __post_init__(self) -> None:
        # Lists are accepted for convenience; the masks are built on the lengths' device.
        spatial = torch.as_tensor(self.spatial_lengths, dtype=torch.long)
        caption = torch.as_tensor(self.caption_lengths, dtype=torch.long, device=spatial.device)
        object.__setattr__(self, "spatial_lengths", spatial)
        object.__setattr__(self, "caption_lengths", caption)
        if self.num_visual < 1 or self.num_grounding < 0:
            raise ValueError(f"need num_visual >= 1 and num_grounding >= 0, got {self.num_visual}, {self.num_grounding}")
        if spatial.dim() != 1 or spatial.shape != caption.shape:
            raise ValueError(f"spatial_lengths {tuple(spatial.shape)} and caption_lengths {tuple(caption.shape)} must be (B,)")
        # S holds at least [BOS] and C at least [CLS]: their outputs are H_sp and H_ic.
        def present_or_absent(lengths: torch.Tensor) -> bool:
            return bool((lengths >= 1).all() or (lengths == 0).all())

        if not (present_or_absent(spatial) and present_or_absent(caption)) or (spatial + caption > self.text_length).any():
            raise ValueError(
                f"each sample needs spatial + caption <= text_length ({self.text_length}), and each segment 1 or more "
                f"tokens (or 0 for every sample); got spatial {spatial.tolist()}, caption {caption.tolist()}"
            )

    @property
    def has_spatial(self) -> bool:
        return bool(self.spatial_lengths.any())

    @property
    def num_queries(self) -> int:
        return self.num_visual + self.num_grounding

    @property
    def length(self) -> int:
        return self.num_queries + self.text_length

    def segments(self) -> torch.Tensor:
        """(B, L) segment id (V, G, S, C or PAD) of every position."""
        device = self.spatial_lengths.device
        text_pos = torch.arange(self.text_length, device=device)[None]
        spatial_end = self.spatial_lengths[:, None]
        caption_end = spatial_end + self.caption_lengths[:, None]
        text = torch.full((len(self.spatial_lengths), self.text_length), PAD, dtype=torch.long, device=device)
        text = text.masked_fill(text_pos < caption_end, C).masked_fill(text_pos < spatial_end, S)
        queries = torch.tensor([V] * self.num_visual + [G] * self.num_grounding, dtype=torch.long, device=device)
        return torch.cat([queries.expand(len(text), -1), text], dim=1)


def self_attend_empty_rows(mask: torch.Tensor) -> torch.Tensor:
    """(B, L, L) mask whose rows with no visible column are made to see their own position only."""
    empty = ~mask.any(dim=-1)  # (B, L)
    eye = torch.eye(mask.shape[-1], dtype=torch.bool, device=mask.device)
    return mask | (empty[..., None] & eye)


def _table(visible: dict[int, Sequence[int]], layout: MaskLayout) -> torch.Tensor:
    """(5, 5) bool: row segment may see column segment; PAD is absent from every entry."""
    table = torch.zeros(_NUM_SEGMENTS, _NUM_SEGMENTS, dtype=torch.bool)
    for row, columns in visible.items():
        table[row, list(columns)] = True
    # An absent segment's role goes to its stand-in (both what it sees and who sees it).
    for absent, stand_in, gone in ((G, V, layout.num_grounding == 0), (S, C, not layout.has_spatial)):
        if gone:
            table[stand_in] |= table[absent]
            table[:, stand_in] |= table[:, absent]
    return table


def _build(layout: MaskLayout, visible: dict[int, Sequence[int]], causal_caption: bool = False) -> torch.Tensor:
    segments = layout.segments()
    table = _table(visible, layout).to(segments.device)
    mask = table[segments[:, :, None], segments[:, None, :]]
    if causal_caption:
        position = torch.arange(layout.length, device=segments.device)
        later = position[None, :] > position[:, None]  # column after row
        in_caption = segments == C
        mask = mask & ~(in_caption[:, :, None] & in_caption[:, None, :] & later)
    return self_attend_empty_rows(mask)


# Queries and the spatial text see each other (MSP, and stage 2's extraction); the caption is blind.
_QUERIES_AND_SPATIAL = {V: (V, G, S), G: (V, G, S), S: (V, G, S)}


def itc_mask(layout: MaskLayout) -> torch.Tensor:
    """ITC, unimodal: queries see queries, text sees text, nothing across.

    S and C see each other: the paper's text transformer "takes the concatenated spatial representation
    and image caption as input text" and ITC only asks to "mutually mask the text and image
    transformers", as BLIP-2's text-only pass is bidirectional over the whole text.
    """
    return _build(layout, {V: (V, G), G: (V, G), S: (S, C), C: (S, C)})


def itm_mask(layout: MaskLayout) -> torch.Tensor:
    """ITM, regionalized bidirectional: two regions, {V, C} and {G, S}.

    The paper: "mutual interaction between visual queries and image caption, as well as between
    grounding queries and spatial representation, while remaining tokens are prevented from attaching
    to each other". V and G are among the "remaining" pairs, so they do not see each other: otherwise S
    would reach the (H_v, H_ic) head through G (and C the (H_g, H_sp) head through V) from the second
    layer on. (The alternative reading, queries always seeing each other, would add V <-> G only.)
    """
    return _build(layout, {V: (V, C), C: (V, C), G: (G, S), S: (G, S)})


def icg_mask(layout: MaskLayout) -> torch.Tensor:
    """ICG, UniLM-style: queries see all queries; C sees all queries and C causally; S is blinded.

    "a cross-modal causal self-attention mask to control query-caption interactions, with spatial
    information being masked accordingly": nobody sees S, and S rows see only themselves.
    """
    return _build(layout, {V: (V, G), G: (V, G), C: (V, G, C)}, causal_caption=True)


def msp_mask(layout: MaskLayout) -> torch.Tensor:
    """MSP, bidirectional over queries and S; C is blinded (nobody sees it, its rows see only themselves).

    "intra-modal tokens are mutually visible and spatial representation can associate with queries,
    with the exception that image caption are entirely masked".
    """
    return _build(layout, _QUERIES_AND_SPATIAL)


def extraction_mask(layout: MaskLayout) -> torch.Tensor:
    """Stage 2's semantic-aware extraction (SPEC section 5): the queries read the spatial text and it reads them.

    MSP's table without the masking: queries and S see each other; there is no caption (lengths 0).
    """
    return _build(layout, _QUERIES_AND_SPATIAL)
