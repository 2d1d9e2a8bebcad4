"""Phase 1 as a Ray Data job, one row per *part* (up to ``part_size`` consecutive inputs of one input shard):

    read (reader actors, a shard each) -> decode + resize to uint8 (CPU actors) -> CLIP -> RAM++ -> Grounding-DINO
    -> SAM-HQ (``model_actors``: by default each actor holds all four; each model normalises its inputs
    and runs batches of ``batch_size``) -> write (writer actors) -> counts to the driver

Each part becomes one cache shard (``00042.0003``), written and committed atomically by the worker
that holds its features; the driver receives counts only and finalises the manifest. A part's
content depends on its input bytes and the settings alone, never on its neighbours or on
scheduling, so a resumed job (committed parts are read past, partial ones redone) writes exactly
what an uninterrupted one writes. ``ray.init()`` starts Ray locally, or joins the cluster named by
``RAY_ADDRESS``; the cache root must be a path every node can write (a shared file system).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lyrics.config import ConfigError, ExtractionConfig, PipelinesConfig
from lyrics.data.errors import DataFormatError
from lyrics.data.image_folder import folder_shards
from lyrics.data.webdataset import InputSkip, TarShard, WebSample, expand_shards
from lyrics.extract.cache_location import STAGES, cache_schema, default_cache_root, extraction_settings, fingerprints, storage_options
from lyrics.extract.checkpoints import component_spec
from lyrics.extract.images import ImageLimits, ImageRejected, decode_image
from lyrics.extract.null_model import NullModel
from lyrics.extract.parts import Chunk, InputShard, ReadStage, WriteStage, complete_input_shards, size_on_disk
from lyrics.extract.ray_notice import spend_actor_restart_notice
from lyrics.extract.refiner import ensure_checkpoints, load_stage, merge_images, preprocessors, run_stage, select_images, stack_pixels
from lyrics.store import CacheIdentity, CacheWriter, Manifest, check_resumable, sample_id

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


# --- stage 2: decode once, resize for every model (CPU actors) ------------------------------------------
class DecodeStage:
    """Decodes a part's images and resizes each for every model, as uint8: what crosses the object
    store is what the models need, about a fifth of the bytes of their float inputs. Every input is a row
    or a skip."""

    def __init__(self, config: PipelinesConfig, profile: str, dataset: str) -> None:
        self.preprocessors = preprocessors(config, profile)
        self.limits = ImageLimits.of(config.extraction)
        self.dataset = dataset

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        return {"record": self.decode(item["record"])}

    def decode(self, part: Chunk) -> Chunk:
        """The part with its rows, skips and each model's resized images (``<model>_images``)."""
        record = dict(part)
        inputs = record.pop("inputs")
        rows, skips, images = [], [], []
        for sample in inputs:
            uid = sample_id(self.dataset, record["shard"], sample.key)
            if isinstance(sample, InputSkip):
                skips.append({"id": uid, "file": sample.file, "reason": sample.reason})
                continue
            try:
                images.append(self._resize(sample))
            except ImageRejected as e:
                skips.append({"id": uid, "file": f"{sample.shard}:{sample.key}", "reason": str(e)})
                continue
            width, height = images[-1].pop("size")
            rows.append({"id": uid, "key": sample.key, "file": sample.shard, "caption": sample.caption, "meta": sample.meta, "width": width, "height": height})
        record.update(inputs=len(inputs), rows=rows, skips=skips, sizes=[(r["width"], r["height"]) for r in rows])
        for name in STAGES:
            record[f"{name}_images"] = [image[name] for image in images]
        return record

    def _resize(self, sample: WebSample) -> dict[str, Any]:
        """The upright image's size and every model's resized input; a model's preprocessing that fails is a skip."""
        image = decode_image(sample.image_bytes, self.limits)
        resized: dict[str, Any] = {"size": image.size}
        for model, prepare in self.preprocessors.items():
            try:
                resized[model] = prepare.resize(image)
            except Exception as e:  # noqa: BLE001 - one image's failure is that image's skip
                raise ImageRejected("preprocess_failed", f"{model}: {type(e).__name__}: {e}") from None
        return resized


# --- stage 3: the frozen models, in actors that may hold several (``model_actors``) ------------------------
class ModelStage:
    """Runs its models, in pipeline order, over each part. Models sharing an actor share its GPU: one
    GPU running all four is never idle behind another model's pool, and a part's images cross the
    object store once on the way in and its features once on the way out."""

    def __init__(self, config: PipelinesConfig, profile: str, names: tuple[str, ...], null: bool = False) -> None:
        import torch

        if not torch.cuda.is_available():
            # The actors share the CPU: one thread each, or their threads spin-wait on each other.
            torch.set_num_threads(1)
        self.settings = config.extraction
        # null: outputs of the cache's shapes at once, no model (bench/extract.py times the pipeline alone)
        schema = cache_schema(config, profile)
        self.models = {name: NullModel(name, schema) if null else load_stage(config, profile, name) for name in names}

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        record = item["record"]
        for name, model in self.models.items():
            record = run_model_on_part(name, model, record, self.settings)
        return {"record": record}


