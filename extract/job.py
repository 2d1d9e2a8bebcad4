"""Phase 1 as a Ray Data job: input shards -> decode + preprocess (CPU actors) -> CLIP, RAM++,
Grounding-DINO, SAM-HQ (one actor pool each, batched) -> cache shards written through ``store``.

The unit of work is a *chunk*: up to ``batch_size`` images of one input shard. Chunks never span
shards, so a shard's content does not depend on what else runs, and a resumed job (committed
shards are skipped, partial ones redone) writes exactly what an uninterrupted one writes. The
driver receives chunks in order and commits each cache shard when its last chunk arrives.
``ray.init()`` starts Ray locally, or joins the cluster named by ``RAY_ADDRESS``, unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lyrics.config import ConfigError, ExtractionConfig, PipelinesConfig
from lyrics.data.errors import DataFormatError
from lyrics.data.image_folder import FolderShard, folder_shards
from lyrics.data.webdataset import InputSkip, TarShard, WebSample, expand_shards
from lyrics.extract.cache_location import STAGES, cache_schema, default_cache_root, extraction_settings, fingerprints, storage_options
from lyrics.extract.checkpoints import component_spec
from lyrics.extract.images import ImageLimits, ImageRejected, decode_image
from lyrics.extract.refiner import Chunk, ensure_checkpoints, load_stage, merge_images, new_chunk, preprocessors, run_stage, select_images
from lyrics.store import CacheIdentity, CacheWriter, Manifest, check_resumable, committed_shards, sample_id


InputShard = TarShard | FolderShard  # each becomes the cache shard of the same name
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractJob:
    """Everything one run needs, resolved and checked before any work starts."""

    config: PipelinesConfig
    dataset: str
    profile: str
    shards: tuple[InputShard, ...]
    cache_root: Path

    @classmethod
    def plan(cls, config: PipelinesConfig, dataset: str, profile: str | None = None, cache_root: Path | None = None) -> ExtractJob:
        profile = profile or config.extraction.profile
        config.profile(profile)  # unknown profile: refused now, naming the file
        missing = []
        for name in STAGES:
            try:
                component_spec(config, profile, name).check_available()
            except FileNotFoundError as e:
                missing.append(str(e))
        if missing:
            raise ConfigError(f"{config.source}: profile {profile!r}: " + "\n  ".join(["checkpoints missing:", *missing]))
        shards = input_shards(config, dataset)
        ensure_checkpoints(config, profile)
        return cls(config, dataset, profile, shards, cache_root or default_cache_root(config, dataset, profile))


def input_shards(config: PipelinesConfig, dataset: str) -> tuple[InputShard, ...]:
    """The data set's tars, or its image folder cut into shards; missing inputs are a ConfigError saying where they come from."""
    source = config.dataset(dataset)
    path = config.path(source.path)
    try:
        if source.format == "folder":
            captions = config.path(source.captions) if source.captions else None
            return tuple(folder_shards(path, source.key, captions))
        return tuple(TarShard(shard) for shard in expand_shards(path))
    except DataFormatError as e:
        raise ConfigError(
            f"{config.source}: dataset {dataset!r}: its {source.format} input is not usable ({e}).\n"
            f"  Looked at: {path}\n  It is produced by: {source.produced_by}"
        ) from None


