"""The MQ-Former without grounding queries is the BLIP-2 Q-Former: same outputs as transformers' Blip2QFormerModel."""

import pytest
import torch
from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2QFormerConfig, Blip2QFormerModel
from transformers.models.blip_2.modeling_blip_2 import Blip2TextEmbeddings

from lyrics.model.mqformer import MQFormer, MQFormerConfig
from lyrics.model.qformer_checkpoints import load_qformer_checkpoint, load_qformer_state_dict

LAYERS, HIDDEN, HEADS, FFN, VISION, QUERIES, VOCAB = 4, 64, 4, 128, 48, 8, 100
TEXT_FFN = ("intermediate.dense", "output.dense", "output.LayerNorm")


def hf_qformer_config(text_input: bool) -> Blip2QFormerConfig:
    return Blip2QFormerConfig(
        num_hidden_layers=LAYERS, hidden_size=HIDDEN, num_attention_heads=HEADS, intermediate_size=FFN,
        encoder_hidden_size=VISION, cross_attention_frequency=2, use_qformer_text_input=text_input,
        vocab_size=VOCAB, max_position_embeddings=32,
    )  # fmt: skip


def our_config(**changes) -> MQFormerConfig:
    return MQFormerConfig(
        num_hidden_layers=LAYERS, hidden_size=HIDDEN, num_attention_heads=HEADS, intermediate_size=FFN,
        num_visual_queries=QUERIES, use_grounding=False, vision_width=VISION, vocab_size=VOCAB,
        max_position_embeddings=32, **changes,
    )  # fmt: skip


@torch.no_grad()
def perturb(module: torch.nn.Module) -> torch.nn.Module:
    """Move every weight off its initial value (LayerNorms start at 1/0) so that each one is tested."""
    for p in module.parameters():
        p.add_(torch.randn_like(p) * 0.1)
    return module.eval()


def test_queries_match_blip2_qformer_model():
    torch.manual_seed(0)
    hf = perturb(Blip2QFormerModel(hf_qformer_config(text_input=False)))
    model = MQFormer(our_config()).eval()
    report = load_qformer_state_dict(model, hf.state_dict())
    assert report.unexpected == [] and report.ignored == [] and report.heads == {}
    # A bare Blip2QFormerModel has no word/position embeddings, text FFN, LM head, queries or ln_vision.
    text_ffn = {f"encoder.layer.{i}.{m}.{p}" for i in range(LAYERS) for m in TEXT_FFN for p in ("weight", "bias")}
    assert set(report.missing) == text_ffn | {
        "visual_query_tokens", "ln_vision.weight", "ln_vision.bias",
        "embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
        "cls.predictions.bias", "cls.predictions.transform.dense.weight", "cls.predictions.transform.dense.bias",
        "cls.predictions.transform.LayerNorm.weight", "cls.predictions.transform.LayerNorm.bias",
    }  # fmt: skip
    queries = torch.randn(1, QUERIES, HIDDEN)
    model.visual_query_tokens.data.copy_(queries)
    image = torch.randn(3, 17, VISION)
    with torch.no_grad():
        ours = model(vit_tokens=image)
        theirs = hf(query_embeds=queries.expand(3, -1, -1), encoder_hidden_states=model.ln_vision(image)).last_hidden_state
    assert ours.text_states is None and ours.query_states.shape == (3, QUERIES, HIDDEN)
    assert (ours.query_states - theirs).abs().max() <= 1e-5


def test_queries_and_text_match_blip2_with_text_input():
    """The ITM path of Blip2ForImageTextRetrieval: [queries; text] in one pass, padding masked."""
    torch.manual_seed(1)
    config = hf_qformer_config(text_input=True)
    hf, embeddings = perturb(Blip2QFormerModel(config)), perturb(Blip2TextEmbeddings(config))
    model = MQFormer(our_config()).eval()
    state = {**hf.state_dict(), **{f"embeddings.{k}": v for k, v in embeddings.state_dict().items()}}
    report = load_qformer_state_dict(model, state, layout="hf")
    assert report.unexpected == []
    assert {n.split(".")[0] for n in report.missing} == {"visual_query_tokens", "ln_vision", "cls"}
    queries = torch.randn(1, QUERIES, HIDDEN)
    model.visual_query_tokens.data.copy_(queries)
    batch, length = 2, 6
    ids = torch.randint(1, VOCAB, (batch, length))
    pad = torch.ones(batch, length, dtype=torch.long)
    pad[1, 4:] = 0
    ids[1, 4:] = 0
    image = torch.randn(batch, 17, VISION)
    keys = torch.cat([torch.ones(batch, QUERIES, dtype=torch.long), pad], dim=1)
    full = QUERIES + length
    with torch.no_grad():
        ours = model(input_ids=ids, vit_tokens=image, attention_mask=keys.bool()[:, None, :].expand(batch, full, full))
        theirs = hf(
            query_embeds=embeddings(input_ids=ids, query_embeds=queries.expand(batch, -1, -1)),
            query_length=QUERIES, attention_mask=keys, encoder_hidden_states=model.ln_vision(image),
        ).last_hidden_state  # fmt: skip
    assert (ours.query_states - theirs[:, :QUERIES]).abs().max() <= 1e-5
    assert (ours.text_states - theirs[:, QUERIES:]).abs().max() <= 1e-5


def test_hf_blip2_folder_loads_without_the_llm(tmp_path):
    """A sharded Blip2ForConditionalGeneration folder: Q-Former, query_tokens and post_layernorm (= ln_vision) load."""
    torch.manual_seed(2)
    vision = dict(hidden_size=VISION, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4, image_size=28, patch_size=14)
    qformer = dict(num_hidden_layers=LAYERS, hidden_size=HIDDEN, num_attention_heads=HEADS, intermediate_size=FFN)
    opt = dict(model_type="opt", hidden_size=32, num_hidden_layers=1, num_attention_heads=4, ffn_dim=64, vocab_size=VOCAB)
    config = Blip2Config(vision_config=vision, qformer_config=qformer, text_config=opt | {"word_embed_proj_dim": 32}, num_query_tokens=QUERIES)
    blip2 = perturb(Blip2ForConditionalGeneration(config))
    blip2.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    model = MQFormer(our_config(vision_layer_norm_eps=config.vision_config.layer_norm_eps)).eval()
    report = load_qformer_checkpoint(model, tmp_path)
    assert report.unexpected == []
    assert report.ignored and all(k.startswith(("vision_model.", "language_model.", "language_projection.")) for k in report.ignored)
    assert "ln_vision.weight" not in report.missing and "visual_query_tokens" not in report.missing
    pixels = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        vision = blip2.vision_model(pixel_values=pixels, output_hidden_states=True)
        theirs = blip2.qformer(query_embeds=blip2.query_tokens.expand(2, -1, -1), encoder_hidden_states=vision.last_hidden_state)
        # vit_tokens are the encoder's output before post_layernorm, which the MQ-Former applies as ln_vision.
        ours = model(vit_tokens=vision.hidden_states[-1])
    assert (ours.query_states - theirs.last_hidden_state).abs().max() <= 1e-5


@pytest.mark.parametrize("layout", ["hf", None])
def test_unknown_keys_are_reported_not_dropped(layout):
    torch.manual_seed(3)
    hf = Blip2QFormerModel(hf_qformer_config(text_input=False))
    state = {**hf.state_dict(), "qformer.something_new.weight": torch.zeros(2)}
    report = load_qformer_state_dict(MQFormer(our_config()), state, layout=layout)
    assert report.unexpected == ["qformer.something_new.weight"]
