"""Building a profile's MQ-Former for stage 1: config, tokenizer, initial weights, heads.

The ``paper`` profile starts from the BLIP-2 stage-1 checkpoint the profile names (LAVIS or HF
layout). The ``tiny`` profile writes its own stage-1 checkpoint once, in the LAVIS key layout as
safetensors (MiniLM's real weights where they fit, the seed's random weights elsewhere), and then
loads it through the same loader, like every tiny component.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import BertTokenizer

from lyrics.config import PipelinesConfig
from lyrics.extract.checkpoints import ComponentSpec, component_spec
from lyrics.model.mqformer import MQFormer, MQFormerConfig
from lyrics.model.pretraining import MQFormerForPretraining
from lyrics.model.qformer_checkpoints import LoadReport, from_minilm, load_qformer_checkpoint
from lyrics.model.tokenizer import build_tokenizer, vocab_dir

CHECKPOINT_FILE = "model.safetensors"


@dataclass
class Stage1Init:
    model: MQFormerForPretraining
    tokenizer: BertTokenizer
    report: LoadReport  # the MQ-Former's missing / unexpected keys
    heads_left: list[str]  # head parameters the checkpoint did not provide
    source: Path


def qformer_spec(config: PipelinesConfig, profile: str) -> ComponentSpec:
    return component_spec(config, profile, "qformer")


def mqformer_config(config: PipelinesConfig, profile: str, grounding_queries: bool = True) -> MQFormerConfig:
    """The profile's MQ-Former config; ``grounding_queries=False`` is the Table 4 ablation."""
    base = MQFormerConfig.from_json(qformer_spec(config, profile).arch_path)
    return dataclasses.replace(base, use_grounding=base.use_grounding and grounding_queries)


def build_stage1_model(
    config: PipelinesConfig, profile: str, grounding_queries: bool = True, spatial_representation: bool = True, seed: int = 0
) -> Stage1Init:
    """The initial stage-1 model; the weights no checkpoint provides (grounding side, added tokens) come from ``seed``."""
    with torch.random.fork_rng(devices=[]):  # deterministic whatever the caller's random state, which it leaves alone
        torch.manual_seed(seed)
        return _build_stage1_model(config, profile, grounding_queries, spatial_representation)


def _build_stage1_model(config: PipelinesConfig, profile: str, grounding_queries: bool, spatial_representation: bool) -> Stage1Init:
    spec = qformer_spec(config, profile)
    mq_config = mqformer_config(config, profile, grounding_queries)
    # A real checkpoint must exist (refused naming its env variable); the tiny one is written on first use.
    checkpoint = spec.ensure_checkpoint(lambda path: write_tiny_stage1(mq_config, path, spec.seed))
    tokenizer = build_tokenizer(vocab_dir(mq_config.vocab, checkpoint))
    mqformer = MQFormer(mq_config)
    report = load_qformer_checkpoint(mqformer, checkpoint)
    mqformer.resize_token_embeddings(len(tokenizer))
    model = MQFormerForPretraining(mqformer, spatial_representation=spatial_representation)
    heads_left = model.load_heads(report.heads)
    return Stage1Init(model, tokenizer, report, heads_left, checkpoint)


@torch.no_grad()
def write_tiny_stage1(mq_config: MQFormerConfig, folder: Path, seed: int) -> None:
    """A LAVIS-layout stage-1 checkpoint (``Qformer.bert.*``, ``Qformer.cls.*``, ``ln_vision``, ``query_tokens``, heads)."""
    with torch.random.fork_rng(devices=[]):  # the caller's random state is the same whether or not this ran
        torch.manual_seed(seed)
        model = from_minilm(dataclasses.replace(mq_config, use_grounding=False))  # BLIP-2 has no grounding side
        heads = MQFormerForPretraining(model)
    tensors: dict[str, torch.Tensor] = {"query_tokens": model.visual_query_tokens}
    for name, value in model.state_dict().items():
        if name.startswith("ln_vision."):
            tensors[name] = value
        elif name.startswith("cls."):
            tensors[f"Qformer.{name}"] = value
        elif name != "visual_query_tokens":
            tensors[f"Qformer.bert.{name}"] = value
    for name in ("vision_proj", "text_proj", "itm_head"):
        for suffix, value in getattr(heads, name).state_dict().items():
            tensors[f"{name}.{suffix}"] = value
    tensors["temp"] = heads.temp
    folder.mkdir(parents=True)
    # Tied tensors (decoder = word embeddings) are stored as separate copies, as in LAVIS's file.
    save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()}, folder / CHECKPOINT_FILE)
