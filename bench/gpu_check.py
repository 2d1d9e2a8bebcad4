"""Ready for a GPU: the paper profile's sizes on one CUDA device, in one command of a few minutes.

    python bench/gpu_check.py [--out bench/results] [--checkpoints DIR] [--images 64] [--batch-sizes 1 8 32]
                              [--stage1-steps 20] [--stage2-steps 10] [--cpu-rehearsal]

Printed and written to ``<out>/gpu_check.json``, in this order:

1. extraction: the paper profile's four frozen models at paper size and random weights, in their
   upstream layouts (``lyrics/paper_random.py``, created once under ``--checkpoints``, default
   ``{root}/checkpoints/paper-random`` as `make rehearse` leaves them), loaded through the ``LYRICS_*_PATH``
   variables as `make extract` loads them. The sample photos, repeated to ``--images``, go through
   decode + preprocessing and CLIP, RAM++, Grounding-DINO and SAM-HQ in chunks of each batch size,
   as the job's stages run them (bench/extract.py's loop, one warm-up chunk first): images/s per
   stage and for the whole, and the peak GPU memory at each batch size. A batch size that runs out
   of memory is recorded as such and the check goes on.
2. fidelity: bf16 autocast (the extraction's default on a GPU) against float32 (TF32 off) for the
   tokens the cache keeps of CLIP and of SAM-HQ (both SAM-HQ passes on the same boxes), on one chunk:
   max |diff|, the largest |value|, and the cosine of each token pair (mean and min).
3. stage 1: ``--stage1-steps`` optimizer steps of the paper MQ-Former (its initial stage-1 model
   from the BLIP-2 layout checkpoint), the paper recipe's micro batch, bf16 autocast as the trainer's
   bf16-mixed, on batches of step 1's models' features: steps/s after one warm-up step.
4. stage 2: ``--stage2-steps`` steps of the Lyrics LVLM on that MQ-Former, with the projection and
   the paper recipe's LoRA on a random LLaMA of Vicuna-13B's shape in bf16 (built on the GPU,
   never written to disk), the rehearsal's Vicuna-layout tokenizer and prompt format, and the
   sample instruction set's conversations: steps/s, tokens per step, peak GPU memory.

Batches are built before the clock starts and sit on the device: how fast the cache feeds them is
bench/store.py's measurement. Without CUDA it says so and exits 0. ``--cpu-rehearsal`` runs the same
code on the tiny profile on the CPU (the tests' guard that this script keeps working without a GPU).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import itertools
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lyrics.data.instructions import image_key, read_jsonl
from lyrics.data.webdataset import WebSample
from lyrics.extract.checkpoints import component_spec
from lyrics.extract.images import ImageLimits, decode_image
from lyrics.extract.refiner import FrozenModels, new_chunk, run_stage, select_images
from lyrics.model.factory import build_stage1_model
from lyrics.model.llm import load_llm
from lyrics.model.tokenizer import TokenIds
from lyrics.train.cache_data import PretrainCollate
from lyrics.train.finetune import FinetunePlan, assemble_lvlm
from lyrics.train.pretrain_text import TextSettings

from lyrics.config import PipelinesConfig, load_config

_spec = importlib.util.spec_from_file_location("bench_finetune", Path(__file__).with_name("finetune.py"))
bench_finetune = sys.modules["bench_finetune"] = importlib.util.module_from_spec(_spec)  # bench/ is no package
_spec.loader.exec_module(bench_finetune)  # loads bench/train.py and bench/extract.py too
bench_train, bench_extract = bench_finetune.bench_train, bench_finetune.bench_extract
GIB = 2**30
BATCHES_PER_STAGE = 2  # distinct batches the training steps cycle through


# --- the device ------------------------------------------------------------------------------------------
def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextmanager
def exact_float32() -> Iterator[None]:
    """float32 as float32: no TF32 in matmuls or convolutions (cuDNN allows it by default)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@contextmanager
