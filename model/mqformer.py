"""The MQ-Former (SPEC section 4, paper section 3.1): a BLIP-2 Q-Former with visual and grounding queries.

One BERT encoder runs over ``[visual queries; grounding queries; text]``. Every layer has one
self-attention over the whole sequence, masked by the caller's (B, L, L) mask (the objectives
decide who sees whom). Every ``cross_attention_freq`` layers, from layer 0, the visual queries
cross-attend to the CLIP ``vit_tokens`` and the grounding queries to the refiner tokens
(Grounding-DINO + SAM-HQ, with a key-padding mask) through two independent cross-attentions.
All queries share one feed-forward network (``intermediate_query``/``output_query``); the text
has its own (``intermediate``/``output``).

Parameter names follow the LAVIS Q-Former (``embeddings.*``, ``encoder.layer.N.attention.self.*``,
``crossattention.*``, ``cls.predictions.*``) so that a BLIP-2 checkpoint maps onto it by prefix;
the additions are ``crossattention_grounding``, ``visual_query_tokens``, ``grounding_query_tokens``
and ``ln_vision`` (BLIP-2's trainable LayerNorm on the ViT tokens, which its Q-Former was trained
behind).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertAttention, BertIntermediate, BertOnlyMLMHead, BertOutput

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class MQFormerConfig:
    num_hidden_layers: int = 12
    hidden_size: int = 768
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    # BLIP-2's GELU, which the initial weights were trained with (the paper's text says ReLU).
    hidden_act: str = "gelu"
    num_visual_queries: int = 32
    num_grounding_queries: int = 32
    # False: the "w/o grounding queries" ablation; no grounding queries or cross-attention exist.
    use_grounding: bool = True
    vision_width: int = 1024  # CLIP ViT-L/14 hidden states
    # ln_vision's eps: LAVIS uses torch's default 1e-5 (HF's converted BLIP-2 uses its vision config's 1e-6).
    vision_layer_norm_eps: float = 1e-5
    refiner_width: int = 260  # Grounding-DINO / SAM-HQ tokens: 256 features + 4 box coordinates
    cross_attention_freq: int = 2
    # Rows of the word embeddings before the tokenizer's additions: BLIP-2's 30523 (BERT + [DEC]).
    vocab_size: int = 30523
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    initializer_range: float = 0.02
    pad_token_id: int = 0
    attn_implementation: str = "sdpa"  # or "eager"; any transformers attention interface
    # The folder holding vocab.txt: "package:<module>/<folder>" or a path relative to the checkpoint's folder.
    vocab: str = "bert-base-uncased"

    @property
    def num_queries(self) -> int:
        return self.num_visual_queries + (self.num_grounding_queries if self.use_grounding else 0)

    @classmethod
    def from_json(cls, path: str | Path) -> MQFormerConfig:
        values = json.loads(Path(path).read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{path}: unknown MQ-Former config key(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    @classmethod
    def profile(cls, name: str) -> MQFormerConfig:
        """``model/configs/<name>.json`` (``tiny``, ``paper``)."""
        return cls.from_json(CONFIG_DIR / f"{name}.json")

    def bert_config(self) -> BertConfig:
        """The BertConfig that transformers' BERT blocks read."""
        return BertConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            hidden_act=self.hidden_act,
            hidden_dropout_prob=self.hidden_dropout_prob,
            attention_probs_dropout_prob=self.attention_probs_dropout_prob,
            max_position_embeddings=self.max_position_embeddings,
            layer_norm_eps=self.layer_norm_eps,
            initializer_range=self.initializer_range,
            pad_token_id=self.pad_token_id,
            attn_implementation=self.attn_implementation,
        )


@dataclass
class MQFormerOutput:
    query_states: torch.Tensor | None  # (B, num_queries, H): visual then grounding; None in a text-only call
    text_states: torch.Tensor | None  # (B, Lt, H); None in a queries-only call


