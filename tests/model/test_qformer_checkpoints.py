"""BLIP-2 checkpoints in the LAVIS and Hugging Face layouts initialize the same MQ-Former; the grounding side is new."""

import math

import pytest
import torch
from safetensors.torch import save_file
from transformers import Blip2QFormerConfig, Blip2QFormerModel
from transformers.models.blip_2.modeling_blip_2 import Blip2TextEmbeddings

from lyrics.model.mqformer import MQFormer, MQFormerConfig
from lyrics.model.qformer_checkpoints import load_qformer_checkpoint

LAYERS, HIDDEN, HEADS, FFN, VISION, QUERIES, VOCAB, EMBED = 4, 64, 4, 128, 48, 8, 101, 16


def config(**changes) -> MQFormerConfig:
    small = dict(
        num_hidden_layers=LAYERS, hidden_size=HIDDEN, num_attention_heads=HEADS, intermediate_size=FFN,
        num_visual_queries=QUERIES, num_grounding_queries=QUERIES, vision_width=VISION, vocab_size=VOCAB,
        max_position_embeddings=32,
    )  # fmt: skip
    return MQFormerConfig(**(small | changes))


def grounding_keys(layers: int = LAYERS) -> set[str]:
    names = [f"self.{p}.{t}" for p in ("query", "key", "value") for t in ("weight", "bias")]
    names += [f"output.{p}.{t}" for p in ("dense", "LayerNorm") for t in ("weight", "bias")]
    return {f"encoder.layer.{i}.crossattention_grounding.{n}" for i in range(0, layers, 2) for n in names}


@torch.no_grad()
def hf_state_dict() -> dict[str, torch.Tensor]:
    """A small Blip2ForImageTextRetrieval-layout state dict (Q-Former with text input, text embeddings, heads)."""
    torch.manual_seed(0)
    qformer_config = Blip2QFormerConfig(
        num_hidden_layers=LAYERS, hidden_size=HIDDEN, num_attention_heads=HEADS, intermediate_size=FFN,
        encoder_hidden_size=VISION, use_qformer_text_input=True, vocab_size=VOCAB, max_position_embeddings=32,
    )  # fmt: skip
    state = {f"qformer.{k}": v for k, v in Blip2QFormerModel(qformer_config).state_dict().items()}
    state |= {f"embeddings.{k}": v for k, v in Blip2TextEmbeddings(qformer_config).state_dict().items()}
    state |= {
        "query_tokens": torch.randn(1, QUERIES, HIDDEN),
        "vision_model.post_layernorm.weight": torch.randn(VISION),
        "vision_model.post_layernorm.bias": torch.randn(VISION),
        "vision_projection.weight": torch.randn(EMBED, HIDDEN),
        "vision_projection.bias": torch.randn(EMBED),
        "text_projection.weight": torch.randn(EMBED, HIDDEN),
        "text_projection.bias": torch.randn(EMBED),
        "itm_head.weight": torch.randn(2, HIDDEN),
        "itm_head.bias": torch.randn(2),
    }
    return {k: v + torch.randn_like(v) * 0.1 for k, v in state.items()}  # no LayerNorm left at 1/0


def hf_to_lavis(key: str) -> str:
    """CHECKPOINTS.md c, read backwards: written here independently of the loader's maps."""
    renames = {"vision_model.post_layernorm.": "ln_vision.", "vision_projection.": "vision_proj.", "text_projection.": "text_proj.",
               "qformer.layernorm.": "Qformer.bert.embeddings.LayerNorm.", "embeddings.": "Qformer.bert.embeddings.",
               "qformer.": "Qformer.bert."}  # fmt: skip
    for hf, lavis in renames.items():
        if key.startswith(hf):
            return (lavis + key.removeprefix(hf)).replace("attention.attention.", "attention.self.")
    return key  # query_tokens, itm_head


