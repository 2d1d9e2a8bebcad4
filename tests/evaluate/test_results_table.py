"""The results table: one run's metrics.json files beside the paper's numbers, copied by hand from its tables."""

import json
from pathlib import Path
from typing import Any

import pytest

from lyrics.data.errors import DataFormatError
from lyrics.evaluate.paper_numbers import PAPER, SAMPLE_REFERENCES, paper_reference
from lyrics.evaluate.results_table import collect, main, markdown_table, write_table

RUN = "finetune-tiny"


def _write(root: Path, name: str, task: str, metrics: dict[str, Any], items: int, run: str = RUN, split: str | None = None) -> Path:
    path = root / name / run / "metrics.json"
    path.parent.mkdir(parents=True)
    record = {"benchmark": name, "task": task, "split": split, "model": f"/runs/{run}/lyrics", "items": items, "metrics": metrics}
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


@pytest.fixture
def results(tmp_path: Path) -> Path:
    _write(tmp_path, "refcoco-val", "rec", {"accuracy": 87.654, "correct": 8766, "total": 10000, "unparsable": 12}, 10000, split="val")
    _write(tmp_path, "coco-caption", "caption", {"CIDEr": 98.76, "BLEU-4": 30.1, "ROUGE-L": 55.0, "images": 5000}, 5000, split="test")
    _write(tmp_path, "gqa", "exact_match", {"accuracy": 50.04, "correct": 6290, "total": 12578}, 12578)
    _write(tmp_path, "sample-rec", "rec", {"accuracy": 5.0, "correct": 1, "total": 20, "unparsable": 16}, 20, split="test")
    _write(tmp_path, "sample-pope-random", "pope",
           {"accuracy": 50.0, "precision": 50.0, "recall": 100.0, "f1": 66.66666, "yes_ratio": 100.0, "total": 22}, 22, split="random")
    _write(tmp_path, "sample-mme", "mme",
           {"perception": 100.0, "cognition": 0, "subtasks": {}, "missing_subtasks": ["position", "color"]}, 60)
    # Another run of a benchmark this run has, and of one it has not: neither may show up.
    _write(tmp_path, "refcoco-val", "rec", {"accuracy": 11.11, "correct": 1, "total": 9, "unparsable": 0}, 9, run="other-run")
    _write(tmp_path, "vqav2", "vqa", {"accuracy": 22.22, "total": 9}, 9, run="other-run")
    return tmp_path


