"""`make finetune`: stage 2, the MQ-Former, the projection and LoRA on instruction data from the cache.

    python -m lyrics.train.finetune [--profile tiny] [--data sample ...] [--steps N]
                                    [--stage1 DIR | --from-scratch] [--no-semantic-aware]
                                    [--no-spatial-text-in-prompt] [--run DIR] [--restart]
                                    [--config pipelines.yaml]

The MQ-Former starts from a stage-1 result (default: the pretrain run of the same profile,
``{runs}/pretrain-<profile>/stage1``), or with ``--from-scratch`` from the profile's initial
stage-1 model (BLIP-2's Q-Former; the Table 4 "w/o pre-training" ablation). A stage-1 result
trained without spatial representation turns semantic-aware extraction and the spatial text in the
prompt off: that model never learned to read it.

Checked before any model is built: the stage-1 folder, the instruction files and their caches (the
images every example needs, the frozen models' fingerprints), the batch, a resumed run's settings.
A rerun resumes from the last checkpoint; ``--restart`` starts over. The run folder
({runs}/finetune-<profile>[-<stage-1 run>|-scratch]) ends with ``lyrics/``: the stage-2 result that
`make eval` and `make chat` load.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lyrics.config import ConfigError, FinetuneConfig, FinetuneRecipe, PipelinesConfig, load_config
from lyrics.data.errors import DataFormatError
from lyrics.data.instructions import MissingImagesError
from lyrics.extract.checkpoints import component_spec
from lyrics.model.factory import build_stage1_model, mqformer_config
from lyrics.model.llm import LLMArch, load_llm
from lyrics.model.lvlm import LoraSettings, LyricsLVLM, PromptSettings, save_lvlm
from lyrics.model.mqformer import MQFormer
from lyrics.model.pretraining import STAGE1_CONFIG, load_stage1
from lyrics.store import CacheMismatchError
from lyrics.train.cache_data import StreamData, cache_expectation
from lyrics.train.finetune_data import SampleEncoder, open_instruction_sets
from lyrics.train.finetune_module import FinetuneModule
from lyrics.train.runs import accumulation, devices, fit, last_checkpoint_state, start_run

RESULT = "lyrics"  # the stage-2 result's folder in the run folder


@dataclass
class FinetunePlan:
    config: PipelinesConfig
    profile: str
    settings: FinetuneConfig
    recipe: FinetuneRecipe
    stage1: Path | None  # None: from scratch
    run_dir: Path
    devices: int
    accumulate: int

    @classmethod
    def make(
        cls,
        config: PipelinesConfig,
        profile: str | None = None,
        data: list[str] | None = None,
        steps: int | None = None,
        stage1: Path | None = None,
        from_scratch: bool = False,
        semantic_aware: bool | None = None,
        spatial_text_in_prompt: bool | None = None,
        run_dir: Path | None = None,
    ) -> FinetunePlan:
        """Every check that needs no file (raises ConfigError), and the stage-1 folder's presence."""
        profile = profile or config.training.profile
        config.profile(profile)
        changes = {"data": data, "semantic_aware": semantic_aware, "spatial_text_in_prompt": spatial_text_in_prompt}
        settings = config.training.finetune.model_copy(update={k: v for k, v in changes.items() if v is not None})
        for name in settings.data:
            config.instruction_set(name)
        recipe = settings.recipes[profile]
        if steps is not None:
            recipe = recipe.model_copy(update={"steps": steps})
        processes = devices(config)
        accumulate = accumulation(config, "finetune", profile, recipe, processes)
        positions = mqformer_config(config, profile).max_position_embeddings
        if recipe.max_spatial_tokens > positions:
            raise ConfigError(
                f"{config.source}: training.finetune.recipes.{profile}: max_spatial_tokens {recipe.max_spatial_tokens} exceeds "
                f"the MQ-Former's {positions} positions"
            )
        runs = config.path(config.training.runs)
        if from_scratch and stage1 is not None:
            raise ConfigError("--from-scratch and --stage1 exclude each other")
        if not from_scratch:
            stage1 = stage1 or runs / f"pretrain-{profile}" / "stage1"
            if not (stage1 / STAGE1_CONFIG).is_file():
                raise ConfigError(f"{stage1}: no stage-1 result (run `make pretrain` first, or pass --stage1 DIR or --from-scratch)")
        if run_dir is None:
            if stage1 is None:
                suffix = "-scratch"
            else:
                pretrain_run = stage1.resolve().parent.name
                suffix = pretrain_run.removeprefix(f"pretrain-{profile}") if pretrain_run.startswith(f"pretrain-{profile}") else f"-{pretrain_run}"
            run_dir = runs / f"finetune-{profile}{suffix}"
        return cls(config, profile, settings, recipe, stage1, run_dir, processes, accumulate)

    def identity(self) -> dict:
        """What a resumed run must share with the run it continues."""
        sets = {name: str(self.config.path(self.config.instruction_set(name).instructions)) for name in self.settings.data}
        return {
            "profile": self.profile,
            "stage1": str(self.stage1) if self.stage1 else "scratch",
            "data": sets,
            "finetune": self.settings.model_dump(exclude={"recipes", "data"}),
            "recipe": self.recipe.model_dump(mode="json"),
            "processes": self.devices,
        }


