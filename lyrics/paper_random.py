"""The paper profile's checkpoints at paper size with random weights, each in its real upstream layout.

For `make rehearse` and the GPU benchmarks: the loaders of the `paper` profile read these exactly as
they read the files users download. One folder holds them, named as the profile's defaults name them:

    clip-vit-large-patch14/       a full CLIPModel Hugging Face folder (vision + text towers) with
                                  its preprocessor_config.json
    ram_plus_swin_large_14m.pth   RAM++ Swin-L, upstream keys, with ram_tag_list.txt and
                                  ram_tag_list_threshold.txt beside it (4585 placeholder tags)
    groundingdino_swint_ogc.pth   Grounding-DINO SwinT-OGC, upstream keys (``{"model": ...}``)
    bert-base-uncased/            a BERT-base folder (random weights, the real uncased WordPiece
                                  vocabulary): Grounding-DINO's text encoder and the Q-Former's vocab
    sam_hq_vit_h.pth              SAM-HQ ViT-H, a raw state dict
    blip2_pretrained_vitL.pth     the BLIP-2 stage-1 ViT-L Q-Former in LAVIS's layout (``{"model": ...}``)
    vicuna/                       a small LLaMA in exactly Vicuna-13B v1.5's folder layout

Each is written once, atomically; a rerun finds them. The random weights are calibrated as the tiny
profile's are (RAM++ thresholds, Grounding-DINO's scores) so that tags and boxes pass on photos.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import torch

from lyrics.config import REPO_ROOT, PipelinesConfig
from lyrics.extract.checkpoints import CHECKPOINT_ENV, ComponentSpec

CONFIGS = REPO_ROOT / "extract" / "configs"
PAPER_RAM_TAGS = 4585  # RAM++'s vocabulary size (ram_tag_list.txt upstream)
# Component -> (architecture file, checkpoint name in the folder), as the paper profile names them.
PAPER_FILES = {
    "clip": (CONFIGS / "paper" / "clip.json", "clip-vit-large-patch14"),
    "ram": (CONFIGS / "paper" / "ram_plus.json", "ram_plus_swin_large_14m.pth"),
    "gdino": (CONFIGS / "paper" / "groundingdino.json", "groundingdino_swint_ogc.pth"),
    "sam": (CONFIGS / "paper" / "sam_hq.json", "sam_hq_vit_h.pth"),
    "qformer": (REPO_ROOT / "model" / "configs" / "paper.json", "blip2_pretrained_vitL.pth"),
    "llm": (REPO_ROOT / "model" / "configs" / "llm" / "paper.json", "vicuna"),
}
BERT_FOLDER = "bert-base-uncased"
# Grounding-DINO's random weights are calibrated with the tiny profile's settings (upstream's SwinT-OGC layout).
GDINO_CALIBRATION = json.loads((CONFIGS / "tiny" / "groundingdino.json").read_text())["random_init"]
# Vicuna-13B v1.5's config.json sizes (LLaMA-2-13B): bench/gpu_check.py builds this shape on the GPU.
VICUNA_13B_SHAPE = {"hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40, "num_attention_heads": 40,
                    "num_key_value_heads": 40, "vocab_size": 32000, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5}  # fmt: skip
RAM_CALIBRATION_IMAGES = 16  # Swin-L at 384 px takes seconds per image on a CPU; the tiny profile calibrates on 128


def paper_random_folder(config: PipelinesConfig) -> Path:
    """Where `make rehearse` and bench/gpu_check.py keep these checkpoints: ``{root}/checkpoints/paper-random``."""
    return config.path("{root}") / "checkpoints" / "paper-random"


def paper_specs(folder: Path) -> dict[str, ComponentSpec]:
    """The paper profile's components, with their checkpoints in ``folder``."""
    return {name: ComponentSpec(name, arch, folder / checkpoint, random_init=True, seed=0) for name, (arch, checkpoint) in PAPER_FILES.items()}


def checkpoint_environment(folder: Path) -> dict[str, str]:
    """The ``LYRICS_*_PATH`` variables that point the paper profile at ``folder``'s checkpoints."""
    return {CHECKPOINT_ENV[name]: str(folder / checkpoint) for name, (_, checkpoint) in PAPER_FILES.items()}