class MQFormerEmbeddings(nn.Module):
    """LN(cat[queries, word + position]) then dropout, as LAVIS: the queries get no position embedding."""

    def __init__(self, config: MQFormerConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.register_buffer("position_ids", torch.arange(config.max_position_embeddings)[None], persistent=False)

    def forward(self, input_ids: torch.Tensor | None, queries: torch.Tensor | None) -> torch.Tensor:
        parts = [] if queries is None else [queries]
        if input_ids is not None:
            if input_ids.shape[1] > self.position_ids.shape[1]:
                raise ValueError(f"{input_ids.shape[1]} text tokens, more than the {self.position_ids.shape[1]} positions")
            positions = self.position_ids[:, : input_ids.shape[1]]
            parts.append(self.word_embeddings(input_ids) + self.position_embeddings(positions))
        return self.dropout(self.LayerNorm(torch.cat(parts, dim=1)))


def cross_attention(bert: BertConfig, kv_width: int) -> BertAttention:
    """BERT cross-attention whose keys and values read ``kv_width``-wide tokens (BertCrossAttention assumes hidden_size)."""
    attention = BertAttention(bert, is_cross_attention=True)
    attention.self.key = nn.Linear(kv_width, attention.self.all_head_size)
    attention.self.value = nn.Linear(kv_width, attention.self.all_head_size)
    return attention


class MQFormerLayer(nn.Module):
    def __init__(self, config: MQFormerConfig, bert: BertConfig, index: int):
        super().__init__()
        self.attention = BertAttention(bert, layer_idx=index)
        self.has_cross_attention = index % config.cross_attention_freq == 0
        if self.has_cross_attention:
            self.crossattention = cross_attention(bert, config.vision_width)
            if config.use_grounding:
                self.crossattention_grounding = cross_attention(bert, config.refiner_width)
        self.intermediate_query = BertIntermediate(bert)
        self.output_query = BertOutput(bert)
        self.intermediate = BertIntermediate(bert)
        self.output = BertOutput(bert)

    def forward(
        self,
        hidden: torch.Tensor,
        mask: torch.Tensor | None,
        num_visual: int,
        num_grounding: int,
        vit_tokens: torch.Tensor | None,
        refiner_tokens: torch.Tensor | None,
        refiner_bias: torch.Tensor | None,
    ) -> torch.Tensor:
        attended = self.attention(hidden, mask)[0]
        num_queries = num_visual + num_grounding
        text = attended[:, num_queries:]
        if num_queries == 0:
            return self.output(self.intermediate(text), text)
        queries = attended[:, :num_queries]
        if self.has_cross_attention:
            parts = [self.crossattention(queries[:, :num_visual], None, vit_tokens)[0]]
            if num_grounding:
                grounding = queries[:, num_visual:]
                parts.append(self.crossattention_grounding(grounding, None, refiner_tokens, refiner_bias)[0])
            queries = torch.cat(parts, dim=1)
        out = self.output_query(self.intermediate_query(queries), queries)
        if text.shape[1] == 0:
            return out
        return torch.cat([out, self.output(self.intermediate(text), text)], dim=1)


class MQFormerEncoder(nn.Module):
    def __init__(self, config: MQFormerConfig, bert: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(MQFormerLayer(config, bert, i) for i in range(config.num_hidden_layers))

    def forward(self, hidden: torch.Tensor, *context: torch.Tensor | int | None) -> torch.Tensor:
        for layer in self.layer:
            hidden = layer(hidden, *context)
        return hidden


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask (True = attend) becomes 0 / dtype-min; a float mask is taken as additive already."""
    if mask.dtype == torch.bool:
        # The dtype's minimum rather than -inf: a fully masked row softmaxes to uniform, not NaN.
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return mask.to(dtype)


class MQFormer(nn.Module):
    def __init__(self, config: MQFormerConfig):
        super().__init__()
        self.config = config
        bert = config.bert_config()
        self.embeddings = MQFormerEmbeddings(config)
        self.encoder = MQFormerEncoder(config, bert)
        self.ln_vision = nn.LayerNorm(config.vision_width, eps=config.vision_layer_norm_eps)
        self.visual_query_tokens = nn.Parameter(torch.zeros(1, config.num_visual_queries, config.hidden_size))
        if config.use_grounding:
            self.grounding_query_tokens = nn.Parameter(torch.zeros(1, config.num_grounding_queries, config.hidden_size))
        self.cls = BertOnlyMLMHead(bert)
        self._tie_lm_head()
        self.init_weights()

    def _tie_lm_head(self) -> None:
        decoder = self.cls.predictions.decoder
        decoder.weight = self.embeddings.word_embeddings.weight
        decoder.bias = self.cls.predictions.bias
        decoder.out_features = self.embeddings.word_embeddings.num_embeddings

    def grounding_cross_attentions(self) -> list[nn.Module]:
        return [layer.crossattention_grounding for layer in self.encoder.layer if hasattr(layer, "crossattention_grounding")]

    @torch.no_grad()
    def init_weights(self) -> None:
        """BERT's initialization (as BLIP-2's random start); the grounding cross-attention gets Xavier (paper 3.1)."""
        std = self.config.initializer_range
        for module in self.modules():
            if module is self.cls.predictions.decoder:
                continue  # tied to the word embeddings and the LM bias
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, std)
                module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                module.weight.normal_(0.0, std)
                if module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
        self.visual_query_tokens.normal_(0.0, std)
        if self.config.use_grounding:
            self.grounding_query_tokens.normal_(0.0, std)
        self.cls.predictions.bias.zero_()
        for attention in self.grounding_cross_attentions():
            for module in attention.modules():
                if isinstance(module, nn.Linear):
                    nn.init.xavier_uniform_(module.weight)

    @torch.no_grad()
    def resize_token_embeddings(self, size: int) -> None:
        """Word embeddings (and the tied LM decoder and its bias) to ``size`` rows, e.g. ``len(tokenizer)``.

        Kept rows are unchanged; new rows start at the mean old row plus N(0, initializer_range) noise, so
        that new tokens begin inside the trained embedding cloud, and their LM bias at the mean old bias.
        """
        old = self.embeddings.word_embeddings
        new = nn.Embedding(size, old.embedding_dim, padding_idx=old.padding_idx).to(old.weight)
        kept = min(size, old.num_embeddings)
        new.weight[:kept] = old.weight[:kept]
        added = size - kept
        if added:
            noise = torch.randn(added, old.embedding_dim) * self.config.initializer_range
            new.weight[kept:] = old.weight.mean(0) + noise.to(old.weight)
        old_bias = self.cls.predictions.bias
        bias = torch.cat([old_bias[:kept], old_bias.mean().expand(added)])
        self.embeddings.word_embeddings = new
        self.cls.predictions.bias = nn.Parameter(bias)
        self._tie_lm_head()
        self.config = dataclasses.replace(self.config, vocab_size=size)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        vit_tokens: torch.Tensor | None = None,
        refiner_tokens: torch.Tensor | None = None,
        refiner_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> MQFormerOutput:
        """One pass over ``[visual queries; grounding queries; text]``.

        - ``input_ids`` (B, Lt): the text; None for a queries-only call.
        - ``vit_tokens`` (B, Nv, vision_width): raw CLIP tokens (``ln_vision`` is applied here); None for a
          text-only call (no queries, no cross-attention, text FFN only, as BLIP-2's ITC text pass).
        - ``refiner_tokens`` (B, R, refiner_width) with ``refiner_mask`` (B, R), True = a real token:
          required with ``vit_tokens`` when the config has grounding queries.
        - ``attention_mask`` (B, L, L) over L = num_queries + Lt (0 queries in a text-only call): boolean
          (True = row attends to column) or additive float; None lets everything attend to everything.
        """
        if input_ids is None and vit_tokens is None:
            raise ValueError("the MQ-Former needs input_ids, vit_tokens or both")
        config = self.config
        queries = None
        num_visual = num_grounding = 0
        refiner_bias = None
        if vit_tokens is not None:
            batch = vit_tokens.shape[0]
            queries = self.visual_query_tokens.expand(batch, -1, -1)
            num_visual = config.num_visual_queries
            vit_tokens = self.ln_vision(vit_tokens)
            if config.use_grounding:
                if refiner_tokens is None:
                    raise ValueError("this MQ-Former has grounding queries: pass refiner_tokens with vit_tokens")
                queries = torch.cat([queries, self.grounding_query_tokens.expand(batch, -1, -1)], dim=1)
                num_grounding = config.num_grounding_queries
        if refiner_tokens is not None and not num_grounding:
            raise ValueError("refiner_tokens given, but this call has no grounding queries (use_grounding=False or no vit_tokens)")
        hidden = self.embeddings(input_ids, queries)
        dtype = self._compute_dtype(hidden)
        if refiner_mask is not None and num_grounding:
            refiner_bias = additive_mask(refiner_mask.bool()[:, None, None, :], dtype)
        mask = None
        if attention_mask is not None:
            length = hidden.shape[1]
            if attention_mask.shape != (hidden.shape[0], length, length):
                raise ValueError(
                    f"attention_mask must be (B, L, L) = {(hidden.shape[0], length, length)} "
                    f"({num_visual + num_grounding} queries + {length - num_visual - num_grounding} text), "
                    f"got {tuple(attention_mask.shape)}"
                )
            mask = additive_mask(attention_mask[:, None], dtype)  # one mask for every head
        hidden = self.encoder(hidden, mask, num_visual, num_grounding, vit_tokens, refiner_tokens, refiner_bias)
        num_queries = num_visual + num_grounding
        return MQFormerOutput(
            query_states=hidden[:, :num_queries] if num_queries else None,
            text_states=hidden[:, num_queries:] if input_ids is not None else None,
        )

    @staticmethod
    def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
        # The attention scores' dtype: SDPA wants a float mask in the query's dtype, which autocast sets.
        device = hidden.device.type
        if torch.is_autocast_enabled(device):
            return torch.get_autocast_dtype(device)
        return hidden.dtype

    def lm_logits(self, text_states: torch.Tensor) -> torch.Tensor:
        """BERT's LM head over the vocabulary (decoder tied to the word embeddings), for ICG and MSP."""
        return self.cls(text_states)
