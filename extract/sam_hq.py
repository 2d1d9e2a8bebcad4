"""SAM-HQ object tokens: per box prompt, the image embedding averaged under its predicted mask.

The model comes from the segment-anything-hq package's registry builder and the checkpoint is its
raw state dict (``sam_hq_vit_h.pth``, ``sam_hq_vit_tiny.pth``). Per image the tokens are
``(M, 260)``: 256 channels of the image embedding averaged over the object's mask on the 64 x 64
embedding grid, then the box as normalized xyxy.

Choices:
- ``hq_token_only=False``: the mask is the SAM logits plus the HQ logits. That is the upstream
  default, what the SAM-HQ demo uses for its multi-box prompt, and what its authors use on COCO-like
  images with several objects (``True`` is their suggestion for single-object images).
- Mask on the grid: the decoder's 256 x 256 logits (padded 1024 frame) are area-averaged to 64 x 64
  (one value per 16 x 16 pixel cell) and thresholded at 0, SAM's own mask threshold. Cells in the
  padding are dropped. A binary mask, so the stored mask is exactly the set that was averaged.
- An empty mask falls back to the box: the cells whose centres lie inside it, or the one cell under
  its centre for a box smaller than a cell.
- Boxes beyond ``max_objects`` are dropped in the order given (callers pass them best first);
  an image without boxes is left out of the encoder pass.
- The tiny profile is the registry's ``vit_tiny`` at its 1024 input. The package's TinyViT
  hard-codes a 64 x 64 token grid in its forward, so a smaller input would mean rewriting it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lyrics.extract.checkpoints import ComponentSpec
from lyrics.extract.precision import bf16_autocast

with warnings.catch_warnings():
    # The package imports timm's deprecated paths and re-registers timm's TinyViT names.
    warnings.simplefilter("ignore", FutureWarning)
    warnings.filterwarnings("ignore", message="Overwriting tiny_vit", category=UserWarning)
    from segment_anything_hq import sam_model_registry
    from segment_anything_hq.modeling import Sam
    from segment_anything_hq.utils.transforms import ResizeLongestSide

HQ_TOKEN_ONLY = False
EMBED_DIM = 256
BOX_DIM = 4


@dataclass(frozen=True)
class SamObjects:
    """One batch of objects, padded to M per image."""

    tokens: torch.Tensor  # (B, M, 260) float32: masked mean of the embedding (256) + normalized xyxy box (4)
    valid: torch.Tensor  # (B, M) bool
    masks: torch.Tensor  # (B, M, G, G) bool: the averaged cells on the embedding grid (padded square frame)


class SamPreprocess:
    """PIL image -> (3, S, S): longest side to S, SAM's normalization, zero padding to S x S.

    What SamPredictor.set_image feeds the encoder (ResizeLongestSide, then Sam.preprocess), with
    Sam's pixel statistics (non-persistent buffers set by every registry builder), so it runs in
    the extract job's CPU decode workers without building the model.
    """

    PIXEL_MEAN = torch.tensor([123.675, 116.28, 103.53])[:, None, None]
    PIXEL_STD = torch.tensor([58.395, 57.12, 57.375])[:, None, None]

    def __init__(self, image_size: int = 1024) -> None:
        self.image_size = image_size
        self.transform = ResizeLongestSide(image_size)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.normalize(self.resize(image))

    def resize(self, image: Image.Image) -> np.ndarray:
        """(H, W, 3) uint8, the longest side S: what the job's decode workers send to the model."""
        return self.transform.apply_image(np.asarray(image.convert("RGB")))

    def normalize(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (3, S, S): SAM's normalization, then zero padding to S x S."""
        pixels = (torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1) - self.PIXEL_MEAN) / self.PIXEL_STD
        height, width = pixels.shape[-2:]
        return F.pad(pixels, (0, self.image_size - width, 0, self.image_size - height))


