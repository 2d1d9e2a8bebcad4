"""Lyrics as an lmms-eval model, and the project's REC benchmarks as local lmms-eval tasks.

    pip install -e ".[lmms]"
    python -m lmms_eval --model lyrics --model_args pretrained=EXPORT,clip=...,ram=...,gdino=...,sam=... --tasks refcoco_bbox_rec_val
    python -m lyrics.evaluate.lmms --write-task sample-rec --split test --out TASK_DIR      # a local task, no download
    python -m lmms_eval --model lyrics --model_args pretrained=EXPORT --include_path TASK_DIR --tasks lyrics_sample_rec_test

The model (registered under the ``lmms_eval.models`` entry point group as ``lyrics``) loads an export
(``python -m lyrics.export``) with ``LyricsModel.from_pretrained``. lmms-eval hands it PIL images: the
frozen models run online, through the refiner path ``make chat`` uses, and the answers are generated in
batches of ``batch_size``. One image per question; ``loglikelihood`` and multi-round generation are
refused with a message saying so.

Boxes: Lyrics answers with boxes in its spatial text (``lyrics.spatial_text``: integers 0-999, the
image's width and height divided into 999 steps). lmms-eval's RefCOCO tasks read the first
``[x0, y0, x1, y1]`` of floats in [0, 1] from an answer, so the adapter replaces the answer by the
first box it finds as ``[x0, y0, x1, y1]``, each coordinate the spatial-text integer / 999 (``box_answers``,
on by default). An answer without a box is passed on as it is.

``write_rec_task`` turns a REC benchmark of pipelines.yaml into a local task (a Parquet file of the
items, a YAML, a ``utils.py``): the prompt is the one ``make eval`` uses, the scoring is lmms-eval's
own RefCOCO code (``refcoco_ACC@0.5``, IoU and the other thresholds), so its score can be set beside
``make eval``'s.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from PIL import Image

from lyrics.config import ConfigError, PipelinesConfig, load_config
from lyrics.data.instructions import image_key
from lyrics.data.webdataset import WebSample
from lyrics.evaluate.benchmarks import load_items
from lyrics.evaluate.run import benchmark_files
from lyrics.extract.cache_location import STAGES
from lyrics.pretrained import LyricsModel
from lyrics.spatial_text import find_boxes

MODEL_ID = "lyrics"


def manifest() -> Any:
    """The ``lmms_eval.models`` entry point (pyproject.toml): a ``ModelManifest``. Imported here, not
    above: lmms-eval builds its registry while importing ``lmms_eval.models``, and loads this module then."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path="lyrics.evaluate.lmms.Lyrics")


def lmms_box_answer(answer: str) -> str:
    """The answer's first spatial-text box as lmms-eval's ``[x0, y0, x1, y1]`` in [0, 1]; the answer itself without one."""
    boxes = find_boxes(answer)
    return f"[{', '.join(repr(float(v)) for v in boxes[0])}]" if boxes else answer


class Lyrics(lmms):
    """``--model lyrics --model_args pretrained=EXPORT[,clip=PATH,ram=PATH,gdino=PATH,sam=PATH][,llm=PATH][,device=cuda][,batch_size=8]
    [,max_new_tokens=32][,box_answers=false]``; a frozen checkpoint not given is read from its ``LYRICS_*_PATH`` variable."""

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        device: str | None = None,
        batch_size: int | str = 1,
        max_new_tokens: int | str = 32,
        llm: str | None = None,
        box_answers: bool | str = True,
        **frozen: str,
    ) -> None:
        super().__init__()
        unknown = sorted(set(frozen) - set(STAGES))
        if unknown:
            raise ValueError(f"lyrics: unknown model_args {unknown}; known: pretrained, device, batch_size, max_new_tokens, llm, box_answers, {', '.join(STAGES)}")
        self.model = LyricsModel.from_pretrained(pretrained, frozen=frozen or None, llm=llm, device=device)
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.box_answers = str(box_answers).lower() not in ("false", "0", "no")

    def generate_until(self, requests: list[Instance]) -> list[str]:
        answers: list[str] = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start : start + self.batch_size]
            images, prompts, limits = [], [], []
            for request in chunk:
                context, generation, doc_to_visual, doc_id, task, split = request.args
                visuals = doc_to_visual(self.task_dict[task][split][doc_id])
                if len(visuals) != 1 or not isinstance(visuals[0], Image.Image):
                    raise NotImplementedError(f"lyrics reads one image per question; {task} doc {doc_id} gives {len(visuals)} visuals")
                images.append(visuals[0].convert("RGB"))
                prompts.append(context)
                limits.append(generation)
            # One batch shares its length limit: the longest any request of it asks for.
            longest = max(int(g.get("max_new_tokens", self.max_new_tokens)) for g in limits)
            for answer, generation in zip(self.model.answer(images, prompts, longest), limits):
                answer = _cut(answer, generation.get("until") or [])
                answers.append(lmms_box_answer(answer) if self.box_answers else answer)
        return answers

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError("lyrics answers by generation only: loglikelihood (multiple-choice scoring by likelihood) is not implemented; use the task's generate_until variant")

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("lyrics: multi-round generation is not implemented (one question per image; `make chat` holds conversations)")


