"""`python -m lyrics.data.sample [--out DIR]`: build the sample data set into DIR (default: where
pipelines.yaml's `sample` and `fuzz` datasets expect it, `{root}/data/sample`)."""

import argparse
from pathlib import Path

from lyrics.config import load_config
from lyrics.data.sample.annotations import DEFAULT_ANNOTATIONS_PATH
from lyrics.data.sample.build import INDEX_FILE, build_sample, is_complete


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m lyrics.data.sample", description=__doc__)
    parser.add_argument("--out", type=Path, help="folder to write; an earlier build there is replaced")
    parser.add_argument("--annotations", type=Path, default=DEFAULT_ANNOTATIONS_PATH, help="annotations YAML")
    parser.add_argument("--if-missing", action="store_true", help="do nothing when a finished build is already there")
    args = parser.parse_args()
    out = args.out or load_config().path("{root}/data/sample")
    if args.if_missing and is_complete(out):
        print(f"sample data set already built: {out}")
        return
    index = build_sample(out, args.annotations)
    for name in [*index.files, INDEX_FILE]:
        print(f"{(out / name).stat().st_size:>10,d}  {out / name}")
    print(
        f"{index.images} images, {index.captions} captions, {index.objects} objects, "
        f"{index.refs} referring expressions, {index.questions} questions, "
        f"{index.instructions} instruction examples, {index.pope} POPE and {index.mme} MME questions, "
        f"{index.scienceqa} ScienceQA problems -> {out}"
    )


if __name__ == "__main__":
    main()
