"""Phase 1 as a Ray Data job, one row per *part* (up to ``part_size`` consecutive inputs of one input shard):

    read (a task per input shard) -> decode + resize to uint8 (CPU actors) -> CLIP, RAM++, Grounding-DINO,
    SAM-HQ (an actor pool each: normalise, then batches of ``batch_size``) -> write (tasks) -> the driver

Each part becomes one cache shard (``00042.0003``), written and committed atomically by the worker
that holds its features; the driver receives counts only and finalises the manifest. A part's
content depends on its input bytes and the settings alone, never on its neighbours or on
scheduling, so a resumed job (committed parts are read past, partial ones redone) writes exactly
what an uninterrupted one writes. ``ray.init()`` starts Ray locally, or joins the cluster named by
``RAY_ADDRESS``; the cache root must be a path every node can write (a shared file system).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
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
from lyrics.extract.null_model import NullModel
from lyrics.extract.refiner import Chunk, ensure_checkpoints, load_stage, merge_images, preprocessors, run_stage, select_images, stack_pixels
from lyrics.store import CacheIdentity, CacheWriter, Manifest, ShardWriter, check_resumable, committed_shards, sample_id
from lyrics.store.manifest import SHARD_META_NAME
from lyrics.store.writer import SHARDS_DIR, read_shard_record


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


# --- stage 1: read an input shard front to back, in parts of raw inputs (one task per shard) ----------
def part_name(shard: str, index: int) -> str:
    """The cache shard of part ``index`` of an input shard: ``00042.0003``."""
    return f"{shard}.{index:04d}"


class ReadStage:
    """Cuts one input shard into parts of ``part_size`` consecutive inputs (bytes, not yet decoded).

    Reading is cheap next to decoding, so one task reads a whole shard while the decode actors work
    on its parts in parallel. A part's content depends on the shard's bytes and ``part_size`` alone.
    Parts already committed (a resumed run) are read past, not sent on.
    """

    def __init__(self, shards: tuple[InputShard, ...], part_size: int, shards_dir: Path) -> None:
        self.shards, self.part_size, self.shards_dir = shards, part_size, shards_dir

    def __call__(self, item: dict[str, Any]) -> Iterator[dict[str, Any]]:
        shard = self.shards[item["shard"]]
        inputs: list[WebSample | InputSkip] = []
        index = 0
        for sample in shard.samples():
            if len(inputs) == self.part_size:  # a full part with more to come: not the last
                yield from self._part(shard, index, inputs, last=False)
                index, inputs = index + 1, []
            inputs.append(sample)
        yield from self._part(shard, index, inputs, last=True)

    def _part(self, shard: InputShard, index: int, inputs: list[WebSample | InputSkip], last: bool) -> Iterator[dict[str, Any]]:
        name = part_name(shard.name, index)
        if (self.shards_dir / name / SHARD_META_NAME).is_file():
            return
        yield {"record": {"shard": shard.name, "source": shard.source, "part": index, "name": name, "last": last, "inputs": inputs}}


# --- stage 2: decode once, resize for every model (CPU actors) ------------------------------------------
class DecodeStage:
    """Decodes a part's images and resizes each for every model, as uint8: what crosses the object
    store is what the models need, a quarter of the bytes of their float inputs. Every input is a row
    or a skip."""

    def __init__(self, config: PipelinesConfig, profile: str, dataset: str) -> None:
        self.preprocessors = preprocessors(config, profile)
        self.limits = ImageLimits.of(config.extraction)
        self.dataset = dataset

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        record = dict(item["record"])
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
        return {"record": record}

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


# --- stage 3: one frozen model per actor pool, in batches of one part's images -----------------------------
class ModelStage:
    def __init__(self, config: PipelinesConfig, profile: str, name: str, null: bool = False) -> None:
        import torch

        if not torch.cuda.is_available():
            # The actors share the CPU: one thread each, or their threads spin-wait on each other.
            torch.set_num_threads(1)
        self.name, self.settings = name, config.extraction
        # null: outputs of the cache's shapes at once, no model (bench/extract.py times the pipeline alone)
        self.model = NullModel(name, cache_schema(config, profile)) if null else load_stage(config, profile, name)

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        return {"record": run_model_on_part(self.name, self.model, item["record"], self.settings)}


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


# --- stage 4: each part written as a cache shard by the worker that holds it (tasks) --------------------
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


class WriteStage:
    """Writes a part as one cache shard, committed atomically, and returns only its counts.

    A retried task rewrites the same content; the first commit is kept (``ShardWriter.commit``).
    ``kill_at`` names a part whose first writer SIGKILLs itself before committing: the resume
    tests' worker death (a marker file makes the retry live).
    """

    def __init__(self, dataset: str, shards_dir: Path, identity: CacheIdentity, kill_at: str | None = None) -> None:
        self.dataset, self.shards_dir, self.identity, self.kill_at = dataset, shards_dir, identity, kill_at

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        record = item["record"]
        writer = ShardWriter(self.shards_dir, record["name"], record["source"], self.identity)
        try:
            if record["rows"]:
                writer.add_batch(store_rows(self.dataset, record), {k: record[k] for k in TENSOR_KEYS})
            for skip in record["skips"]:
                writer.skip(**skip)
            if record["name"] == self.kill_at:
                marker = self.shards_dir / f".killed-{record['name']}"
                if not marker.exists():
                    marker.touch()
                    os.kill(os.getpid(), signal.SIGKILL)
            committed = writer.commit(inputs=record["inputs"], last=record["last"])
        except BaseException:
            writer.abort()
            raise
        return {"written": {"name": committed.name, "rows": committed.rows, "skips": len(committed.skipped),
                            "bytes": _size_on_disk(self.shards_dir / committed.name)}}  # fmt: skip


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


def complete_input_shards(root: Path) -> set[str]:
    """Input shards whose every part is committed: the parts 0..k of the one committed as the last."""
    parts: dict[str, set[int]] = {}
    ends: dict[str, int] = {}
    for name in committed_shards(root):
        shard, _, index = name.rpartition(".")
        if not index.isdigit():
            continue
        parts.setdefault(shard, set()).add(int(index))
        if read_shard_record(root / SHARDS_DIR / name).last:
            ends[shard] = int(index)
    return {shard for shard, end in ends.items() if parts[shard] >= set(range(end + 1))}


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
    actors = {name: settings.actors.get(name, 1) for name in STAGES}
    if not null_models:
        actors = fit_actors_to_memory(job, actors)
    # Every actor must fit at once or the pipeline waits forever: share the CPUs (and GPUs) out.
    cpus = min(1.0, resources.get("CPU", 1) / (settings.decode_workers + sum(actors.values()) + 1))
    gpus = min(1.0, resources.get("GPU", 0) / sum(actors.values()))
    args = (job.config, job.profile)
    read = ReadStage(job.shards, settings.part_size, writer.shards_dir)
    # Its own tasks, not fused into the decode actors (Ray Data fuses no stage with a remote-args function):
    # fused, one actor would decode a whole shard's parts while the others wait.
    ds = ray.data.from_items([{"shard": i} for i in todo]).flat_map(read, ray_remote_args_fn=lambda: {"num_cpus": cpus})
    ds = ds.map(DecodeStage, fn_constructor_args=(*args, job.dataset), compute=ray.data.ActorPoolStrategy(size=settings.decode_workers), num_cpus=cpus)
    for name in STAGES:
        pool = ray.data.ActorPoolStrategy(size=actors[name])
        ds = ds.map(ModelStage, fn_constructor_args=(*args, name, null_models), compute=pool, num_cpus=cpus, num_gpus=0 if null_models else gpus)
    kill_worker_at = os.environ.get("LYRICS_EXTRACT_KILL_WORKER_AT")
    ds = ds.map(WriteStage(job.dataset, writer.shards_dir, writer.identity, kill_worker_at), num_cpus=cpus)
    stats = RunStats()
    start = time.perf_counter()
    bar = tqdm(total=None, unit="row", desc=f"extract {job.dataset}", disable=not progress)
    for item in ds.iter_rows():
        stats.driver_tensor_bytes += _array_bytes(item)
        written = item["written"]
        if os.environ.get("LYRICS_EXTRACT_KILL_AT") == written["name"]:
            os.kill(os.getpid(), signal.SIGKILL)  # fault injection for the resume test: the driver dies mid-run
        stats.parts += 1
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
