"""The four stage-1 objectives on a small MQ-Former: masking, causality and blindness, hard negatives, ITC, training."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from lyrics.model.masks import icg_mask, itc_mask, itm_mask, msp_mask
from lyrics.model.mqformer import MQFormer, MQFormerConfig
from lyrics.model.pretraining import MQFormerForPretraining
from lyrics.model.tokenizer import TokenIds
from lyrics.spatial_text import format_objects
from lyrics.train.objectives import (
    ImageInputs,
    ItcResult,
    PretrainBatch,
    contrastive_features,
    forward,
    hard_negatives,
    icg_loss,
    itc_loss,
    itm_loss,
    mask_objects,
    msp_loss,
    pretraining_losses,
)
from lyrics.train.pretrain_text import PretrainText, TextSettings, encode_pretrain_text

NV, NG, VISION, VIT, REFINER = 4, 4, 16, 5, 3
SETTINGS = TextSettings(max_spatial_tokens=64, max_caption_tokens=16)
TAGS = ["cat", "dog", "red car", "person", "tree", "bicycle", "cup", "table", "sky", "window", "shoe", "hat"]
CAPTIONS = ["a cat sits next to a dog", "a red car on the street", "a person rides a bicycle", "a cup on a table"]


def small_config(vocab_size: int, use_grounding: bool = True) -> MQFormerConfig:
    return MQFormerConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64, num_visual_queries=NV,
        num_grounding_queries=NG, vision_width=VISION, vocab_size=vocab_size, max_position_embeddings=128,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, use_grounding=use_grounding,
    )  # fmt: skip


def build_model(tokenizer, use_grounding: bool = True, spatial_representation: bool = True, seed: int = 0) -> MQFormerForPretraining:
    torch.manual_seed(seed)
    mqformer = MQFormer(small_config(len(tokenizer), use_grounding))
    return MQFormerForPretraining(mqformer, spatial_representation=spatial_representation)


def spatial_texts(batch: int, objects_per_sample: list[int] | None = None) -> list[str]:
    texts = []
    for row in range(batch):
        count = objects_per_sample[row % len(objects_per_sample)] if objects_per_sample else 1 + row % 3
        tags = [TAGS[(row + k) % len(TAGS)] for k in range(count)]
        boxes = [((row * 7 + k) % 10 / 10, (k * 3) % 10 / 10, 0.9, 0.95) for k in range(count)]
        texts.append(format_objects(tags, boxes))
    return texts


def make_text(tokenizer, batch: int = 4, settings: TextSettings = SETTINGS) -> PretrainText:
    return encode_pretrain_text(tokenizer, spatial_texts(batch), [CAPTIONS[i % len(CAPTIONS)] for i in range(batch)], settings)


def make_image(batch: int = 4, seed: int = 0) -> ImageInputs:
    generator = torch.Generator().manual_seed(seed)
    refiner_mask = torch.ones(batch, REFINER, dtype=torch.bool)
    refiner_mask[0, -1] = False
    return ImageInputs(
        vit_tokens=torch.randn(batch, VIT, VISION, generator=generator),
        refiner_tokens=torch.randn(batch, REFINER, 260, generator=generator),
        refiner_mask=refiner_mask,
    )


def make_batch(tokenizer, batch: int = 4, settings: TextSettings = SETTINGS) -> PretrainBatch:
    return PretrainBatch(make_image(batch), make_text(tokenizer, batch, settings))


def with_token(text: PretrainText, row: int, position: int, token: int) -> PretrainText:
    changed = text.input_ids.clone()
    assert changed[row, position] != token
    changed[row, position] = token
    return dataclasses.replace(text, input_ids=changed)


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float noise: a masked-out position gets exactly zero attention, so blindness is exact."""
    return torch.allclose(a, b, atol=1e-7, rtol=0)


