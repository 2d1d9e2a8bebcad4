"""Stage-1 pretraining steps/s from the cache against the frozen models run online, in one run.

    python bench/train.py [--data sample] [--steps 5] [--batch B] [--threads T] [--out bench/results] [--paper-random]

What phase 1 buys phase 2. Both paths take the same optimizer step (``pretraining_losses``, backward,
AdamW + schedule of ``PretrainModule.configure_optimizers``, temperature clamp) from the MQ-Former that
``prepare`` builds (seeded), on the same rows in the trainer's ``SampleStream`` order, seeded alike per step:

1. cache: batches from ``open_caches`` through ``StreamData``'s reader threads
   (``training.reading.threads``) and ``PretrainCollate``; timed: batch wait + step.
2. online: each batch's images (bytes read before timing) decoded, preprocessed, CLIP, RAM++,
   Grounding-DINO (on the tags), SAM-HQ (on the boxes) through ``run_stage`` as the extraction runs
   them; the outputs become rows with ``CacheDataset``'s keys for the same collate.

One warm-up step each, then ``--steps`` timed. Printed and written to ``<out>/train.json``: steps/s,
cache/online (the speed-up of caching), seconds per step of every phase, the last losses, and how far
the first batch's online features are from the cached ones. torch uses every core (no OMP_NUM_THREADS).
``--paper-random`` (GPU only, ``train_paper_random.json``): paper-size frozen models at random weights
as bench/extract.py builds them (their cache of the images is written first, through the job's stages
in this process), a random paper MQ-Former, the paper recipe, bf16 autocast as the trainer's bf16-mixed.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import itertools
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch.utils.data import ConcatDataset

from lyrics.config import PipelinesConfig, PretrainRecipe, load_config
from lyrics.data.webdataset import WebSample
from lyrics.extract.cache_location import STAGES, cache_schema, extraction_settings
from lyrics.extract.images import ImageLimits, decode_image
from lyrics.extract.job import DecodeStage, run_model_on_part
from lyrics.extract.parts import ReadStage, WriteStage
from lyrics.extract.refiner import FrozenModels, new_chunk, run_stage
from lyrics.model.factory import mqformer_config
from lyrics.model.mqformer import MQFormer
from lyrics.model.pretraining import MQFormerForPretraining
from lyrics.model.tokenizer import TokenIds, build_tokenizer, vocab_dir
from lyrics.store import CacheExpectation, CacheIdentity, CacheWriter, StorageOptions
from lyrics.store.codecs import select_top_q
from lyrics.train.cache_data import PRETRAIN_FIELDS, PretrainCollate, StreamData, SampleStream, open_caches
from lyrics.train.objectives import PretrainBatch, pretraining_losses
from lyrics.train.pretrain import PretrainPlan, prepare
from lyrics.train.pretrain_module import PretrainModule
from lyrics.train.pretrain_text import TextSettings

_spec = importlib.util.spec_from_file_location("bench_extract", Path(__file__).with_name("extract.py"))
bench_extract = sys.modules["bench_extract"] = importlib.util.module_from_spec(_spec)  # bench/ is no package
_spec.loader.exec_module(bench_extract)
ONLINE_PHASES = (*bench_extract.PHASES, "rows -> batch", "train step")


class StepRunner:
    """One stage-1 optimizer step as ``PretrainModule`` takes it, training ``model`` in place (pass a copy to keep it)."""

    def __init__(self, model: MQFormerForPretraining, ids: TokenIds, recipe: PretrainRecipe, msp: float, device: torch.device) -> None:
        self.module = PretrainModule(model.to(device).train(), ids, recipe, msp)
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
        self.losses.append(losses["loss"].item())  # waits for the device


def online_batch(models: FrozenModels, images: list[WebSample], collate: PretrainCollate, top_q: int | None, phase: dict[str, float]) -> PretrainBatch:
    """Decode + preprocess, the four models (as the extraction), their outputs as rows with the keys of
    ``CacheDataset``'s items, the trainer's collate; adds each phase's seconds to ``phase``."""
    start = time.perf_counter()
    decoded = [decode_image(sample.image_bytes, ImageLimits.of(models.settings)) for sample in images]
    chunk = new_chunk([models.preprocess(image) for image in decoded], [image.size for image in decoded])
    phase["decode+preprocess"] += time.perf_counter() - start
    for name in STAGES:
        start = time.perf_counter()
        chunk = run_stage(name, getattr(models, name), chunk, models.settings)
        bench_extract.sync(models.clip.device)
        phase[name] += time.perf_counter() - start
    start, tensors = time.perf_counter(), {name: chunk[name] for name in PRETRAIN_FIELDS}
    if top_q and tensors["gdino_tokens"].shape[1] > top_q:  # what the cache writer keeps
        tensors["gdino_tokens"] = select_top_q(tensors["gdino_tokens"], chunk["gdino_scores"], top_q)
    rows = [{**{name: torch.from_numpy(values[i]) for name, values in tensors.items()}, "spatial_text": chunk["spatial_text"][i], "caption": s.caption}
            for i, s in enumerate(images)]  # fmt: skip
    batch = collate(rows)
    phase["rows -> batch"] += time.perf_counter() - start
    return batch