def _cut(answer: str, until: Sequence[str]) -> str:
    for stop in until:
        if stop and stop in answer:
            answer = answer[: answer.index(stop)]
    return answer


# --- local tasks ------------------------------------------------------------------------------------
TASK_UTILS = '''"""Written by lyrics.evaluate.lmms.write_rec_task: the items' photos and prompts, lmms-eval's RefCOCO scoring."""

from lmms_eval.tasks.refcoco.utils_rec import (  # noqa: F401  (named by the task YAML)
    refcoco_bbox_rec_acc05,
    refcoco_bbox_rec_iou,
    refcoco_bbox_rec_process_result,
)
from PIL import Image


def doc_to_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]


def doc_to_text(doc):
    return doc["prompt"]
'''


TASK_YAML = """\
task: {name}
dataset_path: parquet
dataset_kwargs:
  data_files:
    test: {parquet}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: bbox
generation_kwargs:
  max_new_tokens: {max_new_tokens}
  until: ["ASSISTANT:"]
  do_sample: false
process_results: !function utils.refcoco_bbox_rec_process_result
metric_list:
  - metric: refcoco_ACC@0.5
    aggregation: !function utils.refcoco_bbox_rec_acc05
    higher_is_better: true
  - metric: refcoco_IoU
    aggregation: !function utils.refcoco_bbox_rec_iou
    higher_is_better: true
metadata:
  version: 0
  source: {source}
"""


def write_rec_task(config: PipelinesConfig, bench: str, split: str | None, out: Path) -> str:
    """A local lmms-eval task of a REC benchmark's split in ``out`` (its photos copied under ``images/``); returns its name."""
    from lyrics.extract.job import input_shards  # the extraction's readers: the photos as the cache saw them

    settings = config.benchmark(bench)
    if settings.task != "rec":
        raise ConfigError(f"{config.source}: benchmark {bench!r} is a {settings.task} benchmark; only REC benchmarks become local tasks")
    items = load_items(settings.format, benchmark_files(config, settings, split), split)
    wanted = {item.image for item in items}
    (out / "images").mkdir(parents=True, exist_ok=True)
    photos: dict[str, Path] = {}
    for shard in input_shards(config, settings.images):
        for sample in shard.samples():
            key = image_key(sample.meta) if isinstance(sample, WebSample) else None
            if key in wanted and key not in photos:
                photos[key] = out / "images" / key.replace("/", "__")
                photos[key].write_bytes(sample.image_bytes)
    missing = sorted(wanted - photos.keys())
    if missing:
        raise FileNotFoundError(f"datasets.{settings.images}: no photo for {len(missing)} item(s) of {bench}: {', '.join(missing[:10])}")
    rows = []
    for item in items:
        (x1, y1, x2, y2), (width, height) = item.target["box"], item.target["size"]
        rows.append({"question_id": item.id, "image": str(photos[item.image].resolve()), "prompt": item.prompt,
                     "answer": item.prompt, "bbox": [x1 / width, y1 / height, x2 / width, y2 / height]})  # fmt: skip
    name = "_".join(["lyrics", bench, *([split] if split else [])]).replace("-", "_").replace("+", "plus")
    parquet = (out / f"{name}.parquet").resolve()
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    (out / "utils.py").write_text(TASK_UTILS)
    source = json.dumps(f"pipelines.yaml benchmark {bench}" + (f", split {split}" if split else ""))
    (out / f"{name}.yaml").write_text(TASK_YAML.format(name=name, parquet=json.dumps(str(parquet)), max_new_tokens=config.evaluation.max_new_tokens, source=source))
    return name


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lyrics.evaluate.lmms", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-task", required=True, metavar="BENCH", help="a REC benchmark of pipelines.yaml (e.g. sample-rec, refcoco)")
    parser.add_argument("--split", help="its split (e.g. test, val)")
    parser.add_argument("--out", type=Path, required=True, help="the task folder to write (pass it to lmms-eval's --include_path)")
    parser.add_argument("--config", type=Path, help="pipelines file (default: the repository's pipelines.yaml)")
    args = parser.parse_args(argv)
    try:
        name = write_rec_task(load_config(args.config), args.write_task, args.split, args.out)
    except (ConfigError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote task {name} in {args.out}: python -m lmms_eval --model lyrics --model_args pretrained=EXPORT --include_path {args.out} --tasks {name}")


if __name__ == "__main__":
    main()
