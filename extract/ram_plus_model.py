"""RAM++ (recognize-anything-plus), written for this project: a timm Swin backbone plus the tagging head.

The module and parameter names follow the upstream checkpoint ``ram_plus_swin_large_14m.pth`` so that
its ``model`` state dict loads after the renames in ``from_upstream`` (and ``to_upstream`` writes that
layout back). The forward pass is the upstream closed-set inference:

    image -> Swin tokens (mean token prepended) -> image_proj                 E (B, 1+HW, label_dim)
    normalised E[:, 0] vs the D description embeddings of every tag -> softmax(exp(reweight_scale) * cos)
    -> weighted sum of the descriptions -> ReLU(wordvec_proj)                 Q (B, tags, hidden)
    tagging head: BERT layers with cross-attention only (Q attends to all of E) -> fc -> logit per tag
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformer
from torch import nn
from transformers.models.bert.modeling_bert import BertConfig, BertIntermediate, BertOutput, BertSelfOutput

# Upstream Swin buffers; timm recomputes both as non-persistent buffers, so they are not loaded.
_SWIN_BUFFERS = ("relative_position_index", "attn_mask")
_LEGACY_HEAD = "vision_multi"  # old name of tagging_head in some upstream checkpoints


@dataclass(frozen=True)
class RamPlusArch:
    """The architecture JSON (``extract/configs/*/ram_plus.json``), typed."""

    image_size: int
    patch_size: int
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int
    mlp_ratio: float
    label_dim: int  # width of image_proj and of the description embeddings
    descriptions_per_tag: int  # 51 upstream: LLM-written descriptions per tag
    head_hidden_size: int
    head_layers: int
    head_attention_heads: int
    head_intermediate_size: int
    head_layer_norm_eps: float
    # The tiny profile's tag list, relative to extract/configs/; real checkpoints bring their own.
    vocabulary: str | None = None

    @classmethod
    def from_dict(cls, arch: Mapping[str, Any]) -> RamPlusArch:
        swin, head = _section(arch, "swin"), _section(arch, "tagging_head")
        return cls(
            image_size=int(_field(arch, "image_size")),
            patch_size=int(_field(swin, "patch_size", "swin.")),
            embed_dim=int(_field(swin, "embed_dim", "swin.")),
            depths=tuple(_field(swin, "depths", "swin.")),
            num_heads=tuple(_field(swin, "num_heads", "swin.")),
            window_size=int(_field(swin, "window_size", "swin.")),
            mlp_ratio=float(_field(swin, "mlp_ratio", "swin.")),
            label_dim=int(_field(arch, "label_dim")),
            descriptions_per_tag=int(_field(arch, "descriptions_per_tag")),
            head_hidden_size=int(_field(head, "hidden_size", "tagging_head.")),
            head_layers=int(_field(head, "num_hidden_layers", "tagging_head.")),
            head_attention_heads=int(_field(head, "num_attention_heads", "tagging_head.")),
            head_intermediate_size=int(_field(head, "intermediate_size", "tagging_head.")),
            head_layer_norm_eps=float(_field(head, "layer_norm_eps", "tagging_head.")),
            vocabulary=arch.get("vocabulary"),
        )

    def bert_config(self) -> BertConfig:
        # Dropout 0: the model is only ever run frozen.
        return BertConfig(
            hidden_size=self.head_hidden_size,
            num_hidden_layers=self.head_layers,
            num_attention_heads=self.head_attention_heads,
            intermediate_size=self.head_intermediate_size,
            hidden_act="gelu",
            layer_norm_eps=self.head_layer_norm_eps,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )


def _section(arch: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = _field(arch, name)
    if not isinstance(value, Mapping):
        raise ValueError(f"RAM++ arch: {name} must be an object")
    return value


def _field(section: Mapping[str, Any], name: str, prefix: str = "") -> Any:
    if name not in section:
        raise ValueError(f"RAM++ arch: missing field {prefix}{name}")
    return section[name]


class CrossAttention(nn.Module):
    """Multi-head attention from the tag queries to the image tokens (upstream ``crossattention.self``)."""

    def __init__(self, hidden_size: int, context_width: int, num_heads: int) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"RAM++ arch: head hidden_size {hidden_size} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        # Keys and values read the image embeddings, whose width (label_dim) differs from the head's.
        self.key = nn.Linear(context_width, hidden_size)
        self.value = nn.Linear(context_width, hidden_size)

    def forward(self, hidden: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.query(hidden)), self._heads(self.key(context)), self._heads(self.value(context))
        # softmax(q k^T / sqrt(head_dim)) v; upstream's mask is all ones, so there is none here.
        out = F.scaled_dot_product_attention(q, k, v)
        return out.transpose(1, 2).flatten(2)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)


class CrossAttentionBlock(nn.Module):
    """Attention then BERT's post-norm residual (upstream ``crossattention``: ``self`` and ``output``)."""

    def __init__(self, config: BertConfig, context_width: int) -> None:
        super().__init__()
        self.self = CrossAttention(config.hidden_size, context_width, config.num_attention_heads)
        self.output = BertSelfOutput(config)

    def forward(self, hidden: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(hidden, context), hidden)


class TaggingLayer(nn.Module):
    """A BERT layer whose self-attention upstream deletes: cross-attention, then the feed-forward."""

    def __init__(self, config: BertConfig, context_width: int) -> None:
        super().__init__()
        self.crossattention = CrossAttentionBlock(config, context_width)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, hidden: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        hidden = self.crossattention(hidden, context)
        return self.output(self.intermediate(hidden), hidden)


class TaggingEncoder(nn.Module):
    def __init__(self, config: BertConfig, context_width: int) -> None:
        super().__init__()
        self.layer = nn.ModuleList(TaggingLayer(config, context_width) for _ in range(config.num_hidden_layers))

    def forward(self, hidden: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            hidden = layer(hidden, context)
        return hidden


class TaggingHead(nn.Module):
    """Upstream's BertModel after ``del_selfattention``: no embeddings, no pooler, only ``encoder``."""

    def __init__(self, config: BertConfig, context_width: int) -> None:
        super().__init__()
        self.encoder = TaggingEncoder(config, context_width)

    def forward(self, queries: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.encoder(queries, image_embeds)


class RamPlus(nn.Module):
    """RAM++ closed-set tagger; ``forward`` gives one logit per tag."""

    def __init__(self, arch: RamPlusArch, num_tags: int) -> None:
        super().__init__()
        self.arch = arch
        self.num_tags = num_tags
        self.visual_encoder = SwinTransformer(
            img_size=arch.image_size,
            patch_size=arch.patch_size,
            embed_dim=arch.embed_dim,
            depths=arch.depths,
            num_heads=arch.num_heads,
            window_size=arch.window_size,
            mlp_ratio=arch.mlp_ratio,
            num_classes=0,
            global_pool="",
            drop_path_rate=0.0,
        )
        config = arch.bert_config()
        self.image_proj = nn.Linear(self.visual_encoder.num_features, arch.label_dim)
        # Flat and tag-major, as upstream: row t * descriptions_per_tag + d.
        self.label_embed = nn.Parameter(torch.zeros(num_tags * arch.descriptions_per_tag, arch.label_dim))
        # Upstream only has a projection when the widths differ.
        self.wordvec_proj: nn.Module = (
            nn.Linear(arch.label_dim, config.hidden_size) if config.hidden_size != arch.label_dim else nn.Identity()
        )
        self.tagging_head = TaggingHead(config, arch.label_dim)
        self.fc = nn.Linear(config.hidden_size, 1)
        self.reweight_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def image_embeds(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, 1 + HW, label_dim); token 0 is the projected mean of the Swin tokens."""
        tokens = self.visual_encoder.forward_features(pixels).flatten(1, 2)  # timm returns NHWC after its norm
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        return self.image_proj(tokens)

    def tag_queries(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """Each tag's description embeddings, weighted by their similarity to the image -> (B, tags, hidden)."""
        image = F.normalize(image_embeds[:, 0], dim=-1)
        descriptions = self.label_embed.view(self.num_tags, self.arch.descriptions_per_tag, -1)
        logits = self.reweight_scale.exp() * torch.einsum("bc,tdc->btd", image, descriptions)
        weights = logits.softmax(dim=-1)  # over the descriptions of one tag
        label_embed = torch.einsum("btd,tdc->btc", weights, descriptions)
        return F.relu(self.wordvec_proj(label_embed))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels -> (B, tags) logits."""
        image_embeds = self.image_embeds(pixels)
        hidden = self.tagging_head(self.tag_queries(image_embeds), image_embeds)
        return self.fc(hidden).squeeze(-1)


def from_upstream(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Upstream checkpoint keys -> this module's keys.

    Drops the Swin buffers, renames the legacy ``vision_multi`` head, and moves each PatchMerging from
    the end of stage i (upstream) to the start of stage i + 1 (timm).
    """
    mapped = {}
    for key, value in state.items():
        if key.endswith(_SWIN_BUFFERS):
            continue
        key = _shift_downsample(key.replace(_LEGACY_HEAD, "tagging_head"), +1)
        mapped[key] = value
    return mapped


def to_upstream(model: RamPlus) -> dict[str, torch.Tensor]:
    """This module's state dict in the upstream layout, Swin buffers included as upstream saves them."""
    state = {_shift_downsample(key, -1): value for key, value in model.state_dict().items()}
    for stage, layer in enumerate(model.visual_encoder.layers):
        for index, block in enumerate(layer.blocks):
            prefix = f"visual_encoder.layers.{stage}.blocks.{index}."
            state[prefix + "attn.relative_position_index"] = block.attn.relative_position_index.clone()
            if block.attn_mask is not None:  # shifted blocks only; upstream saves no None buffers
                state[prefix + "attn_mask"] = block.attn_mask.clone()
    return state


def _shift_downsample(key: str, offset: int) -> str:
    return re.sub(
        r"^visual_encoder\.layers\.(\d+)\.downsample\.",
        lambda m: f"visual_encoder.layers.{int(m[1]) + offset}.downsample.",
        key,
    )


def load_upstream_state(model: RamPlus, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Load an upstream ``model`` state dict; returns the unexpected keys, raises if a parameter is missing."""
    result = model.load_state_dict(from_upstream(state), strict=False)
    if result.missing_keys:
        raise ValueError(f"RAM++ checkpoint lacks {len(result.missing_keys)} parameters: {', '.join(result.missing_keys)}")
    return list(result.unexpected_keys)
