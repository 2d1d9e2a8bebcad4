"""An exported Lyrics model (``python -m lyrics.export``), loaded for inference from its folder alone.

    from lyrics.pretrained import LyricsModel

    model = LyricsModel.from_pretrained("exports/lyrics-tiny", frozen={"clip": ..., "ram": ..., "gdino": ..., "sam": ...})
    model.answer([PIL.Image.open("cat.jpg")], ["<Image>What is this?"])          # frozen models run online
    model.answer([cache_row], ["<Image>Describe it."])                           # or a cache row

Neither pipelines.yaml nor the run folder is read. ``frozen`` names the four frozen checkpoints (a path
each); one whose fingerprint differs from the one the model was trained on is refused, naming both.
Omitted, they are loaded only when a photo needs them, from the locations the ``LYRICS_*_PATH``
variables name. ``llm`` overrides the LLM's recorded location.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from lyrics.config import ExtractionConfig
from lyrics.evaluate.assistant import Assistant, Sample, Turns
from lyrics.export import CONFIG, FORMAT_VERSION
from lyrics.extract.cache_location import STAGES
from lyrics.extract.checkpoints import CHECKPOINT_ENV, ComponentSpec
from lyrics.extract.refiner import LOADERS, FrozenModels
from lyrics.model.llm import load_llm
from lyrics.model.lvlm import load_lvlm


class FingerprintMismatchError(ValueError):
    """A frozen checkpoint is not the one the model was trained on."""


@dataclass
class LyricsModel:
    assistant: Assistant
    folder: Path
    description: dict

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        frozen: Mapping[str, str | Path] | None = None,
        llm: str | Path | None = None,
        device: str | None = None,
    ) -> LyricsModel:
        folder = Path(folder)
        if not (folder / CONFIG).is_file():
            raise FileNotFoundError(f"{folder}: no {CONFIG}; not an exported Lyrics model (python -m lyrics.export RUN OUT)")
        description = json.loads((folder / CONFIG).read_text())
        if description.get("model_type") != "lyrics" or description.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{folder / CONFIG}: not a Lyrics export of format {FORMAT_VERSION} (model_type {description.get('model_type')!r}, "
                             f"format_version {description.get('format_version')!r})")  # fmt: skip
        unknown = sorted(set(frozen or {}) - set(STAGES))
        if unknown:
            raise KeyError(f"frozen: unknown models {unknown}; the frozen models are {list(STAGES)}")
        specs = {name: _frozen_spec(folder, description, name, (frozen or {}).get(name)) for name in STAGES}
        if frozen is not None:  # named now: checked now, not at the first photo
            for name in frozen:
                check_fingerprint(specs[name], description["frozen"][name]["fingerprint"])
        merged = description["lora_merged"]
        location = Path(llm) if llm is not None else (folder / description["llm"]["location"] if merged else Path(description["llm"]["location"]))
        llm_model, llm_tokenizer = load_llm(ComponentSpec("llm", folder / description["llm"]["arch"], location, random_init=False, seed=0))
        loaded = load_lvlm(folder, llm_model, adapter=not merged)
        settings = ExtractionConfig.model_validate(description["extraction"])

        def load_frozen(where: torch.device) -> FrozenModels:
            for name, spec in specs.items():
                check_fingerprint(spec, description["frozen"][name]["fingerprint"])
            return FrozenModels(*(LOADERS[name](specs[name]).to(where) for name in STAGES), settings=settings)

        return cls(Assistant.on(loaded, llm_tokenizer, load_frozen, device), folder, description)

    def answer(self, samples: Sequence[Sample], prompts: Sequence[str], max_new_tokens: int = 32, histories: Sequence[Turns] | None = None) -> list[str]:
        """One greedy answer per (photo or cache row, prompt), in one batch; ``histories`` continue conversations."""
        return self.assistant.generate(samples, prompts, max_new_tokens, histories)


def _frozen_spec(folder: Path, description: dict, name: str, checkpoint: str | Path | None) -> ComponentSpec:
    """Where a frozen model's checkpoint is: given, else its ``LYRICS_*_PATH`` variable (checked when loaded)."""
    if checkpoint is None:
        env = CHECKPOINT_ENV[name]
        checkpoint = os.environ.get(env, f"<{env} not set: pass frozen={{'{name}': path}}>")
    return ComponentSpec(name, folder / description["frozen"][name]["arch"], Path(checkpoint), random_init=False, seed=0)


def check_fingerprint(spec: ComponentSpec, trained_on: str) -> None:
    found = spec.fingerprint()
    if found != trained_on:
        raise FingerprintMismatchError(
            f"{spec.checkpoint}: {spec.name} checkpoint has fingerprint {found}, but the model was trained on features of {trained_on}; "
            "pass the checkpoint it was trained with"
        )
