"""Phase-1 extraction throughput, three ways on the same images and models, and the pipeline alone, in one run.

    python bench/extract.py [--data sample] [--profile tiny] [--repeats 1] [--pipeline-images 512] [--out bench/results] [--paper-random]

1. Per-image loop, as the Grounded-SAM demos run: for each image, decode, preprocess, then CLIP,
   RAM++, Grounding-DINO and SAM-HQ on a batch of one (``run_stage`` on a one-image chunk), in
   this process, with torch using every core of the machine.
2. Batched in-process loop: the same code, but chunks of ``extraction.batch_size`` images of one
   shard (as the job cuts them) through each stage. Against 1 this isolates batching from Ray.
3. The Ray job (``run_with_stats``) on the same photos, three copies of each (tars of 8, parts of
   ``batch_size``) into a fresh temporary cache. Start-up (Ray, the actors' imports and model
   loads, the first part through the pipeline) is reported apart, as the time to the first
   committed part; the job's rate is that of the parts after it, once every worker is up. Without a
   GPU each model actor runs one torch thread (``ModelStage``), and the default two actors each
   hold all four models: the two cores are busy with whole images while the loops above give each
   stage both.

Images/s of each, their ratios to the per-image loop, and the time per image of each stage
(decode+preprocess, clip, ram, gdino, sam) are printed and written to ``<out>/extract.json`` with
the machine (cores, torch threads, device). The encoded bytes are read from the shards before
timing in 1 and 2 (the job reads them itself). Checkpoints are created (tiny profile) and loaded
before anything is timed, and each in-process loop is run once on 2 images as warm-up.
``--repeats N`` times each in-process loop N times (alternating the two) and reports the median
pass; on a small shared CPU machine one pass of 16 images can vary by tens of percent.

4. The pipeline alone (``pipeline``): the Ray job with null model stages (``extract/null_model.py``:
   outputs of the paper profile's cache shapes at once), so that only reading, decoding + resizing to
   the paper models' sizes, moving parts between actors and writing cache shards are timed, on
   ``--pipeline-images`` copies of the sample photos in tars of 64, parts of 32, ``decode_workers``
   = cores. The time to the first committed part (start-up), samples/s and MB/s committed once up
   (the parts after it), and the bytes of arrays that reached the driver (0 by design), on one
   local Ray node and on two (``ray start --head`` + ``ray start --address``, both on
   this machine: the plumbing of a cluster, not more cores).

``--paper-random``: loops 1 and 2 with the paper profile's architecture files
(``extract/configs/paper/*.json``: CLIP ViT-L/14, RAM++ Swin-L, Grounding-DINO Swin-T + BERT-base,
SAM-HQ ViT-H) at random weights, in their upstream layouts as ``lyrics/paper_random.py`` writes them
(4585 placeholder RAM++ tags, a random BERT-base with the real uncased vocabulary), built through the
component loaders, on the GPU; written to ``<out>/extract_paper_random.json``. Without a GPU it says so and exits.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lyrics.config import ConfigError, PipelinesConfig, load_config
from lyrics.data.webdataset import TarShard, WebSample
from lyrics.extract.images import ImageLimits, ImageRejected, decode_image
from lyrics.extract.job import ExtractJob, run_with_stats
from lyrics.extract.parts import InputShard
from lyrics.extract.cache_location import STAGES
from lyrics.extract.refiner import FrozenModels, new_chunk, run_stage

PHASES = ("decode+preprocess", *STAGES)
WARMUP_IMAGES = 2


@dataclass(frozen=True)
class Sample:
    shard: str
    key: str
    data: bytes


@dataclass
class LoopResult:
    images: int
    seconds: float
    phase_seconds: dict[str, float]
    tags: int = 0
    boxes: int = 0

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    def as_dict(self) -> dict[str, Any]:
        per_image = {name: 1000 * s / self.images for name, s in self.phase_seconds.items()}
        return {
            "images": self.images,
            "seconds": self.seconds,
            "images_per_s": self.images_per_s,
            "ms_per_image": per_image,
            "stage_images_per_s": {name: (1000 / ms if ms else None) for name, ms in per_image.items()},
            "mean_tags_per_image": self.tags / self.images,
            "mean_boxes_per_image": self.boxes / self.images,
        }


# --- the machine ----------------------------------------------------------------------------------
def machine_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe_machine(device: torch.device) -> dict[str, Any]:
    import ray

    info: dict[str, Any] = {
        "cores": machine_cores(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "python": platform.python_version(),
    }
    return info


# --- inputs -------------------------------------------------------------------------------------------
def plan_job(config: PipelinesConfig, data: str, profile: str, cache_root: Path | None = None) -> ExtractJob:
    """The job; the embedded sample data sets are built first when missing (as ``make extract``)."""
    try:
        return ExtractJob.plan(config, data, profile, cache_root)
    except ConfigError:
        if data not in ("sample", "fuzz"):
            raise
    print(f"building the embedded {data} data set (python -m lyrics.data.sample --if-missing)")
    subprocess.run([sys.executable, "-m", "lyrics.data.sample", "--if-missing"], check=True)
    return ExtractJob.plan(config, data, profile, cache_root)


def read_samples(shards: tuple[InputShard, ...]) -> list[Sample]:
    return [Sample(shard.name, s.key, s.image_bytes) for shard in shards for s in shard.samples() if isinstance(s, WebSample)]


# --- loops 1 and 2 ------------------------------------------------------------------------------------
def run_loop(models: FrozenModels, samples: list[Sample], batch_size: int, limits: ImageLimits, device: torch.device) -> LoopResult:
    """Decode + preprocess + the four stages on chunks of up to ``batch_size`` images of one shard."""
    chunks: list[list[Sample]] = []
    for sample in samples:
        if chunks and len(chunks[-1]) < batch_size and chunks[-1][0].shard == sample.shard:
            chunks[-1].append(sample)
        else:
            chunks.append([sample])
    phase = dict.fromkeys(PHASES, 0.0)
    images = tags = boxes = 0
    sync(device)
    start = time.perf_counter()
    for members in chunks:
        t = time.perf_counter()
        decoded = []
        for sample in members:
            try:
                decoded.append(decode_image(sample.data, limits))
            except ImageRejected:
                continue  # counted out of the images, as the job skips it
        if not decoded:
            continue
        chunk = new_chunk([models.preprocess(image) for image in decoded], [image.size for image in decoded])
        phase["decode+preprocess"] += time.perf_counter() - t
        for name in STAGES:
            t = time.perf_counter()
            chunk = run_stage(name, getattr(models, name), chunk, models.settings)
            sync(device)
            phase[name] += time.perf_counter() - t
        images += len(decoded)
        tags += sum(len(t) for t in chunk["tags"])
        boxes += sum(len(b) for b in chunk["boxes"])
    seconds = time.perf_counter() - start
    return LoopResult(images, seconds, phase, tags, boxes)


def in_process(
    models: FrozenModels, samples: list[Sample], batch_size: int, limits: ImageLimits, device: torch.device, repeats: int
) -> dict[str, dict[str, Any]]:
    """Loops 1 and 2, each warmed up on WARMUP_IMAGES images, then ``repeats`` timed passes of each,
    alternated so that a drift in the machine's speed touches both; the median pass is reported."""
    sizes = {"per_image": 1, "batched": batch_size}
    for size in sizes.values():
        run_loop(models, samples[:WARMUP_IMAGES], size, limits, device)  # warm-up, not reported
    passes: dict[str, list[LoopResult]] = {key: [] for key in sizes}
    for r in range(repeats):
        for key, size in sizes.items():
            print(f"{key.replace('_', '-')} loop{f' (pass {r + 1}/{repeats})' if repeats > 1 else ''} ...", flush=True)
            passes[key].append(run_loop(models, samples, size, limits, device))
    out = {}
    for key, results in passes.items():
        median = sorted(results, key=lambda result: result.seconds)[(len(results) - 1) // 2]
        out[key] = {**median.as_dict(), "passes_images_per_s": [result.images_per_s for result in results]}
    return out


# --- measurement 3: the Ray job ---------------------------------------------------------------------
RAY_JOB_COPIES = 3


def photo_shards(samples: list[Sample], folder: Path, count: int, shard_size: int) -> tuple[TarShard, ...]:
    """``count`` copies of the photos (keys made unique) in tars of ``shard_size``."""
    from lyrics.data.sample.shards import ShardSample, write_tar

    folder.mkdir(parents=True)
    copies = [ShardSample(f"{i:09d}", "jpg", samples[i % len(samples)].data, "a photo", {}) for i in range(count)]
    paths = []
    for start in range(0, count, shard_size):
        paths.append(folder / f"{start // shard_size:05d}.tar")
        write_tar(paths[-1], copies[start : start + shard_size])
    return tuple(TarShard(path) for path in paths)


def ray_job(config: PipelinesConfig, samples: list[Sample], profile: str, work: Path) -> dict[str, Any]:
    import ray

    batch = config.extraction.batch_size
    shards = photo_shards(samples, work / "ray-job-data", RAY_JOB_COPIES * len(samples), shard_size=8)
    settings = config.extraction.model_copy(update={"part_size": batch})
    job = ExtractJob(config.model_copy(update={"extraction": settings}), "bench", profile, shards, work / "ray-job-cache")
    start = time.perf_counter()
    manifest, stats = run_with_stats(job, progress=False)
    wall = time.perf_counter() - start
    ray.shutdown()
    return {"images": manifest.rows, "parts": stats.parts, "seconds": wall, "images_per_s": manifest.rows / wall,
            "first_part_seconds": stats.first_part_seconds, "steady_images_per_s": stats.steady_samples_per_s,
            "driver_tensor_bytes": stats.driver_tensor_bytes}  # fmt: skip


# --- measurement 4: the pipeline alone ----------------------------------------------------------------
PIPELINE_SHARD, PIPELINE_PART = 64, 32


def null_pipeline(config: PipelinesConfig, shards: tuple[TarShard, ...], cache: Path) -> dict[str, Any]:
    """The job with null model stages on the paper profile's shapes (no checkpoint is read)."""
    settings = config.extraction.model_copy(update={"part_size": PIPELINE_PART, "decode_workers": machine_cores()})
    job = ExtractJob(config.model_copy(update={"extraction": settings}), "pipeline", "paper", shards, cache)
    start = time.perf_counter()
    manifest, stats = run_with_stats(job, progress=False, null_models=True)
    wall = time.perf_counter() - start
    return {
        "samples": manifest.rows, "parts": stats.parts, "seconds": stats.seconds, "seconds_with_startup": wall,
        # Once up (the parts after the first): the workers' start-up is paid once per job, not per sample.
        "samples_per_s": stats.steady_samples_per_s, "first_part_seconds": stats.first_part_seconds,
        "samples_per_s_with_startup": stats.rows / stats.seconds,
        "mb_per_s_committed": stats.steady_samples_per_s * stats.bytes_written / stats.rows / 1e6,
        "bytes_per_sample": stats.bytes_written / stats.rows, "driver_tensor_bytes": stats.driver_tensor_bytes,
    }  # fmt: skip


@contextlib.contextmanager
def two_node_cluster() -> Iterator[str]:
    """A head and a second Ray node on this machine, as the README starts them; yields the address."""
    import socket

    ray_cli = str(Path(sys.executable).parent / "ray")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "RAY_AUTH_MODE": "token"} if _token_here() else dict(os.environ)
    address = f"127.0.0.1:{port}"
    try:
        for command in ([ray_cli, "start", "--head", f"--port={port}"], [ray_cli, "start", f"--address={address}"]):
            subprocess.run(command, env=env, check=True, capture_output=True, text=True, timeout=300)
        yield address
    finally:
        subprocess.run([ray_cli, "stop", "--force"], env=env, capture_output=True, timeout=300, check=False)


