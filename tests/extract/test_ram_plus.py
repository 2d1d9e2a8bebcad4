"""RAM++: the upstream checkpoint layout, its loader, tag selection, and the tiny profile's random weights."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from lyrics.config import load_config
from lyrics.extract.checkpoints import ComponentSpec, component_spec
from lyrics.extract.ram_plus import (
    TAG_LIST,
    THRESHOLDS,
    RamPreprocess,
    load_ram_plus,
    random_model,
    read_tag_list,
    read_upstream_checkpoint,
    write_random_checkpoint,
)
from lyrics.extract.ram_plus_model import RamPlus, RamPlusArch, load_upstream_state, to_upstream

# Small enough to be fast; stage 2's grid equals the window (no shift), stage 3's is smaller (window clamps).
ARCH = {
    "image_size": 64,
    "swin": {"patch_size": 4, "embed_dim": 16, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 2, 4], "window_size": 4, "mlp_ratio": 2.0},
    "label_dim": 16,
    "descriptions_per_tag": 3,
    "tagging_head": {"hidden_size": 24, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 48, "layer_norm_eps": 1e-12},
    "vocabulary": "tiny/ram_tag_list.txt",
}
NUM_TAGS = len(read_tag_list(Path(__file__).resolve().parents[2] / "extract/configs/tiny/ram_tag_list.txt"))


def upstream_shapes(arch: dict, num_tags: int) -> dict[str, tuple[int, ...]]:
    """Every key of upstream's ``checkpoint['model']`` and its shape, written out from the upstream design."""
    swin, head = arch["swin"], arch["tagging_head"]
    patch, window, dim0 = swin["patch_size"], swin["window_size"], swin["embed_dim"]
    label, hidden, inter = arch["label_dim"], head["hidden_size"], head["intermediate_size"]
    shapes = {
        "visual_encoder.patch_embed.proj.weight": (dim0, 3, patch, patch),
        "visual_encoder.patch_embed.proj.bias": (dim0,),
        "visual_encoder.patch_embed.norm.weight": (dim0,),
        "visual_encoder.patch_embed.norm.bias": (dim0,),
    }
    stages = len(swin["depths"])
    for s, (depth, heads) in enumerate(zip(swin["depths"], swin["num_heads"])):
        d, grid = dim0 * 2**s, arch["image_size"] // patch // 2**s
        win = min(window, grid)
        for b in range(depth):
            pre = f"visual_encoder.layers.{s}.blocks.{b}."
            shapes |= {pre + f"{n}.{p}": (d,) for n in ("norm1", "norm2") for p in ("weight", "bias")}
            shapes |= {
                pre + "attn.qkv.weight": (3 * d, d), pre + "attn.qkv.bias": (3 * d,),
                pre + "attn.proj.weight": (d, d), pre + "attn.proj.bias": (d,),
                pre + "attn.relative_position_bias_table": ((2 * win - 1) ** 2, heads),
                pre + "attn.relative_position_index": (win * win, win * win),
                pre + "mlp.fc1.weight": (int(swin["mlp_ratio"] * d), d), pre + "mlp.fc1.bias": (int(swin["mlp_ratio"] * d),),
                pre + "mlp.fc2.weight": (d, int(swin["mlp_ratio"] * d)), pre + "mlp.fc2.bias": (d,),
            }
            if b % 2 == 1 and grid > window:
                shapes[pre + "attn_mask"] = ((grid // win) ** 2, win * win, win * win)
        if s < stages - 1:
            pre = f"visual_encoder.layers.{s}.downsample."
            shapes |= {pre + "norm.weight": (4 * d,), pre + "norm.bias": (4 * d,), pre + "reduction.weight": (2 * d, 4 * d)}
    width = dim0 * 2 ** (stages - 1)
    shapes |= {"visual_encoder.norm.weight": (width,), "visual_encoder.norm.bias": (width,)}
    shapes |= {
        "image_proj.weight": (label, width), "image_proj.bias": (label,),
        "label_embed": (num_tags * arch["descriptions_per_tag"], label),
        "fc.weight": (1, hidden), "fc.bias": (1,),
        "reweight_scale": (),
    }
    if hidden != label:
        shapes |= {"wordvec_proj.weight": (hidden, label), "wordvec_proj.bias": (hidden,)}
    for i in range(head["num_hidden_layers"]):
        pre = f"tagging_head.encoder.layer.{i}."
        shapes |= {
            pre + "crossattention.self.query.weight": (hidden, hidden), pre + "crossattention.self.query.bias": (hidden,),
            pre + "crossattention.self.key.weight": (hidden, label), pre + "crossattention.self.key.bias": (hidden,),
            pre + "crossattention.self.value.weight": (hidden, label), pre + "crossattention.self.value.bias": (hidden,),
            pre + "crossattention.output.dense.weight": (hidden, hidden), pre + "crossattention.output.dense.bias": (hidden,),
            pre + "crossattention.output.LayerNorm.weight": (hidden,), pre + "crossattention.output.LayerNorm.bias": (hidden,),
            pre + "intermediate.dense.weight": (inter, hidden), pre + "intermediate.dense.bias": (inter,),
            pre + "output.dense.weight": (hidden, inter), pre + "output.dense.bias": (hidden,),
            pre + "output.LayerNorm.weight": (hidden,), pre + "output.LayerNorm.bias": (hidden,),
        }
    return shapes


def spec_for(folder: Path, arch: dict = ARCH, random_init: bool = True) -> ComponentSpec:
    arch_path = folder / "ram_plus.json"
    arch_path.write_text(json.dumps(arch))
    return ComponentSpec("ram", arch_path, folder / "ram_plus.pth", random_init=random_init, seed=0)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ram")
    write_random_checkpoint(ARCH, 0, folder / "ram_plus.pth")
    return folder


@pytest.fixture
def folder(written, tmp_path) -> Path:
    """A private copy of the written checkpoint and tag files, free to edit."""
    shutil.copytree(written, tmp_path, dirs_exist_ok=True)
    return tmp_path


def pixels(count: int = 4) -> torch.Tensor:
    return torch.randn(count, 3, ARCH["image_size"], ARCH["image_size"], generator=torch.Generator().manual_seed(1))


def test_written_checkpoint_has_the_upstream_layout(written):
    state = torch.load(written / "ram_plus.pth", map_location="cpu", weights_only=True)["model"]
    assert {k: tuple(v.shape) for k, v in state.items()} == upstream_shapes(ARCH, NUM_TAGS)
    assert state["visual_encoder.layers.0.downsample.reduction.weight"].shape == (32, 64)
    assert "visual_encoder.layers.3.downsample.reduction.weight" not in state
    assert state["visual_encoder.layers.0.blocks.1.attn_mask"].unique().tolist() == [-100.0, 0.0]
    assert "visual_encoder.layers.0.blocks.0.attn_mask" not in state  # unshifted
    assert state["visual_encoder.layers.0.blocks.0.attn.relative_position_index"].dtype == torch.int64
    assert state["tagging_head.encoder.layer.1.crossattention.self.key.weight"].shape == (24, 16)
    assert state["label_embed"].shape == (NUM_TAGS * 3, 16)
    assert state["reweight_scale"].shape == ()
    assert not any(".attention." in k or "embeddings" in k for k in state)  # self-attention and embeddings deleted
    assert load_upstream_state(RamPlus(RamPlusArch.from_dict(ARCH), NUM_TAGS), state) == []
    assert len(read_tag_list(written / TAG_LIST)) == len((written / THRESHOLDS).read_text().split()) == NUM_TAGS


def test_paper_arch_has_the_upstream_keys_and_size():
    arch = json.loads((Path(__file__).resolve().parents[2] / "extract/configs/paper/ram_plus.json").read_text())
    with torch.device("meta"):
        state = to_upstream(RamPlus(RamPlusArch.from_dict(arch), 4585))
    assert {k: tuple(v.shape) for k, v in state.items()} == upstream_shapes(arch, 4585)
    buffers = sum(v.numel() for k, v in state.items() if k.endswith(("relative_position_index", "attn_mask")))
    assert (sum(v.numel() for v in state.values()) - buffers, buffers) == (329_493_046, 2_903_040)  # RAMPP.md section 5


def test_load_round_trip_gives_the_same_scores(written):
    tagger = load_ram_plus(spec_for(written))
    fresh = random_model(RamPlusArch.from_dict(ARCH), NUM_TAGS, seed=0)
    with torch.inference_mode():
        expected = fresh(pixels()).sigmoid()
    torch.testing.assert_close(tagger.scores(pixels()), expected, atol=1e-6, rtol=0)


def test_every_weight_goes_where_it_came_from(folder):
    """Full-scale random weights (strong value path, random norms) survive save and load."""
    model = RamPlus(RamPlusArch.from_dict(ARCH), NUM_TAGS).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.3)
    torch.save({"model": to_upstream(model)}, folder / "ram_plus.pth")
    with torch.inference_mode():
        expected = model(pixels()).sigmoid()
    torch.testing.assert_close(load_ram_plus(spec_for(folder)).scores(pixels()), expected, atol=1e-6, rtol=0)


def test_legacy_vision_multi_prefix_is_renamed(folder, written):
    state = read_upstream_checkpoint(folder / "ram_plus.pth")
    legacy = {k.replace("tagging_head", "vision_multi"): v for k, v in state.items()}
    torch.save({"model": legacy}, folder / "ram_plus.pth")
    reference = load_ram_plus(spec_for(written)).scores(pixels())
    torch.testing.assert_close(load_ram_plus(spec_for(folder)).scores(pixels()), reference, atol=0, rtol=0)


def test_missing_parameter_is_named(folder):
    state = read_upstream_checkpoint(folder / "ram_plus.pth")
    del state["tagging_head.encoder.layer.1.output.dense.weight"]
    torch.save({"model": state}, folder / "ram_plus.pth")
    with pytest.raises(ValueError, match=r"tagging_head\.encoder\.layer\.1\.output\.dense\.weight"):
        load_ram_plus(spec_for(folder))


@pytest.mark.parametrize("name", [TAG_LIST, THRESHOLDS])
def test_missing_tag_file_names_its_path(folder, name):
    (folder / name).unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(f"{folder / name}: missing; put the upstream {name}")):
        load_ram_plus(spec_for(folder))


