"""MQ-Former forward: shapes, the caller's attention mask, the refiner key-padding mask, the calls BLIP-2 makes."""

import dataclasses

import pytest
import torch

from lyrics.model.mqformer import MQFormer, MQFormerConfig

HIDDEN, VISION, REFINER, NV, NG = 32, 24, 260, 4, 3
SMALL = MQFormerConfig(
    num_hidden_layers=3, hidden_size=HIDDEN, num_attention_heads=4, intermediate_size=64, num_visual_queries=NV,
    num_grounding_queries=NG, vision_width=VISION, vocab_size=50, max_position_embeddings=16,
)  # fmt: skip
BATCH, TEXT, VIT, OBJECTS = 2, 5, 7, 6


def inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return dict(
        input_ids=torch.randint(1, 50, (BATCH, TEXT), generator=generator),
        vit_tokens=torch.randn(BATCH, VIT, VISION, generator=generator),
        refiner_tokens=torch.randn(BATCH, OBJECTS, REFINER, generator=generator),
        refiner_mask=torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]]).bool(),
    )


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(request) -> MQFormer:
    torch.manual_seed(0)
    return MQFormer(dataclasses.replace(SMALL, attn_implementation=request.param)).eval()


@torch.no_grad()
def test_shapes_with_and_without_grounding(model):
    out = model(**inputs())
    assert out.query_states.shape == (BATCH, NV + NG, HIDDEN) and out.text_states.shape == (BATCH, TEXT, HIDDEN)
    queries_only = model(**{k: v for k, v in inputs().items() if k != "input_ids"})
    assert queries_only.query_states.shape == (BATCH, NV + NG, HIDDEN) and queries_only.text_states is None
    torch.manual_seed(0)
    ablated = MQFormer(dataclasses.replace(SMALL, use_grounding=False)).eval()
    out = ablated(input_ids=inputs()["input_ids"], vit_tokens=inputs()["vit_tokens"])
    assert out.query_states.shape == (BATCH, NV, HIDDEN) and out.text_states.shape == (BATCH, TEXT, HIDDEN)
    with pytest.raises(ValueError, match="no grounding queries"):
        ablated(**inputs())


@torch.no_grad()
def test_padded_refiner_tokens_do_not_change_the_output(model):
    base = inputs()
    changed = dict(base, refiner_tokens=base["refiner_tokens"].clone())
    changed["refiner_tokens"][0, 3:] = 100.0  # only masked tokens of sample 0 change
    a, b = model(**base), model(**changed)
    assert torch.allclose(a.query_states, b.query_states, atol=1e-6)
    changed["refiner_tokens"][0, 0] = 100.0  # a real token does change it
    assert not torch.allclose(a.query_states[0], model(**changed).query_states[0], atol=1e-3)


@torch.no_grad()
def test_block_diagonal_mask_equals_separate_passes(model):
    """BLIP-2's ITC: queries and text that cannot see each other give the queries-only and text-only outputs."""
    queries, length = NV + NG, NV + NG + TEXT
    mask = torch.zeros(BATCH, length, length, dtype=torch.bool)
    mask[:, :queries, :queries] = True
    mask[:, queries:, queries:] = True
    joint = model(**inputs(), attention_mask=mask)
    alone = inputs()
    ids = alone.pop("input_ids")
    assert torch.allclose(joint.query_states, model(**alone).query_states, atol=1e-5)
    assert torch.allclose(joint.text_states, model(input_ids=ids).text_states, atol=1e-5)


@torch.no_grad()
def test_boolean_and_additive_masks_agree_and_the_mask_is_honoured(model):
    length = NV + NG + TEXT
    mask = torch.rand(BATCH, length, length, generator=torch.Generator().manual_seed(1)) > 0.4
    mask |= torch.eye(length, dtype=torch.bool)
    boolean = model(**inputs(), attention_mask=mask)
    additive = model(**inputs(), attention_mask=(~mask).float() * -10000.0)  # LAVIS's convention
    assert torch.allclose(boolean.text_states, additive.text_states, atol=1e-5)
    # Causal text: the first text token's output ignores every later token.
    causal = torch.ones(BATCH, length, length, dtype=torch.bool).tril()
    changed = inputs()
    changed["input_ids"][:, 1:] = (changed["input_ids"][:, 1:] + 1) % 50
    a, b = model(**inputs(), attention_mask=causal), model(**changed, attention_mask=causal)
    assert torch.allclose(a.text_states[:, 0], b.text_states[:, 0], atol=1e-6)
    assert not torch.allclose(a.text_states[:, 1], b.text_states[:, 1], atol=1e-3)


def test_bad_calls_are_refused(model):
    with pytest.raises(ValueError, match=r"attention_mask must be \(B, L, L\) = \(2, 12, 12\)"):
        model(**inputs(), attention_mask=torch.ones(BATCH, 12, dtype=torch.bool))
    with pytest.raises(ValueError, match="pass refiner_tokens"):
        model(vit_tokens=inputs()["vit_tokens"])
    with pytest.raises(ValueError, match="needs input_ids, vit_tokens or both"):
        model()


def test_bf16_autocast_and_backward(model):
    length = NV + NG + TEXT
    mask = torch.ones(BATCH, length, length, dtype=torch.bool).tril()
    mask[:, :, -1] = False  # a column nobody sees, and a row (the last) that sees only earlier tokens
    model.train()
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(**inputs(), attention_mask=mask)
            loss = out.query_states.float().square().mean() + model.lm_logits(out.text_states).float().logsumexp(-1).mean()
        loss.backward()
        grounding = model.encoder.layer[0].crossattention_grounding.self.key.weight.grad
    finally:
        model.eval()
        model.zero_grad(set_to_none=True)
    assert torch.isfinite(loss)
    assert grounding is not None and torch.isfinite(grounding).all() and grounding.abs().sum() > 0


def test_profiles(tmp_path):
    assert MQFormerConfig.profile("paper") == MQFormerConfig()  # the JSON spells out the paper defaults
    tiny = MQFormerConfig.profile("tiny")
    assert (tiny.num_hidden_layers, tiny.hidden_size, tiny.num_attention_heads, tiny.intermediate_size) == (6, 384, 12, 1536)
    assert (tiny.vision_width, tiny.num_queries) == (64, 64)
    (tmp_path / "bad.json").write_text('{"hidden_size": 8, "hiden_layers": 2}')
    with pytest.raises(ValueError, match=r"bad.json: unknown MQ-Former config key\(s\) \['hiden_layers'\]"):
        MQFormerConfig.from_json(tmp_path / "bad.json")