def _token_here() -> bool:
    return bool(os.environ.get("RAY_AUTH_TOKEN")) or (Path.home() / ".ray" / "auth_token").is_file()


def pipeline(config: PipelinesConfig, samples: list[Sample], count: int, work: Path) -> dict[str, Any]:
    import ray

    shards = photo_shards(samples, work / "pipeline-data", count, PIPELINE_SHARD)
    print(f"the pipeline alone (null models, paper shapes): {count} images, one Ray node ...", flush=True)
    result = null_pipeline(config, shards, work / "pipeline-one-node")
    ray.shutdown()
    print("... and two Ray nodes on this machine", flush=True)
    saved = os.environ.get("RAY_ADDRESS")
    with two_node_cluster() as address:
        os.environ["RAY_ADDRESS"] = address
        try:
            two = null_pipeline(config, shards, work / "pipeline-two-nodes")
        finally:
            ray.shutdown()
            os.environ.pop("RAY_ADDRESS")
            if saved is not None:
                os.environ["RAY_ADDRESS"] = saved
    cores = machine_cores()
    return {**result, "cores": cores, "per_core_samples_per_s": result["samples_per_s"] / cores,
            "two_nodes": two, "two_nodes_samples_per_s": two["samples_per_s"]}  # fmt: skip


# --- paper architectures at random weights ------------------------------------------------------------
def paper_random_models(config: PipelinesConfig, work: Path, device: torch.device) -> FrozenModels:
    """The paper profile's four frozen models, random weights (lyrics/paper_random.py), checkpoints under ``work``, through the loaders."""
    from lyrics.extract.refiner import LOADERS
    from lyrics.paper_random import paper_specs, write_paper_checkpoints

    timed("paper-size random checkpoints (RAM++ and Grounding-DINO calibrated)", lambda: write_paper_checkpoints(work, (), STAGES))
    specs = paper_specs(work)
    models = {name: timed(f"{name}: load", lambda name=name: LOADERS[name](specs[name]).to(device)) for name in STAGES}
    return FrozenModels(**models, settings=config.extraction)