def clock(seconds: dict[str, float], name: str) -> Iterator[None]:
    """Adds the block's wall time to ``seconds[name]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start


# --- setup -------------------------------------------------------------------------------------------------
def paper_config(args: argparse.Namespace) -> tuple[PipelinesConfig, Path]:
    """The paper-size random checkpoints (created where missing), and the config that points the paper profile at them."""
    from lyrics.paper_random import (
        checkpoint_environment,
        paper_random_folder,
        write_paper_checkpoints,
    )
    from lyrics.rehearse import llm_corpus

    config = load_config(args.config)
    bench_extract.plan_job(config, "sample", "tiny")  # builds the embedded sample when missing: the LLM's corpus reads it
    folder = args.checkpoints or paper_random_folder(config)
    print(f"paper-size checkpoints at random weights, in their upstream layouts: {folder}", flush=True)
    bench_extract.timed("ready", lambda: write_paper_checkpoints(folder, llm_corpus(config)))
    os.environ.update(checkpoint_environment(folder))  # as a user points `make extract` at downloaded checkpoints
    return load_config(args.config), folder


def sample_photos(config: PipelinesConfig, profile: str) -> list[WebSample]:
    return [s for shard in bench_extract.plan_job(config, "sample", profile).shards for s in shard.samples() if isinstance(s, WebSample)]


def repeated(items: list[Any], count: int) -> list[Any]:
    return list(itertools.islice(itertools.cycle(items), count))


def with_conversations(config: PipelinesConfig, images: list[WebSample], count: int) -> list[tuple[WebSample, tuple[tuple[str, str], ...]]]:
    """``count`` (image, its first conversation in the sample instruction set), cycling through the images that have one."""
    first: dict[str, tuple[tuple[str, str], ...]] = {}
    for example in read_jsonl(config.path(config.instructions["sample"].instructions)):
        if example.image is not None:
            first.setdefault(example.image, example.turns)
    talked_about = [(s, first[image_key(s.meta)]) for s in images if image_key(s.meta) in first]
    if not talked_about:
        raise SystemExit("error: the sample instruction set has no conversation about the sample's photos")
    return repeated(talked_about, count)


# --- 1. extraction -----------------------------------------------------------------------------------------
def extraction(models: FrozenModels, images: list[WebSample], batch_sizes: list[int], device: torch.device) -> dict[str, Any]:
    samples = [bench_extract.Sample("gpu-check", str(i), s.image_bytes) for i, s in enumerate(images)]  # one shard: chunks fill up
    limits = ImageLimits.of(models.settings)
    results: dict[str, Any] = {}
    for size in batch_sizes:
        print(f"extraction, batch {size}: {len(samples)} images after a warm-up chunk ...", flush=True)
        try:
            bench_extract.run_loop(models, samples[:size], size, limits, device)  # warm-up: kernels chosen, memory pooled
            reset_peak_memory(device)
            loop = bench_extract.run_loop(models, samples, size, limits, device)
        except torch.OutOfMemoryError as e:
            results[str(size)] = {"error": f"out of memory: {str(e).splitlines()[0]}"}
            free(device)
            continue
        results[str(size)] = {**loop.as_dict(), "peak_gpu_memory_gib": peak_memory_gib(device)}
    return results


# --- 2. bf16 against float32 --------------------------------------------------------------------------------
def token_agreement(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """(T, D) token pairs: float32 reference against bf16."""
    a, b = torch.from_numpy(reference).double(), torch.from_numpy(other).double()
    cosine = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    return {"tokens": len(a), "max_abs_diff": float((a - b).abs().max()), "max_abs_value": float(a.abs().max()),
            "cosine_mean": float(cosine.mean()), "cosine_min": float(cosine.min())}  # fmt: skip


def bf16_agreement(models: FrozenModels, images: list[WebSample]) -> dict[str, Any]:
    """CLIP's tokens, and SAM-HQ's object tokens of the same boxes, with the image encoders in float32 and in bf16."""
    decoded = [decode_image(s.image_bytes, ImageLimits.of(models.settings)) for s in images]
    chunk = new_chunk([models.preprocess(image) for image in decoded], [image.size for image in decoded])
    everything = list(range(len(decoded)))
    outputs: dict[str, dict[bool, np.ndarray]] = {"clip": {}, "sam": {}}
    for name in ("ram", "gdino"):  # the boxes SAM-HQ is prompted with, once for both passes
        chunk = run_stage(name, getattr(models, name), chunk, models.settings)
    try:
        for bf16 in (False, True):
            models.clip.bf16 = models.sam.bf16 = bf16
            with nullcontext() if bf16 else exact_float32():
                outputs["clip"][bf16] = run_stage("clip", models.clip, select_images(chunk, everything), models.settings)["vit_tokens"]
                sam = run_stage("sam", models.sam, select_images(chunk, everything), models.settings)
            outputs["sam"][bf16] = sam["sam_tokens"][sam["sam_mask"]]  # the valid objects only
    finally:
        models.clip.bf16 = models.sam.bf16 = None
    clip = {k: v.reshape(-1, v.shape[-1]) for k, v in outputs["clip"].items()}
    result = {"images": len(decoded), "clip": token_agreement(clip[False], clip[True])}
    sam = outputs["sam"]
    result["sam"] = token_agreement(sam[False], sam[True]) if len(sam[False]) else {"tokens": 0, "note": "no boxes: no SAM-HQ objects to compare"}
    return result


# --- 3 and 4. training steps --------------------------------------------------------------------------------
def timed_steps(runner: Callable[[Any], None], batches: list[Any], steps: int, device: torch.device) -> dict[str, Any]:
    """One warm-up step, then ``steps`` timed (each ends when its loss reaches the host)."""
    runner(batches[0])
    reset_peak_memory(device)
    start = time.perf_counter()
    for batch in itertools.islice(itertools.cycle(batches), steps):
        runner(batch)
    seconds = time.perf_counter() - start
    return {"steps": steps, "seconds": seconds, "steps_per_s": steps / seconds, "last_loss": runner.losses[-1], "peak_gpu_memory_gib": peak_memory_gib(device)}


def batches_of(models: FrozenModels, images: list[WebSample], size: int, collate: Callable[[list[dict[str, Any]]], Any], device: torch.device) -> list[Any]:
    """BATCHES_PER_STAGE batches of ``size`` images through the frozen models and ``collate``, on ``device``."""
    phases = dict.fromkeys(bench_train.ONLINE_PHASES, 0.0)
    groups = [images[i * size : (i + 1) * size] for i in range(BATCHES_PER_STAGE)]
    top_q = models.settings.storage.top_q
    return [move_data_to_device(bench_train.online_batch(models, group, collate, top_q, phases), device) for group in groups]


def trained_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def paper_shaped_llm(llm: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """A random LLaMA of Vicuna-13B's shape (and 32,000-token vocabulary, in which the rehearsal tokenizer's ids
    all fall) in bf16, built on ``device``, with the rehearsal LLM's special token ids and generation settings."""
    from transformers import AutoModelForCausalLM

    from lyrics.paper_random import VICUNA_13B_SHAPE

    config = llm.config.__class__.from_dict({**llm.config.to_dict(), **VICUNA_13B_SHAPE})
    torch.manual_seed(0)
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.generation_config = llm.generation_config
    return model.eval()