def run_model_on_part(name: str, model: Any, record: Chunk, settings: ExtractionConfig) -> Chunk:
    """One frozen model over a part's images, ``batch_size`` at a time: its uint8 inputs normalised
    (``model.preprocess.normalize``), run, and the outputs merged; images it fails on become skips."""
    count = len(record["rows"])
    if not count:
        return record
    done, failed = [], []
    for start in range(0, count, settings.batch_size):
        batch = select_images(record, list(range(start, min(start + settings.batch_size, count))))
        images = batch.pop(f"{name}_images")
        if isinstance(model, NullModel):
            done.append(model(batch))
            continue
        batch[f"{name}_pixels"] = stack_pixels(name, [model.preprocess.normalize(image) for image in images])
        outputs, lost = run_stage_skipping_failures(name, model, batch, settings)
        done.append(outputs)
        failed += lost
    merged = merge_images(record, done)
    merged["skips"] = record["skips"] + failed
    return merged


def run_stage_skipping_failures(name: str, model: Any, batch: Chunk, settings: ExtractionConfig) -> tuple[Chunk, list[dict[str, str]]]:
    """``run_stage`` on the batch; if it fails, image by image, so that only the images it fails on
    become skips (``model_failed: <stage>: <error>``, returned beside the outputs) and the others go on."""
    try:
        return run_stage(name, model, dict(batch), settings), []  # a copy: run_stage pops its inputs
    except Exception:  # noqa: BLE001 - find the image(s) at fault below
        if len(batch["rows"]) == 1:
            raise
    done, failed = [], []
    for index in range(len(batch["rows"])):
        single = select_images(batch, [index])
        try:
            done.append(run_stage(name, model, single, settings))
        except Exception as e:  # noqa: BLE001 - this image's skip, not the job's end
            row = batch["rows"][index]
            log.warning("%s failed on %s: %s: %s", name, row["id"], type(e).__name__, e)
            failed.append({"id": row["id"], "file": f"{row['file']}:{row['key']}", "reason": f"model_failed: {name}: {type(e).__name__}: {e}"})
    return merge_images(batch, done), failed


# --- the run -------------------------------------------------------------------------------------------
@dataclass
class RunStats:
    """What the driver saw: every number is of this run (a resumed run counts only its own parts)."""

    parts: int = 0
    rows: int = 0
    skips: int = 0
    bytes_written: int = 0
    driver_tensor_bytes: int = 0  # bytes of arrays in what reached the driver: 0 by design
    seconds: float = 0.0
    first_part_seconds: float = 0.0  # until the first part was committed: workers starting, models loading
    rows_after_first: int = 0

    @property
    def steady_samples_per_s(self) -> float | None:
        """Rows per second after the first part, once every worker is up (None with one part)."""
        return self.rows_after_first / (self.seconds - self.first_part_seconds) if self.parts > 1 else None


def run(job: ExtractJob, progress: bool = True, null_models: bool = False) -> Manifest:
    """Extract every part not yet committed, then finalize the manifest."""
    return run_with_stats(job, progress, null_models)[0]


def run_with_stats(job: ExtractJob, progress: bool = True, null_models: bool = False) -> tuple[Manifest, RunStats]:
    config = job.config
    schema = cache_schema(config, job.profile)
    prints = dict.fromkeys(STAGES, "null model") if null_models else fingerprints(config, job.profile)
    identity = CacheIdentity(schema, storage_options(config), extraction_settings(config, job.profile), prints)
    check_resumable(job.cache_root, identity)
    done = complete_input_shards(job.cache_root)
    todo = [i for i, s in enumerate(job.shards) if s.name not in done]
    if todo:
        connect_ray()  # before the cache root exists: a failed connection leaves nothing behind
    writer = CacheWriter(job.cache_root, identity)
    stats = _run_ray(job, writer, todo, progress, null_models) if todo else RunStats()
    return writer.finalize(extra=_summary(writer, job)), stats


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
    spend_actor_restart_notice()


def _ray_token_available() -> bool:
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token"
    return bool(os.environ.get("RAY_AUTH_TOKEN")) or Path(path).is_file()