# --- stage 1: read, decode once, preprocess for every model (CPU tasks) -----------------------------
class DecodeStage:
    """Turns one input shard into chunks of preprocessed images; every input is a row or a skip."""

    def __init__(self, config: PipelinesConfig, profile: str, dataset: str, shards: tuple[InputShard, ...]) -> None:
        self.shards = shards
        self.preprocessors = preprocessors(config, profile)
        self.limits = ImageLimits.of(config.extraction)
        self.batch_size = config.extraction.batch_size
        self.dataset = dataset

    def __call__(self, item: dict[str, Any]) -> Iterator[dict[str, Any]]:
        shard = self.shards[item["shard"]]
        name = shard.name
        samples, skips, inputs = [], [], 0
        chunks: list[list[dict[str, Any]]] = []
        for sample in shard.samples():
            inputs += 1
            uid = sample_id(self.dataset, name, sample.key)
            if isinstance(sample, InputSkip):
                skips.append({"id": uid, "file": sample.file, "reason": sample.reason})
                continue
            try:
                member = self._prepare(sample)
            except ImageRejected as e:
                skips.append({"id": uid, "file": f"{sample.shard}:{sample.key}", "reason": str(e)})
                continue
            samples.append({"id": uid, "key": sample.key, "file": sample.shard, "caption": sample.caption, "meta": sample.meta, **member})
            if len(samples) == self.batch_size:
                chunks.append(samples)
                samples = []
        if samples or not chunks:
            chunks.append(samples)
        for index, members in enumerate(chunks):
            last = index == len(chunks) - 1
            record = {"shard": name, "source": shard.source, "chunk": index, "last": last, "rows": [_row_fields(m) for m in members]}
            # The shard's totals travel with its last chunk: the writer checks rows + skips = inputs.
            record["skips"], record["inputs"] = (skips, inputs) if last else ([], 0)
            if members:
                record.update(new_chunk([m["pixels"] for m in members], [m["size"] for m in members]))
            yield {"record": record}

    def _prepare(self, sample: WebSample) -> dict[str, Any]:
        """The upright image's size and every model's input; a model's preprocessing that fails is a skip."""
        image = decode_image(sample.image_bytes, self.limits)
        pixels = {}
        for model, prepare in self.preprocessors.items():
            try:
                pixels[model] = prepare(image)
            except Exception as e:  # noqa: BLE001 - one image's failure is that image's skip
                raise ImageRejected("preprocess_failed", f"{model}: {type(e).__name__}: {e}") from None
        return {"size": image.size, "pixels": pixels}


def _row_fields(member: dict[str, Any]) -> dict[str, Any]:
    width, height = member["size"]
    return {"id": member["id"], "key": member["key"], "file": member["file"], "caption": member["caption"], "meta": member["meta"], "width": width, "height": height}


# --- stage 2: one frozen model per actor pool ---------------------------------------------------------
class ModelStage:
    def __init__(self, config: PipelinesConfig, profile: str, name: str) -> None:
        import torch

        if not torch.cuda.is_available():
            # The actors share the CPU: one thread each, or their threads spin-wait on each other.
            torch.set_num_threads(1)
        self.name, self.settings = name, config.extraction
        self.model = load_stage(config, profile, name)

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        record: Chunk = item["record"]
        if record["rows"]:
            record = run_stage_skipping_failures(self.name, self.model, record, self.settings)
        return {"record": record}


def run_stage_skipping_failures(name: str, model: Any, record: Chunk, settings: ExtractionConfig) -> Chunk:
    """``run_stage`` on the chunk; if it fails, image by image, so that only the images it fails on
    become skips (``model_failed: <stage>: <error>``) and the others go on."""
    try:
        return run_stage(name, model, dict(record), settings)  # a copy: run_stage pops its inputs
    except Exception:  # noqa: BLE001 - find the image(s) at fault below
        if len(record["rows"]) == 1:
            raise
    done, failed = [], []
    for index in range(len(record["rows"])):
        single = select_images(record, [index])
        try:
            done.append(run_stage(name, model, single, settings))
        except Exception as e:  # noqa: BLE001 - this image's skip, not the job's end
            row = record["rows"][index]
            log.warning("%s failed on %s: %s: %s", name, row["id"], type(e).__name__, e)
            failed.append({"id": row["id"], "file": f"{row['file']}:{row['key']}", "reason": f"model_failed: {name}: {type(e).__name__}: {e}"})
    merged = merge_images(record, done)
    merged["skips"] = record["skips"] + failed
    return merged


# --- stage 3: rows for the store, written by the driver -----------------------------------------------
def store_rows(dataset: str, record: Chunk) -> list[dict[str, Any]]:
    rows = []
    for i, r in enumerate(record["rows"]):
        rows.append(
            {
                "id": r["id"],
                "dataset": dataset,
                "shard": record["shard"],
                "key": r["key"],
                "caption": r["caption"],
                "width": r["width"],
                "height": r["height"],
                "tags": record["tags"][i],
                "tag_scores": [float(s) for s in record["tag_scores"][i]],
                "boxes": record["boxes"][i].tolist(),
                "box_labels": record["box_labels"][i],
                "box_scores": record["box_scores"][i].tolist(),
                "spatial_text": record["spatial_text"][i],
                "source": json.dumps({"file": r["file"], **(r["meta"] or {})}, sort_keys=True),
            }
        )
    return rows