class SamHq:
    """The frozen SAM-HQ: PIL image -> (3, S, S) padded pixels; pixels + boxes -> object tokens."""

    name = "sam"

    def __init__(self, model: Sam, fingerprint: str) -> None:
        # eval() after the weights are in: TinyViT caches its attention biases when eval() is called.
        self.model = model.eval()
        self.fingerprint = fingerprint
        self.image_size: int = model.image_encoder.img_size
        self.transform = ResizeLongestSide(self.image_size)
        self.preprocess = SamPreprocess(self.image_size)
        self.bf16: bool | None = None  # the image encoder's bf16 autocast: None = on a GPU only (extract/precision.py)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.inference_mode()
    def __call__(
        self,
        images: torch.Tensor,
        boxes: list[torch.Tensor],
        original_sizes: list[tuple[int, int]],
        max_objects: int = 32,
    ) -> SamObjects:
        """One encoder pass for the batch, then one decoder call per image with all its boxes."""
        self._check_inputs(images, boxes, original_sizes)
        device = self.device
        batch, grid = len(images), self.model.prompt_encoder.image_embedding_size[0]
        tokens = torch.zeros(batch, max_objects, EMBED_DIM + BOX_DIM, device=device)
        valid = torch.zeros(batch, max_objects, dtype=torch.bool, device=device)
        masks = torch.zeros(batch, max_objects, grid, grid, dtype=torch.bool, device=device)
        # An image without boxes yields no objects: it is left out of the encoder pass.
        prompted = [i for i, image_boxes in enumerate(boxes) if len(image_boxes) > 0 and max_objects > 0]
        if not prompted:
            return SamObjects(tokens=tokens, valid=valid, masks=masks)
        # bf16 for the image encoder only: the prompt encoder's random-Fourier box encoding loses its
        # fine positions in bf16, and the prompt encoder and decoder are a small part of the work.
        with bf16_autocast(device, self.bf16):
            embeddings, interm = self.model.image_encoder(images[prompted].to(device))
        embeddings = embeddings.float()
        for row, i in enumerate(prompted):
            kept = boxes[i][:max_objects].to(device=device, dtype=torch.float32)
            n = len(kept)
            early = interm[0][row : row + 1].float()  # the early encoder feature the HQ branch fuses in
            object_masks = self._object_masks(embeddings[row : row + 1], early, kept, original_sizes[i])
            tokens[i, :n, :EMBED_DIM] = _masked_mean(embeddings[row], object_masks)
            tokens[i, :n, EMBED_DIM:] = kept
            valid[i, :n] = True
            masks[i, :n] = object_masks
        return SamObjects(tokens=tokens, valid=valid, masks=masks)

    def to(self, device: torch.device | str) -> SamHq:
        self.model.to(device)
        return self

    def _object_masks(
        self, embedding: torch.Tensor, early: torch.Tensor, boxes: torch.Tensor, original_size: tuple[int, int]
    ) -> torch.Tensor:
        """(N, 4) normalized boxes of one image -> (N, G, G) bool masks on its embedding grid."""
        height, width = original_size
        pixel_boxes = boxes * torch.tensor([width, height, width, height], device=boxes.device)
        frame_boxes = self.transform.apply_boxes_torch(pixel_boxes, original_size)
        logits = self._decode(embedding, early, frame_boxes)
        grid = embedding.shape[-1]
        on_grid = F.interpolate(logits, size=(grid, grid), mode="area")[:, 0] > self.model.mask_threshold
        on_grid &= self._image_cells(original_size, grid)
        empty = ~on_grid.flatten(1).any(dim=1)
        on_grid[empty] = _box_cells(frame_boxes[empty], grid, self.image_size / grid)
        return on_grid

    def _decode(self, embedding: torch.Tensor, early: torch.Tensor, frame_boxes: torch.Tensor) -> torch.Tensor:
        """Low-resolution mask logits (N, 1, 256, 256) in the padded frame, as SamPredictor.predict_torch."""
        prompt_encoder = self.model.prompt_encoder
        sparse, dense = prompt_encoder(points=None, boxes=frame_boxes, masks=None)
        logits, _ = self.model.mask_decoder(
            image_embeddings=embedding,
            image_pe=prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
            hq_token_only=HQ_TOKEN_ONLY,
            interm_embeddings=[early],
        )
        return logits

    def _image_cells(self, original_size: tuple[int, int], grid: int) -> torch.Tensor:
        """(G, G) bool: the grid cells that hold image rather than padding."""
        height, width = self.transform.get_preprocess_shape(*original_size, self.image_size)
        stride = self.image_size / grid
        rows = torch.arange(grid, device=self.device) * stride < height
        cols = torch.arange(grid, device=self.device) * stride < width
        return rows[:, None] & cols[None, :]

    def _check_inputs(
        self, images: torch.Tensor, boxes: list[torch.Tensor], original_sizes: list[tuple[int, int]]
    ) -> None:
        expected = (3, self.image_size, self.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"sam: expected images of shape (B, *{expected}), got {tuple(images.shape)}")
        if not len(boxes) == len(original_sizes) == len(images):
            raise ValueError(f"sam: {len(images)} images but {len(boxes)} box sets and {len(original_sizes)} sizes")
        for i, image_boxes in enumerate(boxes):
            if image_boxes.ndim != 2 or image_boxes.shape[1] != BOX_DIM:
                raise ValueError(f"sam: boxes[{i}] must be (N, 4) normalized xyxy, got {tuple(image_boxes.shape)}")


