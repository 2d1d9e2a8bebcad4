"""The frozen models as one pipeline: CLIP ViT tokens, and the visual refiner RAM++ -> Grounding-DINO -> SAM-HQ.

The same stage functions serve the Ray job (in its model actors, on batches of one part's images)
and the online path (``refine(image)``, one image, for inference and the demo).
A chunk is a plain dict that every stage reads from and adds its outputs to.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import transformers
from PIL import Image
from tqdm import tqdm

from lyrics.config import ExtractionConfig, PipelinesConfig
from lyrics.extract.cache_location import STAGES
from lyrics.extract.checkpoints import component_spec
from lyrics.extract import clip, grounding_dino, ram_plus, sam_hq
from lyrics.extract.clip import ClipPreprocess, ClipVision, load_clip
from lyrics.extract.grounding_dino import GdinoPreprocess, GroundingDino, load_grounding_dino
from lyrics.extract.ram_plus import RamPlusTagger, RamPreprocess, load_ram_plus
from lyrics.extract.parts import Chunk
from lyrics.extract.sam_hq import SamHq, SamPreprocess, load_sam_hq
from lyrics.spatial_text import format_objects
from lyrics.store.codecs import select_top_q

LOADERS = {"clip": load_clip, "ram": load_ram_plus, "gdino": load_grounding_dino, "sam": load_sam_hq}
RANDOM_CHECKPOINT_WRITERS = {
    "clip": clip.write_random_checkpoint,
    "ram": ram_plus.write_random_checkpoint,
    "gdino": grounding_dino.write_random_checkpoint,
    "sam": sam_hq.write_random_checkpoint,
}
# Each model's preprocessing, built from its architecture file alone (no weights): the job's CPU
# decode workers run these; the loaded models use the very same classes.
PREPROCESSORS: dict[str, Callable[[dict[str, Any]], Callable[[Image.Image], torch.Tensor]]] = {
    "clip": ClipPreprocess,
    "ram": lambda arch: RamPreprocess(arch["image_size"]),
    "gdino": lambda arch: GdinoPreprocess(arch["image"]),
    "sam": lambda arch: SamPreprocess(),
}


def load_stage(config: PipelinesConfig, profile: str, name: str, device: str | None = None) -> Any:
    """One frozen model of a profile, on ``device`` (default: cuda when available)."""
    model = LOADERS[name](component_spec(config, profile, name))
    return model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def ensure_checkpoints(config: PipelinesConfig, profile: str) -> None:
    """Create a random-init profile's missing checkpoints now, in this process, so that the manifest's
    fingerprints hash the very weights the job's actors will load (real checkpoints must exist)."""
    specs = [component_spec(config, profile, name) for name in STAGES]
    for spec in specs:
        spec.check_available()  # a checkpoint of another seed is refused before anything is created
    missing = [spec for spec in specs if not spec.checkpoint.exists()]
    if not missing:
        return
    # The libraries print and warn while building (groundingdino's print, meshgrid, save progress bars):
    # one bar of ours says what happens instead.
    progress_bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for spec in tqdm(missing, desc=f"random {profile} checkpoints", unit="model"):
                spec.ensure_checkpoint(lambda tmp, spec=spec: RANDOM_CHECKPOINT_WRITERS[spec.name](spec.arch, spec.seed, tmp))
    finally:
        if progress_bars:
            transformers.utils.logging.enable_progress_bar()


def preprocessors(config: PipelinesConfig, profile: str) -> dict[str, Callable[[Image.Image], torch.Tensor]]:
    return {name: PREPROCESSORS[name](component_spec(config, profile, name).arch) for name in STAGES}


@dataclass
class FrozenModels:
    clip: ClipVision
    ram: RamPlusTagger
    gdino: GroundingDino
    sam: SamHq
    settings: ExtractionConfig

    @classmethod
    def load(cls, config: PipelinesConfig, profile: str | None = None, device: str | None = None) -> FrozenModels:
        profile = profile or config.extraction.profile
        return cls(*(load_stage(config, profile, name, device) for name in STAGES), settings=config.extraction)

    def preprocess(self, image: Image.Image) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).preprocess(image) for name in STAGES}

    def run(self, chunk: Chunk, seconds: dict[str, float] | None = None) -> Chunk:
        """Every model on the chunk, in pipeline order; ``seconds`` gets each model's time (the web demo shows them)."""
        for name in STAGES:
            start = time.perf_counter()
            chunk = run_stage(name, getattr(self, name), chunk, self.settings)
            if seconds is not None:
                seconds[name] = time.perf_counter() - start
        return chunk


def new_chunk(pixels: list[dict[str, torch.Tensor]], sizes: list[tuple[int, int]]) -> Chunk:
    """A chunk of B images: each model's inputs (``stack_pixels``) and the images' sizes."""
    chunk: Chunk = {"sizes": sizes}  # (width, height) of each decoded image
    for name in STAGES:
        chunk[f"{name}_pixels"] = stack_pixels(name, [p[name] for p in pixels])
    return chunk


