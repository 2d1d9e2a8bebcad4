"""Stage-1 pretraining steps/s from the cache against the frozen models run online, in one run.

    python bench/train.py [--data sample] [--steps 5] [--batch B] [--workers W] [--out bench/results] [--paper-random]

The point of phase 1 is that stage 1 never runs the frozen models. This measures what that buys:

1. cache: one optimizer step (``pretraining_losses``: ITC + ITM + ICG + MSP, backward, AdamW and its
   schedule as ``PretrainModule.configure_optimizers`` builds them, the temperature clamp) on a
   batch read through the trainer's own data path: ``open_caches`` -> ``PretrainData``'s DataLoader
   (``SampleStream``, ``training.num_workers`` workers) -> ``PretrainCollate``. Timed: waiting for
   the batch + the step.
2. online: the same step, the batch made from the images on every step: decode, each model's
   preprocessing, then CLIP, RAM++, Grounding-DINO (on the tags) and SAM-HQ (on the boxes) through
   ``run_stage`` as the extraction runs them (inference mode, eval), the outputs turned into rows
   with the keys of ``CacheDataset``'s items (top-Q applied as the cache writer does) and collated
   by the same ``PretrainCollate``.

Both paths start from the same MQ-Former weights, read the same rows in the same order (the
stream's indices, mapped to the shard images) and seed each step alike, so they train alike. The
encoded image bytes are read from the shards before timing (the cache path reads its files as it
trains). Each path takes one warm-up step, then ``--steps`` timed ones. Printed and written to
``<out>/train.json``: steps/s of each, cache/online (the speed-up of caching), seconds per step of
each phase of the online step (decode+preprocess, each model, rows -> batch, train step) and of the
cache step (data wait, train step), the last losses, and how far the online features of the first
batch are from the cached ones. torch uses every core, as bench/extract.py (no OMP_NUM_THREADS).

``--paper-random`` (GPU only): the paper's frozen models at random weights (built as
bench/extract.py does), a random paper-size MQ-Former, the paper recipe's micro-batch and text
lengths, bf16 autocast as the trainer's bf16-mixed; the cache is first written from the same
models into a temporary folder through ``CacheWriter`` + ``store_rows``. -> ``train_paper_random.json``.
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
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch.utils.data import ConcatDataset

from lyrics.config import PipelinesConfig, PretrainRecipe, load_config
from lyrics.data.webdataset import WebSample, iter_shard
from lyrics.extract.cache_location import STAGES, cache_schema, extraction_settings
from lyrics.extract.images import decode_image
from lyrics.extract.job import TENSOR_KEYS, shard_name, store_rows
from lyrics.extract.refiner import Chunk, FrozenModels, new_chunk, run_stage
from lyrics.model.factory import build_stage1_model, mqformer_config
from lyrics.model.mqformer import MQFormer
from lyrics.model.pretraining import MQFormerForPretraining
from lyrics.model.tokenizer import TokenIds, build_tokenizer, vocab_dir
from lyrics.store import CacheExpectation, CacheIdentity, CacheMismatchError, CacheWriter, StorageOptions, sample_id
from lyrics.store.codecs import select_top_q
from lyrics.train.cache_data import PretrainCollate, PretrainData, SampleStream, cache_expectation, cache_roots, open_caches
from lyrics.train.objectives import PretrainBatch, pretraining_losses
from lyrics.train.pretrain_module import PretrainModule
from lyrics.train.pretrain_text import TextSettings

_spec = importlib.util.spec_from_file_location("bench_extract", Path(__file__).with_name("extract.py"))
bench_extract = sys.modules["bench_extract"] = importlib.util.module_from_spec(_spec)  # bench/ is no package
_spec.loader.exec_module(bench_extract)
sync, PHASES = bench_extract.sync, bench_extract.PHASES
ONLINE_PHASES = (*PHASES, "rows -> batch", "train step")
Key = tuple[str, str]  # (shard, key) of a sample, as the cache's rows name it


class StepRunner:
    """One stage-1 optimizer step as ``PretrainModule`` takes it, on a private copy of the initial model."""

    def __init__(self, model: MQFormerForPretraining, ids: TokenIds, recipe: PretrainRecipe, msp: float, device: torch.device) -> None:
        self.module = PretrainModule(copy.deepcopy(model).to(device).train(), ids, recipe, msp)
        optimizers = self.module.configure_optimizers()
        self.optimizer, self.schedule = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
        self.device, self.losses = device, []

    def __call__(self, batch: PretrainBatch) -> None:
        batch = move_data_to_device(batch, self.device)
        torch.manual_seed(len(self.losses))  # the same dropout, ITM negatives and MSP masks on both paths
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.device.type == "cuda"):  # the trainer's bf16-mixed
            losses = pretraining_losses(self.module.model, batch, self.module.token_ids, self.module.msp_probability)
        losses["loss"].backward()
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.module.on_train_batch_end()  # the temperature clamp
        self.losses.append(float(losses["loss"]))  # waits for the device


# --- the online path ---------------------------------------------------------------------------------
def run_frozen(models: FrozenModels, images: list[WebSample], phase: dict[str, float], device: torch.device) -> Chunk:
    """Decode + preprocess, then the four models on the batch (as the extraction); adds each phase's seconds."""
    start = time.perf_counter()
    decoded = [decode_image(sample.image_bytes, models.settings.max_image_pixels) for sample in images]
    chunk = new_chunk([models.preprocess(image) for image in decoded], [image.size for image in decoded])
    phase["decode+preprocess"] += time.perf_counter() - start
    for name in STAGES:
        start = time.perf_counter()
        chunk = run_stage(name, getattr(models, name), chunk, models.settings)
        sync(device)
        phase[name] += time.perf_counter() - start
    return chunk


