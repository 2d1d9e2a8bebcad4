"""`make eval BENCH=<name>`: a fine-tuned Lyrics on registered benchmarks, from the cache of their images.

    python -m lyrics.evaluate.run --bench refcoco [more ...] [--split testA] [--model DIR] [--meteor]

Before any model is loaded: each benchmark's files exist (a missing one is named, with where the
files come from) and the stage-2 result exists; then every item's image must be in the cache of the
benchmark's data set, which the extract phase writes first when it is missing. A benchmark is
evaluated per split (``splits`` in pipelines.yaml; refcoco: val, testA, testB), each split a result
of its own (``refcoco-testA``). Generation is greedy and batched (``evaluation.batch_size``), with a
progress bar; every answer is appended to ``predictions.jsonl`` as it comes, so a killed evaluation
continues where it stopped. In ``{results}/<result>/<model run>/``: predictions.jsonl, metrics.json
(or, for a test-dev split without answers, only the server's submission.json) and, for REC, rec_grid.png.
The table of every result of the model run beside the paper's numbers: ``{results}/table-<run>.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from lyrics.config import BenchmarkConfig, ConfigError, PipelinesConfig, load_config
from lyrics.data.errors import DataFormatError
from lyrics.data.instructions import MissingImagesError
from lyrics.evaluate.benchmarks import FORMATS, EvalItem, load_items
from lyrics.extract.cache_location import default_cache_root
from lyrics.store import CacheDataset, CacheMismatchError
from lyrics.store.manifest import read_manifest
from lyrics.train.cache_data import PRETRAIN_FIELDS, cache_expectation
from lyrics.train.finetune_data import row_index

if TYPE_CHECKING:
    from lyrics.evaluate.assistant import Assistant

PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"
SUBMISSION = "submission.json"
REC_GRID = "rec_grid.png"
REC_GRID_PANELS = 16


@dataclass
class EvalPlan:
    config: PipelinesConfig
    name: str
    bench: BenchmarkConfig
    profile: str
    model: Path  # a stage-2 result folder
    results: dict[str | None, str]  # split -> result name

    @classmethod
    def make(cls, config: PipelinesConfig, name: str, model: Path | None = None, profile: str | None = None, split: str | None = None) -> EvalPlan:
        """The checks that need no model: the benchmark, its files, the stage-2 result (raises ConfigError)."""
        bench = config.benchmark(name)
        if bench.format not in FORMATS:
            raise ConfigError(f"{config.source}: benchmarks.{name}.format: {bench.format!r} is not one of {', '.join(FORMATS)}")
        results = bench.result_names(name, split)
        wanted = (f"{key}: {path}" for s in results for key, path in benchmark_files(config, bench, s).items() if not path.exists())
        missing = list(dict.fromkeys(wanted))  # splits of one file (refcoco's) name it once
        if missing:
            raise ConfigError(f"benchmark {name!r}: files not found:\n  " + "\n  ".join(missing) + f"\n  They come from: {bench.source}")
        profile = profile or config.training.profile
        model = model or default_model(config, profile)
        if not (model / "config.json").is_file():
            raise ConfigError(f"{model}: no stage-2 result (run `make finetune` first, or pass --model DIR)")
        return cls(config, name, bench, profile, model, results)

    @property
    def run_name(self) -> str:
        return self.model.resolve().parent.name  # "finetune-tiny" for .../runs/finetune-tiny/lyrics

    def out_dir(self, result: str) -> Path:
        return self.config.path(self.config.evaluation.results) / result / self.run_name


def default_model(config: PipelinesConfig, profile: str) -> Path:
    return config.path(config.training.runs) / f"finetune-{profile}" / "lyrics"


def benchmark_files(config: PipelinesConfig, bench: BenchmarkConfig, split: str | None) -> dict[str, Path]:
    return {key: config.path(value) for key, value in bench.split_files(split).items()}


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


class Generator:
    """The stage-2 model, loaded on first use and shared by every benchmark of a run."""

    def __init__(self, config: PipelinesConfig, model: Path, profile: str) -> None:
        self.config, self.model, self.profile = config, model, profile
        self._assistant: Assistant | None = None

    def __call__(self, rows: list[dict[str, Any]], prompts: list[str]) -> list[str]:
        if self._assistant is None:
            from lyrics.evaluate.assistant import Assistant  # the LLM stack: imported once the checks have passed

            self._assistant = Assistant.load(self.config, self.model, self.profile)
        return self._assistant.generate(rows, prompts, self.config.evaluation.max_new_tokens)


def evaluate(plan: EvalPlan, progress: bool = True, generator: Generator | None = None, meteor: bool = False) -> list[dict[str, Any]]:
    """Every split of the plan: generate what is not predicted yet, then score; returns what each metrics.json holds."""
    config, bench = plan.config, plan.bench
    generator = generator or Generator(config, plan.model, plan.profile)
    splits = {split: load_items(bench.format, benchmark_files(config, bench, split), split) for split in plan.results}
    cache = CacheDataset(ensure_cache(config, bench.images, plan.profile, progress), cache_expectation(config, plan.profile), fields=PRETRAIN_FIELDS)
    rows = row_index(cache)
    absent = sorted({item.image for items in splits.values() for item in items} - rows.keys())
    if absent:
        raise MissingImagesError(f"{len(absent)} image(s) of {plan.name} have no row in {cache.root}: {', '.join(absent[:10])}")
    results = []
    for split, items in splits.items():
        result, out = plan.results[split], plan.out_dir(plan.results[split])
        out.mkdir(parents=True, exist_ok=True)
        predictions = predict(items, cache, rows, generator, out / PREDICTIONS, result, progress)
        record = {"benchmark": result, "task": bench.task, "split": split, "model": str(plan.model), "items": len(items)}
        if bench.submission:  # nothing to score here, so no metrics.json for the table
            write_submission(items, predictions, out / SUBMISSION)
            record["submission"] = str(out / SUBMISSION)
        else:
            from lyrics.evaluate.scoring import score

            record["metrics"] = score(bench.task, items, predictions, meteor, config.evaluation.vqa_convention)
            (out / METRICS).write_text(json.dumps(record, indent=2) + "\n")
            if bench.task == "rec":
                draw_rec_grid_of(out, cache, rows)
        results.append(record)
    return results


def predict(
    items: list[EvalItem], cache: CacheDataset, rows: dict[str, int], generate: Generator, path: Path, desc: str, progress: bool
) -> list[str]:
    """One answer per item, in item order; answers already in ``path`` are kept, new ones appended as they come."""
    done = read_predictions(path)
    todo = [item for item in items if item.id not in done]
    size = generate.config.evaluation.batch_size
    with path.open("a", encoding="utf-8") as out, tqdm(total=len(items), initial=len(items) - len(todo), desc=desc, disable=not progress) as bar:
        for start in range(0, len(todo), size):
            batch = todo[start : start + size]
            answers = generate([cache[rows[i.image]] for i in batch], [i.prompt for i in batch])
            for item, answer in zip(batch, answers):
                out.write(json.dumps({"id": item.id, "image": item.image, "prompt": item.prompt, "prediction": answer, "target": item.target}) + "\n")
                done[item.id] = answer
            out.flush()
            bar.update(len(batch))
    return [done[item.id] for item in items]


def write_submission(items: list[EvalItem], predictions: list[str], path: Path) -> None:
    """The VQA evaluation server's result file: [{"question_id": int, "answer": str}] (the server normalizes)."""
    path.write_text(json.dumps([{"question_id": i.target["question_id"], "answer": p} for i, p in zip(items, predictions)]) + "\n")


