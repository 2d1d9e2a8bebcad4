"""`make show`: the refiner's tags, boxes and masks of cached samples drawn on their images (PNG grid).

    python -m lyrics.extract.show [--data sample | --cache CACHE_ROOT] [--out PNG] [--count 16]

The images are read back from the input shards or image files named in each row's ``source``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from PIL import Image  # noqa: E402

from lyrics.config import load_config  # noqa: E402
from lyrics.extract.images import load_images  # noqa: E402
from lyrics.extract.cache_location import default_cache_root  # noqa: E402
from lyrics.store import CacheDataset  # noqa: E402

COLUMNS = 4
LABELLED_BOXES = 5
COLORS = plt.get_cmap("tab10")


def mask_on_image(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """A SAM-HQ grid mask (G x G over the padded square frame, image at the top left) -> (height, width)."""
    grid = mask.shape[-1]
    longest = max(width, height)
    valid = mask[: max(1, round(grid * height / longest)), : max(1, round(grid * width / longest))]
    return np.asarray(Image.fromarray(valid.astype(np.uint8) * 255).resize((width, height), Image.NEAREST)) > 127


def draw_cache(cache: Path, out: Path, count: int = 16) -> Path:
    dataset = CacheDataset(cache, fields=["sam_mask", "sam_masks"])
    items = [dataset[i] for i in range(min(count, len(dataset)))]
    images = load_images({it["id"]: (json.loads(it["source"])["file"], it["key"]) for it in items})
    rows = max(1, math.ceil(len(items) / COLUMNS))
    figure, axes = plt.subplots(rows, COLUMNS, figsize=(4 * COLUMNS, 4.4 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, item in zip(axes.flat, items):
        draw_item(axis, images[item["id"]], item)
    figure.suptitle(f"{cache}: RAM++ tags, Grounding-DINO boxes, SAM-HQ masks", fontsize=10)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=80)
    plt.close(figure)
    return out


def draw_item(axis: plt.Axes, image: Image.Image, item: dict) -> None:
    width, height = image.size
    overlay = np.asarray(image).astype(np.float32) / 255
    for n, (valid, mask) in enumerate(zip(np.asarray(item["sam_mask"]), np.asarray(item["sam_masks"]))):
        if valid:
            region = mask_on_image(mask, width, height)
            overlay[region] = 0.55 * overlay[region] + 0.45 * np.array(COLORS(n % 10)[:3])
    axis.imshow(overlay)
    for n, (box, label, score) in enumerate(zip(item["boxes"], item["box_labels"], item["box_scores"])):
        x1, y1, x2, y2 = box[0] * width, box[1] * height, box[2] * width, box[3] * height
        axis.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=COLORS(n % 10), linewidth=2))
        if n < LABELLED_BOXES:  # boxes come best first; more labels than this hide the image
            axis.text(x1, y1, f"{label[:24]} {score:.2f}", fontsize=6, va="top", color="white", backgroundcolor=COLORS(n % 10))
    tags = ", ".join(item["tags"][:8]) or "(no tags)"
    name = json.loads(item["source"]).get("sample_key", item["key"])  # the sample set records its photo's name
    axis.set_title(f"{name}: {len(item['boxes'])} objects\ntags: {tags}", fontsize=7)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m lyrics.extract.show", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="sample", help="dataset whose default cache to draw")
    parser.add_argument("--cache", type=Path, help="a cache root written by the extract phase (overrides --data)")
    parser.add_argument("--out", type=Path, help="PNG to write (default: {root}/pictures/refiner_<data>.png)")
    parser.add_argument("--count", type=int, default=16)
    args = parser.parse_args()
    config = load_config()
    cache = args.cache or default_cache_root(config, args.data, config.extraction.profile)
    out = args.out or config.path(f"{{root}}/pictures/refiner_{args.data}.png")
    print(f"wrote {draw_cache(cache, out, args.count)}")


if __name__ == "__main__":
    main()
