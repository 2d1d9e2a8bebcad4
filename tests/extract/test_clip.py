"""CLIP vision tokens: the second-to-last hidden states of the real class, through the real loader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel

from lyrics.config import REPO_ROOT
from lyrics.extract.checkpoints import ComponentSpec
from lyrics.extract.clip import ClipVision, load_clip

TINY_ARCH = REPO_ROOT / "extract/configs/tiny/clip.json"
PAPER_ARCH = REPO_ROOT / "extract/configs/paper/clip.json"


def _image(height: int, width: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    gradient = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    noise = rng.integers(0, 64, size=(height, width, 3)).astype(np.float32)
    return Image.fromarray(np.clip(gradient + noise, 0, 255).astype(np.uint8), "RGB")


def _tiny_spec(checkpoint: Path) -> ComponentSpec:
    return ComponentSpec(name="clip", arch_path=TINY_ARCH, checkpoint=checkpoint, random_init=True, seed=0)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clip") / "clip"


@pytest.fixture(scope="module")
def tiny(checkpoint: Path) -> ClipVision:
    return load_clip(_tiny_spec(checkpoint))


@pytest.fixture(scope="module")
def pixels(tiny: ClipVision) -> torch.Tensor:
    return torch.stack([tiny.preprocess(_image(300, 451, 0)), tiny.preprocess(_image(512, 200, 1))])


def test_tokens_are_the_second_to_last_hidden_states(tiny: ClipVision, pixels: torch.Tensor, checkpoint: Path) -> None:
    plain = CLIPVisionModel.from_pretrained(checkpoint, local_files_only=True).eval()
    with torch.no_grad():
        out = plain(pixel_values=pixels, output_hidden_states=True)
    tokens = tiny(pixels)
    assert tokens.shape == (2, 257, 64) and tokens.dtype == torch.float32
    assert (tiny.num_tokens, tiny.width, tiny.image_size) == (257, 64, 224)
    assert tiny.to("cpu").device == torch.device("cpu")
    assert torch.equal(tokens, out.hidden_states[-2])
    assert not torch.allclose(tokens, out.last_hidden_state)


def test_bf16_is_a_switch_off_on_a_cpu_by_default(tiny: ClipVision, pixels: torch.Tensor) -> None:
    default = tiny(pixels)
    try:
        tiny.bf16 = False
        assert torch.equal(tiny(pixels), default)  # None on a CPU: float32
        tiny.bf16 = True
        bf16 = tiny(pixels)
    finally:
        tiny.bf16 = None
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, default)
    cosine = torch.nn.functional.cosine_similarity(bf16, default, dim=-1)
    assert float(cosine.min()) > 0.999


def test_tiny_checkpoint_round_trip(pixels: torch.Tensor, tmp_path: Path) -> None:
    arch = json.loads(TINY_ARCH.read_text())
    torch.manual_seed(0)
    in_memory = CLIPVisionModel(CLIPVisionConfig(**arch["vision_config"])).eval()
    loaded = load_clip(_tiny_spec(tmp_path / "clip"))
    files = sorted(p.name for p in (tmp_path / "clip").iterdir())
    assert files == ["config.json", "model.safetensors", "preprocessor_config.json"]
    with torch.no_grad():
        expected = in_memory(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
    assert torch.equal(loaded(pixels), expected)
    assert loaded.fingerprint == _tiny_spec(tmp_path / "clip").fingerprint()
    # The folder's preprocessor_config.json holds the settings ClipPreprocess reads from the arch.
    saved = json.loads((tmp_path / "clip" / "preprocessor_config.json").read_text())
    assert {key: saved[key] for key in arch["image_processor"]} == arch["image_processor"]


def test_loads_the_vision_tower_of_a_full_clip_model_folder(pixels: torch.Tensor, tmp_path: Path) -> None:
    arch = json.loads(TINY_ARCH.read_text())
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    torch.manual_seed(1)
    full = CLIPModel(CLIPConfig(vision_config=arch["vision_config"], text_config=text, projection_dim=64)).eval()
    full.save_pretrained(tmp_path / "full")
    spec = ComponentSpec(name="clip", arch_path=TINY_ARCH, checkpoint=tmp_path / "full", random_init=False, seed=0)
    loaded = load_clip(spec)
    with torch.no_grad():
        expected = full.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
    assert torch.equal(loaded(pixels), expected)
    assert loaded.fingerprint.startswith("sha256:")


def test_refuses_a_checkpoint_of_another_architecture(tmp_path: Path) -> None:
    load_clip(_tiny_spec(tmp_path / "clip"))
    spec = ComponentSpec(name="clip", arch_path=PAPER_ARCH, checkpoint=tmp_path / "clip", random_init=False, seed=0)
    with pytest.raises(ValueError, match="hidden_size: checkpoint 64, arch 1024"):
        load_clip(spec)


def test_refuses_a_checkpoint_with_missing_weights(tmp_path: Path) -> None:
    load_clip(_tiny_spec(tmp_path / "clip"))
    weights = tmp_path / "clip" / "model.safetensors"
    state = load_file(weights)
    del state["post_layernorm.weight"]
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing keys.*post_layernorm.weight"):
        load_clip(_tiny_spec(tmp_path / "clip"))
