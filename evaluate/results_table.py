"""One model run's metrics beside the paper's Lyrics numbers, as one markdown table.

    python -m lyrics.evaluate.results_table --run finetune-tiny [--results DIR] [--config FILE]

Reads every ``{results}/<result name>/<run>/metrics.json`` (written by ``lyrics.evaluate.run``) and
writes ``{results}/table-<run>.md``: rows grouped by task, each with this run's value, the paper's
(``lyrics.evaluate.paper_numbers``) and where the paper's number comes from; the paper numbers' notes
follow the table as numbered footnotes, each once. Only the named run's files are read, so runs never
mix; a benchmark not run has no row; a malformed metrics file is an error naming its path.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lyrics.config import ConfigError, load_config
from lyrics.data.errors import DataFormatError
from lyrics.data.sample.annotations import load_annotations
from lyrics.evaluate.paper_numbers import PAPER, SAMPLE_REFERENCES, PaperNumber, Reference, is_sample, paper_reference

METRICS = "metrics.json"  # the file lyrics.evaluate.run writes (not imported: that module loads torch)
EMPTY = "—"


@dataclass(frozen=True)
class TaskView:
    title: str
    rows: tuple[tuple[str, str], ...]  # (metrics.json key, label) per table row


# Group order and the rows of each task; the dict order is the table's.
TASK_VIEWS: dict[str, TaskView] = {
    "rec": TaskView("REC", (("accuracy", "accuracy@0.5"),)),
    "caption": TaskView("captioning", (("CIDEr", "CIDEr"),)),
    "vqa": TaskView("VQA", (("accuracy", "VQA score"),)),
    "exact_match": TaskView("exact match", (("accuracy", "accuracy"),)),
    "multiple_choice": TaskView("multiple choice", (("accuracy", "accuracy"),)),
    "pope": TaskView("POPE", (("accuracy", "accuracy"), ("f1", "F1"))),
    "mme": TaskView("MME", (("perception", "perception"), ("cognition", "cognition"))),
}
# Count keys read besides the rows' keys, per task.
COUNT_KEYS: dict[str, tuple[str, ...]] = {"rec": ("unparsable",), "multiple_choice": ("unparsable",), "pope": ("yes_ratio",)}
ORDER = [*PAPER, *SAMPLE_REFERENCES]  # rows follow the paper's tables, the sample after
HEADER = ("benchmark", "metric", "this run", "paper (Lyrics)", "best other (paper)", "paper benchmark / table", "count")


@dataclass(frozen=True)
class RunResult:
    """One metrics.json of the run."""

    name: str  # the result name: the folder the run's folder sits in
    path: Path
    benchmark: str
    task: str
    split: str | None
    items: int
    metrics: dict[str, Any]


def read_result(path: Path) -> RunResult:
    """``path`` (``<result name>/<run>/metrics.json``) parsed and checked; DataFormatError naming it otherwise."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        result = RunResult(path.parent.parent.name, path, str(raw["benchmark"]), str(raw["task"]), raw["split"], int(raw["items"]), dict(raw["metrics"]))
    except (ValueError, KeyError, TypeError) as e:
        raise DataFormatError(f"{path}: malformed metrics file ({type(e).__name__}: {e})") from e
    if result.task not in TASK_VIEWS:
        raise DataFormatError(f"{path}: unknown task {result.task!r}; tasks: {', '.join(TASK_VIEWS)}")
    needed = [key for key, _ in TASK_VIEWS[result.task].rows] + list(COUNT_KEYS.get(result.task, ()))
    bad = [key for key in needed if not isinstance(result.metrics.get(key), (int, float))]
    if bad:
        raise DataFormatError(f"{path}: malformed metrics file (no number for {', '.join(bad)} under 'metrics')")
    return result


def collect(results_root: Path, run: str) -> list[RunResult]:
    """Every ``<result name>/<run>/metrics.json`` under ``results_root``, by result name."""
    if not results_root.is_dir():
        raise DataFormatError(f"{results_root}: no results folder (run `make eval` first)")
    paths = sorted(d / run / METRICS for d in results_root.iterdir() if (d / run / METRICS).is_file())
    if not paths:
        runs = sorted({p.parent.name for p in results_root.glob(f"*/*/{METRICS}")})
        raise DataFormatError(f"{results_root}: no {METRICS} of run {run!r}; runs found: {', '.join(runs) or 'none'}")
    return [read_result(path) for path in paths]


def reference(result: RunResult) -> Reference | None:
    # A run without --split writes under the bare benchmark name; its split still names the paper's column.
    return paper_reference(result.name) or (paper_reference(f"{result.benchmark}-{result.split}") if result.split else None)