# --- report ------------------------------------------------------------------------------------------------
def print_report(r: dict[str, Any]) -> None:
    m = r["machine"]
    print(f"\n{r['profile']} on {m['device_name']} ({m['device']}), torch {m['torch']}")
    print(f"\nextraction, {r['extraction_images']} images: images/s by stage")
    stages = bench_extract.PHASES
    print(f"{'batch':>6}" + "".join(f"{name:>19}" for name in stages) + f"{'whole':>9}{'peak GPU GiB':>14}")
    for size, run in r["extraction"].items():
        if "error" in run:
            print(f"{size:>6}  {run['error']}")
            continue
        speeds = [run["stage_images_per_s"][name] for name in stages]
        peak = run["peak_gpu_memory_gib"]
        print(f"{size:>6}" + "".join(f"{s:>19.1f}" if s else f"{'-':>19}" for s in speeds) + f"{run['images_per_s']:>9.2f}" + (f"{peak:>14.1f}" if peak is not None else f"{'-':>14}"))
    a = r["bf16_vs_fp32"]
    print(f"\nbf16 autocast vs float32, {a['images']} images")
    for name in ("clip", "sam"):
        x = a[name]
        if "cosine_mean" in x:
            print(f"  {name}: {x['tokens']} tokens, max |diff| {x['max_abs_diff']:.4g} (largest |value| {x['max_abs_value']:.4g}), cosine mean {x['cosine_mean']:.6f}, min {x['cosine_min']:.6f}")
        else:
            print(f"  {name}: {x['note']}")
    for stage in ("stage1", "stage2"):
        s = r[stage]
        if "error" in s:
            print(f"{stage}: {s['error']}")
            continue
        peak = f", peak GPU {s['peak_gpu_memory_gib']:.1f} GiB" if s["peak_gpu_memory_gib"] is not None else ""
        extra = f", {s['tokens_per_step']} LLM tokens per step, LLM {s['llm_parameters'] / 1e9:.2f} B parameters" if stage == "stage2" else ""
        print(f"{stage}: {s['steps']} steps of batch {s['batch']}: {s['steps_per_s']:.2f} steps/s, {s['trained_parameters'] / 1e6:.1f} M trained parameters{extra}{peak}, last loss {s['last_loss']:.3f}")
    print("\nparts (s): " + ", ".join(f"{k} {v:.0f}" for k, v in r["part_seconds"].items()) + f"; whole check {r['seconds']:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--config", type=Path, help="pipelines file (default: the repository's pipelines.yaml)")
    parser.add_argument("--checkpoints", type=Path, help="folder of the paper-size random checkpoints (default: {root}/checkpoints/paper-random)")
    parser.add_argument("--images", type=int, default=64, help="images per extraction pass (the sample's photos, repeated)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--stage1-steps", type=int, default=20)
    parser.add_argument("--stage2-steps", type=int, default=10)
    parser.add_argument("--cpu-rehearsal", action="store_true", help="the same code on the tiny profile on the CPU (for the tests)")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.cpu_rehearsal:
        print("gpu_check: no CUDA device here; this check measures a GPU. Nothing run.")
        return
    start = time.perf_counter()
    bench_extract.quiet_libraries()
    device = torch.device("cpu" if args.cpu_rehearsal else "cuda")
    torch.set_num_threads(bench_extract.machine_cores())
    parts: dict[str, float] = {}

    if args.cpu_rehearsal:
        profile, config, folder = "tiny", load_config(args.config), None
    else:
        with clock(parts, "checkpoints"):
            profile, (config, folder) = "paper", paper_config(args)
    photos = sample_photos(config, profile)
    images = repeated(photos, max(args.images, *args.batch_sizes))
    with clock(parts, "load frozen models"):
        models = FrozenModels.load(config, profile, str(device))
    results: dict[str, Any] = {
        "profile": profile + (" (random weights)" if folder else " (CPU rehearsal of this check)"), "checkpoints": str(folder) if folder else None,
        "machine": bench_extract.describe_machine(device), "extraction_images": len(images),
    }  # fmt: skip
    with clock(parts, "extraction"):
        results["extraction"] = extraction(models, images, args.batch_sizes, device)
    print("bf16 vs float32 ...", flush=True)
    with clock(parts, "bf16 vs fp32"):
        results["bf16_vs_fp32"] = bf16_agreement(models, images[: min(8, len(images))])

    pretrain = config.training.pretrain
    recipe = pretrain.recipes[profile]
    init = build_stage1_model(config, profile, seed=recipe.seed)
    collate = PretrainCollate(init.tokenizer, TextSettings(recipe.max_spatial_tokens, recipe.max_caption_tokens, pretrain.spatial_representation))
    print(f"stage 1: {args.stage1_steps} steps of batch {recipe.micro_batch} ...", flush=True)
    stage1_images = repeated(photos, BATCHES_PER_STAGE * recipe.micro_batch)
    batches = batches_of(models, stage1_images, recipe.micro_batch, collate, device)
    runner = bench_train.StepRunner(init.model, TokenIds.of(init.tokenizer), recipe, pretrain.msp_probability, device)
    with clock(parts, "stage 1"):
        steps = timed_steps(runner, batches, args.stage1_steps, device)
    results["stage1"] = {"batch": recipe.micro_batch, "trained_parameters": trained_parameters(init.model), **steps}

    plan = FinetunePlan.make(config, profile, from_scratch=True)  # the recipe and prompt settings; no run folder is made
    size = plan.recipe.micro_batch
    stage2_images, turns = zip(*with_conversations(config, photos, BATCHES_PER_STAGE * size))
    llm, llm_tokenizer = load_llm(component_spec(config, profile, "llm"))
    if profile == "paper":  # the rehearsal LLM's tokenizer and prompt format, Vicuna-13B's compute
        with clock(parts, "build 13B LLM"):
            llm = paper_shaped_llm(llm, device)
    model, encoder, _ = assemble_lvlm(plan, init.model.mqformer, init.tokenizer, True, llm, llm_tokenizer)
    print(f"stage 2: {args.stage2_steps} steps of batch {size} ...", flush=True)
    collate = bench_finetune.TurnsEncoder(encoder, iter([list(turns[i : i + size]) for i in range(0, len(turns), size)]))
    batches = batches_of(models, list(stage2_images), size, collate, device)
    del models, runner
    free(device)
    try:
        runner = bench_finetune.StepRunner(model, plan.recipe, device)
        with clock(parts, "stage 2"):
            steps = timed_steps(runner, batches, args.stage2_steps, device)
        tokens = sum(int(b.attention_mask.sum()) for b in batches) / len(batches)
        results["stage2"] = {"batch": size, "tokens_per_step": tokens, "trained_parameters": trained_parameters(model),
                             "llm_parameters": sum(p.numel() for p in model.llm.parameters()), **steps}  # fmt: skip
    except torch.OutOfMemoryError as e:
        results["stage2"] = {"error": f"out of memory: {str(e).splitlines()[0]}"}
    results["part_seconds"] = parts
    results["seconds"] = time.perf_counter() - start
    print_report(results)
    bench_extract.write_results(args.out, "gpu_check.json", results)


if __name__ == "__main__":
    main()
