"""``pipelines.yaml``: one typed schema, validated before any work starts.

Strings may read the environment with ``${VAR}`` or ``${VAR:-default}`` (that is how checkpoint
paths such as ``LYRICS_CLIP_PATH`` are overridden) and may name the artifact root with ``{root}``.
Every error names the file, the key and the problem.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "pipelines.yaml"
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names file, key and problem."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- data sources -------------------------------------------------------------------------------
FolderKey = Literal["stem", "parent", "path"]  # an image folder's join key rule (data/image_folder.py)


class DatasetConfig(Strict):
    format: Literal["webdataset", "folder"]
    # WebDataset: a brace pattern of tar shards. Folder: the image folder (data/image_folder.py).
    path: str
    captions: str | None = Field(None, description="folder format: JSONL or Parquet with `image`, `caption`")
    key: FolderKey = Field("stem", description="folder format: join key of an image: its file stem, parent folder or relative path")
    # How the files come to exist; shown in the error when they are missing (default: by format).
    produced_by: str = ""

    @model_validator(mode="before")
    @classmethod
    def _default_origin(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and not raw.get("produced_by"):
            origin = {"webdataset": "img2dataset --output_format webdataset", "folder": "the data set's images, unpacked into this folder"}
            raw = {**raw, "produced_by": origin.get(raw.get("format"), "")}
        return raw


# --- model profiles -----------------------------------------------------------------------------
class ComponentConfig(Strict):
    # A local checkpoint (file or directory) in the component's real upstream format.
    checkpoint: str
    # The architecture: a small JSON file (open_clip style) under extract/configs/.
    arch: str


class ProfileConfig(Strict):
    seed: int = 0
    # True (tiny): a missing checkpoint is created from `arch` with random weights from `seed`,
    # saved in the real format, then loaded back through the real loading code.
    # False (paper): a missing checkpoint is an error naming the path.
    random_init: bool = False
    clip: ComponentConfig
    ram: ComponentConfig
    gdino: ComponentConfig
    sam: ComponentConfig
    qformer: ComponentConfig
    llm: ComponentConfig


# --- phase 1 ------------------------------------------------------------------------------------
class StorageConfig(Strict):
    dtype: Literal["fp16", "int8"] = "fp16"
    top_q: int | None = Field(None, ge=1, description="keep the top-Q Grounding-DINO queries by score")
    compression: Literal["none", "lz4", "zstd"] = Field("none", description="of the feature tensors (masks are always zstd)")


class DetectionConfig(Strict):
    box_threshold: float = Field(0.25, ge=0, le=1)
    text_threshold: float = Field(0.2, ge=0, le=1)
    nms_iou: float = Field(0.6, ge=0, le=1)


STAGE_ORDER = ("clip", "ram", "gdino", "sam")  # the frozen models, in the order the extraction runs them


class ModelActors(Strict):
    """Ray actors of one kind: each holds ``models`` (run in order on a part) and a GPU share when GPUs exist."""

    models: list[Literal["clip", "ram", "gdino", "sam"]] = Field(min_length=1)
    count: int = Field(1, ge=1)


class ExtractionConfig(Strict):
    profile: str = "tiny"
    batch_size: int = Field(8, ge=1)
    # An input shard is cut into parts of this many inputs: each part is decoded, run and written as
    # one cache shard by the workers, so no part waits for its neighbours (img2dataset shards hold 10,000).
    part_size: int = Field(256, ge=1, description="inputs per cache shard (a part of an input shard)")
    decode_workers: int = Field(1, ge=1, description="Ray actors that decode and resize")
    model_actors: list[ModelActors] = [ModelActors(models=list(STAGE_ORDER), count=2)]

    max_objects: int = Field(32, ge=1)
    max_image_pixels: int = Field(89_478_485, ge=1, description="decompression-bomb limit, checked before decoding")
    # Shapes no model can take are skipped before decoding (extract/images.py explains the defaults).
    min_image_side: int = Field(8, ge=1, description="pixels; a smaller side is skipped as too_small")
    max_aspect_ratio: float = Field(50.0, ge=1, description="long side / short side; beyond it an image is skipped")
    storage: StorageConfig = StorageConfig()
    detection: DetectionConfig = DetectionConfig()

    @model_validator(mode="after")
    def _every_model_once_in_order(self) -> ExtractionConfig:
        order = [name for group in self.model_actors for name in group.models]
        if tuple(order) != STAGE_ORDER:
            raise ValueError(
                f"extraction.model_actors: list every model once, in pipeline order {list(STAGE_ORDER)} "
                f"(models that share an actor together), got {order}"
            )
        return self


# --- phase 2 ------------------------------------------------------------------------------------
class RecipeConfig(Strict):
    steps: int = Field(ge=1)
    global_batch: int = Field(ge=1)
    micro_batch: int = Field(ge=1)
    lr: float = Field(gt=0)
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = Field(0.05, ge=0)
    warmup_ratio: float = Field(0.15, ge=0, lt=1)
    seed: int = 0
    checkpoint_every: int = Field(1000, ge=1, description="steps between resumable checkpoints")
    log_every: int = Field(10, ge=1, description="steps between logged losses")

    @model_validator(mode="after")
    def _batches_divide(self) -> RecipeConfig:
        if self.global_batch % self.micro_batch:
            raise ValueError(f"global_batch {self.global_batch} is not a multiple of micro_batch {self.micro_batch}")
        return self


class PretrainRecipe(RecipeConfig):
    # Whole objects that do not fit are dropped from the end of the spatial text (SPEC leaves the length open).
    max_spatial_tokens: int = Field(256, ge=2, description="[BOS] + spatial text")
    max_caption_tokens: int = Field(32, ge=3, description="[CLS] caption [SEP], as BLIP-2's max_txt_len")


class PretrainConfig(Strict):
    """Stage 1 (SPEC section 4): the MQ-Former's four objectives over cached data sets."""

    data: list[str] = Field(["sample"], min_length=1, description="cached data sets (names under datasets:) to train on")
    # The paper's Table 4 ablations, read from the same cache (nothing is re-extracted).
    grounding_queries: bool = True
    spatial_representation: bool = True
    msp_probability: float = Field(0.15, gt=0, lt=1, description="chance that MSP masks each whole object")
    recipes: dict[str, PretrainRecipe]