def write_paper_checkpoints(folder: Path, llm_corpus: Iterable[str], names: Iterable[str] = PAPER_FILES) -> dict[str, Path]:
    """Every (or the named) paper checkpoint under ``folder``, created where missing; name -> path."""
    from lyrics.extract import grounding_dino, ram_plus, sam_hq
    from lyrics.model.vicuna_layout import VicunaSize, write_vicuna_folder

    specs = paper_specs(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_random_bert_base(folder / BERT_FOLDER, seed=0)
    corpus = list(llm_corpus)
    writers = {
        "clip": lambda arch, tmp: write_clip_model_folder(arch, 0, tmp),
        "ram": lambda arch, tmp: ram_plus.write_random_checkpoint({**arch, "vocabulary": str(write_placeholder_tags(folder))}, 0, tmp, RAM_CALIBRATION_IMAGES),
        "gdino": lambda arch, tmp: grounding_dino.write_random_checkpoint({**arch, "random_init": GDINO_CALIBRATION}, 0, tmp),
        "sam": lambda arch, tmp: sam_hq.write_random_checkpoint(arch, 0, tmp),
        "qformer": lambda arch, tmp: write_lavis_qformer(specs["qformer"].arch_path, 0, tmp),
        "llm": lambda arch, tmp: write_vicuna_folder(tmp, corpus, seed=0, size=VicunaSize(vocab_size=2000, hidden_size=256, intermediate_size=688, num_attention_heads=8)),
    }
    for name in names:
        spec = specs[name]
        spec.ensure_checkpoint(lambda tmp, spec=spec: writers[spec.name](spec.arch, tmp))
    return {name: specs[name].checkpoint for name in names}


def write_clip_model_folder(arch: dict, seed: int, folder: Path) -> None:
    """A full CLIPModel (ViT-L/14 vision tower + CLIP's text tower) as openai/clip-vit-large-patch14 ships it."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    vision = arch["vision_config"]
    text = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12, "projection_dim": vision["projection_dim"]}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(CLIPConfig(vision_config=vision, text_config=text, projection_dim=vision["projection_dim"]))
    model.save_pretrained(folder)
    CLIPImageProcessor(**arch["image_processor"]).save_pretrained(folder)


@torch.no_grad()
def write_lavis_qformer(arch_path: Path, seed: int, path: Path) -> None:
    """A random BLIP-2 stage-1 Q-Former (no grounding side: BLIP-2 has none) under LAVIS's key names."""
    import dataclasses

    from lyrics.model.mqformer import MQFormer, MQFormerConfig

    config = dataclasses.replace(MQFormerConfig.from_json(arch_path), use_grounding=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        qformer = MQFormer(config)
        state = {}
        for name, tensor in qformer.state_dict().items():
            if name == "visual_query_tokens":
                state["query_tokens"] = tensor
            elif name.startswith(("cls.", "ln_vision.")):
                state[("Qformer." if name.startswith("cls.") else "") + name] = tensor
            elif not name.startswith("grounding"):
                state["Qformer.bert." + name] = tensor
        hidden, embed = config.hidden_size, 256  # BLIP-2's ITC embedding size
        state |= {
            "vision_proj.weight": torch.randn(embed, hidden) * 0.02, "vision_proj.bias": torch.zeros(embed),
            "text_proj.weight": torch.randn(embed, hidden) * 0.02, "text_proj.bias": torch.zeros(embed),
            "itm_head.weight": torch.randn(2, hidden) * 0.02, "itm_head.bias": torch.zeros(2),
            "temp": torch.tensor(0.07),
        }  # fmt: skip
    torch.save({"model": state}, path)


def write_placeholder_tags(folder: Path) -> Path:
    """4585 tags: whole lowercase words of the uncased BERT vocabulary, in its order (one or two word pieces each, like real tags)."""
    path = folder / "paper_ram_tags.txt"
    if not path.is_file():
        vocabulary = (folder / BERT_FOLDER / "vocab.txt").read_text(encoding="utf-8").split("\n")[1000:]
        words = list(dict.fromkeys(w for w in vocabulary if w.isalpha() and w.isascii() and len(w) >= 3))[:PAPER_RAM_TAGS]
        words += [f"object {i}" for i in range(PAPER_RAM_TAGS - len(words))]
        path.write_text("\n".join(words), encoding="utf-8")
    return path


def write_random_bert_base(folder: Path, seed: int) -> None:
    """bert-base-uncased's sizes at random weights, with the real uncased WordPiece tokenizer files (from MiniLM's package)."""
    from transformers import BertConfig, BertModel

    from lyrics.model.tokenizer import vocab_dir
    from lyrics.model.qformer_checkpoints import MINILM

    if (folder / "config.json").is_file():
        return
    tokenizer = vocab_dir(MINILM)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer / name).is_file():
            shutil.copy(tokenizer / name, tmp / name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        BertModel(BertConfig()).save_pretrained(tmp)  # BertConfig(): bert-base-uncased's sizes
    os.replace(tmp, folder)