def test_tag_count_mismatch_names_both_numbers(folder):
    tags = read_tag_list(folder / TAG_LIST)
    (folder / TAG_LIST).write_text("\n".join(tags[:-1]))
    with pytest.raises(ValueError, match=f"{NUM_TAGS - 1} tags.*{NUM_TAGS * 3} rows, {NUM_TAGS} tags of 3"):
        load_ram_plus(spec_for(folder))


def test_tags_follow_the_thresholds(written):
    tagger = load_ram_plus(spec_for(written))
    scores = tagger.scores(pixels(8))
    for row, tagged in zip(scores, tagger(pixels(8))):
        expected = {tagger.tags[i] for i in (row > tagger.thresholds).nonzero().flatten().tolist()}
        assert {tag for tag, _ in tagged} == expected
        assert [score for _, score in tagged] == sorted((score for _, score in tagged), reverse=True)
        for tag, score in tagged:
            assert score == row[tagger.tags.index(tag)].item() and score > tagger.thresholds[tagger.tags.index(tag)]
    assert sum(map(len, tagger(pixels(8)))) > 0


def test_threshold_override_replaces_every_threshold(written):
    tagger = load_ram_plus(spec_for(written), threshold_override=0.5)
    scores = tagger.scores(pixels())
    assert [len(tagged) for tagged in tagger(pixels())] == (scores > 0.5).sum(dim=1).tolist()
    tagger.threshold_override = 1.0
    assert tagger(pixels()) == [[]] * 4


