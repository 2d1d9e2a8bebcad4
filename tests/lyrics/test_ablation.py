"""`make ablation`'s variants and table (the runs themselves are those of test_finetune_run / make demo)."""

from lyrics.ablation import SAMPLE_FOR, VARIANTS, ablation_table
from lyrics.evaluate.paper_numbers import TABLE_4


def test_the_variants_are_table_4s_rows_and_switch_what_it_removes():
    assert [v.label for v in VARIANTS] == list(TABLE_4)
    assert [v.stage1 for v in VARIANTS] == [{}, {"grounding_queries": False}, {"spatial_representation": False}, None]
    assert set(SAMPLE_FOR.values()) == {"sample-vqa", "sample-scienceqa", "sample-rec"}


def test_the_table_puts_each_variants_scores_under_its_benchmark_and_the_paper_below():
    rows = {label: {"sample-vqa": 10.0 * i, "sample-scienceqa": 31.25, "sample-rec": 5.0} for i, label in enumerate(TABLE_4)}
    lines = ablation_table(rows, "tiny").splitlines()
    assert "| model | sample-vqa | sample-scienceqa | sample-rec |" in lines
    assert "| w/o spatial representation | 20.0 | 31.2 | 5.0 |" in lines
    assert "| model | GQA | SciQA-Img | VizWiz | TextVQA | RefCOCOg val | RefCOCOg test |" in lines
    assert "| w/o pre-training stage | 38.3 | 28.2 | 14.7 | 29.3 | 31.55 | 36.26 |" in lines
    assert lines.index("| Lyrics | 0.0 | 31.2 | 5.0 |") < lines.index("| Lyrics | 62.4 | 71.1 | 37.6 | 69.4 | 87.23 | 88.26 |")