def load_sam_hq(spec: ComponentSpec) -> SamHq:
    """SAM-HQ from ``spec.checkpoint`` (created first in the tiny profile)."""
    arch = spec.arch
    path = spec.ensure_checkpoint(lambda tmp: write_random_checkpoint(arch, spec.seed, tmp))
    model = _build(arch)
    state = torch.load(path, map_location="cpu", weights_only=True)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path}: not a SAM-HQ {arch['model_type']} state dict: "
            f"missing keys {result.missing_keys}, unexpected keys {result.unexpected_keys}"
        )
    return SamHq(model, spec.fingerprint())


def write_random_checkpoint(arch: dict[str, Any], seed: int, path: Path) -> None:
    """The registry's model of ``arch`` with its own random init from ``seed``, saved as upstream does:
    a raw state dict (no ``model`` key; pixel_mean/std are non-persistent and so absent)."""
    with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
        torch.manual_seed(seed)
        model = _build(arch)
    torch.save(model.state_dict(), path)


def _build(arch: dict[str, Any]) -> Sam:
    model_type = arch["model_type"]
    if model_type not in sam_model_registry:
        raise ValueError(f"sam: unknown model_type {model_type!r}; the registry has {sorted(sam_model_registry)}")
    # checkpoint=None: the builder's own loading calls torch.load without map_location/weights_only.
    return sam_model_registry[model_type](checkpoint=None)


def _masked_mean(embedding: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(C, G, G) embedding, (N, G, G) non-empty masks -> (N, C) means over each mask."""
    weights = masks.to(embedding.dtype)
    return torch.einsum("ngh,cgh->nc", weights, embedding) / weights.sum(dim=(1, 2))[:, None]


def _box_cells(frame_boxes: torch.Tensor, grid: int, stride: float) -> torch.Tensor:
    """(N, 4) xyxy boxes in the padded frame -> (N, G, G) bool: the cells whose centres they hold."""
    centres = (torch.arange(grid, device=frame_boxes.device) + 0.5) * stride
    x1, y1, x2, y2 = frame_boxes.unbind(dim=1)
    cols = (centres >= x1[:, None]) & (centres <= x2[:, None])
    rows = (centres >= y1[:, None]) & (centres <= y2[:, None])
    cells = rows[:, :, None] & cols[:, None, :]
    # A box smaller than a cell holds no centre: take the cell under the box's centre.
    small = ~cells.flatten(1).any(dim=1)
    col = ((x1 + x2) / 2 / stride).long().clamp(0, grid - 1)
    row = ((y1 + y2) / 2 / stride).long().clamp(0, grid - 1)
    index = torch.nonzero(small).flatten()
    cells[index, row[index], col[index]] = True
    return cells