def _number(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}"


def _source(ref: Reference | None, paper: PaperNumber | None, notes: dict[str, int]) -> str:
    """The paper's benchmark and table, e.g. "RefCOCO val, Table 3", " (reference)" on a sample row, then
    the marker of the number's note, numbered in ``notes`` (note -> footnote number) on first use."""
    if ref is None or paper is None:
        return "not in the paper"
    text = f"{paper.benchmark}, {paper.table}" + (" (reference)" if ref.reference_only else "")
    if paper.note:
        text += f" [{notes.setdefault(paper.note, len(notes) + 1)}]"
    return text


def count(result: RunResult) -> str:
    """Items, and what else says how far to trust the row: unparsable answers, yes-ratio, missing subtasks."""
    m = result.metrics
    text = f"{result.items} items"
    if "unparsable" in COUNT_KEYS.get(result.task, ()):
        text += f", {m['unparsable']} unparsable"
    if result.task == "pope":
        text += f", yes {m['yes_ratio']:.1f}%"
    if result.task == "mme" and m.get("missing_subtasks"):
        text += f", {len(m['missing_subtasks'])} subtasks missing"
    return text


def table_rows(result: RunResult, notes: dict[str, int]) -> list[tuple[str, ...]]:
    """The result's rows: one per metric of its task; the count on the first; notes as in ``_source``."""
    ref = reference(result)
    rows = []
    for i, (key, label) in enumerate(TASK_VIEWS[result.task].rows):
        paper = ref.number(key) if ref else None
        decimals = paper.decimals if paper else 1  # this run printed as precisely as the paper prints
        baseline = paper.baseline if paper else None
        rows.append((
            result.name, label, _number(result.metrics[key], decimals),
            paper.printed if paper and paper.printed else EMPTY,
            f"{baseline.model} {baseline.printed}" if baseline else EMPTY,
            _source(ref, paper, notes), count(result) if i == 0 else "",
        ))
    return rows


def _line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _position(result: RunResult) -> tuple[int, str]:
    return (ORDER.index(result.name) if result.name in ORDER else len(ORDER), result.name)


def markdown_table(results: Sequence[RunResult]) -> str:
    """One table, a bold row per task group, the rows in the paper's order; below it, each distinct note
    of the paper's numbers once, as "[n] note", numbered in order of first use."""
    notes: dict[str, int] = {}
    lines = [_line(HEADER), _line(["---"] * len(HEADER))]
    for task, view in TASK_VIEWS.items():
        group = sorted((r for r in results if r.task == task), key=_position)
        if group:
            lines.append(_line([f"**{view.title}**"] + [""] * (len(HEADER) - 1)))
            lines += [_line(row) for result in group for row in table_rows(result, notes)]
    footnotes = [f"[{number}] {note}" for note, number in notes.items()]
    return "\n\n".join(["\n".join(lines), *footnotes]) + "\n"


def write_table(results_root: Path, run: str) -> Path:
    """``{results_root}/table-<run>.md``: a heading naming the run, what the numbers are, the table."""
    results = collect(results_root, run)
    text = (
        f"# Results of run `{run}`\n\n"
        f"This run's `{results_root}/<benchmark>/{run}/{METRICS}` beside the Lyrics (Vicuna-13B) numbers of "
        "arXiv 2312.05278 (Tables 1, 2, 3, 9); percent, MME in summed subtask scores.\n\n"
    )
    if any(is_sample(r.name) for r in results):
        photos = len(load_annotations().images)
        text += (
            f"Rows named sample-* are the embedded sample ({photos} photos) scored by random frozen models (tiny profile): "
            "only a smoke test of the pipeline, not comparable with the paper's numbers.\n\n"
        )
    path = results_root / f"table-{run}.md"
    path.write_text(text + markdown_table(results), encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lyrics.evaluate.results_table", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="the model run: the folder under each result (e.g. finetune-tiny)")
    parser.add_argument("--results", type=Path, help="results folder (default: evaluation.results of the pipelines file)")
    parser.add_argument("--config", type=Path, help="pipelines file (default: the repository's pipelines.yaml)")
    args = parser.parse_args(argv)
    try:
        root = args.results
        if root is None:
            config = load_config(args.config)
            root = config.path(config.evaluation.results)
        path = write_table(root, args.run)
    except (ConfigError, DataFormatError) as e:
        sys.exit(f"error: {e}")
    print(path.read_text(encoding="utf-8"))
    print(f"table: {path}")


if __name__ == "__main__":
    main()