class FinetuneRecipe(RecipeConfig):
    max_spatial_tokens: int = Field(256, ge=2, description="[BOS] + spatial text read by the MQ-Former (semantic-aware extraction)")
    max_prompt_objects: int = Field(16, ge=0, description="objects of spatial text written into the LLM prompt, best first")
    max_text_tokens: int = Field(512, ge=8, description="LLM tokens of an example, the visual tokens included; later turns are dropped")
    # LoRA on the LLM's attention (targets: the LLM arch's lora_targets). Rank 96 on Vicuna-13B's q, v
    # is the paper's 79 M LoRA parameters.
    lora_rank: int = Field(96, ge=1)
    lora_alpha: int = Field(192, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)


class InstructionSet(Strict):
    """Instruction examples (JSONL, data/instructions.py) and the cached data set their images are in."""

    instructions: str
    images: str = Field(description="a data set under datasets: whose cache holds the examples' images")
    produced_by: str | None = None


class FinetuneConfig(Strict):
    """Stage 2 (SPEC section 5): projection + LoRA (and the MQ-Former) on instruction data from the cache."""

    data: list[str] = Field(["sample"], min_length=1, description="instruction sets (names under instructions:) to train on")
    semantic_aware: bool = Field(True, description="the MQ-Former reads the sample's spatial text")
    spatial_text_in_prompt: bool = Field(True, description="the LLM prompt carries the spatial text after the image")
    recipes: dict[str, FinetuneRecipe]


class ReadingConfig(Strict):
    """How the trainers read the cache (``python bench/store.py`` measures each choice)."""

    threads: int = Field(2, ge=0, description="threads per training process that read and collate batches (0: the training loop itself)")
    block_rows: int = Field(1, ge=1, description="1: a full shuffle each epoch; B: blocks of B consecutive rows shuffled, then mixed in windows")
    window_blocks: int = Field(16, ge=1, description="blocks whose rows are shuffled together when block_rows > 1")


class TrainingConfig(Strict):
    profile: str = "tiny"
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    devices: int | Literal["auto"] = Field("auto", description="processes: GPUs (auto: all), or CPU processes (auto: one)")
    reading: ReadingConfig = ReadingConfig()
    runs: str = "{root}/runs"
    pretrain: PretrainConfig
    finetune: FinetuneConfig


EvalTask = Literal["rec", "caption", "vqa", "exact_match", "multiple_choice", "pope", "mme"]
TASKS: tuple[str, ...] = get_args(EvalTask)


class BenchmarkConfig(Strict):
    """A benchmark: its annotation files (per format, see evaluate/benchmarks.py) and the data set holding its images."""

    task: EvalTask = Field(description="which metric scores it")
    format: str = Field(description="how its files are read (evaluate/benchmarks.py FORMATS)")
    files: dict[str, str] = Field(description="file key -> path; a path may hold {split}")
    splits: list[str] = Field([], description="evaluated one after another, each a result of its own; [] when the files are one split")
    submission: bool = Field(False, description="no answers are released (VQAv2 test-dev): write the evaluation server's file instead of scores")
    images: str = Field(description="a data set under datasets: whose cache holds the images (extracted first when missing)")
    source: str = Field(description="where the files come from, shown when they are missing")

    @model_validator(mode="after")
    def _splits_and_submission(self) -> BenchmarkConfig:
        if not self.splits and any("{split}" in path for path in self.files.values()):
            raise ValueError("a file path holds {split} but the benchmark lists no splits")
        if self.submission and self.task != "vqa":
            raise ValueError(f"submission: only VQA test-dev files are written for a server, not task {self.task!r}")
        return self

    def result_names(self, name: str, split: str | None = None) -> dict[str | None, str]:
        """split -> the name of its results ("refcoco-testA"); one split of several, or `split`, adds a suffix."""
        if split is not None:
            return {split: f"{name}-{split}"}
        if len(self.splits) > 1:
            return {s: f"{name}-{s}" for s in self.splits}
        return {self.splits[0] if self.splits else None: name}

    def split_files(self, split: str | None) -> dict[str, str]:
        return {key: path.replace("{split}", split or "") for key, path in self.files.items()}


