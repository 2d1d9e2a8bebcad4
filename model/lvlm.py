"""The Lyrics LVLM of stage 2 (SPEC section 5, paper section 3.3).

MQ-Former (trainable) -> a linear projection hidden -> LLM hidden (trainable) -> its 64 query
outputs as soft visual tokens at the prompt's image slot -> a frozen causal LLM with LoRA on the
attention's W_q and W_v (peft). Semantic-aware extraction: the MQ-Former reads the sample's spatial
text (``[BOS] spatial_text``) so that the grounding queries attend to the named objects.

The caller tokenizes the prompt with ``num_visual_tokens`` placeholder tokens where the image goes
and passes ``image_positions`` (True there); their embeddings are replaced by the visual tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from lyrics.model.masks import MaskLayout, extraction_mask
from lyrics.model.mqformer import MQFormer


@dataclass(frozen=True)
class LoraSettings:
    # The paper's 79 M LoRA parameters on Vicuna-13B's q and v projections are about rank 96.
    rank: int = 96
    alpha: int = 192
    dropout: float = 0.05
    targets: tuple[str, ...] = ("q_proj", "v_proj")


@dataclass
class ImageFeatures:
    """One batch's cached features and, for semantic-aware extraction, its ``[BOS] spatial_text`` ids."""

    vit_tokens: torch.Tensor  # (B, N, vision_width)
    refiner_tokens: torch.Tensor  # (B, R, 260)
    refiner_mask: torch.Tensor  # (B, R)
    spatial_ids: torch.Tensor | None = None  # (B, S) padded; None: the queries read the image alone
    spatial_lengths: torch.Tensor | None = None  # (B,)


class LyricsLVLM(nn.Module):
    def __init__(self, mqformer: MQFormer, llm: PreTrainedModel, lora: LoraSettings) -> None:
        super().__init__()
        self.mqformer = mqformer
        self.projection = nn.Linear(mqformer.config.hidden_size, llm.config.hidden_size)
        llm.requires_grad_(False)  # frozen; get_peft_model adds the only trainable LLM weights
        config = LoraConfig(
            r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.targets), task_type="CAUSAL_LM"
        )
        self.llm: PeftModel = get_peft_model(llm, config)

    @property
    def num_visual_tokens(self) -> int:
        return self.mqformer.config.num_queries

    def visual_tokens(self, image: ImageFeatures) -> torch.Tensor:
        """(B, num_visual_tokens, LLM hidden): the MQ-Former's query outputs, projected."""
        config = self.mqformer.config
        grounding = config.use_grounding
        mask = None
        if image.spatial_ids is not None:
            lengths = image.spatial_lengths
            layout = MaskLayout(config.num_visual_queries, config.num_grounding_queries if grounding else 0,
                                lengths, torch.zeros_like(lengths), image.spatial_ids.shape[1])  # fmt: skip
            mask = extraction_mask(layout)
        output = self.mqformer(
            input_ids=image.spatial_ids,
            vit_tokens=image.vit_tokens,
            refiner_tokens=image.refiner_tokens if grounding else None,
            refiner_mask=image.refiner_mask if grounding else None,
            attention_mask=mask,
        )
        return self.projection(output.query_states)

    def prompt_embeddings(self, image: ImageFeatures, input_ids: torch.Tensor, image_positions: torch.Tensor) -> torch.Tensor:
        """The LLM's input embeddings with the visual tokens at ``image_positions`` (num_visual_tokens per row)."""
        counts = image_positions.sum(dim=1)
        if not bool((counts == self.num_visual_tokens).all()):
            raise ValueError(f"each prompt needs {self.num_visual_tokens} image positions, got {counts.tolist()}")
        embeddings = self.llm.get_input_embeddings()(input_ids)
        visual = self.visual_tokens(image).to(embeddings.dtype)
        return embeddings.masked_scatter(image_positions[..., None], visual)

    def forward(
        self,
        image: ImageFeatures,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_positions: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> CausalLMOutputWithPast:
        """Teacher-forced pass; ``labels`` are -100 everywhere but the response tokens."""
        embeddings = self.prompt_embeddings(image, input_ids, image_positions)
        return self.llm(inputs_embeds=embeddings, attention_mask=attention_mask, labels=labels)

    @torch.no_grad()
    def generate(
        self, image: ImageFeatures, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_positions: torch.Tensor, max_new_tokens: int
    ) -> torch.Tensor:
        """Greedy continuations (B, <= max_new_tokens) of left-padded prompts."""
        embeddings = self.prompt_embeddings(image, input_ids, image_positions)
        return self.llm.generate(inputs_embeds=embeddings, attention_mask=attention_mask, max_new_tokens=max_new_tokens, do_sample=False)
