"""A small LLaMA in exactly the layout lmsys ships Vicuna-13B v1.5, for tests and `make rehearse`.

What makes that layout hard for loaders, reproduced on purpose:

- the tokenizer is a sentencepiece ``tokenizer.model`` only (no ``tokenizer.json``), with
  ``"tokenizer_class": "LlamaTokenizer"``, ``"pad_token": null`` and no chat template in
  ``tokenizer_config.json`` (``special_tokens_map.json`` beside it);
- the weights are ``pytorch_model-0000N-of-0000M.bin`` shards (plain ``torch.save`` state dicts)
  with a ``pytorch_model.bin.index.json`` weight map;
- ``config.json`` is a ``LlamaConfig`` and ``generation_config.json`` names ``</s>`` as the end.

The sentencepiece model is trained here, as LLaMA's was (BPE, byte fallback, split digits,
``<unk>`` = 0, ``<s>`` = 1, ``</s>`` = 2, no pad), on text the caller gives.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM


@dataclass(frozen=True)
class VicunaSize:
    vocab_size: int = 512  # at most: sentencepiece keeps fewer pieces when the corpus has fewer
    hidden_size: int = 64
    intermediate_size: int = 172
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    shards: int = 2


def write_vicuna_folder(folder: Path, corpus: Iterable[str], seed: int = 0, size: VicunaSize = VicunaSize()) -> Path:
    """A random-weight LLaMA with a tokenizer trained on ``corpus``, in Vicuna v1.5's folder layout."""
    import sentencepiece as spm  # the layout's tokenizer needs it; a declared dependency of the train extra

    folder.mkdir(parents=True, exist_ok=True)
    model_proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(corpus)), model_writer=model_proto, vocab_size=size.vocab_size, model_type="bpe",
        byte_fallback=True, split_digits=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0,
        add_dummy_prefix=True, normalization_rule_name="identity", remove_extra_whitespaces=False, minloglevel=2,
        hard_vocab_limit=False,  # a small corpus gives fewer pieces than asked for: the model takes what there is
    )  # fmt: skip
    (folder / "tokenizer.model").write_bytes(model_proto.getvalue())
    vocab_size = spm.SentencePieceProcessor(model_proto=model_proto.getvalue()).get_piece_size()
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    tokenizer_config = {
        "add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False, "legacy": False,
        "model_max_length": 4096, "pad_token": None, "padding_side": "right", "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer", **special,
    }  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=size.hidden_size, intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_hidden_layers, num_attention_heads=size.num_attention_heads,
        num_key_value_heads=size.num_attention_heads, max_position_embeddings=4096, rms_norm_eps=1e-5,
        bos_token_id=1, eos_token_id=2, pad_token_id=None, tie_word_embeddings=False,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    config.save_pretrained(folder)
    GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0).save_pretrained(folder)
    _write_bin_shards(folder, {name: tensor.contiguous() for name, tensor in model.state_dict().items()}, size.shards)
    return folder


def _write_bin_shards(folder: Path, state: dict[str, torch.Tensor], shards: int) -> None:
    names = list(state)
    per_shard = -(-len(names) // shards)
    weight_map = {}
    for index in range(shards):
        file = f"pytorch_model-{index + 1:05d}-of-{shards:05d}.bin"
        part = {name: state[name] for name in names[index * per_shard : (index + 1) * per_shard]}
        torch.save(part, folder / file)
        weight_map.update(dict.fromkeys(part, file))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2) + "\n")