def differs(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Clearly changed (a random small model reacts weakly, but far above float noise)."""
    return bool((a - b).abs().max() > 1e-4)


# ---------------------------------------------------------------- MSP: whole-object masking


def test_mask_objects_masks_whole_objects_at_the_given_rate(tokenizer, ids):
    settings = TextSettings(max_spatial_tokens=512, max_caption_tokens=16)
    texts = spatial_texts(64, objects_per_sample=[12])
    text = encode_pretrain_text(tokenizer, texts, [CAPTIONS[i % 4] for i in range(64)], settings)
    assert (text.object_ids.max(dim=1).values == 12).all()
    torch.manual_seed(0)
    input_ids, masked = mask_objects(text, 0.15, ids.mask)
    assert masked.dtype == torch.bool and masked.shape == text.input_ids.shape

    # Every object is either fully masked or untouched.
    masked_objects = 0
    for row in range(64):
        for number in range(1, 13):
            span = masked[row, text.object_ids[row] == number]
            assert span.all() or not span.any(), (row, number)
            masked_objects += int(span.all())
    assert abs(masked_objects / (64 * 12) - 0.15) <= 0.03
    # Tokens outside objects ([BOS], caption, padding) are never masked.
    assert not masked[text.object_ids == 0].any()
    assert not masked[:, 0].any()
    # Masked positions hold [MASK]; the rest is the input unchanged.
    assert (input_ids[masked] == tokenizer.mask_token_id).all()
    assert torch.equal(input_ids[~masked], text.input_ids[~masked])
    assert not (text.input_ids == ids.mask).any()  # so [MASK] marks exactly the masked positions
    assert torch.equal(input_ids == ids.mask, masked)


def test_mask_objects_extremes(tokenizer, ids):
    text = make_text(tokenizer)
    torch.manual_seed(1)
    # A draw that masks nothing in a batch with objects masks exactly one whole object, so MSP has a target.
    masked = mask_objects(text, 0.0, ids.mask)[1]
    spans = {(row, int(obj)) for row, obj in zip(*torch.nonzero(text.object_ids > 0, as_tuple=True)) for obj in [text.object_ids[row, obj]]}
    chosen = {(int(r), int(text.object_ids[r, c])) for r, c in torch.nonzero(masked)}
    assert len(chosen) == 1 and chosen <= {(int(r), o) for r, o in spans}
    row, obj = chosen.pop()
    assert torch.equal(masked[row], text.object_ids[row] == obj) and not masked[torch.arange(len(masked)) != row].any()
    no_objects = encode_pretrain_text(tokenizer, [""] * 2, ["a cat", "a dog"], SETTINGS)
    assert not mask_objects(no_objects, 0.5, ids.mask)[1].any()
    input_ids, masked = mask_objects(text, 1.0, ids.mask)
    assert torch.equal(masked, text.object_ids > 0)
    assert torch.equal(input_ids[:, 0], text.input_ids[:, 0])


def test_mask_objects_draws_per_sample(tokenizer, ids):
    """Object k of one sample and object k of another are drawn independently."""
    text = encode_pretrain_text(tokenizer, spatial_texts(64, [1]), ["a"] * 64, SETTINGS)
    torch.manual_seed(2)
    masked = mask_objects(text, 0.5, ids.mask)[1].any(dim=1)
    assert 0 < int(masked.sum()) < 64


# ---------------------------------------------------------------- who sees whom, through the model


@pytest.fixture(scope="module")
def model(tokenizer) -> MQFormerForPretraining:
    return build_model(tokenizer).eval()


@pytest.fixture(scope="module")
def batch(tokenizer) -> PretrainBatch:
    return make_batch(tokenizer)


def icg_ids(text: PretrainText, ids: TokenIds) -> torch.Tensor:
    input_ids = text.input_ids.clone()
    input_ids[torch.arange(len(input_ids)), text.spatial_lengths] = ids.dec
    return input_ids


@torch.no_grad()
def test_icg_is_causal_over_the_caption(model, batch, ids, tokenizer):
    text = batch.text
    row, s, c = 0, int(text.spatial_lengths[0]), int(text.caption_lengths[0])
    assert c >= 5
    position = s + 3  # a caption token with earlier caption tokens before it
    other = tokenizer.convert_tokens_to_ids("zebra")
    base = forward(model, batch.image, text, icg_mask, icg_ids(text, ids))
    changed_text = with_token(text, row, position, other)
    changed = forward(model, batch.image, changed_text, icg_mask, icg_ids(changed_text, ids))
    assert close(base.text_states[row, s:position], changed.text_states[row, s:position])
    assert differs(base.text_states[row, position:s + c], changed.text_states[row, position:s + c])
    assert close(base.query_states, changed.query_states)  # queries never read the text
    assert close(base.text_states[1:], changed.text_states[1:])  # other samples untouched


@torch.no_grad()
def test_icg_is_blind_to_the_spatial_text(model, batch, ids, tokenizer):
    text = batch.text
    row, s, c = 0, int(text.spatial_lengths[0]), int(text.caption_lengths[0])
    changed_text = with_token(text, row, 3, tokenizer.convert_tokens_to_ids("zebra"))
    base = forward(model, batch.image, text, icg_mask, icg_ids(text, ids))
    changed = forward(model, batch.image, changed_text, icg_mask, icg_ids(changed_text, ids))
    assert close(base.text_states[row, s:s + c], changed.text_states[row, s:s + c])
    assert close(base.query_states, changed.query_states)
    loss = icg_loss(model, batch, ids)
    assert torch.isfinite(loss) and loss > 0
    assert torch.equal(loss, icg_loss(model, dataclasses.replace(batch, text=changed_text), ids))
    # A caption token does change the loss (the comparison above can fail).
    caption_changed = with_token(text, row, s + 2, tokenizer.convert_tokens_to_ids("zebra"))
    assert differs(loss, icg_loss(model, dataclasses.replace(batch, text=caption_changed), ids))


@torch.no_grad()
def test_msp_is_blind_to_the_caption(model, batch, ids, tokenizer):
    text = batch.text
    torch.manual_seed(0)
    input_ids = mask_objects(text, 0.5, ids.mask)[0]
    input_ids[:, 0] = ids.mlm
    row, s = 0, int(text.spatial_lengths[0])
    changed_ids = input_ids.clone()
    changed_ids[row, s + 2] = tokenizer.convert_tokens_to_ids("zebra")
    base = forward(model, batch.image, text, msp_mask, input_ids)
    changed = forward(model, batch.image, text, msp_mask, changed_ids)
    assert close(base.text_states[row, :s], changed.text_states[row, :s])
    assert close(base.query_states, changed.query_states)
    # A spatial token, by contrast, reaches the other spatial positions and the queries.
    spatial_changed = input_ids.clone()
    spatial_changed[row, 3] = tokenizer.convert_tokens_to_ids("zebra")
    other = forward(model, batch.image, text, msp_mask, spatial_changed)
    assert differs(base.text_states[row, 1], other.text_states[row, 1])
    assert differs(base.query_states[row], other.query_states[row])


@torch.no_grad()
def test_itm_regions(model, batch, tokenizer):
    text = batch.text
    row, s, c = 0, int(text.spatial_lengths[0]), int(text.caption_lengths[0])
    zebra = tokenizer.convert_tokens_to_ids("zebra")
    base = forward(model, batch.image, text, itm_mask)
    spatial_changed = forward(model, batch.image, with_token(text, row, 3, zebra), itm_mask)
    caption_changed = forward(model, batch.image, with_token(text, row, s + 2, zebra), itm_mask)
    # {V, C}: the spatial text reaches neither the visual queries nor the caption.
    assert close(base.query_states[:, :NV], spatial_changed.query_states[:, :NV])
    assert close(base.text_states[row, s:s + c], spatial_changed.text_states[row, s:s + c])
    assert differs(base.query_states[row, NV:], spatial_changed.query_states[row, NV:])
    # {G, S}: the caption reaches neither the grounding queries nor the spatial text.
    assert close(base.query_states[:, NV:], caption_changed.query_states[:, NV:])
    assert close(base.text_states[row, :s], caption_changed.text_states[row, :s])
    assert differs(base.query_states[row, :NV], caption_changed.query_states[row, :NV])


# ---------------------------------------------------------------- ITM hard negatives


def itc_result(sim_i2t: torch.Tensor, sim_t2i: torch.Tensor, targets: torch.Tensor | None = None) -> ItcResult:
    if targets is None:
        targets = torch.arange(len(sim_i2t))
    return ItcResult(torch.tensor(0.0), sim_i2t, sim_t2i, targets)


def test_hard_negatives_follow_the_similarity():
    size = 4
    hard_t2i, hard_i2t = torch.tensor([1, 2, 3, 0]), torch.tensor([3, 0, 1, 2])
    rows = torch.arange(size)
    sim_t2i, sim_i2t = torch.zeros(size, size), torch.zeros(size, size)
    for sim, hard in ((sim_t2i, hard_t2i), (sim_i2t, hard_i2t)):
        sim[rows, rows] = 50.0  # the positive is the most similar, as after training
        sim[rows, hard] = 50.0
    itc = itc_result(sim_i2t, sim_t2i)
    torch.manual_seed(0)
    for _ in range(100):
        image_for_text, text_for_image = hard_negatives(itc)
        assert torch.equal(image_for_text, hard_t2i)
        assert torch.equal(text_for_image, hard_i2t)


def test_hard_negatives_are_spread_when_similarities_are_equal():
    size = 4
    itc = itc_result(torch.zeros(size, size), torch.zeros(size, size))
    torch.manual_seed(0)
    draws = torch.stack([torch.stack(hard_negatives(itc)) for _ in range(200)])  # (200, 2, B)
    for row in range(size):
        for side in range(2):
            counts = torch.bincount(draws[:, side, row], minlength=size)
            assert counts[row] == 0  # never the positive
            assert (counts[torch.arange(size) != row] > 0).all(), (side, row, counts.tolist())


def test_hard_negatives_never_draw_the_positive_of_a_gathered_batch():
    """On rank 1 of 2 the positives sit at columns 4..7 of the gathered batch; a softmax that underflows still draws."""
    sim = torch.zeros(4, 8)
    targets = torch.arange(4, 8)
    sim[torch.arange(4), targets] = 1000.0  # everything else underflows to 0 after the softmax
    itc = itc_result(sim, sim.clone(), targets)
    torch.manual_seed(0)
    for _ in range(50):
        for drawn in hard_negatives(itc):
            assert drawn.shape == (4,) and not (drawn == targets).any()
            assert ((drawn >= 0) & (drawn < 8)).all()


def test_hard_negatives_need_two_samples():
    with pytest.raises(ValueError):
        hard_negatives(itc_result(torch.zeros(1, 1), torch.zeros(1, 1)))


# ---------------------------------------------------------------- ITC


def test_itc_aligned_features_give_near_zero_loss_and_swapped_ones_a_large_loss():
    z = torch.eye(4, 8)  # orthonormal rows
    temp = torch.tensor(0.01)
    aligned = itc_loss(z, z.clone(), temp)
    assert aligned.loss.item() < 1e-6
    assert torch.equal(aligned.targets, torch.arange(4))
    swapped = itc_loss(z, z.roll(1, dims=0), temp)
    assert swapped.loss.item() > 50.0


def test_itc_equals_hand_computed_symmetric_cross_entropy():
    generator = torch.Generator().manual_seed(3)
    zi = F.normalize(torch.randn(5, 12, generator=generator), dim=-1)
    zt = F.normalize(torch.randn(5, 12, generator=generator), dim=-1)
    temp = torch.tensor(0.07)
    result = itc_loss(zi, zt, temp)
    logits = zi @ zt.T / temp
    targets = torch.arange(5)
    want = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
    assert torch.allclose(result.loss, want, atol=1e-6)
    assert torch.allclose(result.sim_i2t, logits, atol=1e-6) and torch.allclose(result.sim_t2i, logits.T, atol=1e-6)
    # By hand, without F.cross_entropy: -log softmax of the diagonal.
    by_hand = -(logits.log_softmax(1).diagonal().mean() + logits.T.log_softmax(1).diagonal().mean()) / 2
    assert math.isclose(result.loss.item(), by_hand.item(), abs_tol=1e-5)


@torch.no_grad()
def test_contrastive_features_are_unit_length_with_stand_ins(tokenizer):
    """H_v stands in for H_g without grounding queries; H_ic stands in for H_sp without spatial text."""
    batch = make_batch(tokenizer)
    model = build_model(tokenizer).eval()
    z_image, z_text = contrastive_features(model, forward(model, batch.image, batch.text, itc_mask), batch.text)
    assert z_image.shape == z_text.shape == (4, 512)
    assert torch.allclose(z_image.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(z_text.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert differs(z_image[:, :256], z_image[:, 256:]) and differs(z_text[:, :256], z_text[:, 256:])

    ablated = build_model(tokenizer, use_grounding=False).eval()
    z_image, _ = contrastive_features(ablated, forward(ablated, batch.image, batch.text, itc_mask), batch.text)
    assert torch.equal(z_image[:, :256], z_image[:, 256:])

    no_spatial = make_text(tokenizer, settings=dataclasses.replace(SETTINGS, spatial_representation=False))
    _, z_text = contrastive_features(model, forward(model, batch.image, no_spatial, itc_mask), no_spatial)
    assert torch.equal(z_text[:, :256], z_text[:, 256:])


# ---------------------------------------------------------------- ITM heads, the total loss


def manual_itm(model: MQFormerForPretraining, batch: PretrainBatch, itc: ItcResult, ids: TokenIds, seed: int) -> torch.Tensor:
    """ITM recomputed from its parts with the same draws: positives, (text, negative image), (image, negative text)."""
    torch.manual_seed(seed)
    image_for_text, text_for_image = hard_negatives(itc)
    size = len(batch.text.input_ids)
    image = ImageInputs.concat([batch.image, batch.image.select(image_for_text), batch.image])
    text = PretrainText.concat([batch.text, batch.text, batch.text.select(text_for_image)], ids.pad)
    visual, grounding = model.pool_queries(forward(model, image, text, itm_mask).query_states)
    labels = torch.tensor([1] * size + [0] * 2 * size)
    losses = [F.cross_entropy(model.itm_head(visual), labels)]
    if grounding is not None:
        losses.append(F.cross_entropy(model.itm_head_grounding(grounding), labels))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("use_grounding", [True, False])
@torch.no_grad()
def test_itm_uses_one_head_per_query_kind(tokenizer, ids, use_grounding):
    batch = make_batch(tokenizer)
    model = build_model(tokenizer, use_grounding=use_grounding).eval()
    # Heads with some signal, so that the two heads' losses differ.
    torch.manual_seed(5)
    for head in (model.itm_head, model.itm_head_grounding):
        if head is not None:
            head.weight.normal_(0.0, 1.0)
    assert (model.itm_head_grounding is None) == (not use_grounding)
    generator = torch.Generator().manual_seed(4)
    sim = torch.randn(4, 4, generator=generator)
    itc = itc_result(sim, sim.T.clone())
    torch.manual_seed(7)
    got = itm_loss(model, batch, itc, ids)
    assert torch.allclose(got, manual_itm(model, batch, itc, ids, seed=7), atol=1e-6)


def test_pretraining_losses(tokenizer, ids):
    batch = make_batch(tokenizer)
    model = build_model(tokenizer).train()
    torch.manual_seed(0)
    losses = pretraining_losses(model, batch, ids, 0.5)
    assert set(losses) == {"itc", "itm", "icg", "msp", "loss"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    assert torch.allclose(losses["loss"], losses["itc"] + losses["itm"] + losses["icg"] + losses["msp"])
    # From a random start: ITC about log(B), ITM about log(2), ICG and MSP about log(vocabulary).
    assert abs(losses["itc"].item() - math.log(4)) < 0.2
    assert abs(losses["itm"].item() - math.log(2)) < 0.1
    for name in ("icg", "msp"):
        assert abs(losses[name].item() - math.log(len(tokenizer))) < 1.0, name
    losses["loss"].backward()
    for name in ("vision_proj.weight", "text_proj.weight", "itm_head.weight", "itm_head_grounding.weight", "temp"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    query_grad = model.mqformer.grounding_query_tokens.grad
    assert query_grad is not None and query_grad.abs().sum() > 0


def test_pretraining_losses_without_grounding_queries(tokenizer, ids):
    model = build_model(tokenizer, use_grounding=False)
    assert model.itm_head_grounding is None and model.num_grounding == 0
    torch.manual_seed(0)
    losses = pretraining_losses(model, make_batch(tokenizer), ids, 0.5)
    assert set(losses) == {"itc", "itm", "icg", "msp", "loss"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert torch.allclose(losses["loss"], sum(v for k, v in losses.items() if k != "loss"))


def test_pretraining_losses_without_spatial_representation(tokenizer, ids):
    settings = dataclasses.replace(SETTINGS, spatial_representation=False)
    batch = make_batch(tokenizer, settings=settings)
    assert not batch.text.spatial_lengths.any()
    model = build_model(tokenizer, spatial_representation=False)
    torch.manual_seed(0)
    losses = pretraining_losses(model, batch, ids, 0.5)
    assert set(losses) == {"itc", "itm", "icg", "loss"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert torch.allclose(losses["loss"], losses["itc"] + losses["itm"] + losses["icg"])


@torch.no_grad()
def test_icg_predicts_each_next_caption_token(model, batch, ids):
    """[DEC] predicts the first word, ..., the last word predicts [SEP]; nothing else enters the loss."""
    text = batch.text
    states = forward(model, batch.image, text, icg_mask, icg_ids(text, ids)).text_states
    logits, targets = [], []
    for row in range(len(text.input_ids)):
        s, c = int(text.spatial_lengths[row]), int(text.caption_lengths[row])
        logits.append(model.mqformer.lm_logits(states[row, s : s + c - 1]))
        targets.append(text.input_ids[row, s + 1 : s + c])
        assert targets[-1][-1] == ids.sep and ids.cls not in targets[-1].tolist()
    want = F.cross_entropy(torch.cat(logits), torch.cat(targets))
    assert torch.allclose(icg_loss(model, batch, ids), want, atol=1e-5)


@torch.no_grad()
def test_msp_predicts_the_masked_objects(model, batch, ids):
    text = batch.text
    torch.manual_seed(3)
    input_ids, masked = mask_objects(text, 0.5, ids.mask)
    assert masked.any()
    input_ids[:, 0] = ids.mlm
    states = forward(model, batch.image, text, msp_mask, input_ids).text_states
    want = F.cross_entropy(model.mqformer.lm_logits(states[masked]), text.input_ids[masked])
    torch.manual_seed(3)  # the same draw
    assert torch.allclose(msp_loss(model, batch, ids, 0.5), want, atol=1e-5)


def test_msp_of_a_batch_without_objects_is_a_zero_in_the_graph(tokenizer, ids):
    model = build_model(tokenizer)
    batch = PretrainBatch(make_image(2), encode_pretrain_text(tokenizer, [""] * 2, ["a cat", "a dog"], SETTINGS))
    loss = msp_loss(model, batch, ids, 0.5)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert model.mqformer.embeddings.word_embeddings.weight.grad is not None


# ---------------------------------------------------------------- a few steps of training


def test_a_few_steps_reduce_every_loss(tokenizer, ids):
    batch = make_batch(tokenizer)
    model = build_model(tokenizer).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    history: dict[str, list[float]] = {}
    for step in range(30):
        torch.manual_seed(step)
        losses = pretraining_losses(model, batch, ids, 0.5)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        for name, value in losses.items():
            history.setdefault(name, []).append(value.item())
    # A step that drew no object has an MSP of exactly 0: MSP compares the steps that drew one.
    history["msp"] = [v for v in history["msp"] if v != 0.0]
    assert len(history["msp"]) >= 20
    for name in ("itc", "itm", "icg", "msp"):
        first, last = sum(history[name][:5]) / 5, sum(history[name][-5:]) / 5
        assert last < first, (name, [round(v, 3) for v in history[name]])
