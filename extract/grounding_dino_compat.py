"""Two small patches that let groundingdino-py 0.4.0 build under transformers 5 and batch correctly.

1. BERT wrapper. Upstream's ``BertModelWarper`` (models/GroundingDINO/bertwarper.py) copies the
   BertModel methods ``get_extended_attention_mask``, ``invert_attention_mask`` and
   ``get_head_mask`` in its constructor; transformers 5 removed them (masks come from
   ``masking_utils``) and its ``BertEncoder`` takes no head mask, so the model fails to build.
   ``CompatBertWarper`` holds the same three submodules (``embeddings``, ``encoder``, ``pooler``),
   so the checkpoint's ``bert.*`` keys are unchanged, and computes what the wrapper computed for
   Grounding-DINO's inputs: the (B, T, T) sub-sentence mask becomes the additive (B, 1, T, T) mask
   of transformers 4's ``get_extended_attention_mask``. Its keyword calls are valid in 4.57 too.
   ``patched`` swaps the name in upstream's module only while a model is built, so neither
   transformers nor other users of groundingdino see a change.
2. Text-enhancer masks (``per_image_text_masks``): forward pre-hooks on the model's own layers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import torch
from torch import nn
from transformers import BertModel
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions


class CompatBertWarper(nn.Module):
    """Upstream's BertModelWarper for an encoder-only BERT, without the removed BertModel methods."""

    def __init__(self, bert_model: BertModel) -> None:
        super().__init__()
        self.config = bert_model.config
        self.embeddings = bert_model.embeddings
        self.encoder = bert_model.encoder
        self.pooler = bert_model.pooler

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> BaseModelOutputWithPoolingAndCrossAttentions:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        embeddings = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids)
        encoded = self.encoder(embeddings, attention_mask=extended_attention_mask(attention_mask, embeddings.dtype))
        sequence = encoded[0]
        pooled = self.pooler(sequence) if self.pooler is not None else None
        return BaseModelOutputWithPoolingAndCrossAttentions(last_hidden_state=sequence, pooler_output=pooled)


def extended_attention_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """transformers 4's encoder rule: 1 keeps, 0 masks; (B, T) or (B, T, T) -> additive (B, 1, T|1, T)."""
    if mask.dim() == 3:
        extended = mask[:, None, :, :]
    elif mask.dim() == 2:
        extended = mask[:, None, None, :]
    else:
        raise ValueError(f"attention mask must be (B, T) or (B, T, T), got shape {tuple(mask.shape)}")
    return (1.0 - extended.to(dtype)) * torch.finfo(dtype).min


@contextmanager
def patched(module: ModuleType, name: str, value: Any) -> Iterator[None]:
    """``module.name = value`` inside the block, restored after it."""
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


def per_image_text_masks(model: nn.Module) -> None:
    """Give each image its own text mask in the text enhancer (upstream mixes them up for batches > 1).

    Upstream's text-enhancer layer expands the (B, T, T) sub-sentence mask with
    ``repeat(nhead, 1, 1)``, but ``nn.MultiheadAttention`` reads a 3-D mask as batch-major
    (B * nhead, T, T), so in a batch some heads of one image use another image's mask
    (IDEA-Research/GroundingDINO issue #294). The hook hands the layer the batch-major expansion,
    which its own check then passes through unchanged; batch size 1 is unaffected.
    """
    for layer in model.transformer.encoder.text_layers:
        layer.register_forward_pre_hook(_batch_major_mask, with_kwargs=True)


def _batch_major_mask(layer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    mask, batch = kwargs["src_mask"], kwargs["src"].shape[1]  # src is (T, B, C)
    if mask.dim() == 3 and mask.shape[0] == batch:
        kwargs["src_mask"] = mask.repeat_interleave(layer.nhead, dim=0)
    return args, kwargs
