"""A stage-2 result ready to answer: batched greedy generation from cache rows or from photos.

    assistant = Assistant.load(config, "artifacts/runs/finetune-tiny/lyrics")
    assistant.generate([cache_row, PIL.Image.open("cat.jpg")], ["What is this?", "<Image>Describe it."])

A sample is a cache row (``CacheDataset``'s item: the tokens and the spatial text) or an image, which
the frozen models read online first (``extract.refiner.refine``, loaded on first use) and which then
becomes the same row. Prompts are a conversation's first human turn: ``<Image>`` marks where the
visual tokens go, and a prompt without it gets it in front. Inputs are built by the trainer's
``SampleEncoder`` with the settings saved beside the weights, so a sample is read as in training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from PIL import Image
from transformers import PreTrainedTokenizerBase

from lyrics.config import PipelinesConfig
from lyrics.data.instruction_templates import IMAGE_TOKEN
from lyrics.extract.checkpoints import component_spec
from lyrics.extract.images import to_rgb
from lyrics.extract.refiner import FrozenModels, Refined, refine
from lyrics.model.llm import load_llm
from lyrics.model.lvlm import LoadedLVLM, load_lvlm
from lyrics.train.finetune_data import SampleEncoder

Sample = dict[str, Any] | Image.Image
Turns = Sequence[tuple[str, str]]


def with_image(prompt: str) -> str:
    return prompt if IMAGE_TOKEN in prompt else f"{IMAGE_TOKEN}{prompt}"


@dataclass
class Assistant:
    loaded: LoadedLVLM
    encoder: SampleEncoder
    load_frozen: Callable[[torch.device], FrozenModels]  # the frozen models, on a device: called on first use
    device: torch.device
    _frozen: FrozenModels | None = field(default=None, repr=False)

    @classmethod
    def load(cls, config: PipelinesConfig, result: str | Path, profile: str | None = None, device: str | None = None) -> Assistant:
        """The stage-2 result on the profile's frozen LLM (default profile: training.profile)."""
        profile = profile or config.training.profile
        llm, llm_tokenizer = load_llm(component_spec(config, profile, "llm"))
        return cls.on(load_lvlm(result, llm), llm_tokenizer, lambda where: FrozenModels.load(config, profile, str(where)), device)

    @classmethod
    def on(
        cls, loaded: LoadedLVLM, llm_tokenizer: PreTrainedTokenizerBase, load_frozen: Callable[[torch.device], FrozenModels], device: str | None = None
    ) -> Assistant:
        """A loaded stage-2 model, its LLM's tokenizer and where its frozen models come from, on ``device``."""
        where = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        loaded.model.to(where)
        encoder = SampleEncoder(llm_tokenizer, loaded.tokenizer, loaded.prompt, loaded.model.num_visual_tokens)
        return cls(loaded, encoder, load_frozen, where)

    @property
    def frozen(self) -> FrozenModels:
        """The frozen models (loaded on first use, on this assistant's device)."""
        if self._frozen is None:
            self._frozen = self.load_frozen(self.device)
        return self._frozen

    def refine(self, image: Image.Image) -> Refined:
        """The frozen models on one photo."""
        return refine(to_rgb(image), self.frozen)

    def row(self, sample: Sample) -> dict[str, Any]:
        if isinstance(sample, Image.Image):
            return self.refine(sample).row(self.frozen.settings.storage.top_q)
        return sample

    @torch.no_grad()
    def generate(
        self, samples: Sequence[Sample], prompts: Sequence[str], max_new_tokens: int = 32, histories: Sequence[Turns] | None = None
    ) -> list[str]:
        """One greedy answer per (sample, prompt), all in one batch; ``histories`` continue conversations."""
        rows = [self.row(sample) for sample in samples]
        histories = histories or [()] * len(rows)
        prompts = [prompt if history else with_image(prompt) for prompt, history in zip(prompts, histories, strict=True)]
        batch = move_data_to_device(self.encoder.prompt_batch(rows, histories, prompts), self.device)
        tokenizer = self.encoder.llm_tokenizer
        new = self.loaded.model.generate(batch.image, batch.input_ids, batch.attention_mask, batch.image_positions, max_new_tokens)
        return [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]
