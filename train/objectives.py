"""The four stage-1 objectives (paper section 3.2, eq. 1-5), one function each.

Every pass runs the MQ-Former over ``[visual queries; grounding queries; text]`` with the mask of
its objective from ``lyrics.model.masks``. The losses are the paper's plain cross-entropies.

- ITC: H_I = [H_v, H_g] against H_T = [H_ic, H_sp], each half projected and L2-normalized, the
  concatenation scaled by 1/sqrt(2), so the similarity is the mean of cos(H_v, H_ic) and
  cos(H_g, H_sp) (the pairs ITM matches) over a learnable temperature. In-batch negatives are
  gathered across ranks with gradients. Without grounding queries H_v stands in for H_g; without
  spatial representation H_ic stands in for H_sp.
- ITM: per sample one positive, one hard-negative image and one hard-negative text, sampled as BLIP-2
  does from the softmaxed ITC similarities of the whole (gathered) batch; heads on H_v and H_g.
- ICG: [CLS] -> [DEC]; every caption token predicts the next one.
- MSP: [BOS] -> [MLM]; each object's whole span becomes [MASK] with probability p; predict it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lyrics.model.masks import MaskLayout, icg_mask, itc_mask, itm_mask, msp_mask
from lyrics.model.mqformer import MQFormerOutput
from lyrics.model.pretraining import MQFormerForPretraining
from lyrics.model.tokenizer import TokenIds
from lyrics.train.distributed import gather_padded, gather_with_grad, rank_and_world
from lyrics.train.pretrain_text import PretrainText


@dataclass
class ImageInputs:
    """The cached features of a batch: CLIP tokens and the refiner tokens (Grounding-DINO + SAM-HQ)."""

    vit_tokens: torch.Tensor  # (B, N, vision_width)
    refiner_tokens: torch.Tensor  # (B, R, 260)
    refiner_mask: torch.Tensor  # (B, R) True = a real token

    def select(self, index: torch.Tensor) -> ImageInputs:
        return ImageInputs(self.vit_tokens[index], self.refiner_tokens[index], self.refiner_mask[index])

    @staticmethod
    def concat(parts: list[ImageInputs]) -> ImageInputs:
        return ImageInputs(*(torch.cat([getattr(p, f) for p in parts]) for f in ("vit_tokens", "refiner_tokens", "refiner_mask")))

    def gather(self) -> ImageInputs:
        """The whole data-parallel batch (no gradients: these are frozen features)."""
        return ImageInputs(gather_padded(self.vit_tokens), gather_padded(self.refiner_tokens), gather_padded(self.refiner_mask, False))


@dataclass
class PretrainBatch:
    image: ImageInputs
    text: PretrainText


def forward(
    model: MQFormerForPretraining,
    image: ImageInputs,
    text: PretrainText,
    mask: Callable[[MaskLayout], torch.Tensor],
    input_ids: torch.Tensor | None = None,
) -> MQFormerOutput:
    """One MQ-Former pass over ``[queries; text]`` with ``mask`` (``input_ids`` replaces the text's ids)."""
    ids = text.input_ids if input_ids is None else input_ids
    layout = MaskLayout(model.num_visual, model.num_grounding, text.spatial_lengths, text.caption_lengths, ids.shape[1])
    grounding = model.num_grounding > 0
    return model.mqformer(
        input_ids=ids,
        vit_tokens=image.vit_tokens,
        refiner_tokens=image.refiner_tokens if grounding else None,
        refiner_mask=image.refiner_mask if grounding else None,
        attention_mask=mask(layout),
    )


def contrastive_features(model: MQFormerForPretraining, output: MQFormerOutput, text: PretrainText) -> tuple[torch.Tensor, torch.Tensor]:
    """(z_image, z_text), each (B, 2 * 256) and unit length."""
    visual, grounding = model.pool_queries(output.query_states)
    spatial, caption = model.text_summaries(output.text_states, text.spatial_lengths)

    def embed(proj: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(proj(x), dim=-1)

    v = embed(model.vision_proj, visual)
    g = embed(model.vision_proj, grounding) if grounding is not None else v
    ic = embed(model.text_proj, caption)
    sp = embed(model.text_proj, spatial) if spatial is not None else ic
    return torch.cat([v, g], dim=-1) / math.sqrt(2), torch.cat([ic, sp], dim=-1) / math.sqrt(2)


@dataclass
class ItcResult:
    loss: torch.Tensor
    sim_i2t: torch.Tensor  # (B, world * B): local images against every rank's texts
    sim_t2i: torch.Tensor  # (B, world * B)
    targets: torch.Tensor  # (B,) column of each row's positive


def itc_loss(z_image: torch.Tensor, z_text: torch.Tensor, temp: torch.Tensor) -> ItcResult:
    """Eq. 1: symmetric InfoNCE over the batch gathered from every rank."""
    rank, _ = rank_and_world()
    images, texts = gather_with_grad(z_image), gather_with_grad(z_text)
    sim_i2t = z_image @ texts.T / temp
    sim_t2i = z_text @ images.T / temp
    targets = rank * len(z_image) + torch.arange(len(z_image), device=z_image.device)
    loss = (F.cross_entropy(sim_i2t, targets) + F.cross_entropy(sim_t2i, targets)) / 2
    return ItcResult(loss, sim_i2t, sim_t2i, targets)


@torch.no_grad()
def hard_negatives(itc: ItcResult) -> tuple[torch.Tensor, torch.Tensor]:
    """(an image for each text, a text for each image): global indices drawn with softmax(similarity) weights.

    The positive is never drawn; a 1e-6 floor keeps a row drawable when the softmax underflows.
    """
    if itc.sim_i2t.shape[1] < 2:
        raise ValueError("ITM needs at least two samples in the (gathered) batch to draw negatives from")
    rows = torch.arange(len(itc.targets), device=itc.targets.device)

    def draw(similarity: torch.Tensor) -> torch.Tensor:
        weights = F.softmax(similarity.float(), dim=1) + 1e-6
        weights[rows, itc.targets] = 0
        return torch.multinomial(weights, 1).squeeze(1)

    return draw(itc.sim_t2i), draw(itc.sim_i2t)


def _gather_text(text: PretrainText, pad: int) -> PretrainText:
    return PretrainText(
        gather_padded(text.input_ids, pad),
        gather_padded(text.spatial_lengths[:, None])[:, 0],
        gather_padded(text.caption_lengths[:, None])[:, 0],
        gather_padded(text.object_ids, 0),
    )


def itm_loss(model: MQFormerForPretraining, batch: PretrainBatch, itc: ItcResult, ids: TokenIds) -> torch.Tensor:
    """Eq. 2: positives, (text, hard-negative image) and (image, hard-negative text), regionalized mask."""
    image_for_text, text_for_image = hard_negatives(itc)
    all_images, all_texts = batch.image.gather(), _gather_text(batch.text, ids.pad)
    image = ImageInputs.concat([batch.image, all_images.select(image_for_text), batch.image])
    text = PretrainText.concat([batch.text, batch.text, all_texts.select(text_for_image)], ids.pad)
    output = forward(model, image, text, itm_mask)
    visual, grounding = model.pool_queries(output.query_states)
    size = len(batch.text.input_ids)
    labels = torch.cat([torch.ones(size), torch.zeros(2 * size)]).long().to(visual.device)
    losses = [F.cross_entropy(model.itm_head(visual), labels)]
    if grounding is not None:
        losses.append(F.cross_entropy(model.itm_head_grounding(grounding), labels))
    return torch.stack(losses).mean()


def icg_loss(model: MQFormerForPretraining, batch: PretrainBatch, ids: TokenIds) -> torch.Tensor:
    """Eq. 3: [DEC] caption, causal over the caption, every query visible, the spatial text blind."""
    text = batch.text
    rows = torch.arange(len(text.input_ids), device=text.input_ids.device)
    input_ids = text.input_ids.clone()
    input_ids[rows, text.spatial_lengths] = ids.dec
    output = forward(model, batch.image, text, icg_mask, input_ids)
    position = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
    start = text.spatial_lengths[:, None]
    predicts = (position >= start) & (position < start + text.caption_lengths[:, None] - 1)  # all but [SEP]
    targets = text.input_ids.roll(-1, dims=1)
    logits = model.mqformer.lm_logits(output.text_states[predicts])
    return F.cross_entropy(logits.float(), targets[predicts])


def mask_objects(text: PretrainText, probability: float, mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids with whole objects replaced by [MASK], (B, Lt) bool of the masked positions).

    Each object of each sample is masked independently with ``probability`` (torch's global RNG). When
    the draw leaves a batch that has objects with none masked, one of its objects is masked, so that
    MSP always has a target (at paper batch sizes this almost never happens and the rate stays p).
    """
    objects = text.object_ids
    draws = torch.rand(objects.shape[0], int(objects.max()) + 1, device=objects.device) < probability
    draws[:, 0] = False  # object id 0 = not part of an object
    present = torch.zeros_like(draws).scatter_(1, objects, True)
    present[:, 0] = False
    if present.any() and not (draws & present).any():
        candidates = present.flatten().nonzero().squeeze(1)
        pick = candidates[torch.randint(len(candidates), (1,), device=objects.device)]
        draws.view(-1)[pick] = True
    masked = draws.gather(1, objects)
    return text.input_ids.masked_fill(masked, mask_id), masked


def msp_loss(model: MQFormerForPretraining, batch: PretrainBatch, ids: TokenIds, probability: float) -> torch.Tensor:
    """Eq. 4: [MLM] + spatial text with masked objects, queries visible, the caption blind."""
    input_ids, masked = mask_objects(batch.text, probability, ids.mask)
    input_ids[:, 0] = ids.mlm
    output = forward(model, batch.image, batch.text, msp_mask, input_ids)
    if not masked.any():  # a batch without objects: a zero that keeps every parameter in the graph
        return output.text_states[:, :0].sum()
    logits = model.mqformer.lm_logits(output.text_states[masked])
    return F.cross_entropy(logits.float(), batch.text.input_ids[masked])


def pretraining_losses(model: MQFormerForPretraining, batch: PretrainBatch, ids: TokenIds, msp_probability: float) -> dict[str, torch.Tensor]:
    """Eq. 5: ``loss`` = itc + itm + icg (+ msp with spatial representation), each returned for logging."""
    output = forward(model, batch.image, batch.text, itc_mask)
    itc = itc_loss(*contrastive_features(model, output, batch.text), model.temp)
    losses = {"itc": itc.loss, "itm": itm_loss(model, batch, itc, ids), "icg": icg_loss(model, batch, ids)}
    if model.spatial_representation:
        losses["msp"] = msp_loss(model, batch, ids, msp_probability)
    losses["loss"] = torch.stack(list(losses.values())).sum()
    return losses
