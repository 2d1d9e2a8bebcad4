"""What both training stages share: the run folder (settings, resume), processes, seeding, optimizer, trainer.

A run folder holds ``run.json`` (the settings a resumed run must share), ``checkpoints/``
(``last.ckpt`` and every ``checkpoint_every`` steps), ``logs/`` (CSV and TensorBoard, a version per
launch) and the loss curve. A rerun resumes from ``last.ckpt``; a rerun with other settings is
refused, listing each changed key.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from transformers import get_cosine_schedule_with_warmup

from lyrics.config import ConfigError, PipelinesConfig, RecipeConfig
from lyrics.train.loss_curve import metrics_files, plot_losses

RUN_SETTINGS = "run.json"
LAST = "last.ckpt"
T = TypeVar("T")


class _LightningNotes(logging.Filter):
    """Drops Lightning's start-up notes that tell a user nothing: accelerators this project never
    uses (TPU, HPU) and a logging service's advertisement. "GPU available ..., used ..." and every
    other line still show."""

    NOISE = ("TPU available", "HPU available", "💡 Tip")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.NOISE)


for _logger in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):  # whichever logs them
    logging.getLogger(_logger).addFilter(_LightningNotes())
# Lightning 2.6 calls a torch pytree API that torch 2.13 deprecates; nothing a user can change.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


class RunSettingsChanged(ConfigError):
    """A run folder exists whose run.json differs from the settings asked for now."""


def prepare_or_restart(prepare: Callable[..., T], plan: object) -> T:
    """For `make demo` and `make ablation`: a run resumes; one left with other settings (an updated checkout) starts over."""
    try:
        return prepare(plan)
    except RunSettingsChanged as error:
        print(f"{error}\nthis run starts over")
        return prepare(plan, restart=True)


def devices(config: PipelinesConfig) -> int:
    """Processes: every GPU (or ``training.devices`` of them); on CPU one, or ``training.devices`` gloo processes."""
    wanted = config.training.devices
    if torch.cuda.is_available():
        return torch.cuda.device_count() if wanted == "auto" else wanted
    return 1 if wanted == "auto" else wanted


def accumulation(config: PipelinesConfig, stage: str, profile: str, recipe: RecipeConfig, processes: int) -> int:
    """Micro-batches per step and process; a global batch that does not divide is refused."""
    if recipe.global_batch % (recipe.micro_batch * processes):
        raise ConfigError(
            f"{config.source}: training.{stage}.recipes.{profile}: global_batch {recipe.global_batch} is not a multiple of "
            f"micro_batch {recipe.micro_batch} x {processes} process(es)"
        )
    return recipe.global_batch // (recipe.micro_batch * processes)


def start_run(run_dir: Path, identity: dict, restart: bool) -> Path | None:
    """The checkpoint to resume from (None: a fresh run); a run started with other settings is refused."""
    if restart and run_dir.exists():
        shutil.rmtree(run_dir)
    saved = run_dir / RUN_SETTINGS
    if not saved.is_file():
        return None
    changes = differences(json.loads(saved.read_text()), json.loads(json.dumps(identity)))
    if changes:
        raise RunSettingsChanged(
            f"{saved}: this run was started with other settings ({'; '.join(changes)}); "
            "pass --restart to start it over, or --run for a new folder"
        )
    last = run_dir / "checkpoints" / LAST
    return last if last.is_file() else None


def differences(before: object, now: object, key: str = "") -> list[str]:
    """``key: old -> new`` for every leaf that differs between two JSON trees."""
    if isinstance(before, dict) and isinstance(now, dict):
        return [d for k in sorted(set(before) | set(now)) for d in differences(before.get(k), now.get(k), f"{key}.{k}" if key else k)]
    return [] if before == now else [f"{key}: {before} -> {now}"]


class StepProgressBar(TQDMProgressBar):
    """The bar counts micro-batches towards the run's last step (the data stream itself is endless)."""

    @property
    def total_train_batches(self) -> int:
        return self.trainer.max_steps * self.trainer.accumulate_grad_batches

    def get_metrics(self, *args: object) -> dict:
        return {k: v for k, v in super().get_metrics(*args).items() if k != "v_num"}  # the logger version says nothing here


