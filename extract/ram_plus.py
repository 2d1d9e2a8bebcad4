"""The frozen RAM++ tagger of phase 1: load a checkpoint in the upstream layout, preprocess, tag.

Beside the checkpoint lie upstream's ``ram_tag_list.txt`` (one tag a line) and
``ram_tag_list_threshold.txt`` (one per-tag threshold a line), as in the upstream repo's ``ram/data/``.
The tiny profile writes all three with random weights (``write_random_checkpoint``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lyrics.extract.checkpoints import ComponentSpec
from lyrics.extract.ram_plus_model import RamPlus, RamPlusArch, load_upstream_state, to_upstream

TAG_LIST = "ram_tag_list.txt"
THRESHOLDS = "ram_tag_list_threshold.txt"
CONFIGS = Path(__file__).resolve().parent / "configs"
MEAN = torch.tensor([0.485, 0.456, 0.406])  # ImageNet statistics, as upstream's transform
STD = torch.tensor([0.229, 0.224, 0.225])

# Calibration of the tiny profile's thresholds (random weights give arbitrary scores): each tag's
# threshold is its score quantile over CALIBRATION_IMAGES synthetic images at which TAGS_PER_IMAGE
# tags pass per synthetic image on average. Photos pass somewhat more: 5-9 tags on each of the 16
# sample photos at seed 0 (median 4, range 0-12 over seeds 0-7).
CALIBRATION_IMAGES = 128
TAGS_PER_IMAGE = 3

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RamPreprocess:
    """Upstream's transform, from the arch alone: Resize((S, S)) (bilinear on PIL), ToTensor, Normalize."""

    image_size: int

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """One PIL image -> (3, S, S)."""
        return self.normalize(self.resize(image))

    def resize(self, image: Image.Image) -> np.ndarray:
        """(S, S, 3) uint8: what the job's decode workers send to the model."""
        return np.asarray(image.convert("RGB").resize((self.image_size, self.image_size), Image.BILINEAR))

    def normalize(self, image: np.ndarray) -> torch.Tensor:
        pixels = torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)
        return (pixels - MEAN[:, None, None]) / STD[:, None, None]


