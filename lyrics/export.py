"""`make export`: a fine-tuned run as one self-contained model folder.

    python -m lyrics.export RUN OUT [--merge-lora] [--profile tiny] [--config pipelines.yaml]

RUN is a stage-2 run folder (``{runs}/finetune-<profile>...``) or its ``lyrics/`` result. OUT gets:

    config.json          the whole LVLM: MQ-Former config, projection, prompt settings, LoRA settings,
                         the LLM (its location, dtype, prompt format), the frozen models' fingerprints
                         and the extraction settings that turn a photo into a cache row
    model.safetensors    the MQ-Former and the projection
    lora/                the LoRA adapter in peft's format (absent with --merge-lora)
    llm/                 with --merge-lora only: the LLM with the adapter merged in (save_pretrained)
    tokenizer/           the MQ-Former's tokenizer
    frozen/<name>.json   the architecture files of CLIP, RAM++, Grounding-DINO and SAM-HQ
    llm_arch.json        the LLM's architecture file (dtype, prompt format)
    README.md            a model card, with the run's results table when `make eval` has made one

``lyrics.pretrained.LyricsModel.from_pretrained(OUT, frozen=...)`` loads it without pipelines.yaml or
the run folder. The LLM's weights are not copied (Vicuna-13B is 26 GB): the folder records where they
were, and ``from_pretrained(llm=...)`` points elsewhere.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from lyrics.config import ConfigError, PipelinesConfig, load_config
from lyrics.extract.cache_location import STAGES
from lyrics.extract.checkpoints import component_spec
from lyrics.model.lvlm import CONFIG, LORA, TOKENIZER, WEIGHTS
from lyrics.train.runs import RUN_SETTINGS

FORMAT_VERSION = 1
FROZEN_DIR = "frozen"
LLM_ARCH = "llm_arch.json"
MERGED_LLM = "llm"
CARD = "README.md"


def stage2_result(run: Path) -> Path:
    """The stage-2 result folder of a run folder (or the result folder itself)."""
    for folder in (run / "lyrics", run):
        if (folder / CONFIG).is_file() and (folder / WEIGHTS).is_file():
            return folder
    raise FileNotFoundError(f"{run}: no stage-2 result here (expected {CONFIG} and {WEIGHTS} in it or in its lyrics/; run `make finetune`)")


def export(config: PipelinesConfig, run: Path, out: Path, profile: str | None = None, merge_lora: bool = False) -> Path:
    """Write the export folder ``out`` (refused when it exists and is not empty); returns it."""
    result = stage2_result(run)
    settings = result.parent / RUN_SETTINGS
    profile = profile or (json.loads(settings.read_text())["profile"] if settings.is_file() else config.training.profile)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: exists and is not empty; choose a new folder")
    trained = json.loads((result / CONFIG).read_text())
    llm_spec = component_spec(config, profile, "llm")
    frozen_specs = {name: component_spec(config, profile, name) for name in STAGES}
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy2(result / WEIGHTS, tmp / WEIGHTS)
    shutil.copytree(result / TOKENIZER, tmp / TOKENIZER)
    (tmp / FROZEN_DIR).mkdir()
    for name, spec in frozen_specs.items():
        shutil.copy2(spec.arch_path, tmp / FROZEN_DIR / f"{name}.json")
    (tmp / LLM_ARCH).write_text(json.dumps({k: v for k, v in llm_spec.arch.items() if k != "source"}, indent=2) + "\n")
    if merge_lora:
        _write_merged_llm(result, llm_spec, tmp / MERGED_LLM)
    else:
        shutil.copytree(result / LORA, tmp / LORA)
    description = {
        "model_type": "lyrics",
        "format_version": FORMAT_VERSION,
        "profile": profile,
        **trained,  # mqformer, llm_hidden_size, prompt, lora
        "lora_merged": merge_lora,
        "llm": {"location": MERGED_LLM if merge_lora else str(llm_spec.checkpoint.resolve()), "arch": LLM_ARCH},
        "frozen": {name: {"fingerprint": spec.fingerprint(), "arch": f"{FROZEN_DIR}/{name}.json"} for name, spec in frozen_specs.items()},
        "extraction": config.extraction.model_dump(mode="json", exclude={"profile", "batch_size", "decode_workers", "model_actors"}),
        "source_run": str(result.resolve()),
    }
    (tmp / CONFIG).write_text(json.dumps(description, indent=2) + "\n")
    (tmp / CARD).write_text(model_card(config, result, description))
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out


def _write_merged_llm(result: Path, llm_spec: Any, folder: Path) -> None:
    """The profile's LLM with the run's LoRA adapter merged into its weights, as a Hugging Face folder."""
    from peft import PeftModel

    from lyrics.model.llm import load_llm

    llm, tokenizer = load_llm(llm_spec)
    merged = PeftModel.from_pretrained(llm, result / LORA).merge_and_unload()
    merged.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def model_card(config: PipelinesConfig, result: Path, description: dict[str, Any]) -> str:
    from lyrics.data.errors import DataFormatError
    from lyrics.evaluate.results_table import collect, markdown_table

    run = result.parent.name if result.name == "lyrics" else result.name
    try:
        table = markdown_table(collect(config.path(config.evaluation.results), run))
    except DataFormatError:  # no results folder, or none of this run
        table = "No `make eval` results for this run yet.\n"
    lora = "merged into the LLM (`llm/`)" if description["lora_merged"] else "a peft adapter (`lora/`)"
    return f"""# Lyrics ({description["profile"]} profile), exported from `{run}`