def _run_ray(job: ExtractJob, writer: CacheWriter, todo: list[int], progress: bool, null_models: bool) -> RunStats:
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # our bar reports progress; keep Ray's plan logs in its files
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled": ours replace them
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = False  # parts are independent: the driver only counts them
    context.enable_progress_bars = False  # our own bar counts rows, rows/s and skips
    context.issue_detectors_config.detectors = []  # memory advice meant for long-running clusters
    settings = job.config.extraction
    resources = ray.cluster_resources()
    groups = [(tuple(group.models), group.count) for group in settings.model_actors]
    if not null_models:
        groups = fit_actors_to_memory(job, groups)
    actors = sum(count for _, count in groups)
    # Every actor must fit at once or the pipeline waits forever: share the CPUs (and GPUs) out; readers
    # and writers, mostly waiting on files, take a quarter slot each.
    cpus = min(1.0, resources.get("CPU", 1) / (1.5 * settings.decode_workers + actors))
    light = cpus / 4
    gpus = 0 if null_models else min(1.0, resources.get("GPU", 0) / actors)
    args = (job.config, job.profile)
    read = (job.shards, settings.part_size, writer.shards_dir)
    # Readers and writers are actors too: their processes (light imports, extract/parts.py) start once,
    # and a reader is never fused into a decode actor, which would then decode a whole shard alone.
    pool = ray.data.ActorPoolStrategy(size=settings.decode_workers)
    ds = ray.data.from_items([{"shard": i} for i in todo]).flat_map(ReadStage, fn_constructor_args=read, compute=pool, num_cpus=light)
    ds = ds.map(DecodeStage, fn_constructor_args=(*args, job.dataset), compute=ray.data.ActorPoolStrategy(size=settings.decode_workers), num_cpus=cpus)
    for names, count in groups:
        pool = ray.data.ActorPoolStrategy(size=count)
        ds = ds.map(ModelStage, fn_constructor_args=(*args, names, null_models), compute=pool, num_cpus=cpus, num_gpus=gpus)
    kill_worker_at = os.environ.get("LYRICS_EXTRACT_KILL_WORKER_AT")
    write = (job.dataset, writer.shards_dir, writer.identity, kill_worker_at)
    ds = ds.map(WriteStage, fn_constructor_args=write, compute=ray.data.ActorPoolStrategy(size=settings.decode_workers), num_cpus=light)
    stats = RunStats()
    start = time.perf_counter()
    bar = tqdm(total=None, unit="row", desc=f"extract {job.dataset}", disable=not progress)
    for item in ds.iter_rows():
        stats.driver_tensor_bytes += _array_bytes(item)
        written = item["written"]
        if os.environ.get("LYRICS_EXTRACT_KILL_AT") == written["name"]:
            os.kill(os.getpid(), signal.SIGKILL)  # fault injection for the resume test: the driver dies mid-run
        stats.parts += 1
        if stats.parts == 1:
            stats.first_part_seconds = time.perf_counter() - start
        else:
            stats.rows_after_first += written["rows"]
        stats.rows += written["rows"]
        stats.skips += written["skips"]
        stats.bytes_written += written["bytes"]
        bar.update(written["rows"])
        bar.set_postfix(rows_per_s=f"{stats.rows / (time.perf_counter() - start):.2f}", skipped=stats.skips)
    bar.close()
    stats.seconds = time.perf_counter() - start
    return stats


def _array_bytes(value: Any) -> int:
    """Bytes of the numpy arrays and tensors anywhere in ``value``."""
    if hasattr(value, "nbytes"):
        return int(value.nbytes)
    if isinstance(value, dict):
        return sum(_array_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_array_bytes(v) for v in value)
    return 0


def fit_actors_to_memory(job: ExtractJob, groups: list[tuple[tuple[str, ...], int]]) -> list[tuple[tuple[str, ...], int]]:
    """Fewer actors of the heaviest kind when they would not fit side by side in this machine's
    memory (every actor lives at once), and a line saying so.

    A model is estimated at twice its checkpoint on disk plus 0.5 GiB (weights, activations, the
    worker); SAM-HQ ViT-H, 2.6 GB on disk, took about 6.5 GB per image on a CPU. The limit is 80 %
    of the memory available now (of the GPU instead, when this process sees one).
    """
    import psutil
    import torch

    model = {name: 2 * size_on_disk(component_spec(job.config, job.profile, name).checkpoint) + 2**29 for name in STAGES}
    estimate = [sum(model[name] for name in names) for names, _ in groups]
    if torch.cuda.is_available():
        available, where = torch.cuda.mem_get_info()[0], "GPU"
    else:
        available, where = psutil.virtual_memory().available, "RAM"
    limit = 0.8 * available
    counts = [count for _, count in groups]
    need = lambda: sum(c * e for c, e in zip(counts, estimate))  # noqa: E731
    while need() > limit and any(c > 1 for c in counts):
        heaviest = max((i for i, c in enumerate(counts) if c > 1), key=lambda i: estimate[i])
        counts[heaviest] -= 1
    fitted = [(names, count) for (names, _), count in zip(groups, counts)]
    if fitted != groups or need() > limit:
        changes = ", ".join(f"{'+'.join(names)} {old} -> {new}" for (names, old), (_, new) in zip(groups, fitted) if old != new) or "no actor to spare"
        print(f"memory: {available / 2**30:.1f} GiB of {where} available, the frozen models' actors need about {need() / 2**30:.1f} GiB "
              f"side by side: actors {changes}{'' if need() <= limit else '; it may still not fit'}", flush=True)  # fmt: skip
    return fitted


def _summary(writer: CacheWriter, job: ExtractJob) -> dict[str, Any]:
    """Counts for the manifest: every input is a row or a skip; rows without a caption are listed."""
    rows = writer.committed_rows(["id", "caption"])
    missing = [uid for uid, caption in zip(rows.column("id").to_pylist(), rows.column("caption").to_pylist()) if not caption]
    return {"dataset": job.dataset, "profile": job.profile, "input_shards": [s.source for s in job.shards], "missing_caption": missing}