def test_random_checkpoint_is_deterministic(tmp_path, written):
    write_random_checkpoint(ARCH, 0, tmp_path / "again.pth")
    first, again = read_upstream_checkpoint(written / "ram_plus.pth"), read_upstream_checkpoint(tmp_path / "again.pth")
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert (tmp_path / THRESHOLDS).read_text() == (written / THRESHOLDS).read_text()
    other = random_model(RamPlusArch.from_dict(ARCH), NUM_TAGS, seed=1).state_dict()
    assert not torch.equal(other["label_embed"], first["label_embed"])


def test_ensure_checkpoint_creates_the_tag_files_beside_it(tmp_path):
    spec = spec_for(tmp_path)
    tagger = load_ram_plus(spec)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ram_plus.json", "ram_plus.pth", "ram_plus.pth.seed", TAG_LIST, THRESHOLDS])
    assert (tmp_path / "ram_plus.pth.seed").read_text() == "0\n"  # the seed it was made from, checked on every load
    assert tagger.fingerprint == spec.fingerprint() and tagger.name == "ram" and len(tagger.tags) == NUM_TAGS


def test_paper_profile_needs_the_real_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="LYRICS_RAM_PATH"):
        load_ram_plus(spec_for(tmp_path, random_init=False))


def test_preprocess_is_the_upstream_transform(written):
    tagger = load_ram_plus(spec_for(written))
    image = Image.new("L", (100, 30), 255)  # grayscale, non-square
    pixels = tagger.preprocess(image)
    assert pixels.shape == (3, 64, 64) and torch.equal(pixels, RamPreprocess(64)(image))
    torch.testing.assert_close(pixels[:, 0, 0], (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225]))


def test_shipped_configs():
    config = load_config()
    tiny, paper = (RamPlusArch.from_dict(component_spec(config, p, "ram").arch) for p in ("tiny", "paper"))
    swin = (paper.image_size, paper.embed_dim, paper.depths, paper.num_heads, paper.window_size)
    assert swin == (384, 192, (2, 2, 18, 2), (6, 12, 24, 48), 12)
    head = (paper.label_dim, paper.descriptions_per_tag, paper.head_hidden_size, paper.head_layers, paper.head_attention_heads)
    assert head == (512, 51, 768, 2, 4) and paper.head_intermediate_size == 3072
    assert paper.vocabulary is None and tiny.vocabulary == "tiny/ram_tag_list.txt"
    tags = read_tag_list(Path(__file__).resolve().parents[2] / "extract/configs" / tiny.vocabulary)
    assert len(set(tags)) == len(tags) and all(t == t.strip().lower() for t in tags)
    assert {"woman", "man", "cat", "cup", "coin", "motorcycle", "wheel", "rocket", "tower", "quokka", "pagoda"} <= set(tags)
