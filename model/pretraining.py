"""The MQ-Former with its stage-1 heads: projections and temperature for ITC, matching heads for ITM.

Pooling (paper section 3.2): ``H_v`` and ``H_g`` are the means of the visual and grounding query
outputs. A mean followed by a linear map equals BLIP-2's average of per-query outputs through the
same map, so BLIP-2's ``vision_proj`` and ``itm_head`` load unchanged. ``H_sp`` and ``H_ic`` are the
text outputs at ``[BOS]`` and ``[CLS]``.

Heads (BLIP-2's names, so a stage-1 checkpoint fills them): ``vision_proj`` / ``text_proj``
(hidden -> 256, shared by both halves of H_I and H_T), ``temp`` (0.07, learnable), ``itm_head`` for
the (H_v, H_ic) pair and ``itm_head_grounding`` for (H_g, H_sp), which starts as a copy of
``itm_head`` when a checkpoint has one (as BLIP-2 starts its query FFN from the text FFN).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from lyrics.model.mqformer import MQFormer, MQFormerConfig

EMBED_DIM = 256  # BLIP-2's contrastive embedding width
INITIAL_TEMP = 0.07


class MQFormerForPretraining(nn.Module):
    def __init__(self, mqformer: MQFormer, spatial_representation: bool = True, embed_dim: int = EMBED_DIM):
        super().__init__()
        hidden = mqformer.config.hidden_size
        self.mqformer = mqformer
        self.spatial_representation = spatial_representation
        self.vision_proj = nn.Linear(hidden, embed_dim)
        self.text_proj = nn.Linear(hidden, embed_dim)
        self.itm_head = nn.Linear(hidden, 2)
        # A second matching head only where a second (query, text) pair exists.
        self.itm_head_grounding = nn.Linear(hidden, 2) if mqformer.config.use_grounding else None
        self.temp = nn.Parameter(torch.tensor(INITIAL_TEMP))
        std = mqformer.config.initializer_range
        for head in (self.vision_proj, self.text_proj, self.itm_head, self.itm_head_grounding):
            if head is not None:
                nn.init.normal_(head.weight, 0.0, std)
                nn.init.zeros_(head.bias)

    @property
    def num_visual(self) -> int:
        return self.mqformer.config.num_visual_queries

    @property
    def num_grounding(self) -> int:
        return self.mqformer.config.num_grounding_queries if self.mqformer.config.use_grounding else 0

    @torch.no_grad()
    def load_heads(self, heads: dict[str, torch.Tensor]) -> list[str]:
        """Copy BLIP-2's heads (``LoadReport.heads``, LAVIS names); returns the head parameters left as initialized."""
        own = dict(self.named_parameters())
        loaded = []
        for name, value in heads.items():
            if name in own:
                own[name].copy_(value.reshape(own[name].shape))
                loaded.append(name)
        if self.itm_head_grounding is not None and "itm_head.weight" in heads:
            self.itm_head_grounding.load_state_dict(self.itm_head.state_dict())
            loaded += ["itm_head_grounding.weight", "itm_head_grounding.bias"]
        return sorted(n for n in own if not n.startswith("mqformer.") and n not in loaded)

    def pool_queries(self, query_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(H_v, H_g): mean visual and mean grounding query outputs; H_g is None without grounding queries."""
        visual = query_states[:, : self.num_visual].mean(dim=1)
        grounding = query_states[:, self.num_visual :].mean(dim=1) if self.num_grounding else None
        return visual, grounding

    @staticmethod
    def text_summaries(text_states: torch.Tensor, spatial_lengths: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(H_sp, H_ic): the outputs at [BOS] (position 0) and [CLS] (right after the spatial text)."""
        caption_start = spatial_lengths.to(text_states.device)
        rows = torch.arange(len(text_states), device=text_states.device)
        spatial = text_states[:, 0] if bool(caption_start.any()) else None
        return spatial, text_states[rows, caption_start]


STAGE1_WEIGHTS = "model.safetensors"
STAGE1_CONFIG = "config.json"


def save_stage1(model: MQFormerForPretraining, tokenizer: PreTrainedTokenizerBase, folder: str | Path) -> Path:
    """A stage-1 result as a folder: weights (safetensors), the MQ-Former config, the tokenizer."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_model(model, str(folder / STAGE1_WEIGHTS))  # stores the tied LM decoder once
    config = {"mqformer": dataclasses.asdict(model.mqformer.config), "spatial_representation": model.spatial_representation}
    (folder / STAGE1_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    tokenizer.save_pretrained(folder)
    return folder


def load_stage1(folder: str | Path) -> tuple[MQFormerForPretraining, PreTrainedTokenizerBase]:
    folder = Path(folder)
    if not (folder / STAGE1_CONFIG).is_file():
        raise FileNotFoundError(f"{folder}: no {STAGE1_CONFIG}; not a stage-1 result (run `make pretrain`)")
    config = json.loads((folder / STAGE1_CONFIG).read_text())
    model = MQFormerForPretraining(MQFormer(MQFormerConfig(**config["mqformer"])), config["spatial_representation"])
    missing, unexpected = load_model(model, str(folder / STAGE1_WEIGHTS), strict=False)
    if missing or unexpected:
        raise ValueError(f"{folder / STAGE1_WEIGHTS}: does not match its config (missing {sorted(missing)}, unexpected {sorted(unexpected)})")
    return model, AutoTokenizer.from_pretrained(folder, local_files_only=True)