@dataclass
class RamPlusTagger:
    name: ClassVar[str] = "ram"
    model: RamPlus
    fingerprint: str
    tags: list[str]
    thresholds: torch.Tensor  # (tags,), a tag is kept when its score is strictly above
    image_size: int
    threshold_override: float | None = None  # one threshold for every tag instead of the per-tag ones

    @property
    def device(self) -> torch.device:
        return self.thresholds.device  # moved together with the model by to()

    @property
    def preprocess(self) -> RamPreprocess:
        """PIL image -> (3, S, S), as the other wrappers' ``preprocess`` (with its ``resize`` and ``normalize``)."""
        return RamPreprocess(self.image_size)

    def scores(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, tags) sigmoid scores."""
        with torch.inference_mode():
            return self.model(pixels.to(self.device)).sigmoid()

    def __call__(self, pixels: torch.Tensor) -> list[list[tuple[str, float]]]:
        """Per image, the (tag, score) pairs above threshold, best first."""
        scores = self.scores(pixels)
        keep = scores > (self.thresholds if self.threshold_override is None else self.threshold_override)
        return [self._selected(row, mask) for row, mask in zip(scores.cpu(), keep.cpu())]

    def _selected(self, scores: torch.Tensor, keep: torch.Tensor) -> list[tuple[str, float]]:
        indices = keep.nonzero().flatten()
        indices = indices[scores[indices].argsort(descending=True, stable=True)]
        return [(self.tags[i], scores[i].item()) for i in indices.tolist()]

    def to(self, device: torch.device | str) -> RamPlusTagger:
        self.model.to(device)
        self.thresholds = self.thresholds.to(device)
        return self


def load_ram_plus(spec: ComponentSpec, threshold_override: float | None = None) -> RamPlusTagger:
    """The frozen tagger of ``spec``; the tiny profile first writes its random checkpoint if missing."""
    path = spec.ensure_checkpoint(lambda tmp: write_random_checkpoint(spec.arch, spec.seed, tmp))
    arch = RamPlusArch.from_dict(spec.arch)
    tags = read_tag_list(path.parent / TAG_LIST)
    state = read_upstream_checkpoint(path)
    check_tag_count(state, arch, tags, path)
    thresholds = read_thresholds(path.parent / THRESHOLDS, len(tags))
    model = RamPlus(arch, len(tags))
    unexpected = load_upstream_state(model, state)
    if unexpected:
        log.warning("%s: ignored %d unexpected RAM++ keys: %s", path, len(unexpected), ", ".join(unexpected))
    model.eval().requires_grad_(False)
    return RamPlusTagger(model, spec.fingerprint(), tags, thresholds, arch.image_size, threshold_override)


def read_upstream_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The ``model`` state dict of an upstream RAM++ ``.pth`` (tensors only: weights_only)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unreadable zip, or objects that weights_only refuses to unpickle
        raise ValueError(f"{path}: not a RAM++ checkpoint that loads with weights_only=True ({e})") from e
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise ValueError(f"{path}: expected a dict with a 'model' state dict (upstream RAM++ layout)")
    return checkpoint["model"]


def read_tag_list(path: Path) -> list[str]:
    return _read_beside_checkpoint(path, lambda text: text.splitlines())


def read_thresholds(path: Path, num_tags: int) -> torch.Tensor:
    values = _read_beside_checkpoint(path, lambda text: [float(value) for value in text.split()])
    if len(values) != num_tags:
        raise ValueError(f"{path}: {len(values)} thresholds for {num_tags} tags in {TAG_LIST}")
    return torch.tensor(values, dtype=torch.float32)


def _read_beside_checkpoint(path: Path, parse: Callable[[str], Any]) -> Any:
    try:
        return parse(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: missing; put the upstream {path.name} (recognize-anything's ram/data/) beside the RAM++ checkpoint"
        ) from None


def check_tag_count(state: dict[str, torch.Tensor], arch: RamPlusArch, tags: list[str], path: Path) -> None:
    if "label_embed" not in state:
        return  # the loader names it among the missing parameters
    rows, per_tag = state["label_embed"].shape[0], arch.descriptions_per_tag
    if rows != len(tags) * per_tag:
        raise ValueError(
            f"{path.parent / TAG_LIST} has {len(tags)} tags but the checkpoint's label_embed has {rows} rows, "
            f"{rows / per_tag:g} tags of {per_tag} descriptions"
        )


def write_random_checkpoint(arch: dict[str, Any], seed: int, path: Path, calibration_images: int = CALIBRATION_IMAGES) -> None:
    """Random RAM++ weights from ``seed`` in the upstream layout at ``path``, tag files beside it
    (thresholds calibrated on ``calibration_images`` synthetic images: fewer for Swin-L on a CPU).

    The tag files are written first, each atomically, so a checkpoint that exists has its tag files.
    """
    spec = RamPlusArch.from_dict(arch)
    if spec.vocabulary is None:
        raise ValueError("RAM++ arch has no vocabulary: random weights need a tag list under extract/configs/")
    tags = read_tag_list(CONFIGS / spec.vocabulary)
    model = random_model(spec, len(tags), seed, calibration_images)
    thresholds = calibrate_thresholds(model, seed, calibration_images)
    _write_atomic(path.parent / TAG_LIST, "\n".join(tags))
    _write_atomic(path.parent / THRESHOLDS, "\n".join(f"{t:.6f}" for t in thresholds.tolist()))
    torch.save({"model": to_upstream(model)}, path)


def random_model(arch: RamPlusArch, num_tags: int, seed: int, calibration_images: int = CALIBRATION_IMAGES) -> RamPlus:
    """A deterministic RAM++ with random weights: timm's Swin init, BERT's normal(0.02) for the rest.

    Two choices make a fixed per-tag threshold pass a handful of tags on most photos. At random
    init every image's embedding is one shared vector plus a small image-dependent part, so
    ``image_proj`` is centred on the synthetic images: the normalised CLS embedding then points
    in an image-dependent direction, moving each tag's description weights its own way. And the
    value projection is 10x weaker, as its output, the same for every tag under near-uniform
    attention, would move all tags up or down together.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = RamPlus(arch, num_tags).eval()
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and not name.startswith("visual_encoder"):
                torch.nn.init.normal_(module.weight, std=0.002 if name.endswith(".value") else 0.02)
                torch.nn.init.zeros_(module.bias)
        # Unit rows, as the CLIP text embeddings of upstream's descriptions.
        model.label_embed.data = F.normalize(torch.randn_like(model.label_embed), dim=-1)
    with torch.no_grad():
        model.image_proj.bias -= model.image_embeds(synthetic_images(arch.image_size, seed, calibration_images))[:, 0].mean(dim=0)
    return model


@torch.inference_mode()
@torch.inference_mode()
def calibrate_thresholds(model: RamPlus, seed: int, count: int = CALIBRATION_IMAGES) -> torch.Tensor:
    """Per-tag thresholds at which about TAGS_PER_IMAGE tags pass per synthetic image."""
    images = synthetic_images(model.arch.image_size, seed, count)
    scores = torch.cat([model(batch).sigmoid() for batch in images.split(32)])
    return torch.quantile(scores, 1 - TAGS_PER_IMAGE / scores.shape[1], dim=0)


def synthetic_images(image_size: int, seed: int, count: int = CALIBRATION_IMAGES) -> torch.Tensor:
    """Smooth random colour fields at several scales (the low frequencies of photos), normalised."""
    generator = torch.Generator().manual_seed(seed)
    fields = []
    for i in range(count):
        grid = 2 ** (1 + i % 4)
        coarse = torch.rand(1, 3, grid, grid, generator=generator)
        fields.append(F.interpolate(coarse, size=(image_size, image_size), mode="bilinear", align_corners=False))
    return (torch.cat(fields) - MEAN[:, None, None]) / STD[:, None, None]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