@torch.no_grad()
def lavis_state_dict(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = {hf_to_lavis(k): v for k, v in hf.items()}
    words = state["Qformer.bert.embeddings.word_embeddings.weight"]
    bias = torch.randn(VOCAB)
    state |= {
        "Qformer.bert.embeddings.position_ids": torch.arange(32)[None],
        "Qformer.cls.predictions.transform.dense.weight": torch.randn(HIDDEN, HIDDEN),
        "Qformer.cls.predictions.transform.dense.bias": torch.randn(HIDDEN),
        "Qformer.cls.predictions.transform.LayerNorm.weight": torch.randn(HIDDEN),
        "Qformer.cls.predictions.transform.LayerNorm.bias": torch.randn(HIDDEN),
        "Qformer.cls.predictions.bias": bias,
        "Qformer.cls.predictions.decoder.weight": words.clone(),  # tied in BLIP-2; torch.save writes both
        "Qformer.cls.predictions.decoder.bias": bias.clone(),
        "temp": torch.tensor(0.07),
    }
    return state


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("blip2")
    hf = hf_state_dict()
    save_file(hf, folder / "blip2_hf.safetensors")
    torch.save({"model": lavis_state_dict(hf)}, folder / "blip2_pretrained.pth")
    return folder / "blip2_pretrained.pth", folder / "blip2_hf.safetensors"


def build(seed: int = 7, **changes) -> MQFormer:
    torch.manual_seed(seed)  # same seed: same initialization of what the checkpoints do not provide
    return MQFormer(config(**changes)).eval()


def test_lavis_checkpoint_loads_fully_except_the_grounding_cross_attention(checkpoints):
    lavis, _ = checkpoints
    model = build()
    report = load_qformer_checkpoint(model, lavis)
    assert report.unexpected == []
    assert report.ignored == ["Qformer.bert.embeddings.position_ids"]
    assert set(report.missing) == grounding_keys()
    assert sorted(report.heads) == sorted(
        ["vision_proj.weight", "vision_proj.bias", "text_proj.weight", "text_proj.bias", "itm_head.weight", "itm_head.bias", "temp"]
    )
    state = torch.load(lavis, weights_only=True)["model"]
    assert torch.equal(model.visual_query_tokens, state["query_tokens"])
    assert torch.equal(model.grounding_query_tokens, state["query_tokens"])  # both kinds start from BLIP-2's queries
    assert torch.equal(model.cls.predictions.decoder.weight, state["Qformer.bert.embeddings.word_embeddings.weight"])
    assert torch.equal(model.lm_logits(torch.zeros(1, 1, HIDDEN))[0, 0], model.cls(torch.zeros(1, 1, HIDDEN))[0, 0])


def test_lavis_and_hf_layouts_give_the_same_model(checkpoints):
    lavis, hf = checkpoints
    from_lavis, from_hf = build(), build()
    lavis_report, hf_report = load_qformer_checkpoint(from_lavis, lavis), load_qformer_checkpoint(from_hf, hf)
    # HF has no LM head (and no temp); everything else is the same weights.
    assert set(hf_report.missing) == grounding_keys() | {n for n, _ in from_hf.named_parameters() if n.startswith("cls.predictions.")}
    assert hf_report.unexpected == [] and "temp" not in hf_report.heads
    for name in hf_report.heads:
        assert torch.equal(hf_report.heads[name], lavis_report.heads[name]), name
    lavis_params = dict(from_lavis.named_parameters())
    for name, param in from_hf.named_parameters():
        if not name.startswith("cls."):
            assert torch.equal(param, lavis_params[name]), name
    batch, length = 2, 5
    inputs = dict(
        input_ids=torch.randint(1, VOCAB, (batch, length)),
        vit_tokens=torch.randn(batch, 9, VISION),
        refiner_tokens=torch.randn(batch, 6, 260),
        refiner_mask=torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]).bool(),
        attention_mask=torch.rand(batch, 2 * QUERIES + length, 2 * QUERIES + length) > 0.3,
    )
    with torch.no_grad():
        a, b = from_lavis(**inputs), from_hf(**inputs)
    assert torch.equal(a.query_states, b.query_states) and torch.equal(a.text_states, b.text_states)


def test_grounding_cross_attention_is_xavier_initialized(checkpoints):
    model = build(seed=11)
    report = load_qformer_checkpoint(model, checkpoints[0])
    attentions = model.grounding_cross_attentions()
    assert len(attentions) == LAYERS // 2
    for attention in attentions:
        for linear in (attention.self.query, attention.self.key, attention.self.value, attention.output.dense):
            fan_out, fan_in = linear.weight.shape
            bound = math.sqrt(6 / (fan_in + fan_out))  # xavier_uniform: U(-bound, bound), std = bound / sqrt(3)
            assert linear.weight.abs().max() <= bound
            assert linear.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
            assert torch.count_nonzero(linear.bias) == 0
    assert attentions[0].self.query.weight.shape == model.encoder.layer[0].crossattention.self.query.weight.shape
    assert not torch.equal(attentions[0].self.query.weight, model.encoder.layer[0].crossattention.self.query.weight)
    assert {f"encoder.layer.{i}.crossattention_grounding.self.key.weight" for i in (0, 2)} <= set(report.missing)


def test_without_grounding_queries_nothing_is_missing(checkpoints):
    model = build(use_grounding=False)
    report = load_qformer_checkpoint(model, checkpoints[0])
    assert report.missing == [] and report.unexpected == []
    assert not model.grounding_cross_attentions() and not hasattr(model, "grounding_query_tokens")


def test_a_different_vision_width_is_refused_naming_both(checkpoints):
    with pytest.raises(ValueError, match=r"48 wide.*vision_width is 1024"):
        load_qformer_checkpoint(build(vision_width=1024), checkpoints[0])


def test_other_shape_mismatches_are_listed(checkpoints):
    with pytest.raises(ValueError, match=r"word_embeddings.weight: checkpoint \(101, 64\), model \(30523, 64\)"):
        load_qformer_checkpoint(build(vocab_size=30523), checkpoints[0])


def test_an_untied_lm_decoder_is_refused(tmp_path, checkpoints):
    state = torch.load(checkpoints[0], weights_only=True)["model"]
    state["Qformer.cls.predictions.decoder.weight"] = state["Qformer.cls.predictions.decoder.weight"] + 1
    torch.save({"model": state}, tmp_path / "untied.pth")
    with pytest.raises(ValueError, match="tied"):
        load_qformer_checkpoint(build(), tmp_path / "untied.pth")
