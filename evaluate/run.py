"""`make eval BENCH=<name>`: a fine-tuned Lyrics on a registered benchmark, from the cache of its images.

    python -m lyrics.evaluate.run --bench sample-rec [--model DIR] [--split S] [--profile tiny] [--config FILE]

Before any model is loaded: the benchmark's files exist (a missing one is named, with where the
files come from), the stage-2 result exists, and every item's image is in the cache of the
benchmark's data set, which the extract phase writes first when it is missing. Generation is
greedy and batched (``evaluation.batch_size``), with a progress bar; every answer is appended to
``predictions.jsonl`` as it comes, so a killed evaluation continues where it stopped. The metrics go
to ``metrics.json`` beside it, in ``{results}/<benchmark>/<model run>/``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lyrics.config import BenchmarkConfig, ConfigError, PipelinesConfig, load_config
from lyrics.data.errors import DataFormatError
from lyrics.data.instructions import MissingImagesError
from lyrics.evaluate.benchmarks import load_items
from lyrics.extract.cache_location import default_cache_root
from lyrics.store import CacheDataset, CacheMismatchError
from lyrics.store.manifest import read_manifest
from lyrics.train.cache_data import PRETRAIN_FIELDS, cache_expectation
from lyrics.train.finetune_data import row_index

PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"


@dataclass
class EvalPlan:
    config: PipelinesConfig
    name: str
    bench: BenchmarkConfig
    profile: str
    model: Path  # a stage-2 result folder
    out_dir: Path

    @classmethod
    def make(cls, config: PipelinesConfig, name: str, model: Path | None = None, profile: str | None = None, split: str | None = None) -> EvalPlan:
        """The checks that need no model: the benchmark, its files, the stage-2 result (raises ConfigError)."""
        bench = config.benchmark(name)
        if split is not None:
            bench = bench.model_copy(update={"split": split})
        missing = [f"{key}: {path}" for key, path in benchmark_files(config, bench).items() if not path.is_file()]
        if missing:
            raise ConfigError(f"benchmark {name!r}: files not found:\n  " + "\n  ".join(missing) + f"\n  They come from: {bench.source}")
        profile = profile or config.training.profile
        model = model or config.path(config.training.runs) / f"finetune-{profile}" / "lyrics"
        if not (model / "config.json").is_file():
            raise ConfigError(f"{model}: no stage-2 result (run `make finetune` first, or pass --model DIR)")
        run_name = model.resolve().parent.name
        out = config.path(config.evaluation.results) / (f"{name}-{bench.split}" if split else name) / run_name
        return cls(config, name, bench, profile, model, out)


def benchmark_files(config: PipelinesConfig, bench: BenchmarkConfig) -> dict[str, Path]:
    return {key: config.path(value) for key, value in bench.files.items()}


def ensure_cache(config: PipelinesConfig, dataset: str, profile: str, progress: bool = True) -> Path:
    """The data set's cache for ``profile``; written by the extract phase first when it is missing or unfinished."""
    root = default_cache_root(config, dataset, profile)
    try:
        complete = read_manifest(root).complete
    except FileNotFoundError:
        complete = False
    if not complete:
        from lyrics.extract.job import ExtractJob, run  # the frozen models' packages: imported only when needed

        print(f"{root}: no finished cache of {dataset!r}; extracting it first")
        run(ExtractJob.plan(config, dataset, profile), progress=progress)
    return root


def read_predictions(path: Path) -> dict[str, str]:
    """id -> prediction of the lines written so far; a last line cut by a kill is dropped from the file."""
    if not path.is_file():
        return {}
    done: dict[str, str] = {}
    keep = 0
    with path.open("rb") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                break  # only the last line can be cut: every earlier one ended with its newline
            done[record["id"]] = record["prediction"]
            keep += len(line)
    with path.open("r+b") as f:
        f.truncate(keep)
    return done


def evaluate(plan: EvalPlan, progress: bool = True) -> dict[str, Any]:
    """Generate what is not predicted yet, then score; returns what metrics.json holds."""
    from lyrics.evaluate.assistant import Assistant  # the LLM stack: imported once the checks have passed
    from lyrics.evaluate.scoring import score

    config, bench = plan.config, plan.bench
    items = load_items(bench.format, benchmark_files(config, bench), bench.split)
    cache = CacheDataset(ensure_cache(config, bench.images, plan.profile, progress), cache_expectation(config, plan.profile), fields=PRETRAIN_FIELDS)
    rows = row_index(cache)
    absent = sorted({item.image for item in items} - rows.keys())
    if absent:
        raise MissingImagesError(f"{len(absent)} image(s) of {plan.name} have no row in {cache.root}: {', '.join(absent[:10])}")
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    predictions_path = plan.out_dir / PREDICTIONS
    done = read_predictions(predictions_path)
    todo = [item for item in items if item.id not in done]
    if todo:
        assistant = Assistant.load(config, plan.model, plan.profile)
        size = config.evaluation.batch_size
        with predictions_path.open("a", encoding="utf-8") as out, tqdm(total=len(items), initial=len(items) - len(todo), desc=plan.name, disable=not progress) as bar:
            for start in range(0, len(todo), size):
                batch = todo[start : start + size]
                answers = assistant.generate([cache[rows[i.image]] for i in batch], [i.prompt for i in batch], config.evaluation.max_new_tokens)
                for item, answer in zip(batch, answers):
                    out.write(json.dumps({"id": item.id, "image": item.image, "prompt": item.prompt, "prediction": answer, "target": item.target}) + "\n")
                    done[item.id] = answer
                out.flush()
                bar.update(len(batch))
    result = {
        "benchmark": plan.name, "task": bench.task, "split": bench.split, "model": str(plan.model), "items": len(items),
        "metrics": score(bench.task, items, [done[item.id] for item in items]),
    }  # fmt: skip
    (plan.out_dir / METRICS).write_text(json.dumps(result, indent=2) + "\n")
    return result


def summary(result: dict[str, Any]) -> str:
    metrics = ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in result["metrics"].items() if not isinstance(v, (dict, list)))
    return f"{result['benchmark']} ({result['task']}, {result['items']} items): {metrics}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lyrics.evaluate.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", required=True, help="a benchmark registered under benchmarks: in pipelines.yaml")
    parser.add_argument("--model", type=Path, help="stage-2 result (default: {runs}/finetune-<profile>/lyrics)")
    parser.add_argument("--split", help="override the benchmark's split")
    parser.add_argument("--profile", help="model profile (default: training.profile)")
    parser.add_argument("--config", type=Path, help="pipelines file (default: the repository's pipelines.yaml)")
    args = parser.parse_args(argv)
    try:
        plan = EvalPlan.make(load_config(args.config), args.bench, args.model, args.profile, args.split)
        result = evaluate(plan)
    except (ConfigError, FileNotFoundError, CacheMismatchError, DataFormatError, MissingImagesError) as e:
        sys.exit(f"error: {e}")
    print(summary(result))
    print(f"predictions: {plan.out_dir / PREDICTIONS}\nmetrics: {plan.out_dir / METRICS}")


if __name__ == "__main__":
    main()