def online_items(chunk: Chunk, captions: list[str | None], top_q: int | None) -> list[dict[str, Any]]:
    """The frozen models' outputs as rows with the keys ``CacheDataset`` gives ``PretrainCollate``."""
    gdino = chunk["gdino_tokens"]
    if top_q and gdino.shape[1] > top_q:
        gdino = select_top_q(gdino, chunk["gdino_scores"], top_q)  # what the cache writer keeps
    tensors = {"vit_tokens": chunk["vit_tokens"], "gdino_tokens": gdino, "sam_tokens": chunk["sam_tokens"], "sam_mask": chunk["sam_mask"]}
    return [
        {**{name: torch.from_numpy(values[i]) for name, values in tensors.items()}, "spatial_text": chunk["spatial_text"][i], "caption": caption}
        for i, caption in enumerate(captions)
    ]


# --- the two timed paths -----------------------------------------------------------------------------
def time_cache(data: PretrainData, runner: StepRunner, steps: int) -> tuple[dict[str, Any], PretrainBatch]:
    data.trainer = SimpleNamespace(global_step=0, accumulate_grad_batches=1, global_rank=0, world_size=1)  # what train_dataloader reads
    batches = iter(data.train_dataloader())
    first = next(batches)
    runner(first)  # warm-up (starts the workers)
    wait, start = 0.0, time.perf_counter()
    for _ in range(steps):
        t = time.perf_counter()
        batch = next(batches)
        wait += time.perf_counter() - t
        runner(batch)
    seconds = time.perf_counter() - start
    del batches  # stops the workers before the online path runs
    split = {"data wait": wait / steps, "train step": (seconds - wait) / steps}
    return {"seconds": seconds, "steps_per_s": steps / seconds, "s_per_step": split, "last_loss": runner.losses[-1]}, first


def time_online(
    batches: list[list[WebSample]], models: FrozenModels, collate: PretrainCollate, runner: StepRunner, top_q: int | None, device: torch.device
) -> tuple[dict[str, Any], PretrainBatch]:
    def step(images: list[WebSample], phase: dict[str, float]) -> PretrainBatch:
        chunk = run_frozen(models, images, phase, device)
        t = time.perf_counter()
        batch = collate(online_items(chunk, [s.caption for s in images], top_q))
        phase["rows -> batch"] += time.perf_counter() - t
        t = time.perf_counter()
        runner(batch)
        phase["train step"] += time.perf_counter() - t
        return batch

    first = step(batches[0], dict.fromkeys(ONLINE_PHASES, 0.0))  # warm-up
    phase, start = dict.fromkeys(ONLINE_PHASES, 0.0), time.perf_counter()
    for images in batches[1:]:
        step(images, phase)
    seconds, steps = time.perf_counter() - start, len(batches) - 1
    split = {name: s / steps for name, s in phase.items()}
    frozen = sum(s for name, s in split.items() if name != "train step")
    result = {"seconds": seconds, "steps_per_s": steps / seconds, "s_per_step": split, "frozen_s_per_step": frozen, "last_loss": runner.losses[-1]}
    return result, first


