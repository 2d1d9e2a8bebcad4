"""CLIP ViT-L/14 image tokens: the second-to-last layer's hidden states, as BLIP-2 feeds them on.

Weights are a local Hugging Face folder, either a ``CLIPVisionModel`` or a full ``CLIPModel``
(such as openai/clip-vit-large-patch14, whose vision tower transformers loads alone). The image
processor is built from the architecture file, so nothing is read from the hub.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel
from transformers.utils import logging as hf_logging

from lyrics.extract.checkpoints import ComponentSpec
from lyrics.extract.precision import bf16_autocast

# A full CLIPModel folder also holds these weights; the vision tower does not use them.
_OTHER_TOWER_PREFIXES = ("text_model.", "text_projection.", "visual_projection.", "logit_scale")


class ClipPreprocess:
    """PIL image -> (3, 224, 224) exactly as OpenAI CLIP and BLIP-2 preprocess: the shortest side to 224
    with PIL's bicubic resize, a center crop, then /255 and CLIP's mean/std.

    The sizes, resample filter and statistics come from the architecture file's ``image_processor``
    (the ``preprocessor_config.json`` a CLIP folder ships), so the extract job's CPU decode workers
    run it without the model. Not ``CLIPImageProcessor``: it resizes a uint8 tensor, which moves
    pixels by a level here and there and the tokens about ten times more than fp16 storage does.
    """

    def __init__(self, arch: dict[str, Any]) -> None:
        settings = arch["image_processor"]
        self.size: int = settings["size"]["shortest_edge"]
        self.crop: tuple[int, int] = (settings["crop_size"]["height"], settings["crop_size"]["width"])
        self.resample = Image.Resampling(settings.get("resample", Image.Resampling.BICUBIC))
        self.mean = torch.tensor(settings["image_mean"], dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(settings["image_std"], dtype=torch.float32)[:, None, None]

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.normalize(self.resize(image))

    def resize(self, image: Image.Image) -> np.ndarray:
        """The resized, cropped image, (H, W, 3) uint8: what the job's decode workers send to the model."""
        image = image.convert("RGB")
        width, height = image.size
        short, long = sorted((width, height))
        resized_long = int(self.size * long / short)  # as torchvision's Resize(int) computes it
        size = (self.size, resized_long) if width <= height else (resized_long, self.size)
        resized = image.resize(size, self.resample)
        crop_height, crop_width = self.crop
        top, left = int(round((size[1] - crop_height) / 2.0)), int(round((size[0] - crop_width) / 2.0))
        return np.asarray(resized.crop((left, top, left + crop_width, top + crop_height)))

    def normalize(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (3, H, W) float32: /255, then CLIP's mean/std."""
        pixels = torch.from_numpy(image.astype(np.float32) / np.float32(255)).permute(2, 0, 1)
        return (pixels - self.mean) / self.std


class ClipVision:
    """The frozen vision tower: PIL image -> (3, 224, 224) pixels -> (257, width) tokens."""

    name = "clip"

    def __init__(self, model: CLIPVisionModel, preprocess: ClipPreprocess, fingerprint: str) -> None:
        self.model = model.eval()
        self.preprocess = preprocess
        self.fingerprint = fingerprint
        config = model.config
        self.image_size: int = config.image_size
        self.num_tokens: int = (config.image_size // config.patch_size) ** 2 + 1  # patches + CLS
        self.width: int = config.hidden_size
        self.bf16: bool | None = None  # bf16 autocast: None = on a GPU only (extract/precision.py)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, num_tokens, width) float32 on the model's device."""
        expected = (3, self.image_size, self.image_size)
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != expected:
            raise ValueError(f"clip: expected pixels of shape (B, *{expected}), got {tuple(pixels.shape)}")
        device = self.device
        with bf16_autocast(device, self.bf16):
            out = self.model(pixel_values=pixels.to(device), output_hidden_states=True)
        # hidden_states[0] is the embedding output, [-1] the last layer's: BLIP-2 takes [-2].
        return out.hidden_states[-2].float()

    def to(self, device: torch.device | str) -> ClipVision:
        self.model.to(device)
        return self


def load_clip(spec: ComponentSpec) -> ClipVision:
    """The vision tower from ``spec.checkpoint`` (created first in the tiny profile)."""
    arch = spec.arch
    path = spec.ensure_checkpoint(lambda tmp: write_random_checkpoint(arch, spec.seed, tmp))
    model = _load_vision_model(path)
    _check_config(model.config, arch["vision_config"], path)
    return ClipVision(model, ClipPreprocess(arch), spec.fingerprint())


def write_random_checkpoint(arch: dict[str, Any], seed: int, path: Path) -> None:
    """A CLIPVisionModel of ``arch`` with random weights from ``seed``, as a Hugging Face folder."""
    with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
        torch.manual_seed(seed)
        model = CLIPVisionModel(CLIPVisionConfig(**arch["vision_config"]))
    model.save_pretrained(path)  # safetensors
    CLIPImageProcessor(**arch["image_processor"]).save_pretrained(path)


def _load_vision_model(path: Path) -> CLIPVisionModel:
    # transformers prints a table of a full CLIPModel's text-tower keys as "unexpected": checked below instead.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = CLIPVisionModel.from_pretrained(path, local_files_only=True, dtype=torch.float32, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(info["missing_keys"])
    unexpected = sorted(k for k in info["unexpected_keys"] if not k.startswith(_OTHER_TOWER_PREFIXES))
    if missing or unexpected:
        raise ValueError(f"{path}: not a CLIP vision checkpoint: missing keys {missing}, unexpected keys {unexpected}")
    return model


def _check_config(config: CLIPVisionConfig, expected: dict[str, Any], path: Path) -> None:
    """The checkpoint's own config must be the architecture the profile names."""
    actual = {key: getattr(config, key, None) for key in expected}
    wrong = [key for key in expected if actual[key] != expected[key]]
    if wrong:
        details = ", ".join(f"{key}: checkpoint {actual[key]!r}, arch {expected[key]!r}" for key in wrong)
        raise ValueError(f"{path}: CLIP checkpoint does not match its architecture file ({details})")
