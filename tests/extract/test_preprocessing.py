"""Each frozen model's preprocessing against its upstream transform, bit for bit, on photos of odd shapes.

CLIP: OpenAI CLIP's (and BLIP-2's) torchvision pipeline on a PIL image. Grounding-DINO: groundingdino's
own `datasets.transforms` as its `load_image` composes them. SAM-HQ: `ResizeLongestSide` then
`Sam.preprocess` (normalise, pad), as `SamPredictor.set_image` does. RAM++: recognize-anything's
`get_transform` (not installable here: its composition, written out with the same torchvision calls).
"""

from __future__ import annotations

import json

import groundingdino.datasets.transforms as gd_transforms
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from transformers import CLIPImageProcessor

from lyrics.config import REPO_ROOT
from lyrics.extract.clip import ClipPreprocess
from lyrics.extract.grounding_dino import GdinoPreprocess
from lyrics.extract.ram_plus import RamPreprocess
from lyrics.extract.sam_hq import SamPreprocess  # before segment_anything_hq: it quiets the package's import warnings
from segment_anything_hq import sam_model_registry  # noqa: E402, I001
from segment_anything_hq.utils.transforms import ResizeLongestSide  # noqa: E402

PAPER = REPO_ROOT / "extract" / "configs" / "paper"
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def photo(width: int, height: int, seed: int) -> Image.Image:
    """Smooth gradients with noise: resampling filters differ on edges and on flat areas alike."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(255, 0, height, dtype=np.float32)[:, None, None]
    noise = rng.integers(0, 48, size=(height, width, 3)).astype(np.float32)
    return Image.fromarray(np.clip(0.5 * x + 0.4 * y + noise, 0, 255).astype(np.uint8), "RGB")


SHAPES = [(451, 300), (300, 451), (512, 512), (333, 100), (224, 224), (1999, 1001)]


@pytest.mark.parametrize(("width", "height"), SHAPES)
def test_clip_is_openai_clips_pil_bicubic_pipeline(width, height):
    settings = json.loads((PAPER / "clip.json").read_text())["image_processor"]
    reference = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor(),
                           T.Normalize(settings["image_mean"], settings["image_std"])])  # fmt: skip
    image = photo(width, height, seed=width)
    assert torch.equal(ClipPreprocess({"image_processor": settings})(image), reference(image))


def test_clip_image_processor_would_differ():
    """Why not transformers' CLIPImageProcessor: it resizes a uint8 tensor, a level off here and there."""
    settings = json.loads((PAPER / "clip.json").read_text())["image_processor"]
    image = photo(451, 300, seed=0)
    theirs = CLIPImageProcessor(**settings)(images=image, return_tensors="pt")["pixel_values"][0]
    ours = ClipPreprocess({"image_processor": settings})(image)
    differs = (ours - theirs).abs() > 1e-6
    assert 0 < differs.float().mean() < 0.05 and (ours - theirs).abs().max() < 0.05  # one or two levels / std


@pytest.mark.parametrize(("width", "height"), SHAPES)
def test_grounding_dino_is_groundingdinos_load_image_transform(width, height):
    image_settings = json.loads((PAPER / "groundingdino.json").read_text())["image"]
    reference = gd_transforms.Compose([gd_transforms.RandomResize([800], max_size=1333), gd_transforms.ToTensor(), gd_transforms.Normalize(*IMAGENET)])
    image = photo(width, height, seed=width)
    expected, _ = reference(image, None)
    assert torch.equal(GdinoPreprocess(image_settings)(image), expected)


@pytest.fixture(scope="module")
def sam():
    return sam_model_registry["vit_tiny"](checkpoint=None)


@pytest.mark.parametrize(("width", "height"), SHAPES)
def test_sam_hq_is_resize_longest_side_then_sam_preprocess(sam, width, height):
    image = photo(width, height, seed=width)
    resized = ResizeLongestSide(sam.image_encoder.img_size).apply_image(np.asarray(image))
    expected = sam.preprocess(torch.as_tensor(resized).permute(2, 0, 1).contiguous()[None].float())[0]
    assert torch.equal(SamPreprocess(sam.image_encoder.img_size)(image), expected)


@pytest.mark.parametrize(("width", "height"), SHAPES)
def test_ram_plus_is_recognize_anythings_transform(width, height):
    size = json.loads((PAPER / "ram_plus.json").read_text())["image_size"]
    # recognize-anything's ram.transform.get_transform(image_size=384)
    reference = T.Compose([lambda image: image.convert("RGB"), T.Resize((size, size)), T.ToTensor(), T.Normalize(*IMAGENET)])
    image = photo(width, height, seed=width)
    assert torch.equal(RamPreprocess(size)(image), reference(image))