def agreement(cached: PretrainBatch, online: PretrainBatch) -> dict[str, Any]:
    """How far the online features of the first batch are from the cached ones (same rows)."""
    a, b = cached.image, online.image
    return {
        "vit_tokens_max_abs_diff": float((a.vit_tokens - b.vit_tokens).abs().max()),
        "refiner_tokens_max_abs_diff": float((a.refiner_tokens - b.refiner_tokens).abs().max()) if a.refiner_tokens.shape == b.refiner_tokens.shape else None,
        "rows_with_same_text": sum(x.shape == y.shape and bool((x == y).all()) for x, y in zip(cached.text.input_ids, online.text.input_ids)),
    }


# --- inputs -----------------------------------------------------------------------------------------
def read_images(config: PipelinesConfig, data: str) -> dict[Key, WebSample]:
    shards = bench_extract.plan_job(config, data, "tiny").shards  # the shard list is the same for every profile
    return {(shard_name(shard), s.key): s for shard in shards for s in iter_shard(shard)}


def row_keys(dataset: ConcatDataset) -> list[Key]:
    """(shard, key) of every index of ``open_caches``' dataset (a Subset of a CacheDataset per cache)."""
    keys = []
    for part in dataset.datasets:
        rows = part.dataset.rows(["shard", "key"]).to_pylist()
        keys += [(rows[i]["shard"], rows[i]["key"]) for i in part.indices]
    return keys


def write_cache(root: Path, config: PipelinesConfig, data: str, images: dict[Key, WebSample], models: FrozenModels, device: torch.device) -> None:
    """--paper-random: the images through the models into a cache, in chunks of one shard as the job cuts them."""
    storage = StorageOptions(config.extraction.storage.dtype, config.extraction.storage.top_q)
    writer = CacheWriter(root, CacheIdentity(cache_schema(config, "paper"), storage, extraction_settings(config, "paper"), {"bench": "random"}))
    for shard, group in itertools.groupby(images.items(), key=lambda item: item[0][0]):
        samples = [sample for _, sample in group]
        with writer.open_shard(shard, shard) as out:
            for i in range(0, len(samples), config.extraction.batch_size):
                members = samples[i : i + config.extraction.batch_size]
                chunk = run_frozen(models, members, dict.fromkeys(PHASES, 0.0), device)
                width_height = chunk["sizes"]
                rows = [{"id": sample_id(data, shard, s.key), "key": s.key, "caption": s.caption, "meta": s.meta, "width": w, "height": h} for s, (w, h) in zip(members, width_height)]
                record = {**chunk, "shard": shard, "source": shard, "rows": rows}
                out.add_batch(store_rows(data, record), {k: record[k] for k in TENSOR_KEYS})
    writer.finalize()


def paper_random_stage1(config: PipelinesConfig, grounding: bool, spatial: bool) -> tuple[MQFormerForPretraining, Any]:
    """The paper MQ-Former at BERT's random initialization, with the uncased vocabulary the tiny profile ships."""
    tokenizer = build_tokenizer(vocab_dir(mqformer_config(config, "tiny").vocab))
    torch.manual_seed(0)
    mqformer = MQFormer(mqformer_config(config, "paper", grounding))
    mqformer.resize_token_embeddings(len(tokenizer))
    return MQFormerForPretraining(mqformer, spatial_representation=spatial), tokenizer


