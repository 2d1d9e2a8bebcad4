"""Stage 1 as a LightningModule: the four losses, AdamW with the paper's schedule, per-step seeding."""

from __future__ import annotations

import lightning as L
import torch

from lyrics.config import RecipeConfig
from lyrics.model.pretraining import MQFormerForPretraining
from lyrics.model.tokenizer import TokenIds
from lyrics.train.objectives import PretrainBatch, pretraining_losses
from lyrics.train.runs import adamw_cosine, seed_step

TEMP_RANGE = (0.001, 0.5)  # BLIP-2 clamps its learnable temperature to this range


class PretrainModule(L.LightningModule):
    def __init__(self, model: MQFormerForPretraining, token_ids: TokenIds, recipe: RecipeConfig, msp_probability: float) -> None:
        super().__init__()
        self.model = model
        self.token_ids = token_ids
        self.recipe = recipe
        self.msp_probability = msp_probability

    def training_step(self, batch: PretrainBatch, batch_idx: int) -> torch.Tensor:
        seed_step(self, self.recipe.seed, batch_idx)
        losses = pretraining_losses(self.model, batch, self.token_ids, self.msp_probability)
        size = len(batch.text.input_ids)
        # Averaged over the ranks (six scalars per step): the logged loss is the global batch's.
        self.log_dict({f"train/{name}": value.detach() for name, value in losses.items()}, prog_bar=True, batch_size=size, sync_dist=True)
        self.log("train/temp", self.model.temp.detach(), batch_size=size)
        return losses["loss"]

    def on_train_batch_end(self, *args: object) -> None:
        with torch.no_grad():
            self.model.temp.clamp_(*TEMP_RANGE)

    def configure_optimizers(self) -> dict:
        return adamw_cosine(self.model.parameters(), self.recipe)
