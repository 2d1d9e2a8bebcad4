"""`make ablation`: the paper's Table 4 on the embedded sample, end to end.

    python -m lyrics.ablation [--profile tiny]

Four models, each pretrained (or not) and fine-tuned from the sample cache, then evaluated on the
sample benchmarks that stand in for Table 4's data sets:

    Lyrics                       stage 1 as configured        -> finetune-<profile>
    w/o grounding queries        stage 1 without them          -> finetune-<profile>-no-grounding
    w/o spatial representation   stage 1 without spatial text  -> finetune-<profile>-no-spatial
    w/o pre-training stage       no stage 1 (--from-scratch)   -> finetune-<profile>-scratch

Runs that exist resume (or are reused when finished), as `make demo`'s do. The table, with the
paper's Table 4 beside it, goes to ``{results}/ablation-<profile>.md``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from lyrics.config import PipelinesConfig, load_config
from lyrics.evaluate.paper_numbers import ABLATION_BENCHMARKS, TABLE_4
from lyrics.evaluate.run import run_benchmarks, summary
from lyrics.train import finetune, pretrain
from lyrics.train.runs import prepare_or_restart

# Table 4's data sets -> the sample benchmark of the same task (the sample has one of each task).
SAMPLE_FOR = {"GQA": "sample-vqa", "SciQA-Img": "sample-scienceqa", "VizWiz": "sample-vqa", "TextVQA": "sample-vqa", "RefCOCOg": "sample-rec"}


@dataclass(frozen=True)
class Variant:
    label: str  # as Table 4 names the row
    stage1: dict[str, bool] | None  # PretrainPlan.make switches; None: no stage 1


VARIANTS = (
    Variant("Lyrics", {}),
    Variant("w/o grounding queries", {"grounding_queries": False}),
    Variant("w/o spatial representation", {"spatial_representation": False}),
    Variant("w/o pre-training stage", None),
)


def train_variant(config: PipelinesConfig, profile: str, variant: Variant) -> Path:
    """The variant's stage-2 result folder, trained (or resumed) through its stage 1 when it has one."""
    if variant.stage1 is None:
        tuning = finetune.FinetunePlan.make(config, profile, from_scratch=True)
    else:
        plan = pretrain.PretrainPlan.make(config, profile, **variant.stage1)
        stage1 = pretrain.train(plan, prepare_or_restart(pretrain.prepare, plan))
        tuning = finetune.FinetunePlan.make(config, profile, stage1=stage1)
    return finetune.train(tuning, prepare_or_restart(finetune.prepare, tuning))


def ablation_table(rows: dict[str, dict[str, float]], profile: str) -> str:
    """Markdown: this run's sample metrics per variant, then the paper's Table 4."""
    benchmarks = list(dict.fromkeys(SAMPLE_FOR.values()))
    lines = [
        f"# Table 4 ablations on the embedded sample (profile `{profile}`)",
        "",
        "Accuracy in percent. The sample benchmarks stand in for Table 4's data sets of the same task "
        f"({', '.join(f'{k} -> {v}' for k, v in SAMPLE_FOR.items())}); with the tiny profile's random frozen "
        "models and minutes of training these numbers only show that each variant runs end to end.",
        "",
        "| model | " + " | ".join(benchmarks) + " |",
        "| --- |" + " --- |" * len(benchmarks),
    ]
    lines += [f"| {label} | " + " | ".join(f"{scores[b]:.1f}" for b in benchmarks) + " |" for label, scores in rows.items()]
    lines += ["", "The paper (Vicuna-13B, Table 4):", "", "| model | " + " | ".join(ABLATION_BENCHMARKS) + " |",
              "| --- |" + " --- |" * len(ABLATION_BENCHMARKS)]  # fmt: skip
    lines += [f"| {label} | " + " | ".join(values) + " |" for label, values in TABLE_4.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m lyrics.ablation", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", help="model profile (default: training.profile)")
    parser.add_argument("--config", type=Path, help="pipelines file (default: the repository's pipelines.yaml)")
    args = parser.parse_args()
    config = load_config(args.config)
    profile = args.profile or config.training.profile
    benchmarks = list(dict.fromkeys(SAMPLE_FOR.values()))
    rows = {}
    for variant in VARIANTS:
        print(f"\n== {variant.label}")
        results, _ = run_benchmarks(config, benchmarks, model=train_variant(config, profile, variant), profile=profile)
        for result in results:
            print(summary(result))
        rows[variant.label] = {r["benchmark"]: r["metrics"]["accuracy"] for r in results}
    out = config.path(config.evaluation.results) / f"ablation-{profile}.md"
    out.write_text(ablation_table(rows, profile))
    print(f"\n{out.read_text()}\ntable: {out}")


if __name__ == "__main__":
    main()
