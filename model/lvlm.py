"""The Lyrics LVLM of stage 2 (SPEC section 5, paper section 3.3).

MQ-Former (trainable) -> a linear projection hidden -> LLM hidden (trainable) -> its 64 query
outputs as soft visual tokens at the prompt's image slot -> a frozen causal LLM with LoRA on the
attention's W_q and W_v (peft). Semantic-aware extraction: the MQ-Former reads the sample's spatial
text (``[BOS] spatial_text``) so that the grounding queries attend to the named objects.

The caller tokenizes the prompt with ``num_visual_tokens`` placeholder tokens where the image goes
and passes ``image_positions`` (True there); their embeddings are replaced by the visual tokens.

A stage-2 result is a folder (``save_lvlm`` / ``load_lvlm``): the MQ-Former and the projection as
safetensors, the LoRA adapter in peft's format (``lora/``), the MQ-Former's tokenizer
(``tokenizer/``) and ``config.json`` with the settings that turn a sample into model inputs. The
LLM itself is not saved: it is the profile's frozen checkpoint, and loading merges nothing.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, load_peft_weights, set_peft_model_state_dict
from safetensors.torch import load_model, save_model
from torch import nn
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import CausalLMOutputWithPast

from lyrics.model.masks import MaskLayout, extraction_mask
from lyrics.model.mqformer import MQFormer, MQFormerConfig

WEIGHTS = "model.safetensors"  # mqformer.* and projection.*
CONFIG = "config.json"
LORA = "lora"
TOKENIZER = "tokenizer"

# peft asks the model for transformers' `is_gradient_checkpointing`, which transformers 5 deprecates:
# a conversation between two libraries that a user cannot act on.
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)


@dataclass(frozen=True)
class LoraSettings:
    # The paper's 79 M LoRA parameters on Vicuna-13B's q and v projections are about rank 96.
    rank: int = 96
    alpha: int = 192
    dropout: float = 0.05
    targets: tuple[str, ...] = ("q_proj", "v_proj")


@dataclass(frozen=True)
class PromptSettings:
    """How a sample becomes model inputs; saved with the model, so inference reads samples as training did."""

    semantic_aware: bool = True  # the MQ-Former reads "[BOS] spatial_text"
    spatial_text_in_prompt: bool = True  # the LLM prompt carries the spatial text after the image
    max_spatial_tokens: int = 256  # MQ-Former tokens of "[BOS] spatial_text"
    max_prompt_objects: int = 16  # objects of spatial text in the LLM prompt
    max_text_tokens: int = 512  # LLM tokens of a training example, the visual tokens included


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
        # Stage 2 predicts no MQ-Former text: the MLM head's transform and bias get no gradient (its
        # decoder weight is the tied word embedding, which reads the spatial text and does train).
        mqformer.cls.predictions.transform.requires_grad_(False)
        mqformer.cls.predictions.bias.requires_grad_(False)
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


def save_lvlm(model: LyricsLVLM, tokenizer: PreTrainedTokenizerBase, prompt: PromptSettings, lora: LoraSettings, folder: str | Path) -> Path:
    """A stage-2 result: the trained parts only (the frozen LLM stays where the profile keeps it)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_model(_trained_parts(model), str(folder / WEIGHTS))  # the MQ-Former's tied LM decoder is stored once
    model.llm.save_pretrained(folder / LORA)  # adapter_config.json + adapter_model.safetensors
    tokenizer.save_pretrained(folder / TOKENIZER)
    config = {
        "mqformer": dataclasses.asdict(model.mqformer.config),
        "llm_hidden_size": model.projection.out_features,
        "prompt": dataclasses.asdict(prompt),
        "lora": dataclasses.asdict(lora),
    }
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return folder


@dataclass
class LoadedLVLM:
    model: LyricsLVLM
    tokenizer: PreTrainedTokenizerBase  # the MQ-Former's
    prompt: PromptSettings
    lora: LoraSettings


def load_lvlm(folder: str | Path, llm: PreTrainedModel, adapter: bool = True) -> LoadedLVLM:
    """A saved stage-2 result on top of ``llm`` (the profile's frozen LLM, as loaded by ``load_llm``); in eval mode.

    ``adapter=False``: ``llm`` already has the adapter merged in (an export with ``--merge-lora``); the
    LoRA layers stay at their initial zero update (peft starts B at zero), so they add nothing."""
    folder = Path(folder)
    if not (folder / CONFIG).is_file():
        raise FileNotFoundError(f"{folder}: no {CONFIG}; not a stage-2 result (run `make finetune`)")
    config = json.loads((folder / CONFIG).read_text())
    if config["llm_hidden_size"] != llm.config.hidden_size:
        raise ValueError(
            f"{folder}: trained for an LLM of hidden size {config['llm_hidden_size']}, but this LLM's is {llm.config.hidden_size}"
        )
    lora = LoraSettings(**{**config["lora"], "targets": tuple(config["lora"]["targets"])})
    model = LyricsLVLM(MQFormer(MQFormerConfig(**config["mqformer"])), llm, lora)
    missing, unexpected = load_model(_trained_parts(model), str(folder / WEIGHTS), strict=False)
    if missing or unexpected:
        raise ValueError(f"{folder / WEIGHTS}: does not match its config (missing {sorted(missing)}, unexpected {sorted(unexpected)})")
    if adapter:
        result = set_peft_model_state_dict(model.llm, load_peft_weights(str(folder / LORA), device="cpu"))
        if result.unexpected_keys:
            raise ValueError(f"{folder / LORA}: adapter weights the model has no place for: {sorted(result.unexpected_keys)[:5]}")
    tokenizer = AutoTokenizer.from_pretrained(folder / TOKENIZER, local_files_only=True)
    return LoadedLVLM(model.eval(), tokenizer, PromptSettings(**config["prompt"]), lora)


def _trained_parts(model: LyricsLVLM) -> nn.Module:
    return nn.ModuleDict({"mqformer": model.mqformer, "projection": model.projection})