# --- report -----------------------------------------------------------------------------------------
def print_tables(r: dict[str, Any]) -> None:
    cache, online = r["runs"]["cache"], r["runs"]["online"]
    m = r["machine"]
    print(f"\nstage-1 steps, profile {r['profile']}, batch {r['batch']}, {r['steps']} timed steps after 1 warm-up, "
          f"{m['device']} ({m['cores']} cores, {m['torch_threads']} torch threads), DataLoader workers {r['workers']}")  # fmt: skip
    print(f"{'path':<36}{'steps/s':>9}{'s/step':>9}{'vs online':>11}")
    for label, run in (("from the cache", cache), ("online (frozen models every batch)", online)):
        print(f"{label:<36}{run['steps_per_s']:>9.3f}{1 / run['steps_per_s']:>9.3f}{run['steps_per_s'] / online['steps_per_s']:>11.2f}")
    print(f"\nonline step, seconds per step (share)")
    total = sum(online["s_per_step"].values())
    for name, s in online["s_per_step"].items():
        print(f"  {name:<20}{s:>9.3f}{s / total:>8.0%}")
    print(f"  {'frozen side total':<20}{online['frozen_s_per_step']:>9.3f}{online['frozen_s_per_step'] / total:>8.0%}   (all but the train step)")
    print("cache step, seconds per step: " + ", ".join(f"{name} {s:.3f}" for name, s in cache["s_per_step"].items()))
    print(f"loss after the last step: cache {cache['last_loss']:.4f}, online {online['last_loss']:.4f} (same init, rows and seeds)")
    a = r["first_batch_agreement"]
    refiner = "shapes differ" if a["refiner_tokens_max_abs_diff"] is None else f"{a['refiner_tokens_max_abs_diff']:.4f}"
    print(f"online vs cached features, first batch: max |diff| vit {a['vit_tokens_max_abs_diff']:.4f}, refiner {refiner}; "
          f"same text ids in {a['rows_with_same_text']}/{r['batch']} rows")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="sample", help="a dataset registered in pipelines.yaml, with its tiny cache built")
    parser.add_argument("--steps", type=int, default=5, help="timed steps of each path (after one warm-up step)")
    parser.add_argument("--batch", type=int, help="images per step (default: the recipe's micro_batch)")
    parser.add_argument("--workers", type=int, help="DataLoader workers of the cache path (default: training.num_workers)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--config", type=Path, help="pipelines file (default: the repository's pipelines.yaml)")
    parser.add_argument("--paper-random", action="store_true", help="paper sizes at random weights (GPU only)")
    args = parser.parse_args()
    bench_extract.quiet_libraries()
    if args.paper_random and not torch.cuda.is_available():
        print("--paper-random: no GPU here; the paper-size models at random weights are measured on a GPU only. Nothing run.")
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(bench_extract.machine_cores())
    config = load_config(args.config)
    profile = "paper" if args.paper_random else "tiny"
    settings, recipe = config.training.pretrain, config.training.pretrain.recipes[profile]
    batch, workers = args.batch or recipe.micro_batch, config.training.num_workers if args.workers is None else args.workers
    images = read_images(config, args.data)
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        if args.paper_random:
            print(f"building the paper architectures at random weights on {device} (checkpoints in {work})")
            models = bench_extract.paper_random_models(config, work, device)
            print("writing their cache of the images ...", flush=True)
            write_cache(work / "cache", config, args.data, images, models, device)
            dataset = open_caches([work / "cache"], CacheExpectation())
            model, tokenizer = paper_random_stage1(config, settings.grounding_queries, settings.spatial_representation)
        else:
            models = FrozenModels.load(config, profile, str(device))
            try:
                dataset = open_caches(cache_roots(config, profile, [args.data]), cache_expectation(config, profile))
            except (FileNotFoundError, CacheMismatchError) as e:
                sys.exit(f"error: {e}\n(build the cache with: make extract DATA={args.data})")
            init = build_stage1_model(config, profile, settings.grounding_queries, settings.spatial_representation)
            model, tokenizer = init.model, init.tokenizer
        collate = PretrainCollate(tokenizer, TextSettings(recipe.max_spatial_tokens, recipe.max_caption_tokens, settings.spatial_representation))
        runner = lambda: StepRunner(model, TokenIds.of(tokenizer), recipe, settings.msp_probability, device)  # noqa: E731
        print(f"{len(dataset)} cached rows, batch {batch}, {args.steps} timed steps per path, {device} ...", flush=True)
        cache, cached_first = time_cache(PretrainData(dataset, collate, batch, workers, recipe.seed), runner(), args.steps)
        keys = row_keys(dataset)
        order = itertools.islice(SampleStream(len(dataset), recipe.seed, 0, 1), (args.steps + 1) * batch)  # the loader's indices
        rows = [images[keys[i]] for i in order]
        online, online_first = time_online([rows[i : i + batch] for i in range(0, len(rows), batch)], models, collate, runner(), config.extraction.storage.top_q, device)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = {
        "data": args.data, "profile": f"{profile}{' (random weights)' if args.paper_random else ''}", "batch": batch,
        "steps": args.steps, "workers": workers, "machine": bench_extract.describe_machine(device),
        "runs": {"cache": cache, "online": online},
        "ratios": {"cache_over_online": cache["steps_per_s"] / online["steps_per_s"]},
        "first_batch_agreement": agreement(cached_first, online_first),
    }  # fmt: skip
    print_tables(results)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / ("train_paper_random.json" if args.paper_random else "train.json")
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