TENSOR_KEYS = ("vit_tokens", "gdino_tokens", "gdino_scores", "sam_tokens", "sam_mask", "sam_masks")


def run(job: ExtractJob, progress: bool = True) -> Manifest:
    """Extract every shard not yet committed, then finalize the manifest."""
    config = job.config
    schema = cache_schema(config, job.profile)
    identity = CacheIdentity(schema, storage_options(config), extraction_settings(config, job.profile), fingerprints(config, job.profile))
    check_resumable(job.cache_root, identity)
    done = committed_shards(job.cache_root)
    todo = [i for i, s in enumerate(job.shards) if s.name not in done]
    if todo:
        connect_ray()  # before the cache root exists: a failed connection leaves nothing behind
    writer = CacheWriter(job.cache_root, identity)
    if todo:
        _run_ray(job, writer, todo, progress)
    return writer.finalize(extra=_summary(writer, job))


class RayConnectionError(ConfigError):
    """The Ray cluster named by RAY_ADDRESS cannot be joined: a setting of the environment (address, auth mode) to fix."""


def connect_ray() -> None:
    """``ray.init()``: a local Ray, or the cluster at ``RAY_ADDRESS``.

    Ray 2.60 turns token authentication on when it finds a token (``~/.ray/auth_token``, which the
    first local Ray writes): a head started on such a machine refuses clients that do not send it.
    So with a token here and ``RAY_AUTH_MODE`` unset, this job joins in token mode (a cluster
    without authentication accepts that too). The address is probed first: Ray itself retries an
    unreachable one for minutes.
    """
    address = os.environ.get("RAY_ADDRESS")
    if address and address not in ("auto", "local") and not address.startswith("ray://"):
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=10).close()
        except (OSError, ValueError) as e:
            raise RayConnectionError(f"RAY_ADDRESS={address}: no Ray head answers there ({e}); start it with `ray start --head`") from None
        if "RAY_AUTH_MODE" not in os.environ and _ray_token_available():
            os.environ["RAY_AUTH_MODE"] = "token"  # before `import ray`: Ray reads it once, at import
    import ray  # imported here: `import ray` costs seconds that planning and errors should not pay

    # Local Ray says, as a warning, that it turned token authentication on: nothing for the user to do.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    try:
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, include_dashboard=False, logging_level=logging.WARNING)
    except Exception as e:  # noqa: BLE001 - Ray raises several types (AuthenticationError, ConnectionError, ...)
        mode = os.environ.get("RAY_AUTH_MODE", "<unset>")
        raise RayConnectionError(
            f"RAY_ADDRESS={address or '<local>'}: could not join the Ray cluster ({type(e).__name__}: {str(e).splitlines()[0][:300]}).\n"
            f"  RAY_AUTH_MODE here is {mode}: with token authentication this machine needs the head's token "
            "(~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH); on a trusted network set RAY_AUTH_MODE=disabled "
            "on the head, every node and this job"
        ) from None


def _ray_token_available() -> bool:
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token"
    return bool(os.environ.get("RAY_AUTH_TOKEN")) or Path(path).is_file()


