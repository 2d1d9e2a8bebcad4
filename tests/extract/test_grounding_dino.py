"""Grounding-DINO: the upstream model built under transformers 5, its checkpoint layout, the captured
decoder states, post-processing, and batch independence."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may come from the hub

import pytest
import torch
import transformers
from groundingdino.util.misc import inverse_sigmoid
from PIL import Image
from torchvision.ops import box_iou
from transformers import BertModel

from lyrics.config import REPO_ROOT
from lyrics.extract.checkpoints import ComponentSpec
from lyrics.extract.grounding_dino import (
    MEAN,
    STD,
    Detections,
    GroundingDino,
    build_model,
    decoder_outputs,
    load_checkpoint,
    load_grounding_dino,
    pad_to_canvas,
    postprocess,
    synthetic_images,
    text_encoder_dir,
    write_random_checkpoint,
)
from lyrics.extract.grounding_dino_compat import CompatBertWarper

TINY_ARCH = REPO_ROOT / "extract/configs/tiny/groundingdino.json"
PAPER_ARCH = REPO_ROOT / "extract/configs/paper/groundingdino.json"
TAGS = ["person", "dog", "red car", "tree"]


def _spec(checkpoint: Path) -> ComponentSpec:
    return ComponentSpec(name="gdino", arch_path=TINY_ARCH, checkpoint=checkpoint, random_init=True, seed=0)


def _tiny_arch() -> dict:
    return _spec(Path("unused")).arch


def _pixels(height: int, width: int, seed: int) -> torch.Tensor:
    """A normalized photo-like image of exactly (3, height, width)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        image = synthetic_images(1, max(height, width))[0]
    return torch.nn.functional.interpolate(image[None], size=(height, width), mode="bilinear")[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gdino") / "groundingdino_tiny.pth"


@pytest.fixture(scope="module")
def gdino(checkpoint: Path) -> GroundingDino:
    return load_grounding_dino(_spec(checkpoint))


def _plain_forward(gdino: GroundingDino, pixels: torch.Tensor, caption: str) -> tuple[dict, dict, dict]:
    """Upstream's forward on one image: its outputs, the transformer's outputs and its text_dict."""
    seen: dict = {}
    hook = gdino.model.transformer.register_forward_hook(lambda m, args, out: seen.update(text_dict=args[-1]))
    try:
        with torch.inference_mode(), decoder_outputs(gdino.model) as decoder:
            out = gdino.model(pad_to_canvas([pixels], gdino.canvas(*pixels.shape[1:])), captions=[caption])
    finally:
        hook.remove()
    return out, decoder, seen["text_dict"]


def test_builds_from_local_files_under_transformers_5(gdino: GroundingDino) -> None:
    if int(transformers.__version__.split(".")[0]) >= 5:
        assert not hasattr(BertModel, "get_extended_attention_mask")  # what upstream's wrapper needs
    assert isinstance(gdino.model.bert, CompatBertWarper)
    assert gdino.model.bert.config.hidden_size == 384  # the MiniLM text encoder
    assert gdino.model.feat_map.in_features == 384 and gdino.model.feat_map.out_features == 256
    assert gdino.num_queries == 900
    tiny_encoder = text_encoder_dir(_tiny_arch()["text_encoder"], Path("/nowhere/x.pth"))
    assert (tiny_encoder / "vocab.txt").is_file()


def test_compat_bert_wrapper_matches_bert_model(gdino: GroundingDino) -> None:
    """The wrapper's (B, T) mask path is transformers' own BertModel, padding included."""
    bert = BertModel.from_pretrained(text_encoder_dir(_tiny_arch()["text_encoder"], Path(".")), local_files_only=True).eval()
    tokenized = gdino.model.tokenizer(["a dog . a red car .", "tree ."], padding="longest", return_tensors="pt")
    with torch.no_grad():
        expected = bert(**tokenized).last_hidden_state
        got = CompatBertWarper(bert)(**tokenized).last_hidden_state
    valid = tokenized["attention_mask"].bool()
    torch.testing.assert_close(got[valid], expected[valid], atol=1e-5, rtol=1e-5)


def test_checkpoint_has_upstream_keys_and_loads_exactly(gdino: GroundingDino, checkpoint: Path) -> None:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    keys = set(state["model"])
    for key in [
        "backbone.0.patch_embed.proj.weight",
        "backbone.0.layers.0.blocks.0.attn.qkv.weight",
        "backbone.0.norm1.weight",
        "transformer.level_embed",
        "transformer.tgt_embed.weight",
        "transformer.encoder.fusion_layers.0.gamma_v",
        "transformer.encoder.text_layers.0.self_attn.in_proj_weight",
        "transformer.decoder.layers.0.ca_text.in_proj_weight",
        "transformer.decoder.layers.1.catext_norm.weight",
        "transformer.enc_out_bbox_embed.layers.2.weight",
        "bert.embeddings.word_embeddings.weight",
        "bert.encoder.layer.5.output.dense.weight",
        "feat_map.weight",
        "input_proj.0.0.weight",
        "input_proj.3.1.weight",
        "bbox_embed.0.layers.0.weight",
        "bbox_embed.1.layers.2.bias",
    ]:
        assert key in keys, key
    minilm = BertModel.from_pretrained(text_encoder_dir(_tiny_arch()["text_encoder"], Path(".")), local_files_only=True)
    assert torch.equal(state["model"]["bert.embeddings.word_embeddings.weight"], minilm.embeddings.word_embeddings.weight)
    missing, unexpected = gdino.model.load_state_dict(state["model"], strict=False)
    assert missing == [] and unexpected == []


def test_random_checkpoint_is_deterministic_from_the_seed(checkpoint: Path, tmp_path: Path) -> None:
    write_random_checkpoint(_tiny_arch(), 0, tmp_path / "again.pth")
    first = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    again = torch.load(tmp_path / "again.pth", map_location="cpu", weights_only=True)["model"]
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_loader_strips_module_prefix_and_refuses_missing_parameters(
    gdino: GroundingDino, checkpoint: Path, tmp_path: Path
) -> None:
    weights = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    wrapped = tmp_path / "ddp.pth"
    torch.save({"model": {f"module.{k}": v for k, v in weights.items()}}, wrapped)
    load_checkpoint(gdino.model, wrapped)  # DDP-saved names load

    partial = tmp_path / "partial.pth"
    torch.save({"model": {k: v for k, v in weights.items() if not k.startswith("feat_map.")}}, partial)
    with pytest.raises(ValueError, match="feat_map.weight"):
        load_checkpoint(gdino.model, partial)
    load_checkpoint(gdino.model, checkpoint)  # leave the shared model as it was


def test_captured_decoder_states_reproduce_the_outputs(gdino: GroundingDino) -> None:
    prompt = gdino.prompt(TAGS)
    out, decoder, text_dict = _plain_forward(gdino, _pixels(320, 480, 1), prompt.caption)
    hs, reference = decoder["hs"], decoder["reference"]
    assert len(hs) == 2 and hs[-1].shape == (1, 900, 256)
    with torch.inference_mode():
        logits = gdino.model.class_embed[-1](hs[-1], text_dict)
        boxes = torch.sigmoid(gdino.model.bbox_embed[-1](hs[-1]) + inverse_sigmoid(reference[-2]))
    finite = torch.isfinite(out["pred_logits"])
    assert torch.equal(finite, torch.isfinite(logits))
    torch.testing.assert_close(logits[finite], out["pred_logits"][finite], atol=1e-5, rtol=0)
    torch.testing.assert_close(boxes, out["pred_boxes"], atol=1e-5, rtol=0)


def test_tokens_are_the_last_decoder_states_and_their_boxes(gdino: GroundingDino) -> None:
    pixels = _pixels(320, 427, 2)
    [detections] = gdino([pixels], [TAGS])
    out, decoder, _ = _plain_forward(gdino, pixels, gdino.prompt(TAGS).caption)
    assert detections.tokens.shape == (900, 260) and detections.query_scores.shape == (900,)
    torch.testing.assert_close(detections.tokens[:, :256], decoder["hs"][-1][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(detections.tokens[:, 256:], out["pred_boxes"][0], atol=1e-5, rtol=0)


def _ordered_tag_phrases(tags: list[str]) -> set[str]:
    return {" ".join(c) for n in range(1, len(tags) + 1) for c in itertools.combinations(tags, n)}


def _check_detections(detections: Detections, tags: list[str], box_threshold: float, nms_iou: float, max_boxes: int) -> None:
    n = len(detections.labels)
    assert detections.boxes.shape == (n, 4) and detections.boxes.dtype == torch.float32
    assert detections.scores.shape == (n,) and n <= max_boxes
    boxes = detections.boxes
    assert bool(((boxes >= 0) & (boxes <= 1)).all())
    assert bool((boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all())
    assert bool((detections.scores > box_threshold).all())
    assert torch.equal(detections.scores, detections.scores.sort(descending=True).values)
    overlaps = box_iou(boxes, boxes).fill_diagonal_(0)
    assert bool((overlaps <= nms_iou + 1e-6).all())
    assert set(detections.labels) <= _ordered_tag_phrases(tags)


def test_postprocessing_of_real_forwards(gdino: GroundingDino) -> None:
    images = [_pixels(320, 480, seed) for seed in range(3)]
    for box_threshold, nms_iou, max_boxes in [(0.25, 0.6, 32), (0.3, 0.3, 3)]:
        detections = gdino(images, [TAGS] * 3, box_threshold=box_threshold, nms_iou=nms_iou, max_boxes=max_boxes)
        for d in detections:
            _check_detections(d, TAGS, box_threshold, nms_iou, max_boxes)
    assert sum(len(d.labels) for d in gdino(images, [TAGS] * 3)) > 0  # the calibrated random init detects


def test_thresholds_nms_and_labels_on_chosen_logits(gdino: GroundingDino) -> None:
    """Queries: two overlapping "dog" boxes, one "red car" box whose "dog" token is also above the
    text threshold, one below the box threshold; boxes are (cx, cy, w, h)."""
    prompt = gdino.prompt(["dog", "Red Car"])
    assert prompt.caption == "dog . red car ." and prompt.tags == ["dog", "Red Car"]
    dog, red, car = (int(prompt.tag_tokens[0].nonzero()[0]), *prompt.tag_tokens[1].nonzero().flatten().tolist())
    logits = torch.full((4, 256), float("-inf"))  # past the caption's tokens, as upstream pads
    logits[:, : len(gdino.model.tokenizer(prompt.caption).input_ids)] = -5.0
    logit = lambda p: torch.logit(torch.tensor(p)).item()  # noqa: E731
    logits[0, dog] = logit(0.9)
    logits[1, dog] = logit(0.8)
    logits[2, car], logits[2, red], logits[2, dog] = logit(0.7), logit(0.1), logit(0.21)
    logits[3, red] = logit(0.24)
    boxes = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.31, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.4], [0.5, 0.5, 0.1, 0.1]])
    states = torch.randn(4, 256)
    d = postprocess(logits, states, boxes, prompt, box_threshold=0.25, text_threshold=0.2, nms_iou=0.6, max_boxes=32)
    assert d.labels == ["dog", "dog Red Car"]
    torch.testing.assert_close(d.scores, torch.tensor([0.9, 0.7]))
    torch.testing.assert_close(d.boxes, torch.tensor([[0.2, 0.2, 0.4, 0.4], [0.6, 0.5, 0.8, 0.9]]))
    torch.testing.assert_close(d.query_scores, torch.tensor([0.9, 0.8, 0.7, 0.24]))
    torch.testing.assert_close(d.tokens, torch.cat([states, boxes], dim=1))


def test_untagged_image_gets_tokens_but_no_boxes(gdino: GroundingDino) -> None:
    [detections] = gdino([_pixels(320, 480, 3)], [[]], box_threshold=0.0)
    assert detections.labels == [] and detections.boxes.shape == (0, 4)
    assert detections.tokens.shape == (900, 260) and bool(torch.isfinite(detections.tokens).all())


def test_batched_call_equals_per_image_calls(gdino: GroundingDino) -> None:
    """Different sizes (two sharing a canvas, one portrait) and prompts of different lengths."""
    images = [_pixels(320, 427, 4), _pixels(320, 480, 5), _pixels(480, 320, 6)]
    prompts = [["dog", "red car"], ["person", "tree", "building", "sky"], ["cat"]]
    assert gdino.canvas(320, 427) == gdino.canvas(320, 480) != gdino.canvas(480, 320)
    batched = gdino(images, prompts)
    for image, prompt, together in zip(images, prompts, batched):
        [alone] = gdino([image], [prompt])
        assert together.labels == alone.labels
        for field in ("boxes", "scores", "tokens", "query_scores"):
            torch.testing.assert_close(getattr(together, field), getattr(alone, field), atol=1e-4, rtol=0)


def test_preprocess_resizes_like_upstream(gdino: GroundingDino) -> None:
    image = Image.new("RGB", (640, 427), (124, 116, 104))
    pixels = gdino.preprocess(image)
    assert pixels.shape == (3, 320, 479)  # short side 320, as upstream's resize rounds
    # long side capped at 533 as upstream computes it: short side round(533 * 400 / 2000) = 107, then 535
    assert gdino.preprocess(Image.new("RGB", (2000, 400))).shape == (3, 107, 535)
    expected = (torch.tensor([124, 116, 104]) / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(pixels[:, 0, 0], expected, atol=1e-3, rtol=0)


def test_text_encoder_folder_beside_the_checkpoint(tmp_path: Path) -> None:
    assert _spec(Path("x")).arch["text_encoder"].startswith("package:")
    paper = ComponentSpec(name="gdino", arch_path=PAPER_ARCH, checkpoint=tmp_path / "g.pth", random_init=False, seed=0)
    with pytest.raises(FileNotFoundError, match="bert-base-uncased"):
        text_encoder_dir(paper.arch["text_encoder"], paper.checkpoint)
    (tmp_path / "bert-base-uncased").mkdir()
    (tmp_path / "bert-base-uncased" / "config.json").write_text("{}")
    assert text_encoder_dir(paper.arch["text_encoder"], paper.checkpoint) == tmp_path / "bert-base-uncased"


def test_tiny_time_per_image(gdino: GroundingDino) -> None:
    images = [_pixels(320, 480, seed) for seed in range(4)]
    gdino(images[:1], [TAGS])  # warm-up
    start = time.perf_counter()
    gdino(images, [TAGS] * len(images))
    per_image = (time.perf_counter() - start) / len(images)
    print(f"\ngdino tiny: {per_image:.3f} s per 320x480 image, batch of {len(images)}, {torch.get_num_threads()} threads")


def test_builds_the_paper_architecture_without_weights() -> None:
    """The paper arch is upstream's SwinT-OGC; built here with the MiniLM folder standing in for bert-base-uncased."""
    arch = ComponentSpec(name="gdino", arch_path=PAPER_ARCH, checkpoint=Path("x"), random_init=False, seed=0).arch
    model = build_model(arch, text_encoder_dir(_tiny_arch()["text_encoder"], Path(".")))
    names = dict(model.named_parameters())
    assert names["backbone.0.patch_embed.proj.weight"].shape == (96, 3, 4, 4)  # swin_T_224_1k
    assert names["input_proj.2.0.weight"].shape == (256, 768, 1, 1)
    assert len(model.transformer.decoder.layers) == 6 and model.num_queries == 900