@dataclass
class Prepared:
    dataset: Dataset
    model: LyricsLVLM
    encoder: SampleEncoder
    lora: LoraSettings
    resume: Path | None


def prepare(plan: FinetunePlan, restart: bool = False) -> Prepared:
    """The checks that read files (run settings, instructions, caches), then the model; no training yet."""
    resume = start_run(plan.run_dir, plan.identity(), restart)
    dataset = open_instruction_sets(plan.config, plan.profile, plan.settings.data, cache_expectation(plan.config, plan.profile))
    mqformer, tokenizer, spatial_representation = _mqformer(plan)
    llm, llm_tokenizer = load_llm(component_spec(plan.config, plan.profile, "llm"))
    model, encoder, lora = assemble_lvlm(plan, mqformer, tokenizer, spatial_representation, llm, llm_tokenizer)
    return Prepared(dataset, model, encoder, lora, resume)


def assemble_lvlm(
    plan: FinetunePlan,
    mqformer: MQFormer,
    tokenizer: PreTrainedTokenizerBase,
    spatial_representation: bool,
    llm: PreTrainedModel,
    llm_tokenizer: PreTrainedTokenizerBase,
) -> tuple[LyricsLVLM, SampleEncoder, LoraSettings]:
    """The plan's LVLM on these parts (projection and LoRA seeded from the recipe) and its sample encoder."""
    recipe = plan.recipe
    targets = LLMArch.from_spec(component_spec(plan.config, plan.profile, "llm")).lora_targets
    lora = LoraSettings(recipe.lora_rank, recipe.lora_alpha, recipe.lora_dropout, targets)
    with torch.random.fork_rng(devices=[]):  # projection and LoRA initialised from the recipe's seed
        torch.manual_seed(recipe.seed)
        model = LyricsLVLM(mqformer, llm, lora)
    settings = plan.settings
    prompt = PromptSettings(
        semantic_aware=settings.semantic_aware and spatial_representation,
        spatial_text_in_prompt=settings.spatial_text_in_prompt and spatial_representation,
        max_spatial_tokens=recipe.max_spatial_tokens,
        max_prompt_objects=recipe.max_prompt_objects,
        max_text_tokens=recipe.max_text_tokens,
    )
    return model, SampleEncoder(llm_tokenizer, tokenizer, prompt, model.num_visual_tokens), lora


