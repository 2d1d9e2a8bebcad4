"""`make demo`: run every phase that exists on the embedded sample, and say which do not yet.

Each step prints what it wrote; the run ends with the paths of the results and pictures.
"""

from __future__ import annotations

from pathlib import Path

from lyrics.config import load_config
from lyrics.data.sample.build import build_sample, is_complete
from lyrics.data.sample.draw import draw_annotations

# Phases of the design card that this checkout does not implement yet (no fake steps).
NOT_BUILT = {
    "extract": "make extract DATA=sample (phase 1: CLIP, RAM++, Grounding-DINO, SAM-HQ -> cache)",
    "pretrain": "make pretrain (phase 2a: MQ-Former with ITC, ITM, ICG, MSP)",
    "finetune": "make finetune (phase 2b: projection + LoRA on a causal LLM)",
    "eval": "make eval BENCH=... (REC, captioning, VQA, POPE, MME)",
}


def main() -> None:
    config = load_config()
    sample_dir = config.path("{root}/data/sample")
    pictures = config.path("{root}/pictures")

    print("== sample data set")
    if is_complete(sample_dir):
        print(f"already built: {sample_dir}")
    else:
        index = build_sample(sample_dir)
        print(f"built {index.images} images, {index.objects} boxes, {index.refs} referring expressions, {index.questions} questions")
    grid = pictures / "sample_annotations.png"
    draw_annotations(grid)
    print(f"annotation boxes drawn on every photo: {grid}")

    print("\n== phases not built yet")
    for step in NOT_BUILT.values():
        print(f"  - {step}")

    print("\n== results")
    for label, path in [
        ("sample data (WebDataset, COCO, RefCOCO, VQAv2, LLaVA, fuzz set)", sample_dir),
        ("annotation picture", grid),
    ]:
        print(f"  {label}: {Path(path)}")


if __name__ == "__main__":
    main()