def timed(label: str, fn: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    result = fn()
    print(f"  {label}: {time.perf_counter() - start:.1f} s", flush=True)
    return result


def quiet_libraries() -> None:
    """Library deprecation notices and weight-loading bars, which would bury the tables."""
    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message="torch.meshgrid")
    hf_logging.disable_progress_bar()


# --- report ---------------------------------------------------------------------------------------------
def write_results(out: Path, name: str, results: dict[str, Any]) -> None:
    """``<out>/<name>`` as indented JSON (shared by the bench scripts)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out / name}")


def print_tables(results: dict[str, Any]) -> None:
    runs = results["runs"]
    base = runs["per_image"]["images_per_s"]
    print(f"\nthroughput, {results['images']} images, profile {results['profile']}, batch {results['batch_size']}, {results['machine']['device']}")
    print(f"{'run':<32}{'images':>8}{'seconds':>10}{'images/s':>10}{'vs per-image':>14}")
    for label, key in (("per-image loop (batch 1)", "per_image"), (f"batched loop (batch {results['batch_size']})", "batched")):
        r = runs[key]
        print(f"{label:<32}{r['images']:>8}{r['seconds']:>10.2f}{r['images_per_s']:>10.2f}{r['images_per_s'] / base:>14.2f}")
    if "ray_job" in runs:
        r = runs["ray_job"]
        print(f"{'Ray job, once up':<32}{r['images']:>8}{'':>10}{r['steady_images_per_s']:>10.2f}{r['steady_images_per_s'] / base:>14.2f}")
        print(f"{'Ray job, incl. start-up':<32}{r['images']:>8}{r['seconds']:>10.2f}{r['images_per_s']:>10.2f}{r['images_per_s'] / base:>14.2f}")
        print(f"Ray job: {r['parts']} parts, the first committed after {r['first_part_seconds']:.1f} s (start-up); "
              f"once up / batched loop: {results['ratios']['ray_job_over_batched']:.2f}")  # fmt: skip
    print(f"in-process model loading (all four, checkpoints present): {results['model_load_s']:.2f} s")

    print("\ntime per image by stage, ms (images/s of the stage alone)")
    loops = [(k, label) for k, label in (("per_image", "per-image"), ("batched", "batched")) if k in runs]
    print(f"{'stage':<20}" + "".join(f"{label:>24}" for _, label in loops) + f"{'per-image/batched':>19}{'share (batched)':>17}")
    batched_total = sum(runs[loops[-1][0]]["ms_per_image"].values())
    for name in PHASES:
        cells = []
        for key, _ in loops:
            ms = runs[key]["ms_per_image"][name]
            cells.append(f"{ms:>12.1f} ({1000 / ms:>7.1f}/s)" if ms else f"{'-':>24}")
        ratio = runs["per_image"]["ms_per_image"][name] / runs["batched"]["ms_per_image"][name] if len(loops) == 2 and runs["batched"]["ms_per_image"][name] else float("nan")
        share = runs[loops[-1][0]]["ms_per_image"][name] / batched_total
        print(f"{name:<20}" + "".join(f"{c:>24}" for c in cells) + f"{ratio:>19.2f}{share:>16.0%}")
    totals = [sum(runs[key]["ms_per_image"].values()) for key, _ in loops]
    print(f"{'total':<20}" + "".join(f"{t:>12.1f} ({1000 / t:>7.1f}/s)" for t in totals) + (f"{totals[0] / totals[1]:>19.2f}" if len(totals) == 2 else ""))
    for key, label in loops:
        r = runs[key]
        if len(r["passes_images_per_s"]) > 1:
            print(f"{label}: images/s of each pass {', '.join(f'{v:.3f}' for v in r['passes_images_per_s'])} (median shown)")
        print(f"{label}: {r['mean_tags_per_image']:.1f} tags, {r['mean_boxes_per_image']:.1f} boxes per image on average")


def print_pipeline(p: dict[str, Any]) -> None:
    print(f"\nthe pipeline alone (null models, paper shapes; read, decode + resize, move, write), {p['samples']} images in {p['parts']} parts")
    print(f"{'Ray nodes':<14}{'first part s':>14}{'samples/s once up':>19}{'per core':>10}{'MB/s committed':>16}{'MB/sample':>11}"
          f"{'samples/s incl. start-up':>26}{'driver tensor bytes':>21}")  # fmt: skip
    for label, r in (("1", p), ("2 (one host)", p["two_nodes"])):
        print(f"{label:<14}{r['first_part_seconds']:>14.1f}{r['samples_per_s']:>19.1f}{r['samples_per_s'] / p['cores']:>10.1f}"
              f"{r['mb_per_s_committed']:>16.1f}{r['bytes_per_sample'] / 1e6:>11.2f}{r['samples_per_s_with_startup']:>26.1f}{r['driver_tensor_bytes']:>21}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="sample", help="a dataset registered in pipelines.yaml")
    parser.add_argument("--profile", default="tiny", help="model profile of loops 1-3 (not with --paper-random)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--config", type=Path, help="pipelines file (default: the repository's pipelines.yaml)")
    parser.add_argument("--repeats", type=int, default=1, help="timed passes of each in-process loop, alternated; the median is reported")
    parser.add_argument("--pipeline-images", type=int, default=512, help="images of measurement 4, the pipeline alone")
    parser.add_argument("--paper-random", action="store_true", help="loops 1 and 2 with the paper architectures at random weights (GPU only)")
    args = parser.parse_args()
    quiet_libraries()

    if args.paper_random and not torch.cuda.is_available():
        print("--paper-random: no GPU here; the paper-size models at random weights are measured on a GPU only "
              "(on CPU they would take hours). Nothing run.")
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(machine_cores())
    config = load_config(args.config)
    job = plan_job(config, args.data, args.profile)
    settings = config.extraction
    samples = read_samples(job.shards)
    work = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    try:
        if args.paper_random:
            print(f"building the paper architectures at random weights on {device} (checkpoints in {work})")
            start = time.perf_counter()
            models = paper_random_models(config, work, device)
            load_s = time.perf_counter() - start
            profile = "paper (random weights)"
        else:
            FrozenModels.load(config, args.profile, str(device))  # creates missing tiny checkpoints, untimed
            start = time.perf_counter()
            models = FrozenModels.load(config, args.profile, str(device))
            load_s = time.perf_counter() - start
            profile = args.profile
        results: dict[str, Any] = {
            "data": args.data,
            "profile": profile,
            "images": len(samples),
            "shards": len(job.shards),
            "batch_size": settings.batch_size,
            "repeats": args.repeats,
            "machine": describe_machine(device),
            "model_load_s": load_s,
            "runs": {},
        }
        print(f"{len(samples)} images in {len(job.shards)} shard(s); {results['machine']['cores']} cores, torch threads {torch.get_num_threads()}, {device}")
        results["runs"].update(in_process(models, samples, settings.batch_size, ImageLimits.of(settings), device, args.repeats))
        del models
        if not args.paper_random:
            print(f"the Ray job on {RAY_JOB_COPIES} copies of the photos ...", flush=True)
            results["runs"]["ray_job"] = ray_job(config, samples, args.profile, work)
            results["pipeline"] = pipeline(config, samples, args.pipeline_images, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    runs = results["runs"]
    results["ratios"] = {"batched_over_per_image": runs["batched"]["images_per_s"] / runs["per_image"]["images_per_s"]}
    if "ray_job" in runs:
        # Start-up (Ray, the actors, their models) apart: the job's rate once up, against the loops, which load nothing.
        steady = runs["ray_job"]["steady_images_per_s"]
        results["ratios"]["ray_job_over_per_image"] = steady / runs["per_image"]["images_per_s"]
        results["ratios"]["ray_job_over_batched"] = steady / runs["batched"]["images_per_s"]
        results["ratios"]["ray_job_with_startup_over_batched"] = runs["ray_job"]["images_per_s"] / runs["batched"]["images_per_s"]
    print_tables(results)
    if "pipeline" in results:
        print_pipeline(results["pipeline"])
    write_results(args.out, "extract_paper_random.json" if args.paper_random else "extract.json", results)


if __name__ == "__main__":
    main()
