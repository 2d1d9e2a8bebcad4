"""Stage 1 as a LightningModule: the four losses, AdamW with the paper's schedule, per-step seeding."""

from __future__ import annotations

import lightning as L
import torch
from transformers import get_cosine_schedule_with_warmup

from lyrics.config import RecipeConfig
from lyrics.model.pretraining import MQFormerForPretraining
from lyrics.model.tokenizer import TokenIds
from lyrics.train.objectives import PretrainBatch, pretraining_losses

TEMP_RANGE = (0.001, 0.5)  # BLIP-2 clamps its learnable temperature to this range


class PretrainModule(L.LightningModule):
    def __init__(self, model: MQFormerForPretraining, token_ids: TokenIds, recipe: RecipeConfig, msp_probability: float) -> None:
        super().__init__()
        self.model = model
        self.token_ids = token_ids
        self.recipe = recipe
        self.msp_probability = msp_probability

    def training_step(self, batch: PretrainBatch, batch_idx: int) -> torch.Tensor:
        self._seed_step(batch_idx)
        losses = pretraining_losses(self.model, batch, self.token_ids, self.msp_probability)
        size = len(batch.text.input_ids)
        # Averaged over the ranks (six scalars per step): the logged loss is the global batch's.
        self.log_dict({f"train/{name}": value.detach() for name, value in losses.items()}, prog_bar=True, batch_size=size, sync_dist=True)
        self.log("train/temp", self.model.temp.detach(), batch_size=size)
        return losses["loss"]

    def _seed_step(self, batch_idx: int) -> None:
        """Dropout, MSP's object draws and ITM's negatives depend only on (seed, step, micro-batch, rank).

        So a run resumed from a checkpoint (always taken at a step boundary) repeats exactly what an
        uninterrupted run would have drawn.
        """
        accumulate = self.trainer.accumulate_grad_batches
        micro = self.global_step * accumulate + batch_idx % accumulate
        torch.manual_seed((self.recipe.seed * 1_000_003 + micro) * self.trainer.world_size + self.global_rank)

    def on_train_batch_end(self, *args: object) -> None:
        with torch.no_grad():
            self.model.temp.clamp_(*TEMP_RANGE)

    def configure_optimizers(self) -> dict:
        """AdamW; no weight decay on biases, norms and the temperature (LAVIS's groups: parameters of ndim < 2)."""
        decay, no_decay = [], []
        for parameter in self.model.parameters():
            if parameter.requires_grad:
                (no_decay if parameter.ndim < 2 else decay).append(parameter)
        recipe = self.recipe
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=recipe.lr,
            betas=recipe.betas,
        )
        warmup = round(recipe.warmup_ratio * recipe.steps)
        schedule = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=recipe.steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
