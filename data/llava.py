"""LLaVA instruction data: a JSON list of conversations, alternating human / gpt turns, the
first human turn holding the `<image>` placeholder when the conversation has an image."""

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from lyrics.data.errors import DataFormatError
from lyrics.data.jsonfile import read_json

IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class Turn:
    speaker: Literal["human", "gpt"]
    text: str


@dataclass(frozen=True)
class Conversation:
    id: str
    image_path: Path | None  # None for text-only conversations of the LLaVA mixes
    turns: tuple[Turn, ...]


class _Turn(BaseModel):
    speaker: Literal["human", "gpt"] = Field(alias="from")  # `from` is a Python keyword
    value: str


class _Conversation(BaseModel):
    id: str | int
    image: str | None = None
    conversations: list[_Turn]


def read_llava(path: Path, image_dir: Path) -> list[Conversation]:
    """The conversations of a LLaVA JSON file; `image` is resolved under `image_dir`."""
    records = []
    for item in read_json(path, list[_Conversation]):
        speakers = [turn.speaker for turn in item.conversations]
        if not speakers or speakers != ["human", "gpt"] * (len(speakers) // 2):
            raise DataFormatError(
                f"{path}: conversation {item.id} does not alternate human, gpt turns: {speakers}"
            )
        if item.image is not None and IMAGE_PLACEHOLDER not in item.conversations[0].value:
            raise DataFormatError(
                f"{path}: conversation {item.id} has an image but its first turn lacks {IMAGE_PLACEHOLDER}"
            )
        records.append(
            Conversation(
                id=str(item.id),
                image_path=None if item.image is None else Path(image_dir) / item.image,
                turns=tuple(Turn(turn.speaker, turn.value) for turn in item.conversations),
            )
        )
    return records
