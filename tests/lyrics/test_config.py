"""pipelines.yaml validation: the shipped file is valid; bad files are refused naming file, key, problem."""

from pathlib import Path

import pytest
import yaml

from lyrics.config import DEFAULT_CONFIG, ConfigError, expand_env, load_config


def write_variant(tmp_path: Path, edit) -> Path:
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    edit(raw)
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_shipped_config_is_valid_and_resolves_paths():
    config = load_config()
    assert {"sample", "fuzz", "laion", "cc3m", "cc12m", "sbu", "coco"} <= set(config.datasets)
    assert {"tiny", "paper"} <= set(config.profiles)
    assert config.extraction.detection.box_threshold == 0.25 and config.extraction.detection.nms_iou == 0.6
    assert config.training.pretrain.recipes["paper"].betas == (0.9, 0.98) and config.training.pretrain.recipes["paper"].warmup_ratio == 0.15
    sample = config.path(config.dataset("sample").path)
    assert sample.is_absolute() and "{root}" not in str(sample)


def test_environment_overrides_checkpoint_paths(monkeypatch):
    monkeypatch.setenv("LYRICS_CLIP_PATH", "/models/clip-vit-large-patch14")
    monkeypatch.setenv("LYRICS_SAM_PATH", "")  # empty counts as unset: the default stays
    config = load_config()
    assert config.profile("paper").clip.checkpoint == "/models/clip-vit-large-patch14"
    assert config.profile("paper").sam.checkpoint == "checkpoints/sam_hq_vit_h.pth"


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda r: r["extraction"]["detection"].update(box_threshold=1.5), r"extraction\.detection\.box_threshold: Input should be less than or equal to 1 \(got 1\.5\)"),
        (lambda r: r["extraction"].update(batch_sise=4), r"extraction\.batch_sise: Extra inputs are not permitted"),
        (lambda r: r["profiles"]["paper"].pop("sam"), r"profiles\.paper\.sam: Field required"),
        (lambda r: r["extraction"].update(profile="huge"), r"extraction\.profile 'huge' is not one of the profiles \['paper', 'tiny'\]"),
        (lambda r: r["extraction"]["storage"].update(dtype="bf16"), r"extraction\.storage\.dtype: Input should be 'fp16' or 'int8'"),
        (lambda r: r["training"]["pretrain"]["recipes"]["tiny"].update(global_batch=10, micro_batch=4), r"global_batch 10 is not a multiple of micro_batch 4"),
        (lambda r: r["datasets"]["laion"].update(format="tfrecord"), r"datasets\.laion\.format: Input should be 'webdataset' or 'folder'"),
        (lambda r: r["training"].update(profile="huge"), r"training\.profile 'huge' is not one of the profiles \['paper', 'tiny'\]"),
        (lambda r: r["training"]["pretrain"].update(data=["laion", "yfcc"]), r"training\.pretrain\.data names unregistered data sets \['yfcc'\]"),
        (lambda r: r["training"]["pretrain"]["recipes"].pop("paper"), r"training\.pretrain\.recipes has no recipe for the profiles \['paper'\]"),
        (lambda r: r["training"]["pretrain"].update(msp_probability=0), r"training\.pretrain\.msp_probability: Input should be greater than 0"),
        (lambda r: r["training"].update(strategy="deepspeed"), r"training\.strategy: Input should be 'auto', 'ddp' or 'fsdp'"),
        (lambda r: r["extraction"].update(model_actors=[{"models": ["clip", "gdino"]}, {"models": ["ram", "sam"]}]),
         r"extraction\.model_actors: list every model once, in pipeline order \['clip', 'ram', 'gdino', 'sam'\].*got \['clip', 'gdino', 'ram', 'sam'\]"),
        (lambda r: r["extraction"].update(model_actors=[{"models": ["clip", "ram", "gdino", "sam"], "count": 0}]),
         r"extraction\.model_actors\.0\.count: Input should be greater than or equal to 1"),
        (lambda r: r["extraction"].update(actors={"sam": 2}), r"extraction\.actors: Extra inputs are not permitted"),
    ],
)
def test_bad_values_are_refused_with_file_key_and_problem(tmp_path, edit, expected):
    path = write_variant(tmp_path, edit)
    with pytest.raises(ConfigError, match=expected) as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_unset_variable_without_default_names_the_key(tmp_path):
    path = write_variant(tmp_path, lambda r: r["profiles"]["paper"]["llm"].update(checkpoint="${LYRICS_NOT_SET_ANYWHERE}"))
    with pytest.raises(ConfigError, match=r"profiles\.paper\.llm\.checkpoint: environment variable LYRICS_NOT_SET_ANYWHERE is not set"):
        load_config(path)


def test_unknown_names_and_missing_files(tmp_path):
    config = load_config()
    with pytest.raises(ConfigError, match=r"no dataset 'laion5b'; registered: \["):
        config.dataset("laion5b")
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(tmp_path / "absent.yaml")
    (tmp_path / "broken.yaml").write_text("root: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        load_config(tmp_path / "broken.yaml")


def test_expand_env_defaults_and_nesting():
    env = {"A": "1"}
    assert expand_env({"x": ["${A}/${B:-two}"], "n": 3}, env) == {"x": ["1/two"], "n": 3}
