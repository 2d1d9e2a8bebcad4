"""The stage-2 LVLM on a small MQ-Former and a small random LLaMA: what trains, where the image goes, generation."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lyrics.model.lvlm import ImageFeatures, LoraSettings, LyricsLVLM
from lyrics.model.mqformer import MQFormer, MQFormerConfig

QUERIES, VOCAB, PAD = 4, 97, 0


def build(grounding: bool = True) -> LyricsLVLM:
    torch.manual_seed(0)
    mq = MQFormer(MQFormerConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                                 num_visual_queries=QUERIES, num_grounding_queries=QUERIES, use_grounding=grounding,
                                 vision_width=16, vocab_size=50, max_position_embeddings=64,
                                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))  # fmt: skip
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, pad_token_id=PAD))  # fmt: skip
    return LyricsLVLM(mq, llm, LoraSettings(rank=4, alpha=8, dropout=0.0)).eval()


def image(batch: int = 2, seed: int = 1, spatial: bool = True) -> ImageFeatures:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 50, (batch, 6), generator=g)
    return ImageFeatures(
        torch.randn(batch, 9, 16, generator=g), torch.randn(batch, 5, 260, generator=g), torch.ones(batch, 5, dtype=torch.bool),
        ids if spatial else None, torch.full((batch,), 6) if spatial else None,
    )  # fmt: skip


def prompt(model: LyricsLVLM, batch: int = 2, prefix: int = 3, suffix: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``prefix`` tokens, the image slot, ``suffix`` tokens; all attended."""
    n = model.num_visual_tokens
    ids = torch.cat([torch.randint(3, VOCAB, (batch, prefix)), torch.full((batch, n), PAD), torch.randint(3, VOCAB, (batch, suffix))], 1)
    positions = torch.zeros_like(ids, dtype=torch.bool)
    positions[:, prefix : prefix + n] = True
    return ids, torch.ones_like(ids), positions


def test_only_the_mqformer_the_projection_and_lora_train_and_the_llm_stays_put():
    model = build()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n in trainable if n.startswith("llm.")} == {n for n, _ in model.named_parameters() if "lora_" in n}
    frozen_head = {n for n, p in model.mqformer.named_parameters() if not p.requires_grad}
    assert frozen_head == {"cls.predictions.bias", *(f"cls.predictions.transform.{k}" for k in ("dense.weight", "dense.bias", "LayerNorm.weight", "LayerNorm.bias"))}
    assert model.mqformer.embeddings.word_embeddings.weight.requires_grad  # the tied decoder's weight reads the spatial text
    assert all(p.requires_grad for p in model.projection.parameters())
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    # q_proj (48 -> 48) and v_proj (48 -> 24, two KV heads of 12) per layer: r x (in + out) each.
    assert lora == 2 * (4 * (48 + 48) + 4 * (48 + 24))
    base = {n: p.detach().clone() for n, p in model.llm.named_parameters() if "lora_" not in n}
    ids, attention, positions = prompt(model.train())
    labels = ids.masked_fill(positions, -100)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        model(image(), ids, attention, positions, labels).loss.backward()
        optimizer.step()
    assert all(torch.equal(p, base[n]) for n, p in model.llm.named_parameters() if "lora_" not in n)
    assert model.projection.weight.grad is not None and model.mqformer.visual_query_tokens.grad is not None


def test_the_visual_tokens_sit_at_the_image_slot_and_only_later_positions_see_them():
    model = build()
    torch.manual_seed(2)
    ids, attention, positions = prompt(model)
    a = model(image(seed=1), ids, attention, positions).logits
    b = model(image(seed=2), ids, attention, positions).logits
    prefix = 3
    assert torch.allclose(a[:, :prefix], b[:, :prefix], atol=1e-6)  # causal: the prompt before the image is blind to it
    assert (a[:, -1] - b[:, -1]).abs().max() > 1e-4
    embeddings = model.prompt_embeddings(image(seed=1), ids, positions)
    assert torch.allclose(embeddings[positions].view(2, -1, 48), model.visual_tokens(image(seed=1)), atol=1e-6)
    assert torch.equal(embeddings[~positions], model.llm.get_input_embeddings()(ids)[~positions])


def test_semantic_aware_extraction_reads_the_spatial_text():
    model = build()
    with_text, other_text = image(seed=1), image(seed=1)
    other_text.spatial_ids = other_text.spatial_ids.flip(1)
    assert (model.visual_tokens(with_text) - model.visual_tokens(other_text)).abs().max() > 1e-4
    assert model.visual_tokens(image(seed=1, spatial=False)).shape == (2, 2 * QUERIES, 48)
    assert build(grounding=False).visual_tokens(image()).shape == (2, QUERIES, 48)


def test_greedy_generation_is_the_argmax_continuation():
    model = build()
    torch.manual_seed(3)
    ids, attention, positions = prompt(model)
    out = model.generate(image(), ids, attention, positions, max_new_tokens=3)
    assert out.shape == (2, 3)
    first = model(image(), ids, attention, positions).logits[:, -1].argmax(-1)
    assert torch.equal(out[:, 0], first)
    assert torch.equal(out, model.generate(image(), ids, attention, positions, max_new_tokens=3))


def test_a_prompt_without_the_right_image_slot_is_refused():
    model = build()
    ids, attention, positions = prompt(model)
    positions[0, 3] = False
    with pytest.raises(ValueError, match=r"each prompt needs 8 image positions, got \[7, 8\]"):
        model(image(), ids, attention, positions)