def time_cache(data: StreamData, runner: StepRunner, steps: int) -> tuple[dict[str, Any], PretrainBatch]:
    batches = iter(data.loader())
    runner(first := next(batches))  # warm-up (starts the reader threads)
    wait, start = 0.0, time.perf_counter()
    for _ in range(steps):
        t = time.perf_counter()
        batch = next(batches)
        wait += time.perf_counter() - t
        runner(batch)
    seconds = time.perf_counter() - start
    batches.close()  # stops the reader threads before the online path runs
    split = {"data wait": wait / steps, "train step": (seconds - wait) / steps}
    return {"seconds": seconds, "steps_per_s": steps / seconds, "s_per_step": split, "last_loss": runner.losses[-1]}, first


def time_online(batches: list[list[WebSample]], models: FrozenModels, collate: PretrainCollate, runner: StepRunner, top_q: int | None) -> tuple[dict[str, Any], PretrainBatch]:
    first = None
    for n, images in enumerate(batches):
        if n < 2:  # batch 0 warms up; the clock starts at batch 1
            phase, start = dict.fromkeys(ONLINE_PHASES, 0.0), time.perf_counter()
        batch = online_batch(models, images, collate, top_q, phase)
        first = first or batch
        t = time.perf_counter()
        runner(batch)
        phase["train step"] += time.perf_counter() - t
    seconds, steps = time.perf_counter() - start, len(batches) - 1
    split = {name: s / steps for name, s in phase.items()}
    frozen = seconds / steps - split["train step"]
    return {"seconds": seconds, "steps_per_s": steps / seconds, "s_per_step": split, "frozen_s_per_step": frozen, "last_loss": runner.losses[-1]}, first


def stream_batches(config: PipelinesConfig, data: str, dataset: ConcatDataset, seed: int, batch: int, count: int) -> list[list[WebSample]]:
    """The loader's first ``count`` batches as shard samples: its indices -> (shard, key) of the rows of
    ``open_caches``' dataset (a Subset of a CacheDataset per cache) -> the sample, bytes read now."""
    images = {(shard.name, s.key): s for shard in bench_extract.plan_job(config, data, "tiny").shards for s in shard.samples() if isinstance(s, WebSample)}
    tables = [(part.dataset.rows(["shard", "key"]).to_pylist(), part.indices) for part in dataset.datasets]
    keys = [(rows[i]["shard"], rows[i]["key"]) for rows, indices in tables for i in indices]
    rows = [images[keys[i]] for i in itertools.islice(SampleStream(len(dataset), seed, 0, 1), count * batch)]
    return [rows[i : i + batch] for i in range(0, len(rows), batch)]


def write_cache(root: Path, config: PipelinesConfig, data: str, models: FrozenModels) -> None:
    """--paper-random: the job's stages (read, decode, each model, write) in this process, part by part."""
    storage = StorageOptions(config.extraction.storage.dtype, config.extraction.storage.top_q)
    writer = CacheWriter(root, CacheIdentity(cache_schema(config, "paper"), storage, extraction_settings(config, "paper"), {"bench": "random"}))
    shards = bench_extract.plan_job(config, data, "tiny").shards
    read = ReadStage(shards, config.extraction.part_size, writer.shards_dir)
    decode, write = DecodeStage(config, "paper", data), WriteStage(data, writer.shards_dir, writer.identity)
    for index in range(len(shards)):
        for part in read({"shard": index}):
            record = decode.decode(part["record"])
            for name in STAGES:
                record = run_model_on_part(name, getattr(models, name), record, config.extraction)
            write.write(record)
    writer.finalize()


def load(args: argparse.Namespace, config: PipelinesConfig, work: Path, device: torch.device) -> tuple[Any, ...]:
    """(frozen models, cached dataset, initial MQ-Former, tokenizer) of the tiny profile, or of --paper-random."""
    settings = config.training.pretrain
    if not args.paper_random:
        # The trainer's checks, cache (missing: make extract) and seeded initial model; a fresh run folder: nothing to resume.
        prepared = prepare(PretrainPlan.make(config, "tiny", [args.data], run_dir=work / "run"))
        return FrozenModels.load(config, "tiny", str(device)), prepared.dataset, prepared.init.model, prepared.init.tokenizer
    print(f"building the paper architectures at random weights on {device} (checkpoints in {work}), then their cache", flush=True)
    models = bench_extract.paper_random_models(config, work, device)
    write_cache(work / "cache", config, args.data, models)
    dataset = open_caches([work / "cache"], CacheExpectation())
    tokenizer = build_tokenizer(vocab_dir(mqformer_config(config, "tiny").vocab))  # the uncased vocabulary the tiny profile ships
    torch.manual_seed(settings.recipes["paper"].seed)
    mqformer = MQFormer(mqformer_config(config, "paper", settings.grounding_queries))  # BERT's random initialization
    mqformer.resize_token_embeddings(len(tokenizer))
    return models, dataset, MQFormerForPretraining(mqformer, spatial_representation=settings.spatial_representation), tokenizer


