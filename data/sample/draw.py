"""`python -m lyrics.data.sample.draw --out PNG`: every sample photo with its boxes and labels in
one grid, for a person to check the annotations."""

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from lyrics.data.sample.annotations import DEFAULT_ANNOTATIONS_PATH, load_annotations  # noqa: E402
from lyrics.data.sample.photos import open_photo  # noqa: E402

COLUMNS = 4


def draw_annotations(out: Path, annotations_path: Path = DEFAULT_ANNOTATIONS_PATH) -> Path:
    annotations = load_annotations(annotations_path)
    rows = max(1, math.ceil(len(annotations.images) / COLUMNS))
    figure, axes = plt.subplots(rows, COLUMNS, figsize=(4 * COLUMNS, 4 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image in zip(axes.flat, annotations.images):
        photo = open_photo(image.source)
        annotations.check_photo_size(image, photo.size)
        axis.imshow(photo)
        axis.set_title(f"{image.key} ({image.split})", fontsize=9)
        for item in image.objects:
            x1, y1, x2, y2 = item.box
            axis.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="yellow", linewidth=2))
            axis.text(x1, y1, item.label, fontsize=7, color="black", va="top", backgroundcolor="yellow")
    figure.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=80)
    plt.close(figure)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m lyrics.data.sample.draw", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--annotations", type=Path, default=DEFAULT_ANNOTATIONS_PATH, help="annotations YAML")
    args = parser.parse_args()
    draw_annotations(args.out, args.annotations)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