def _run_ray(job: ExtractJob, writer: CacheWriter, todo: list[int], progress: bool) -> None:
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # our bar reports progress; keep Ray's plan logs in its files
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled": ours replace them
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # chunks arrive in shard order: commit as we go
    context.enable_progress_bars = False  # our own bar counts rows, rows/s and skips
    context.issue_detectors_config.detectors = []  # memory advice meant for long-running clusters
    settings = job.config.extraction
    resources = ray.cluster_resources()
    actors = fit_actors_to_memory(job, {name: settings.actors.get(name, 1) for name in STAGES})
    # Every actor must fit at once or the pipeline waits forever: share the CPUs (and GPUs) out.
    cpus = min(1.0, resources.get("CPU", 1) / (settings.decode_workers + sum(actors.values())))
    gpus = min(1.0, resources.get("GPU", 0) / sum(actors.values()))
    args = (job.config, job.profile)
    ds = ray.data.from_items([{"shard": i} for i in todo]).flat_map(
        DecodeStage, fn_constructor_args=(*args, job.dataset, job.shards), compute=ray.data.ActorPoolStrategy(size=settings.decode_workers), num_cpus=cpus
    )
    for name in STAGES:
        pool = ray.data.ActorPoolStrategy(size=actors[name])
        ds = ds.map(ModelStage, fn_constructor_args=(*args, name), compute=pool, num_cpus=cpus, num_gpus=gpus)
    counts: Counter[str] = Counter()
    start = time.perf_counter()
    bar = tqdm(total=None, unit="row", desc=f"extract {job.dataset}", disable=not progress)
    shard_writer = None
    for item in ds.iter_rows():
        record = item["record"]
        if shard_writer is None:
            shard_writer = writer.open_shard(record["shard"], record["source"])
        if record["rows"]:
            shard_writer.add_batch(store_rows(job.dataset, record), {k: record[k] for k in TENSOR_KEYS})
        if os.environ.get("LYRICS_EXTRACT_KILL_AT") == f"{record['shard']}:{record['chunk']}":
            os.kill(os.getpid(), signal.SIGKILL)  # fault injection for the resume test: die mid-shard
        for skip in record["skips"]:
            shard_writer.skip(**skip)
        counts["rows"] += len(record["rows"])
        counts["skipped"] += len(record["skips"])
        bar.update(len(record["rows"]))
        bar.set_postfix(rows_per_s=f"{counts['rows'] / (time.perf_counter() - start):.2f}", skipped=counts["skipped"])
        if record["last"]:
            shard_writer.commit(inputs=record["inputs"])
            shard_writer = None
    bar.close()


def fit_actors_to_memory(job: ExtractJob, actors: dict[str, int]) -> dict[str, int]:
    """Fewer actors of the heaviest models when they would not fit side by side in this machine's
    memory (every actor of every stage lives at once), and a line saying so.

    A model actor is estimated at twice its checkpoint on disk plus 0.5 GiB (weights, activations,
    the worker); SAM-HQ ViT-H, 2.6 GB on disk, took about 6.5 GB per image on a CPU. The limit is
    80 % of the memory available now (of the GPU instead, when this process sees one).
    """
    import psutil
    import torch

    estimate = {name: 2 * _size_on_disk(component_spec(job.config, job.profile, name).checkpoint) + 2**29 for name in STAGES}
    if torch.cuda.is_available():
        available, where = torch.cuda.mem_get_info()[0], "GPU"
    else:
        available, where = psutil.virtual_memory().available, "RAM"
    limit = 0.8 * available
    fitted = dict(actors)
    while sum(fitted[n] * estimate[n] for n in STAGES) > limit and any(fitted[n] > 1 for n in STAGES):
        heaviest = max((n for n in STAGES if fitted[n] > 1), key=lambda n: estimate[n])
        fitted[heaviest] -= 1
    need = sum(fitted[n] * estimate[n] for n in STAGES)
    if fitted != actors or need > limit:
        changes = ", ".join(f"{n} {actors[n]} -> {fitted[n]}" for n in STAGES if fitted[n] != actors[n]) or "no actor to spare"
        print(f"memory: {available / 2**30:.1f} GiB of {where} available, the frozen models need about {need / 2**30:.1f} GiB side by side: "
              f"actors {changes}{'' if need <= limit else '; it may still not fit'}", flush=True)  # fmt: skip
    return fitted


def _size_on_disk(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size if path.exists() else 0


def _summary(writer: CacheWriter, job: ExtractJob) -> dict[str, Any]:
    """Counts for the manifest: every input is a row or a skip; rows without a caption are listed."""
    rows = writer.committed_rows(["id", "caption"])
    missing = [uid for uid, caption in zip(rows.column("id").to_pylist(), rows.column("caption").to_pylist()) if not caption]
    return {"dataset": job.dataset, "profile": job.profile, "input_shards": [s.source for s in job.shards], "missing_caption": missing}