class EvaluationConfig(Strict):
    batch_size: int = Field(8, ge=1)
    max_new_tokens: int = Field(32, ge=1)
    # VQA answer normalization: the official vqaEval.py, or lmms-eval's (evaluate/vqa_score.py).
    vqa_convention: Literal["official", "lmms-eval"] = "official"
    results: str = "{root}/results"


class PipelinesConfig(Strict):
    root: str
    datasets: dict[str, DatasetConfig]
    instructions: dict[str, InstructionSet] = {}
    benchmarks: dict[str, BenchmarkConfig] = {}
    profiles: dict[str, ProfileConfig]
    extraction: ExtractionConfig
    training: TrainingConfig
    evaluation: EvaluationConfig
    source: str = Field("", exclude=True, description="the file this was read from")

    @model_validator(mode="after")
    def _names_exist(self) -> PipelinesConfig:
        if self.extraction.profile not in self.profiles:
            raise ValueError(f"extraction.profile {self.extraction.profile!r} is not one of the profiles {sorted(self.profiles)}")
        if self.training.profile not in self.profiles:
            raise ValueError(f"training.profile {self.training.profile!r} is not one of the profiles {sorted(self.profiles)}")
        unknown = sorted(set(self.training.pretrain.data) - set(self.datasets))
        if unknown:
            raise ValueError(f"training.pretrain.data names unregistered data sets {unknown}; registered: {sorted(self.datasets)}")
        unknown = sorted(set(self.training.finetune.data) - set(self.instructions))
        if unknown:
            raise ValueError(f"training.finetune.data names unregistered instruction sets {unknown}; registered: {sorted(self.instructions)}")
        for name, item in self.instructions.items():
            if item.images not in self.datasets:
                raise ValueError(f"instructions.{name}.images: {item.images!r} is not a registered data set ({sorted(self.datasets)})")
        for name, bench in self.benchmarks.items():
            if bench.images not in self.datasets:
                raise ValueError(f"benchmarks.{name}.images: {bench.images!r} is not a registered data set ({sorted(self.datasets)})")
        for stage in ("pretrain", "finetune"):
            missing = set(self.profiles) - set(getattr(self.training, stage).recipes)
            if missing:
                raise ValueError(f"training.{stage}.recipes has no recipe for the profiles {sorted(missing)}")
        return self

    def path(self, value: str) -> Path:
        """A configured path with ``{root}`` filled in; relative paths are relative to the config file."""
        path = Path(value.replace("{root}", self.root))
        return path if path.is_absolute() else Path(self.source).parent / path

    def dataset(self, name: str) -> DatasetConfig:
        if name not in self.datasets:
            raise ConfigError(f"{self.source}: datasets: no dataset {name!r}; registered: {sorted(self.datasets)}")
        return self.datasets[name]

    def instruction_set(self, name: str) -> InstructionSet:
        if name not in self.instructions:
            raise ConfigError(f"{self.source}: instructions: no instruction set {name!r}; registered: {sorted(self.instructions)}")
        return self.instructions[name]

    def benchmark(self, name: str) -> BenchmarkConfig:
        if name not in self.benchmarks:
            raise ConfigError(f"{self.source}: benchmarks: no benchmark {name!r}; registered: {sorted(self.benchmarks)}")
        return self.benchmarks[name]

    def profile(self, name: str) -> ProfileConfig:
        if name not in self.profiles:
            raise ConfigError(f"{self.source}: profiles: no profile {name!r}; defined: {sorted(self.profiles)}")
        return self.profiles[name]


def expand_env(value: Any, environ: Mapping[str, str] = os.environ, key: str = "") -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of a parsed YAML tree."""
    if isinstance(value, dict):
        return {k: expand_env(v, environ, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, environ, f"{key}.{i}") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if environ.get(name):
            return environ[name]
        if default is None:
            raise ConfigError(f"{key}: environment variable {name} is not set and has no default (write ${{{name}:-default}})")
        return default

    return _ENV.sub(substitute, value)


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "<top level>"
    message = error["msg"]
    if error["type"] not in ("missing", "extra_forbidden") and "input" in error and not isinstance(error["input"], dict):
        message += f" (got {error['input']!r})"
    return f"{key}: {message}"


def load_config(path: str | Path | None = None) -> PipelinesConfig:
    """Read and validate a pipelines file (default: ``$LYRICS_CONFIG`` or the repository's)."""
    path = Path(path or os.environ.get("LYRICS_CONFIG") or DEFAULT_CONFIG)
    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        raw = expand_env(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e
    try:
        return PipelinesConfig.model_validate({**raw, "source": str(path.resolve())})
    except ValidationError as e:
        problems = "\n  ".join(_describe(err) for err in e.errors())
        raise ConfigError(f"{path}: {e.error_count()} problem(s):\n  {problems}") from None