def stack_pixels(name: str, pixels: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    """One model's inputs for a batch: stacked, except Grounding-DINO's, whose sizes differ by image."""
    return list(pixels) if name == "gdino" else torch.stack(pixels)


# Fields of a chunk that describe the chunk itself; every other field holds one entry per image.
CHUNK_FIELDS = frozenset({"shard", "source", "part", "name", "last", "skips", "inputs"})


def select_images(chunk: Chunk, indices: list[int]) -> Chunk:
    """The chunk of the images at ``indices`` (their inputs and whatever outputs the chunk holds so far)."""
    selected = {}
    for key, value in chunk.items():
        if key in CHUNK_FIELDS:
            selected[key] = value
        elif isinstance(value, (torch.Tensor, np.ndarray)):
            selected[key] = value[indices]
        else:
            selected[key] = [value[i] for i in indices]
    return selected


def merge_images(chunk: Chunk, parts: list[Chunk]) -> Chunk:
    """One chunk of the images of ``parts`` in their order (chunk-level fields from ``chunk``); no parts: no images."""
    if not parts:
        return {key: value for key, value in chunk.items() if key in CHUNK_FIELDS} | {"rows": []}
    merged = {key: chunk[key] for key in CHUNK_FIELDS if key in chunk}
    for key, value in parts[0].items():
        if key in CHUNK_FIELDS:
            continue
        values = [part[key] for part in parts]
        if isinstance(value, torch.Tensor):
            merged[key] = torch.cat(values)
        elif isinstance(value, np.ndarray):
            merged[key] = np.concatenate(values)
        else:
            merged[key] = [entry for part in values for entry in part]
    return merged


def run_stage(name: str, model: Any, chunk: Chunk, settings: ExtractionConfig) -> Chunk:
    """Run one frozen model on a chunk, batched, and add its outputs (numpy, CPU) to the chunk."""
    with torch.inference_mode():
        if name == "clip":
            chunk["vit_tokens"] = model(chunk.pop("clip_pixels").to(model.device)).float().cpu().numpy()
        elif name == "ram":
            tagged = model(chunk.pop("ram_pixels").to(model.device))
            chunk["tags"] = [[t for t, _ in image_tags] for image_tags in tagged]
            chunk["tag_scores"] = [[s for _, s in image_tags] for image_tags in tagged]
        elif name == "gdino":
            detect = settings.detection
            detections = model(
                [p.to(model.device) for p in chunk.pop("gdino_pixels")],
                chunk["tags"],
                box_threshold=detect.box_threshold,
                text_threshold=detect.text_threshold,
                nms_iou=detect.nms_iou,
                max_boxes=settings.max_objects,
            )
            chunk["boxes"] = [d.boxes.float().cpu().numpy() for d in detections]
            chunk["box_labels"] = [list(d.labels) for d in detections]
            chunk["box_scores"] = [d.scores.float().cpu().numpy() for d in detections]
            chunk["gdino_tokens"] = np.stack([d.tokens.float().cpu().numpy() for d in detections])
            chunk["gdino_scores"] = np.stack([d.query_scores.float().cpu().numpy() for d in detections])
        elif name == "sam":
            objects = model(
                chunk.pop("sam_pixels").to(model.device),
                [torch.from_numpy(b) for b in chunk["boxes"]],
                [(h, w) for w, h in chunk["sizes"]],
                max_objects=settings.max_objects,
            )
            chunk["sam_tokens"] = objects.tokens.float().cpu().numpy()
            chunk["sam_mask"] = objects.valid.cpu().numpy()
            chunk["sam_masks"] = objects.masks.cpu().numpy()
        else:
            raise KeyError(f"no frozen model stage {name!r}; stages are {STAGES}")
    if name == "gdino":
        chunk["spatial_text"] = [format_objects(labels, boxes.tolist()) for labels, boxes in zip(chunk["box_labels"], chunk["boxes"])]
    return chunk


@dataclass(frozen=True)
class Refined:
    """What the frozen models say about one image (the online path)."""

    tags: list[str]
    tag_scores: list[float]
    boxes: np.ndarray  # (N, 4) normalized xyxy
    box_labels: list[str]
    box_scores: list[float]
    spatial_text: str
    vit_tokens: np.ndarray
    gdino_tokens: np.ndarray
    gdino_scores: np.ndarray
    sam_tokens: np.ndarray
    sam_mask: np.ndarray
    sam_masks: np.ndarray

    def row(self, top_q: int | None) -> dict[str, Any]:
        """What a cache row of this image holds for the trainers (``CacheDataset``'s keys): the tokens as
        the writer keeps them (the ``top_q`` best Grounding-DINO queries, when set) and the spatial text."""
        gdino = self.gdino_tokens
        if top_q and len(gdino) > top_q:
            gdino = select_top_q(gdino[None], self.gdino_scores[None], top_q)[0]
        tensors = {"vit_tokens": self.vit_tokens, "gdino_tokens": gdino, "sam_tokens": self.sam_tokens, "sam_mask": self.sam_mask}
        return {**{name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in tensors.items()}, "spatial_text": self.spatial_text}


def refine(image: Image.Image, models: FrozenModels, seconds: dict[str, float] | None = None) -> Refined:
    """Run every frozen model on one upright RGB image (``seconds``: see ``FrozenModels.run``)."""
    chunk = models.run(new_chunk([models.preprocess(image)], [image.size]), seconds)
    return Refined(
        tags=chunk["tags"][0],
        tag_scores=chunk["tag_scores"][0],
        boxes=chunk["boxes"][0],
        box_labels=chunk["box_labels"][0],
        box_scores=chunk["box_scores"][0].tolist(),
        spatial_text=chunk["spatial_text"][0],
        vit_tokens=chunk["vit_tokens"][0],
        gdino_tokens=chunk["gdino_tokens"][0],
        gdino_scores=chunk["gdino_scores"][0],
        sam_tokens=chunk["sam_tokens"][0],
        sam_mask=chunk["sam_mask"][0],
        sam_masks=chunk["sam_masks"][0],
    )