def seed_step(module: L.LightningModule, seed: int, batch_idx: int) -> None:
    """Random draws (dropout, masks, negatives) depend only on (seed, step, micro-batch, rank).

    So a run resumed from a checkpoint (always taken at a step boundary) repeats exactly what an
    uninterrupted run would have drawn.
    """
    trainer = module.trainer
    accumulate = trainer.accumulate_grad_batches
    micro = module.global_step * accumulate + batch_idx % accumulate
    torch.manual_seed((seed * 1_000_003 + micro) * trainer.world_size + module.global_rank)


def adamw_cosine(parameters: Iterable[torch.nn.Parameter], recipe: RecipeConfig) -> dict:
    """AdamW; no weight decay on biases, norms and scalars (LAVIS's groups: ndim < 2); cosine after linear warm-up."""
    decay, no_decay = [], []
    for parameter in parameters:
        if parameter.requires_grad:
            (no_decay if parameter.ndim < 2 else decay).append(parameter)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr, betas=recipe.betas
    )
    warmup = round(recipe.warmup_ratio * recipe.steps)
    schedule = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=recipe.steps)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def fit(
    module: L.LightningModule,
    data: L.LightningDataModule,
    run_dir: Path,
    identity: dict,
    recipe: RecipeConfig,
    config: PipelinesConfig,
    processes: int,
    accumulate: int,
    resume: Path | None,
    title: str,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
    unused_parameters: bool = False,
) -> L.Trainer:
    """Train (or resume) to ``recipe.steps``; writes run.json, checkpoints, logs and, on rank 0, loss_curve.png.

    ``unused_parameters``: some trainable parameters may get no gradient in a step (stage 2: the
    MQ-Former's last text FFN), which DDP must be told.
    """
    strategy = config.training.strategy
    if unused_parameters and processes > 1 and strategy in ("auto", "ddp"):
        strategy = "ddp_find_unused_parameters_true"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_SETTINGS).write_text(json.dumps(identity, indent=2) + "\n")
    logs = run_dir / "logs"
    gpu = torch.cuda.is_available()
    trainer = L.Trainer(
        accelerator="gpu" if gpu else "cpu",
        devices=processes,
        strategy=strategy,
        precision="bf16-mixed" if gpu else "32-true",
        max_steps=recipe.steps,
        accumulate_grad_batches=accumulate,
        use_distributed_sampler=False,  # SampleStream splits the ranks itself
        # Each launch logs to a new version_N (a resumed run continues in the next); flushed at every
        # log, so a crashed launch keeps what it logged.
        logger=[CSVLogger(logs, name="csv", flush_logs_every_n_steps=recipe.log_every), TensorBoardLogger(logs, name="tensorboard")],
        log_every_n_steps=recipe.log_every,
        callbacks=[
            ModelCheckpoint(run_dir / "checkpoints", every_n_train_steps=recipe.checkpoint_every, save_last=True, save_top_k=-1),
            *([StepProgressBar()] if progress else []),
            *callbacks,
        ],
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=data, ckpt_path=resume, weights_only=True)
    if trainer.is_global_zero:
        plot_losses(metrics_files(logs / "csv"), run_dir / "loss_curve.png", title=title)
    return trainer


def last_checkpoint_state(run_dir: Path) -> dict[str, torch.Tensor]:
    """The module's weights in the run's last checkpoint (whole under any strategy), prefix ``model.`` removed."""
    state = torch.load(run_dir / "checkpoints" / LAST, map_location="cpu", weights_only=True)["state_dict"]
    return {name.removeprefix("model."): value for name, value in state.items()}