def draw_rec_grid_of(out: Path, cache: CacheDataset, rows: dict[str, int]) -> Path:
    """rec_grid.png of the first predictions, the images read back from where their cache rows came from."""
    from lyrics.evaluate.rec_grid import draw_rec_grid
    from lyrics.extract.images import load_images

    records = [json.loads(line) for line in (out / PREDICTIONS).read_text(encoding="utf-8").splitlines()[:REC_GRID_PANELS]]
    sources = cache.rows(["source", "key"]).to_pylist()
    wanted = {r["image"]: sources[rows[r["image"]]] for r in records}
    images = load_images({key: (json.loads(row["source"])["file"], row["key"]) for key, row in wanted.items()})
    return draw_rec_grid(records, images, out / REC_GRID, limit=REC_GRID_PANELS)


def summary(result: dict[str, Any]) -> str:
    if "submission" in result:
        return f"{result['benchmark']} ({result['task']}, {result['items']} items): no answers released; server file {result['submission']}"
    metrics = ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in result["metrics"].items() if not isinstance(v, (dict, list)))
    return f"{result['benchmark']} ({result['task']}, {result['items']} items): {metrics}"


def run_benchmarks(
    config: PipelinesConfig, names: Sequence[str], model: Path | None = None, profile: str | None = None,
    split: str | None = None, meteor: bool = False, progress: bool = True,
) -> tuple[list[dict[str, Any]], Path]:  # fmt: skip
    """Every benchmark named, checked first, on one loaded model; returns the results and the run's
    table, rewritten with every result of that model run."""
    plans = [EvalPlan.make(config, name, model, profile, split) for name in names]
    generator = Generator(config, plans[0].model, plans[0].profile)
    results = [result for plan in plans for result in evaluate(plan, progress, generator, meteor)]
    from lyrics.evaluate.results_table import write_table

    return results, write_table(config.path(config.evaluation.results), plans[0].run_name)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lyrics.evaluate.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", required=True, nargs="+", help="benchmarks registered under benchmarks: in pipelines.yaml")
    parser.add_argument("--model", type=Path, help="stage-2 result (default: {runs}/finetune-<profile>/lyrics)")
    parser.add_argument("--split", help="only this split of the benchmark(s)")
    parser.add_argument("--profile", help="model profile (default: training.profile)")
    parser.add_argument("--meteor", action="store_true", help="captioning: METEOR too (Java; about 20 s more)")
    parser.add_argument("--config", type=Path, help="pipelines file (default: the repository's pipelines.yaml)")
    args = parser.parse_args(argv)
    try:
        results, table = run_benchmarks(load_config(args.config), args.bench, args.model, args.profile, args.split, args.meteor)
    except (ConfigError, FileNotFoundError, CacheMismatchError, DataFormatError, MissingImagesError) as e:
        sys.exit(f"error: {e}")
    for result in results:
        print(summary(result))
    run = Path(results[0]["model"]).resolve().parent.name
    print(f"predictions and metrics: {table.parent}/<benchmark>/{run}/\ntable: {table}")


if __name__ == "__main__":
    main()
