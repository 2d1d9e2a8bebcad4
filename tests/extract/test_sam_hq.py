"""SAM-HQ object tokens: the upstream checkpoint layout, and the tokens recomputed from SamPredictor."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lyrics.config import REPO_ROOT
from lyrics.extract.checkpoints import ComponentSpec
from lyrics.extract.sam_hq import SamHq, SamObjects, _box_cells, load_sam_hq
from segment_anything_hq import SamPredictor, sam_model_registry
from segment_anything_hq.utils.transforms import ResizeLongestSide

TINY_ARCH = REPO_ROOT / "extract/configs/tiny/sam_hq.json"
MAX_OBJECTS = 4
# Per image: more boxes than MAX_OBJECTS (one smaller than a grid cell), none, two.
BOXES = [
    torch.tensor(
        [
            [0.1, 0.1, 0.6, 0.7],
            [0.3, 0.2, 0.9, 0.95],
            [0.5, 0.5, 0.502, 0.503],
            [0.0, 0.0, 1.0, 1.0],
            [0.2, 0.6, 0.4, 0.9],
        ]
    ),
    torch.zeros(0, 4),
    torch.tensor([[0.05, 0.4, 0.5, 0.6], [0.6, 0.1, 0.95, 0.5]]),
]


def _image(height: int, width: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    gradient = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    noise = rng.integers(0, 64, size=(height, width, 3)).astype(np.float32)
    return Image.fromarray(np.clip(gradient + noise, 0, 255).astype(np.uint8), "RGB")


IMAGES = [_image(240, 320, 0), _image(200, 150, 1), _image(300, 410, 2)]
SIZES = [(image.height, image.width) for image in IMAGES]


def _spec(checkpoint: Path, random_init: bool = True) -> ComponentSpec:
    return ComponentSpec(name="sam", arch_path=TINY_ARCH, checkpoint=checkpoint, random_init=random_init, seed=0)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sam") / "sam_hq_vit_tiny.pth"


@pytest.fixture(scope="module")
def sam(checkpoint: Path) -> SamHq:
    return load_sam_hq(_spec(checkpoint))


@pytest.fixture(scope="module")
def objects(sam: SamHq) -> SamObjects:
    images = torch.stack([sam.preprocess(image) for image in IMAGES])
    return sam(images, BOXES, SIZES, max_objects=MAX_OBJECTS)


@pytest.fixture(scope="module")
def predictor_embeddings(sam: SamHq) -> list[torch.Tensor | None]:
    """Each image's embedding as the package's SamPredictor computes it."""
    predictor = SamPredictor(sam.model)
    embeddings = []
    for image, boxes in zip(IMAGES, BOXES):
        if len(boxes):  # an image without boxes is never encoded
            predictor.set_image(np.asarray(image))
            embeddings.append(predictor.get_image_embedding()[0])
        else:
            embeddings.append(None)
    return embeddings


def test_checkpoint_is_an_upstream_raw_state_dict(sam: SamHq, checkpoint: Path) -> None:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert all(isinstance(value, torch.Tensor) for value in state.values())
    assert {key.split(".")[0] for key in state} == {"image_encoder", "prompt_encoder", "mask_decoder"}
    for key in (
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
        "mask_decoder.hf_token.weight",
        "mask_decoder.compress_vit_feat.0.weight",
    ):
        assert key in state
    assert not {"model", "pixel_mean", "pixel_std"} & set(state)
    assert state["mask_decoder.compress_vit_feat.0.weight"].shape[0] == 160  # vit_tiny's vit_dim
    model = sam_model_registry["vit_tiny"](checkpoint=None)
    model.load_state_dict(state, strict=True)  # no missing or unexpected keys


def test_refuses_a_state_dict_with_other_keys(checkpoint: Path, sam: SamHq, tmp_path: Path) -> None:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    del state["mask_decoder.hf_token.weight"]
    state["model.extra"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    expected = r"missing keys \['mask_decoder.hf_token.weight'\], unexpected keys \['model.extra'\]"
    with pytest.raises(ValueError, match=expected):
        load_sam_hq(_spec(tmp_path / "bad.pth", random_init=False))


def test_tiny_vit_attention_biases_come_from_the_checkpoint(checkpoint: Path, sam: SamHq, tmp_path: Path) -> None:
    # TinyViT caches its attention biases when eval() is called; the loader must do that after loading.
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    for key in [k for k in state if k.endswith("attention_biases")]:
        state[key] = torch.randn_like(state[key])
    torch.save(state, tmp_path / "biased.pth")
    model = load_sam_hq(_spec(tmp_path / "biased.pth", random_init=False)).model
    attentions = [m for m in model.image_encoder.modules() if hasattr(m, "attention_biases")]
    assert attentions
    for attention in attentions:
        assert torch.equal(attention.ab, attention.attention_biases[:, attention.attention_bias_idxs])


def test_preprocess_is_what_sam_predictor_encodes(sam: SamHq) -> None:
    # SamPredictor.set_image: ResizeLongestSide on the uint8 image, then Sam.preprocess.
    # (test_embedding_part_is_the_mean_under_the_returned_mask compares the embeddings too.)
    image = np.asarray(IMAGES[0])
    predictor = SamPredictor(sam.model)
    resized = torch.as_tensor(predictor.transform.apply_image(image)).permute(2, 0, 1).contiguous()[None]
    expected = sam.model.preprocess(resized)[0]
    pixels = sam.preprocess(IMAGES[0])
    assert pixels.shape == (3, 1024, 1024) and sam.image_size == 1024
    assert torch.equal(pixels, expected)


def test_shapes_valid_counts_and_padding(objects: SamObjects) -> None:
    assert objects.tokens.shape == (3, MAX_OBJECTS, 260) and objects.tokens.dtype == torch.float32
    assert objects.masks.shape == (3, MAX_OBJECTS, 64, 64) and objects.masks.dtype == torch.bool
    counts = [min(len(boxes), MAX_OBJECTS) for boxes in BOXES]
    assert objects.valid.sum(dim=1).tolist() == counts
    for i, count in enumerate(counts):
        assert objects.valid[i, :count].all()
        assert (objects.tokens[i, count:] == 0).all() and not objects.masks[i, count:].any()


def test_box_part_is_the_normalized_box(objects: SamObjects) -> None:
    for i, boxes in enumerate(BOXES):
        kept = boxes[:MAX_OBJECTS]
        assert torch.equal(objects.tokens[i, : len(kept), 256:], kept)


def test_embedding_part_is_the_mean_under_the_returned_mask(
    objects: SamObjects, predictor_embeddings: list[torch.Tensor | None]
) -> None:
    for i, embedding in enumerate(predictor_embeddings):
        if embedding is None:
            assert not objects.valid[i].any()
            continue
        for j in torch.nonzero(objects.valid[i]).flatten().tolist():
            mask = objects.masks[i, j]
            assert mask.any()
            expected = embedding[:, mask].mean(dim=1)
            assert torch.allclose(objects.tokens[i, j, :256], expected, atol=1e-4)


def test_masks_stay_inside_the_image(objects: SamObjects) -> None:
    for i, size in enumerate(SIZES):
        height, width = ResizeLongestSide.get_preprocess_shape(*size, 1024)
        rows, cols = math.ceil(height / 16), math.ceil(width / 16)
        assert not objects.masks[i, :, rows:, :].any() and not objects.masks[i, :, :, cols:].any()


def test_batched_call_equals_per_image_calls(sam: SamHq, objects: SamObjects) -> None:
    for i, (image, boxes, size) in enumerate(zip(IMAGES, BOXES, SIZES)):
        single = sam(sam.preprocess(image)[None], [boxes], [size], max_objects=MAX_OBJECTS)
        assert torch.equal(single.valid[0], objects.valid[i])
        assert torch.equal(single.masks[0], objects.masks[i])
        assert torch.allclose(single.tokens[0], objects.tokens[i], atol=1e-4)


def test_no_boxes_means_no_objects(sam: SamHq) -> None:
    result = sam(sam.preprocess(IMAGES[1])[None], [torch.zeros(0, 4)], [SIZES[1]], max_objects=MAX_OBJECTS)
    assert not result.valid.any() and (result.tokens == 0).all() and not result.masks.any()
    assert sam.to("cpu").device == torch.device("cpu")


def test_box_fallback_cells() -> None:
    boxes = torch.tensor([[0.0, 0.0, 64.0, 32.0], [100.0, 200.0, 103.0, 202.0]])  # padded-frame pixels
    cells = _box_cells(boxes, grid=64, stride=16.0)
    assert cells[0].sum() == 8 and cells[0, :2, :4].all()  # centres 8, 24 (rows) x 8..56 (cols)
    assert cells[1].sum() == 1 and cells[1, 12, 6]  # smaller than a cell: the cell under its centre


def test_rejects_malformed_inputs(sam: SamHq) -> None:
    images = torch.zeros(1, 3, 1024, 1024)
    with pytest.raises(ValueError, match="boxes\\[0\\] must be \\(N, 4\\)"):
        sam(images, [torch.zeros(3)], [(10, 10)])
    with pytest.raises(ValueError, match="1 images but 2 box sets"):
        sam(images, [torch.zeros(0, 4)] * 2, [(10, 10)] * 2)