def _mqformer(plan: FinetunePlan) -> tuple[MQFormer, PreTrainedTokenizerBase, bool]:
    """The MQ-Former, its tokenizer, and whether it learned spatial representation."""
    if plan.stage1 is None:
        init = build_stage1_model(plan.config, plan.profile, seed=plan.recipe.seed)
        return init.model.mqformer, init.tokenizer, True
    stage1, tokenizer = load_stage1(plan.stage1)
    return stage1.mqformer, tokenizer, stage1.spatial_representation


def train(plan: FinetunePlan, prepared: Prepared, progress: bool = True, callbacks: Sequence[Callback] = ()) -> Path | None:
    """Train (or resume) the plan's run; returns the stage-2 result's folder (None on ranks other than 0)."""
    recipe = plan.recipe
    data = StreamData(prepared.dataset, prepared.encoder, recipe.micro_batch, plan.config.training.reading, recipe.seed)
    module = FinetuneModule(prepared.model, recipe)
    trainer = fit(module, data, plan.run_dir, plan.identity(), recipe, plan.config, plan.devices, plan.accumulate, prepared.resume,
                  f"stage 2, {plan.run_dir.name}", progress, callbacks, unused_parameters=True)  # fmt: skip
    if not trainer.is_global_zero:
        return None
    # The last checkpoint's trained weights (whole under any strategy) into the unwrapped model.
    prepared.model.load_state_dict(last_checkpoint_state(plan.run_dir), strict=False)
    encoder = prepared.encoder
    return save_lvlm(prepared.model, encoder.mq_tokenizer, encoder.settings, prepared.lora, plan.run_dir / RESULT)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m lyrics.train.finetune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", help="model profile (default: training.profile)")
    parser.add_argument("--data", nargs="+", help="instruction sets (default: training.finetune.data)")
    parser.add_argument("--steps", type=int, help="override the recipe's step count")
    parser.add_argument("--stage1", type=Path, help="stage-1 result (default: {runs}/pretrain-<profile>/stage1)")
    parser.add_argument("--from-scratch", action="store_true", help="Table 4 ablation: no stage 1 (the profile's initial MQ-Former)")
    parser.add_argument("--no-semantic-aware", action="store_true", help="the MQ-Former does not read the spatial text")
    parser.add_argument("--no-spatial-text-in-prompt", action="store_true", help="the LLM prompt does not carry the spatial text")
    parser.add_argument("--run", type=Path, help="run folder (default: {runs}/finetune-<profile>[-<stage-1 run>|-scratch])")
    parser.add_argument("--restart", action="store_true", help="delete the run folder and start over")
    parser.add_argument("--config", type=Path, help="pipelines file (default: the repository's pipelines.yaml)")
    args = parser.parse_args()
    try:
        config = load_config(args.config)
        plan = FinetunePlan.make(
            config,
            args.profile,
            args.data,
            args.steps,
            args.stage1,
            args.from_scratch,
            False if args.no_semantic_aware else None,
            False if args.no_spatial_text_in_prompt else None,
            args.run,
        )
        prepared = prepare(plan, restart=args.restart)
    except (ConfigError, FileNotFoundError, CacheMismatchError, DataFormatError, MissingImagesError) as e:
        sys.exit(f"error: {e}")
    trained = sum(p.numel() for p in prepared.model.parameters() if p.requires_grad)
    print(f"finetune {plan.profile}: {plan.recipe.steps} steps, batch {plan.recipe.global_batch} "
          f"({plan.devices} x {plan.recipe.micro_batch} x {plan.accumulate} accumulated), {len(prepared.dataset)} examples, "
          f"stage 1: {plan.stage1 or 'none (from scratch)'}, {trained / 1e6:.1f} M trained parameters")  # fmt: skip
    print(f"prompt: {json.dumps(vars(prepared.encoder.settings))}")
    result = train(plan, prepared)
    if result is not None:
        print(f"stage 2: {result}\nloss curve: {plan.run_dir / 'loss_curve.png'}")


if __name__ == "__main__":
    main()
