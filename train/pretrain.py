"""`make pretrain`: stage 1, the MQ-Former's ITC + ITM + ICG + MSP from the extraction cache.

    python -m lyrics.train.pretrain [--profile tiny] [--data sample ...] [--cache DIR ...] [--accept-cache-settings] [--steps N]
                                    [--no-grounding-queries] [--no-spatial-representation]
                                    [--run DIR] [--restart] [--config pipelines.yaml]

Everything is checked before training starts: the caches exist, are complete and match the
profile's frozen models and extraction settings (``--accept-cache-settings`` takes a cache made with
other thresholds or storage knowingly); the MQ-Former fits the cache; the batch divides over the processes; a
resumed run has the settings it was started with. A rerun resumes from the run's last checkpoint
(the same data order and random draws as an uninterrupted run); ``--restart`` starts over.

The run folder ({root}/runs/pretrain-<profile>[-ablations]) holds checkpoints/, logs/ (CSV and
TensorBoard), loss_curve.png and, at the end, stage1/: the MQ-Former, its heads and the tokenizer
for `make finetune`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lightning.pytorch.callbacks import Callback
from torch.utils.data import Dataset

from lyrics.config import ConfigError, PipelinesConfig, PretrainConfig, PretrainRecipe, load_config
from lyrics.extract.cache_location import cache_schema
from lyrics.model.factory import Stage1Init, build_stage1_model, mqformer_config, qformer_spec
from lyrics.model.mqformer import MQFormer
from lyrics.model.pretraining import MQFormerForPretraining, save_stage1
from lyrics.model.tokenizer import TokenIds
from lyrics.store import CacheMismatchError
from lyrics.train.cache_data import PretrainCollate, StreamData, cache_expectation, cache_roots, open_caches
from lyrics.train.pretrain_module import PretrainModule
from lyrics.train.pretrain_text import TextSettings
from lyrics.train.runs import accumulation, devices, fit, last_checkpoint_state, start_run

@dataclass
class PretrainPlan:
    config: PipelinesConfig
    profile: str
    settings: PretrainConfig
    recipe: PretrainRecipe
    caches: list[Path]
    run_dir: Path
    devices: int
    accumulate: int

    @classmethod
    def make(
        cls,
        config: PipelinesConfig,
        profile: str | None = None,
        datasets: list[str] | None = None,
        caches: list[Path] | None = None,
        steps: int | None = None,
        grounding_queries: bool | None = None,
        spatial_representation: bool | None = None,
        run_dir: Path | None = None,
    ) -> PretrainPlan:
        """Every check that can fail, before any model is built or any batch read (raises ConfigError)."""
        profile = profile or config.training.profile
        config.profile(profile)
        changes = {"grounding_queries": grounding_queries, "spatial_representation": spatial_representation, "data": datasets}
        settings = config.training.pretrain.model_copy(update={k: v for k, v in changes.items() if v is not None})
        for name in settings.data:
            config.dataset(name)
        recipe = settings.recipes[profile]
        if steps is not None:
            recipe = recipe.model_copy(update={"steps": steps})
        processes = devices(config)
        accumulate = accumulation(config, "pretrain", profile, recipe, processes)
        _check_model_fits(config, profile, settings.grounding_queries, recipe)
        caches = list(caches) if caches else cache_roots(config, profile, settings.data)
        if run_dir is None:
            suffix = "".join(
                f"-no-{name}" for name, on in (("grounding", settings.grounding_queries), ("spatial", settings.spatial_representation)) if not on
            )
            run_dir = config.path(config.training.runs) / f"pretrain-{profile}{suffix}"
        return cls(config, profile, settings, recipe, caches, run_dir, processes, accumulate)

    def identity(self) -> dict:
        """What a resumed run must share with the run it continues."""
        return {
            "profile": self.profile,
            "caches": [str(c) for c in self.caches],
            "pretrain": self.settings.model_dump(exclude={"recipes", "data"}),
            "recipe": self.recipe.model_dump(mode="json"),
            "processes": self.devices,
        }


def _check_model_fits(config: PipelinesConfig, profile: str, grounding_queries: bool, recipe: PretrainRecipe) -> None:
    mq = mqformer_config(config, profile, grounding_queries)
    arch = qformer_spec(config, profile).arch_path
    vit_width = next(f.shape[-1] for f in cache_schema(config, profile).tensors if f.name == "vit_tokens")
    if mq.vision_width != vit_width:
        raise ConfigError(f"{arch}: vision_width {mq.vision_width}, but profile {profile}'s CLIP tokens are {vit_width} wide")
    text = recipe.max_spatial_tokens + recipe.max_caption_tokens
    if text > mq.max_position_embeddings:
        raise ConfigError(
            f"{config.source}: training.pretrain.recipes.{profile}: max_spatial_tokens + max_caption_tokens = {text} exceeds the "
            f"MQ-Former's {mq.max_position_embeddings} positions ({arch})"
        )


@dataclass
class Prepared:
    dataset: Dataset
    init: Stage1Init
    resume: Path | None


def prepare(plan: PretrainPlan, restart: bool = False, accept_cache_settings: bool = False) -> Prepared:
    """The checks that read files (the run's settings, the caches) and the initial model; no training yet.

    A cache extracted with other settings than the configuration's is refused unless ``accept_cache_settings``."""
    resume = start_run(plan.run_dir, plan.identity(), restart)
    expect = cache_expectation(plan.config, plan.profile, accept_cache_settings)
    dataset = open_caches(plan.caches, expect)  # refuses a mismatched cache, naming it
    settings = plan.settings
    init = build_stage1_model(plan.config, plan.profile, settings.grounding_queries, settings.spatial_representation, plan.recipe.seed)
    return Prepared(dataset, init, resume)


def train(plan: PretrainPlan, prepared: Prepared, progress: bool = True, callbacks: Sequence[Callback] = ()) -> Path | None:
    """Train (or resume) the plan's run; returns its stage-1 folder (None on ranks other than 0).

    ``callbacks`` are added to the trainer's."""
    settings, recipe, tokenizer = plan.settings, plan.recipe, prepared.init.tokenizer
    text = TextSettings(recipe.max_spatial_tokens, recipe.max_caption_tokens, settings.spatial_representation)
    data = StreamData(prepared.dataset, PretrainCollate(tokenizer, text), recipe.micro_batch, plan.config.training.reading, recipe.seed)
    module = PretrainModule(prepared.init.model, TokenIds.of(tokenizer), recipe, settings.msp_probability)
    trainer = fit(module, data, plan.run_dir, plan.identity(), recipe, plan.config, plan.devices, plan.accumulate, prepared.resume,
                  f"stage 1, {plan.run_dir.name}", progress, callbacks)  # fmt: skip
    if trainer.is_global_zero:
        return export_stage1(plan.run_dir, prepared.init, plan.run_dir / "stage1")
    return None


def export_stage1(run_dir: Path, init: Stage1Init, folder: Path) -> Path:
    """The stage-1 folder from the run's last checkpoint (full weights whatever the strategy: DDP, FSDP or one process)."""
    # A fresh module: the trained one may have been wrapped or sharded in place by the strategy.
    model = MQFormerForPretraining(MQFormer(init.model.mqformer.config), init.model.spatial_representation)
    model.load_state_dict(last_checkpoint_state(run_dir))
    return save_stage1(model, init.tokenizer, folder)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m lyrics.train.pretrain", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", help="model profile (default: training.profile)")
    parser.add_argument("--data", nargs="+", help="cached data sets (default: training.pretrain.data)")
    parser.add_argument("--cache", nargs="+", type=Path, help="cache roots, instead of the data sets' default ones")
    parser.add_argument("--accept-cache-settings", action="store_true", help="train on caches extracted with other settings (thresholds, storage, ...)")
    parser.add_argument("--steps", type=int, help="override the recipe's step count")
    parser.add_argument("--no-grounding-queries", action="store_true", help="Table 4 ablation: visual queries only")
    parser.add_argument("--no-spatial-representation", action="store_true", help="Table 4 ablation: no spatial text (and no MSP)")
    parser.add_argument("--run", type=Path, help="run folder (default: {root}/runs/pretrain-<profile>[-ablations])")
    parser.add_argument("--restart", action="store_true", help="delete the run folder and start over")
    parser.add_argument("--config", type=Path, help="pipelines file (default: the repository's pipelines.yaml)")
    args = parser.parse_args()
    try:
        config = load_config(args.config)
        plan = PretrainPlan.make(
            config,
            args.profile,
            args.data,
            args.cache,
            args.steps,
            False if args.no_grounding_queries else None,
            False if args.no_spatial_representation else None,
            args.run,
        )
        prepared = prepare(plan, restart=args.restart, accept_cache_settings=args.accept_cache_settings)
    except (ConfigError, FileNotFoundError, CacheMismatchError) as e:
        sys.exit(f"error: {e}")
    print(f"pretrain {plan.profile}: {plan.recipe.steps} steps, batch {plan.recipe.global_batch} "
              f"({plan.devices} x {plan.recipe.micro_batch} x {plan.accumulate} accumulated), caches {[str(c) for c in plan.caches]}")  # fmt: skip
    stage1 = train(plan, prepared)
    if stage1 is not None:
        print(f"stage 1: {stage1}\nloss curve: {plan.run_dir / 'loss_curve.png'}")


if __name__ == "__main__":
    main()
