"""`make rehearse`: the `paper` profile end to end on this machine, through the commands a user runs.

    python -m lyrics.rehearse [--photos 3] [--config pipelines.yaml]

1. The paper profile's checkpoints at paper size with random weights, each in its real upstream
   layout (``lyrics/paper_random.py``), created once under ``{root}/checkpoints/paper-random``.
2. A rehearsal configuration (``{root}/rehearse/pipelines.yaml``, the folder made anew each time):
   the repository's, with a data set ``rehearse`` of a few sample photos (one of them not square),
   the sample instructions and VQA questions about those photos, and the paper recipes cut to two
   steps of two examples.
3. With ``LYRICS_CONFIG``, ``LYRICS_PROFILE=paper`` and the ``LYRICS_*_PATH`` variables set, as a
   user sets them: ``make extract``, ``make pretrain``, ``make finetune``, ``make eval``, ``make chat``,
   each timed, with the peak memory of its processes (Ray's workers included) sampled every 0.2 s.

It ends with a table and one line saying that the paper profile ran end to end; a phase that fails
stops it with that phase's output.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import yaml

from lyrics.config import DEFAULT_CONFIG, REPO_ROOT, PipelinesConfig, load_config
from lyrics.data.instructions import image_key
from lyrics.data.sample.shards import ShardSample, write_tar
from lyrics.data.webdataset import WebSample, iter_shard

QUESTION = "What is in the picture?"
# Two optimizer steps of two examples per stage: the point is that every part runs at paper size.
SHORT_RECIPE = {"steps": 2, "global_batch": 2, "micro_batch": 2, "checkpoint_every": 1, "log_every": 1}


@dataclass(frozen=True)
class Phase:
    name: str
    command: list[str]
    seconds: float
    peak_bytes: int


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m lyrics.rehearse", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=3, help="sample photos to extract and train on (at least 3)")
    parser.add_argument("--config", type=Path, help="pipelines file (default: the repository's pipelines.yaml)")
    args = parser.parse_args()
    config = load_config(args.config)
    root = config.path("{root}")
    work = root / "rehearse"
    base_env = {**os.environ, **({"LYRICS_CONFIG": str(args.config.resolve())} if args.config else {})}
    subprocess.run([sys.executable, "-m", "lyrics.data.sample", "--if-missing"], env=base_env, check=True)

    from lyrics.paper_random import checkpoint_environment, paper_random_folder, write_paper_checkpoints

    checkpoints = paper_random_folder(config)
    print(f"paper-size checkpoints at random weights, in their upstream layouts: {checkpoints}", flush=True)
    start = time.perf_counter()
    write_paper_checkpoints(checkpoints, llm_corpus(config))
    print(f"  ready in {time.perf_counter() - start:.0f} s", flush=True)

    shutil.rmtree(work, ignore_errors=True)  # every rehearsal runs every phase from the start (the checkpoints stay)
    photo = write_rehearsal_data(config, work, max(3, args.photos))
    env = {**base_env, "LYRICS_CONFIG": str(work / "pipelines.yaml"), "LYRICS_PROFILE": "paper", **checkpoint_environment(checkpoints)}
    commands = {
        "extract": ["make", "extract", "DATA=rehearse"],
        "pretrain": ["make", "pretrain"],
        "finetune": ["make", "finetune"],
        "eval": ["make", "eval", "BENCH=rehearse-vqa"],
        "chat": ["make", "chat", f"IMAGE={photo}", f"ARGS=--ask '{QUESTION}'"],
    }
    phases = [run_phase(name, command, env) for name, command in commands.items()]
    print("\n| phase | wall time | peak memory (its processes) |\n|---|---|---|")
    for phase in phases:
        print(f"| `{' '.join(phase.command)}` | {phase.seconds:.0f} s | {phase.peak_bytes / 2**30:.1f} GiB |")
    total = sum(phase.seconds for phase in phases)
    print(f"\nthe paper profile ran end to end: extract -> pretrain -> finetune -> eval -> chat in {total / 60:.1f} min")


def llm_corpus(config: PipelinesConfig) -> list[str]:
    """Text for the rehearsal LLM's sentencepiece model: the sample's instructions, as its prompts will read."""
    from lyrics.model.prompt_format import VICUNA_SYSTEM

    path = config.path(config.instructions["sample"].instructions)
    lines = [VICUNA_SYSTEM, f"USER: {QUESTION} ASSISTANT:"]
    for line in path.read_text(encoding="utf-8").splitlines():
        for turn in json.loads(line)["turns"]:
            lines += [turn["human"], turn["assistant"]]
    return lines


def write_rehearsal_data(config: PipelinesConfig, work: Path, count: int) -> Path:
    """The first ``count`` sample photos as a one-shard data set, their instructions and VQA questions,
    and the rehearsal pipelines file; returns a non-square photo for the chat."""
    sample = config.path("{root}/data/sample")
    chosen = [s for s in iter_shard(sample / "webdataset" / "00000.tar") if isinstance(s, WebSample)][:count]
    keys = {image_key(s.meta) for s in chosen}
    photos = {image_key(s.meta): sample / "images" / f"{image_key(s.meta)}.jpg" for s in chosen}
    (work / "data").mkdir(parents=True, exist_ok=True)
    write_tar(work / "data" / "00000.tar", [ShardSample(s.key, "jpg", s.image_bytes, s.caption, s.meta) for s in chosen])
    instructions = [line for line in (sample / "instructions" / "train.jsonl").read_text().splitlines() if json.loads(line)["image"] in keys]
    (work / "data" / "instructions.jsonl").write_text("\n".join(instructions) + "\n")
    names = json.loads((sample / "coco" / "captions.json").read_text())
    image_ids = {image["id"] for image in names["images"] if Path(image["file_name"]).stem in keys}
    for name, field in (("questions", "questions"), ("annotations", "annotations")):
        document = json.loads((sample / "vqa" / f"{name}.json").read_text())
        document[field] = [entry for entry in document[field] if entry["image_id"] in image_ids]
        (work / "data" / f"{name}.json").write_text(json.dumps(document))

    raw = yaml.safe_load((Path(config.source) if config.source else DEFAULT_CONFIG).read_text())
    raw["root"] = str(work)
    raw["datasets"]["rehearse"] = {"format": "webdataset", "path": str(work / "data" / "00000.tar"), "produced_by": "make rehearse"}
    raw["instructions"] = {"rehearse": {"instructions": str(work / "data" / "instructions.jsonl"), "images": "rehearse", "produced_by": "make rehearse"}}
    raw["benchmarks"] = {"rehearse-vqa": {"task": "vqa", "format": "vqa", "images": "rehearse", "source": "make rehearse",
                                          "files": {"questions": str(work / "data" / "questions.json"), "annotations": str(work / "data" / "annotations.json"),
                                                    "image_names": str(sample / "coco" / "captions.json")}}}  # fmt: skip
    raw["extraction"]["batch_size"] = 2
    for stage in ("pretrain", "finetune"):
        raw["training"][stage]["data"] = ["rehearse"]
        raw["training"][stage]["recipes"]["paper"].update(SHORT_RECIPE)
    raw["evaluation"]["batch_size"] = 2
    for component in raw["profiles"].values():  # architecture files stay the repository's
        for value in component.values():
            if isinstance(value, dict) and "arch" in value:
                value["arch"] = str(REPO_ROOT / value["arch"])
    (work / "pipelines.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return next(path for path in photos.values() if _not_square(path))


def _not_square(path: Path) -> bool:
    from PIL import Image

    with Image.open(path) as image:
        return image.width != image.height


def run_phase(name: str, command: list[str], env: dict[str, str]) -> Phase:
    print(f"\n=== {name}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env)
    peak = PeakMemory(process.pid)
    peak.start()
    code = process.wait()
    peak.stop()
    seconds = time.perf_counter() - start
    if code != 0:
        sys.exit(f"error: make rehearse: `{' '.join(command)}` failed with exit code {code} after {seconds:.0f} s")
    return Phase(name, command, seconds, peak.bytes)


class PeakMemory(threading.Thread):
    """The largest sum of resident memory over a process and its descendants, sampled every 0.2 s."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.bytes = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            try:
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            for process in processes:
                try:
                    total += process.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
            self.bytes = max(self.bytes, total)

    def stop(self) -> None:
        self.done.set()
        self.join()


if __name__ == "__main__":
    main()