def print_tables(r: dict[str, Any]) -> None:
    print_speed(r, f"stage-1 steps, profile {r['profile']}", "rows")
    a = r["first_batch_agreement"]
    print(f"online vs cached features, first batch: max |diff| vit {a['vit_tokens_max_abs_diff']}, refiner (gdino + sam) "
          f"{a['refiner_tokens_max_abs_diff']}; same text ids in {a['rows_with_same_text']}/{r['batch']} rows")  # fmt: skip


def print_speed(r: dict[str, Any], title: str, items: str) -> None:
    """The cache-vs-online table, the online step's phases and both last losses (shared with bench/finetune.py)."""
    cache, online, m = r["runs"]["cache"], r["runs"]["online"], r["machine"]
    print(f"\n{title}, batch {r['batch']}, {r['steps']} timed steps after 1 warm-up, "
          f"{m['device']} ({m['cores']} cores, {m['torch_threads']} torch threads), reader threads {r['threads']}")  # fmt: skip
    print(f"{'path':<36}{'steps/s':>9}{'s/step':>9}{'vs online':>11}")
    for label, run in (("from the cache", cache), ("online (frozen models every batch)", online)):
        print(f"{label:<36}{run['steps_per_s']:>9.3f}{1 / run['steps_per_s']:>9.3f}{run['steps_per_s'] / online['steps_per_s']:>11.2f}")
    print("\nonline step, seconds per step (share)")
    for name, s in [*online["s_per_step"].items(), ("all but the train step", online["frozen_s_per_step"])]:
        print(f"  {name:<24}{s:>9.3f}{s * online['steps_per_s']:>8.0%}")
    print("cache step, seconds per step: " + ", ".join(f"{name} {s:.3f}" for name, s in cache["s_per_step"].items()) +
          f"\nloss after the last step: cache {cache['last_loss']:.4f}, online {online['last_loss']:.4f} (same init, {items} and seeds)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="sample", help="a dataset registered in pipelines.yaml, with its tiny cache built")
    parser.add_argument("--steps", type=int, default=5, help="timed steps of each path (after one warm-up step)")
    parser.add_argument("--batch", type=int, help="images per step (default: the recipe's micro_batch)")
    parser.add_argument("--threads", type=int, help="reader threads of the cache path (default: training.reading.threads)")
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
    batch = args.batch or recipe.micro_batch
    reading = config.training.reading if args.threads is None else config.training.reading.model_copy(update={"threads": args.threads})
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        models, dataset, model, tokenizer = load(args, config, work, device)
        collate = PretrainCollate(tokenizer, TextSettings(recipe.max_spatial_tokens, recipe.max_caption_tokens, settings.spatial_representation))
        runner = lambda: StepRunner(copy.deepcopy(model), TokenIds.of(tokenizer), recipe, settings.msp_probability, device)  # noqa: E731  (each path from the same init)
        print(f"{len(dataset)} cached rows, batch {batch}, {args.steps} timed steps per path, {device} ...", flush=True)
        cache, cached_first = time_cache(StreamData(dataset, collate, batch, reading, recipe.seed), runner(), args.steps)
        batches = stream_batches(config, args.data, dataset, recipe.seed, batch, args.steps + 1)
        online, online_first = time_online(batches, models, collate, runner(), config.extraction.storage.top_q)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = {
        "data": args.data, "profile": profile + (" (random weights)" if args.paper_random else ""), "batch": batch, "steps": args.steps,
        "threads": reading.threads, "machine": bench_extract.describe_machine(device), "runs": {"cache": cache, "online": online},
        "ratios": {"cache_over_online": cache["steps_per_s"] / online["steps_per_s"]},
    }  # fmt: skip
    diff = lambda a, b: float((a - b).abs().max()) if a.shape == b.shape else None  # noqa: E731  (first batch: online vs cached)
    text = lambda t: [row[: s + c].tolist() for row, s, c in zip(t.input_ids, t.spatial_lengths, t.caption_lengths)]  # noqa: E731  (unpadded ids)
    results["first_batch_agreement"] = {"vit_tokens_max_abs_diff": diff(cached_first.image.vit_tokens, online_first.image.vit_tokens),
        "refiner_tokens_max_abs_diff": diff(cached_first.image.refiner_tokens, online_first.image.refiner_tokens),
        "rows_with_same_text": sum(a == b for a, b in zip(text(cached_first.text), text(online_first.text)))}  # fmt: skip
    print_tables(results)
    bench_extract.write_results(args.out, "train_paper_random.json" if args.paper_random else "train.json", results)


if __name__ == "__main__":
    main()
