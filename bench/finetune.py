"""Stage-2 finetuning steps/s from the cache against the frozen models run online, in one run.

    python bench/finetune.py [--data SET ...] [--steps 3] [--batch B] [--threads T] [--out bench/results]
                             [--stage1 DIR | --from-scratch]

What phase 1 buys stage 2. Both paths take the same optimizer step (``LyricsLVLM``'s response-token
loss as ``FinetuneModule.training_step`` computes it, backward, AdamW + schedule of
``adamw_cosine``) from the model that ``lyrics.train.finetune.prepare`` builds (the stage-1 MQ-Former
of ``make pretrain``, or ``--from-scratch`` the profile's initial one; projection and LoRA seeded; the
frozen LLM), on the same instruction examples in the trainer's ``SampleStream`` order, seeded per step
as ``seed_step`` seeds the trainer's:

1. cache: batches of ``open_instruction_sets``' dataset (each example joined to its image's cache
   row) through ``StreamData``'s reader threads (``training.reading.threads``) and the
   ``SampleEncoder``; timed: batch wait + step.
2. online: the bytes of each example's image (the webdataset sample that the cache row's ``source``
   names: ``file`` and ``key``, read before timing) decoded, preprocessed, CLIP, RAM++,
   Grounding-DINO (on the tags), SAM-HQ (on the boxes) through ``run_stage`` as the extraction runs
   them (bench/train.py's ``online_batch``); the outputs become rows with the cache's keys (the
   ``top_q`` best Grounding-DINO queries, the spatial text) and the example's turns, for the same
   ``SampleEncoder``.

One warm-up step each, then ``--steps`` timed. Printed and written to ``<out>/finetune.json``:
steps/s, cache/online (the speed-up of caching), seconds per step of every phase, the last losses,
and how far the first batch's online features and token ids are from the cached ones. torch uses
every core (no OMP_NUM_THREADS); on a GPU the step runs under bf16 autocast, as the trainer's
bf16-mixed. The schedule is the recipe's (its first steps, as a run takes them); the run folder that
``prepare`` checks is a temporary one. Tiny profile (``training.profile``) only: the paper's LLM is
Vicuna-13B.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import itertools
import json
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch.utils.data import ConcatDataset

from lyrics.config import ConfigError, FinetuneRecipe, load_config
from lyrics.data.webdataset import WebSample, iter_shard
from lyrics.extract.refiner import FrozenModels
from lyrics.model.lvlm import LyricsLVLM
from lyrics.train.cache_data import SampleStream, StreamData
from lyrics.train.finetune import FinetunePlan, prepare
from lyrics.train.finetune_data import FinetuneBatch, SampleEncoder
from lyrics.train.finetune_module import FinetuneModule

_spec = importlib.util.spec_from_file_location("bench_train", Path(__file__).with_name("train.py"))
bench_train = sys.modules["bench_train"] = importlib.util.module_from_spec(_spec)  # bench/ is no package
_spec.loader.exec_module(bench_train)  # loads bench/extract.py as bench_extract too
bench_extract = bench_train.bench_extract
Turns = Sequence[Sequence[str]]


class StepRunner:
    """One stage-2 optimizer step as ``FinetuneModule`` takes it, training ``model`` in place (pass a copy to keep it)."""

    def __init__(self, model: LyricsLVLM, recipe: FinetuneRecipe, device: torch.device) -> None:
        self.module = FinetuneModule(model.to(device).train(), recipe)
        optimizers = self.module.configure_optimizers()
        self.optimizer, self.schedule = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
        self.device, self.seed, self.losses = device, recipe.seed, []

    def __call__(self, batch: FinetuneBatch) -> None:
        batch = move_data_to_device(batch, self.device)
        torch.manual_seed(self.seed * 1_000_003 + len(self.losses))  # seed_step's draw on one process without accumulation
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.device.type == "cuda"):  # the trainer's bf16-mixed
            loss = self.module.model(batch.image, batch.input_ids, batch.attention_mask, batch.image_positions, batch.labels).loss
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.losses.append(loss.item())  # waits for the device


@dataclass
class TurnsEncoder:
    """The online path's collate: ``online_batch`` hands it the rows of one batch's images, batch after batch;
    each row gets the turns of its example (the batches' turns, taken in order), then the ``SampleEncoder``."""

    encoder: SampleEncoder
    turns: Iterator[list[Turns]]

    def __call__(self, rows: list[dict[str, Any]]) -> FinetuneBatch:
        return self.encoder.training_batch([{**row, "turns": turns} for row, turns in zip(rows, next(self.turns), strict=True)])


def stream_batches(dataset: ConcatDataset, seed: int, batch: int, count: int) -> list[tuple[list[WebSample], list[Turns]]]:
    """The loader's first ``count`` batches as (shard samples, turns): its indices -> the example of an
    ``InstructionDataset`` -> its cache row's ``source`` (webdataset ``file`` and ``key``) -> the sample, bytes read now."""
    examples = []  # (file, key, turns) of every example, in the ConcatDataset's index order
    for part in dataset.datasets:
        sources = part.cache.rows(["source"]).column("source").to_pylist()
        for example, row in zip(part.examples, part.rows, strict=True):
            source = json.loads(sources[row])
            examples.append((source["file"], source["key"], example.turns))
    images = {(file, s.key): s for file in dict.fromkeys(e[0] for e in examples) for s in iter_shard(Path(file)) if isinstance(s, WebSample)}
    picked = [examples[i] for i in itertools.islice(SampleStream(len(dataset), seed, 0, 1), count * batch)]
    return [([images[file, key] for file, key, _ in part], [turns for *_, turns in part]) for part in (picked[i : i + batch] for i in range(0, len(picked), batch))]


def print_tables(r: dict[str, Any]) -> None:
    bench_train.print_speed(r, f"stage-2 steps, profile {r['profile']}, stage 1 {r['stage1']}", "examples")
    a = r["first_batch_agreement"]
    print(f"online vs cached features, first batch: max |diff| vit {a['vit_tokens_max_abs_diff']}, refiner (gdino + sam) "
          f"{a['refiner_tokens_max_abs_diff']}; same MQ-Former spatial ids in {a['rows_with_same_spatial_ids']}/{r['batch']} rows, "
          f"same LLM ids in {a['rows_with_same_llm_ids']}/{r['batch']}")  # fmt: skip


def agreement(cached: FinetuneBatch, online: FinetuneBatch) -> dict[str, Any]:
    """How far the first batch's online inputs are from the cached ones (features; unpadded token ids)."""
    diff = lambda a, b: float((a - b).abs().max()) if a.shape == b.shape else None  # noqa: E731
    spatial = lambda f: [] if f.spatial_ids is None else [row[:n].tolist() for row, n in zip(f.spatial_ids, f.spatial_lengths)]  # noqa: E731
    llm = lambda b: [ids[mask.bool()].tolist() for ids, mask in zip(b.input_ids, b.attention_mask)]  # noqa: E731
    return {"vit_tokens_max_abs_diff": diff(cached.image.vit_tokens, online.image.vit_tokens),
            "refiner_tokens_max_abs_diff": diff(cached.image.refiner_tokens, online.image.refiner_tokens),
            "rows_with_same_spatial_ids": sum(a == b for a, b in zip(spatial(cached.image), spatial(online.image))),
            "rows_with_same_llm_ids": sum(a == b for a, b in zip(llm(cached), llm(online)))}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", help="instruction sets, their images' tiny caches built (default: training.finetune.data)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps of each path (after one warm-up step)")
    parser.add_argument("--batch", type=int, help="examples per step (default: the recipe's micro_batch)")
    parser.add_argument("--threads", type=int, help="reader threads of the cache path (default: training.reading.threads)")
    parser.add_argument("--stage1", type=Path, help="stage-1 result (default: {runs}/pretrain-<profile>/stage1, from `make pretrain`)")
    parser.add_argument("--from-scratch", action="store_true", help="no stage-1 result: the profile's initial MQ-Former")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--config", type=Path, help="pipelines file (default: the repository's pipelines.yaml)")
    args = parser.parse_args()
    bench_extract.quiet_libraries()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(bench_extract.machine_cores())
    config = load_config(args.config)
    work = Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    try:
        try:  # the trainer's checks (stage-1 folder, instruction sets, caches: missing, `make pretrain` / `make extract`)
            plan = FinetunePlan.make(config, data=args.data, stage1=args.stage1, from_scratch=args.from_scratch, run_dir=work / "run")
            prepared = prepare(plan)
        except (ConfigError, FileNotFoundError) as e:
            sys.exit(f"error: {e}")
        recipe, dataset = plan.recipe, prepared.dataset
        batch = args.batch or recipe.micro_batch
        reading = config.training.reading if args.threads is None else config.training.reading.model_copy(update={"threads": args.threads})
        models = FrozenModels.load(config, plan.profile, str(device))
        runner = lambda: StepRunner(copy.deepcopy(prepared.model), recipe, device)  # noqa: E731  (each path from the same init)
        print(f"{len(dataset)} instruction examples, batch {batch}, {args.steps} timed steps per path, {device} ...", flush=True)
        data = StreamData(dataset, prepared.encoder, batch, reading, recipe.seed)
        cache, cached_first = bench_train.time_cache(data, runner(), args.steps)
        images, turns = zip(*stream_batches(dataset, recipe.seed, batch, args.steps + 1))
        collate = TurnsEncoder(prepared.encoder, iter(turns))
        online, online_first = bench_train.time_online(list(images), models, collate, runner(), config.extraction.storage.top_q)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = {
        "data": plan.settings.data, "profile": plan.profile, "stage1": str(plan.stage1 or "none (from scratch)"), "examples": len(dataset),
        "batch": batch, "steps": args.steps, "threads": reading.threads, "prompt": vars(prepared.encoder.settings),
        "trained_parameters": sum(p.numel() for p in prepared.model.parameters() if p.requires_grad),
        "machine": bench_extract.describe_machine(device), "runs": {"cache": cache, "online": online},
        "ratios": {"cache_over_online": cache["steps_per_s"] / online["steps_per_s"]},
        "first_batch_agreement": agreement(cached_first, online_first),
    }  # fmt: skip
    print_tables(results)
    bench_extract.write_results(args.out, "finetune.json", results)


if __name__ == "__main__":
    main()
