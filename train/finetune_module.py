"""Stage 2 as a LightningModule: the response tokens' cross-entropy, AdamW with the paper's schedule.

Checkpoints hold the trained parameters only (MQ-Former, projection, LoRA) and their optimizer
state: the frozen LLM is the profile's checkpoint, so a Vicuna-13B run does not write 26 GB per
checkpoint. Loading is therefore not strict about the frozen weights.
"""

from __future__ import annotations

import warnings

import lightning as L
import torch

from lyrics.config import RecipeConfig
from lyrics.model.lvlm import LyricsLVLM
from lyrics.train.finetune_data import FinetuneBatch
from lyrics.train.runs import adamw_cosine, seed_step


# The frozen LLM stays in eval mode on purpose (a frozen model has no use for dropout); LoRA's own
# dropout modules are in training mode. Lightning warns about any module in eval mode.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")


class FinetuneModule(L.LightningModule):
    strict_loading = False  # the frozen LLM's weights are not in the checkpoints

    def __init__(self, model: LyricsLVLM, recipe: RecipeConfig) -> None:
        super().__init__()
        self.model = model
        self.recipe = recipe

    def training_step(self, batch: FinetuneBatch, batch_idx: int) -> torch.Tensor:
        seed_step(self, self.recipe.seed, batch_idx)
        loss = self.model(batch.image, batch.input_ids, batch.attention_mask, batch.image_positions, batch.labels).loss
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=len(batch.input_ids), sync_dist=True)
        return loss

    def trained_names(self) -> set[str]:
        return {name for name, parameter in self.named_parameters() if parameter.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trained = self.trained_names()
        checkpoint["state_dict"] = {name: value for name, value in checkpoint["state_dict"].items() if name in trained}

    def configure_optimizers(self) -> dict:
        return adamw_cosine(self.model.parameters(), self.recipe)