Lyrics (arXiv 2312.05278): a BLIP-2-style vision-language model whose MQ-Former reads CLIP ViT-L/14
tokens and the visual refiner's RAM++ tags, Grounding-DINO boxes and SAM-HQ masks, and whose LLM
answers with boxes in its spatial text.

- MQ-Former: {description["mqformer"]["num_hidden_layers"]} layers of {description["mqformer"]["hidden_size"]}, {description["mqformer"]["num_visual_queries"]} visual and {description["mqformer"]["num_grounding_queries"]} grounding queries
- LoRA: rank {description["lora"]["rank"]} on {", ".join(description["lora"]["targets"])}, {lora}
- LLM: `{description["llm"]["location"]}` (not copied; `from_pretrained(llm=...)` points elsewhere)
- Frozen models it was trained on (a checkpoint with another fingerprint is refused):
{chr(10).join(f"  - {name}: `{entry['fingerprint']}`" for name, entry in description["frozen"].items())}

```python
from lyrics.pretrained import LyricsModel

model = LyricsModel.from_pretrained("<this folder>", frozen={{"clip": ..., "ram": ..., "gdino": ..., "sam": ...}})
model.answer([PIL.Image.open("photo.jpg")], ["<Image>What is in the picture?"])
```

## Results

{table}"""


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m lyrics.export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a stage-2 run folder or its lyrics/ result")
    parser.add_argument("out", type=Path, help="the folder to write (new or empty)")
    parser.add_argument("--merge-lora", action="store_true", help="merge the LoRA adapter into a copy of the LLM (llm/)")
    parser.add_argument("--profile", help="the profile the run was trained with (default: its run.json's, else training.profile)")
    parser.add_argument("--config", type=Path, help="pipelines file (default: the repository's pipelines.yaml)")
    args = parser.parse_args()
    try:
        out = export(load_config(args.config), args.run, args.out, args.profile, args.merge_lora)
    except (ConfigError, FileNotFoundError, FileExistsError) as e:
        sys.exit(f"error: {e}")
    print(f"exported {args.run} to {out}\n  load it: LyricsModel.from_pretrained({str(out)!r}, frozen={{...}})  (see {out / CARD})")


if __name__ == "__main__":
    main()