def _rows(table: str) -> dict[tuple[str, str], list[str]]:
    """(benchmark, metric) -> the row's cells."""
    rows = {}
    for line in [line for line in table.splitlines() if line.startswith("|")][2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells[1]:  # group rows have only a title
            rows[cells[0], cells[1]] = cells
    return rows


def test_paper_numbers_as_printed_in_the_paper():
    # Read off Tables 1, 2, 3 and 9 of arXiv 2312.05278 by eye.
    printed = {
        "refcoco-val": "90.69", "refcoco-testA": "92.08", "refcoco-testB": "86.03",
        "refcoco+-val": "82.89", "refcoco+-testA": "89.77", "refcoco+-testB": "76.72",
        "refcocog-val": "87.23", "refcocog-test": "88.26",
        "coco-caption": "121.1", "nocaps": "126.8", "flickr30k": "85.4",
        "vqav2": "81.2", "okvqa": "58.2", "gqa": "62.4", "scienceqa-img": "71.1", "vizwiz": "37.6",
        "textvqa": "69.4", "ocrvqa": "75.8",
        "pope-random": "91.25", "pope-popular": "87.33", "pope-adversarial": "83.55",
    }
    for name, value in printed.items():
        assert PAPER[name][0].printed == value, name
    assert [(n.key, n.printed) for n in PAPER["mme"]] == [("perception", "1537.37"), ("cognition", "431.06")]
    assert PAPER["pope-random"][1].key == "f1" and PAPER["pope-random"][1].printed is None  # Table 9: accuracy only
    assert {n.table for n in PAPER["textvqa"] + PAPER["ocrvqa"]} == {"Table 2"}
    assert PAPER["refcocog-test"][0].value == 88.26 and PAPER["refcocog-test"][0].decimals == 2


def test_every_sample_result_refers_to_a_real_one():
    for sample, real in SAMPLE_REFERENCES.items():
        ref = paper_reference(sample)
        assert ref is not None and ref.reference_only and ref.result == real and ref.numbers == PAPER[real]
    assert paper_reference("refcoco-val").reference_only is False
    assert paper_reference("no-such-benchmark") is None


def test_table_rows(results: Path):
    table = markdown_table(collect(results, RUN))
    rows = _rows(table)
    assert set(rows) == {
        ("refcoco-val", "accuracy@0.5"), ("coco-caption", "CIDEr"), ("gqa", "accuracy"), ("sample-rec", "accuracy@0.5"),
        ("sample-pope-random", "accuracy"), ("sample-pope-random", "F1"),
        ("sample-mme", "perception"), ("sample-mme", "cognition"),
    }
    # this run, paper, best other, count; REC printed with Table 3's two decimals, CIDEr with Table 1's one.
    assert rows["refcoco-val", "accuracy@0.5"][2:5] == ["87.65", "90.69", "Qwen-VL (Qwen-7B) 88.55"]
    assert rows["refcoco-val", "accuracy@0.5"][5] == "RefCOCO val, Table 3"
    assert rows["refcoco-val", "accuracy@0.5"][6] == "10000 items, 12 unparsable"
    assert rows["coco-caption", "CIDEr"][2:5] == ["98.8", "121.1", "Shikra (Vicuna-13B) 117.5"]
    # Notes are footnotes, numbered in order of first use.
    assert rows["coco-caption", "CIDEr"][5] == "COCO, Table 1 [1]"
    assert "\n\n[1] the paper names no split for COCO" in table
    assert rows["gqa", "accuracy"][2:4] == ["50.0", "62.4"] and rows["gqa", "accuracy"][5] == "GQA test-balanced, Table 1 [2]"
    # Sample rows: the paper number is shown, marked as a reference only.
    assert rows["sample-rec", "accuracy@0.5"][2:4] == ["5.00", "90.69"]
    assert rows["sample-rec", "accuracy@0.5"][5] == "RefCOCO val, Table 3 (reference)"
    assert rows["sample-pope-random", "accuracy"][2:4] == ["50.00", "91.25"]
    assert rows["sample-pope-random", "accuracy"][6] == "22 items, yes 100.0%"
    assert rows["sample-pope-random", "F1"][2:6] == ["66.7", "—", "—", "POPE random, Table 9 (reference) [4]"]
    assert "[4] the paper reports accuracy only, no F1" in table
    assert rows["sample-mme", "perception"][2:4] == ["100.00", "1537.37"]
    assert rows["sample-mme", "cognition"][2:4] == ["0.00", "431.06"]
    assert rows["sample-mme", "perception"][6] == "60 items, 2 subtasks missing"
    # Grouped by task, in the paper's order within a group.
    titles = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| **")]
    assert titles == ["**REC**", "**captioning**", "**exact match**", "**POPE**", "**MME**"]
    names = [cells[0] for cells in rows.values()]
    assert names.index("refcoco-val") < names.index("sample-rec")


def test_other_runs_never_mix(results: Path):
    results_of_run = collect(results, RUN)
    assert all(r.path.parent.name == RUN for r in results_of_run)
    table = markdown_table(results_of_run)
    assert "11.1" not in table and "vqav2" not in table
    other = _rows(markdown_table(collect(results, "other-run")))
    assert set(other) == {("refcoco-val", "accuracy@0.5"), ("vqav2", "VQA score")}
    assert other["refcoco-val", "accuracy@0.5"][2] == "11.11"


def test_shared_note_is_one_footnote(tmp_path: Path):
    for setting in ("random", "popular", "adversarial"):
        _write(tmp_path, f"pope-{setting}", "pope",
               {"accuracy": 80.0, "precision": 75.0, "recall": 90.0, "f1": 81.8, "yes_ratio": 60.0, "total": 3000}, 3000, split=setting)
    table = markdown_table(collect(tmp_path, RUN))
    rows = _rows(table)
    f1_note = PAPER["pope-random"][1].note
    assert table.count(f1_note) == 1 and f"\n\n[2] {f1_note}\n" in table
    assert [rows[f"pope-{s}", "F1"][5] for s in ("random", "popular", "adversarial")] == [
        "POPE random, Table 9 [2]", "POPE popular, Table 9 [2]", "POPE adversarial, Table 9 [2]"]
    footnotes = [line for line in table.splitlines() if line.startswith("[")]
    assert footnotes == [f"[1] {PAPER['pope-random'][0].note}", f"[2] {f1_note}"]  # the accuracy note, shared too, once


def test_bare_benchmark_name_finds_the_paper_column_by_split(tmp_path: Path):
    # `make eval BENCH=sample-pope` without --split writes under sample-pope; its split picks the setting.
    _write(tmp_path, "sample-pope", "pope",
           {"accuracy": 60.0, "precision": 55.0, "recall": 90.0, "f1": 68.3, "yes_ratio": 80.0, "total": 22}, 22, split="adversarial")
    rows = _rows(markdown_table(collect(tmp_path, RUN)))
    assert rows["sample-pope", "accuracy"][3] == "83.55"


def test_write_table(results: Path, capsys: pytest.CaptureFixture[str]):
    path = write_table(results, RUN)
    assert path == results / f"table-{RUN}.md"
    text = path.read_text()
    assert text.startswith(f"# Results of run `{RUN}`\n")
    assert "random frozen models" in text and "not comparable" in text
    main(["--run", RUN, "--results", str(results)])
    out = capsys.readouterr().out
    assert "| refcoco-val | accuracy@0.5 | 87.65 | 90.69 |" in out and f"table: {path}" in out


def test_no_sample_note_without_sample_results(tmp_path: Path):
    _write(tmp_path, "okvqa", "vqa", {"accuracy": 40.0, "total": 5046}, 5046)
    text = write_table(tmp_path, RUN).read_text()
    assert "random frozen models" not in text
    assert _rows(text.split("\n\n", 2)[2])["okvqa", "VQA score"][2:4] == ["40.0", "58.2"]


@pytest.mark.parametrize(
    "content",
    ['{"benchmark": "gqa", "task": "exact_match", "split": null, "items": 3, "metrics": {"accur',  # cut JSON
     '{"benchmark": "gqa", "task": "exact_match", "split": null, "items": 3}',  # no metrics
     '{"benchmark": "gqa", "task": "exact_match", "split": null, "items": 3, "metrics": {"correct": 1}}',  # no accuracy
     '[]'],
)
def test_malformed_metrics_file_is_named(results: Path, content: str):
    path = _write(results, "gqa-broken", "exact_match", {}, 0)
    path.write_text(content)
    with pytest.raises(DataFormatError, match="malformed metrics file") as error:
        collect(results, RUN)
    assert str(error.value).startswith(str(path))


def test_missing_run_names_the_runs_found(results: Path):
    with pytest.raises(DataFormatError, match="no metrics.json of run 'finetune-paper'; runs found: finetune-tiny, other-run"):
        collect(results, "finetune-paper")
    with pytest.raises(SystemExit, match="error: .*no results folder"):
        main(["--run", RUN, "--results", str(results / "absent")])
