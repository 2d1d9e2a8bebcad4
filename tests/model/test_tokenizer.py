"""The WordPiece tokenizer with Lyrics' tokens: stable ids, single-token spatial tags, resized embeddings."""

import shutil

import pytest
import torch

from lyrics.model.mqformer import MQFormer, MQFormerConfig
from lyrics.model.tokenizer import SPECIAL_TOKENS, TokenIds, build_tokenizer, vocab_dir
from lyrics.spatial_text import SPATIAL_TOKENS, format_objects

TINY = MQFormerConfig.profile("tiny")


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(vocab_dir(TINY.vocab))


def test_ids_are_stable(tokenizer):
    ids = TokenIds.of(tokenizer)
    assert (ids.pad, ids.cls, ids.sep, ids.mask) == (0, 101, 102, 103)
    assert (ids.dec, ids.bos, ids.mlm) == (30522, 30523, 30524)  # [DEC] keeps BLIP-2's row 30522
    assert tokenizer.convert_tokens_to_ids(list(SPATIAL_TOKENS)) == list(range(30525, 30531))
    assert len(tokenizer) == 30531
    assert set(SPECIAL_TOKENS) <= set(tokenizer.all_special_tokens)


def test_spatial_text_tags_are_single_tokens_and_text_is_lowercased(tokenizer):
    spatial = format_objects(["Red car"], [(0.01, 0.2, 0.5, 1.0)])
    ids = tokenizer(f"[BOS]{spatial}[CLS] A Car", add_special_tokens=False).input_ids
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[:5] == ["[BOS]", "<br>", "<T>", "red", "car"]
    assert tokens[5:7] == ["</T>", "<Bbox>"] and tokens[-5:] == ["</Box>", "</br>", "[CLS]", "a", "car"]
    # Only the exact tags are tags: their lower-cased forms are ordinary text.
    assert not set(tokenizer("<t> <bbox>", add_special_tokens=False).input_ids) & set(range(30522, 30531))
    # Decoding drops the special tokens but keeps the spatial tags.
    assert tokenizer.decode(ids, skip_special_tokens=True).startswith("<br> <T> red car </T> <Bbox>")


def test_paper_vocabulary_sits_beside_the_checkpoint(tmp_path):
    (tmp_path / "bert-base-uncased").mkdir()
    shutil.copy(vocab_dir(TINY.vocab) / "vocab.txt", tmp_path / "bert-base-uncased")
    paper = MQFormerConfig.profile("paper")
    assert vocab_dir(paper.vocab, tmp_path / "blip2_pretrained.pth") == tmp_path / "bert-base-uncased"
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        vocab_dir(paper.vocab, tmp_path / "elsewhere" / "blip2_pretrained.pth")


def test_embeddings_resize_to_the_tokenizer(tokenizer):
    torch.manual_seed(0)
    small = MQFormerConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, vision_width=16)
    model = MQFormer(small)
    old_rows = model.embeddings.word_embeddings.weight.detach().clone()
    old_bias = model.cls.predictions.bias.detach().clone()
    model.resize_token_embeddings(len(tokenizer))
    words = model.embeddings.word_embeddings.weight
    assert words.shape == (30531, 32) and model.config.vocab_size == 30531
    assert torch.equal(words[:30523], old_rows)  # BLIP-2's rows, [DEC] included, are kept
    assert torch.equal(model.cls.predictions.bias[:30523], old_bias)
    assert model.cls.predictions.decoder.weight is words  # still tied
    assert model.cls.predictions.decoder.bias is model.cls.predictions.bias
    assert model.lm_logits(torch.zeros(1, 2, 32)).shape == (1, 2, 30531)
    assert len({row.sum().item() for row in words[30523:]}) == 8  # new rows differ from each other
    ids = torch.tensor([tokenizer("[BOS]<br> a </br>[CLS] b").input_ids])
    assert model(input_ids=ids).text_states.shape == (1, ids.shape[1], 32)
