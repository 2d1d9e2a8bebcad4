"""`make chat IMAGE=...`: talk with a fine-tuned Lyrics about one photo; the frozen models run online.

    python -m lyrics.chat --image PATH [--model DIR] [--ask QUESTION ...] [--max-new-tokens N]

The photo goes through CLIP, RAM++, Grounding-DINO and SAM-HQ once (the extract phase's modules),
then every question is answered with the whole conversation so far. Type a question, or:

    /tags          the RAM++ tags
    /boxes         the Grounding-DINO objects (label, score, box in pixels and in spatial text)
    /draw [PNG]    the tags, boxes and SAM-HQ masks drawn on the photo
    /reset         forget the conversation
    /quit          (or an empty line / end of input)

``--ask`` answers the given questions in order, as one conversation, and exits.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from lyrics.config import ConfigError, load_config  # noqa: E402
from lyrics.evaluate.assistant import Assistant, with_image  # noqa: E402
from lyrics.extract.images import ImageLimits, ImageRejected, decode_image  # noqa: E402
from lyrics.extract.refiner import Refined  # noqa: E402
from lyrics.extract.show import draw_item  # noqa: E402
from lyrics.spatial_text import format_box  # noqa: E402

COMMANDS = ("/tags", "/boxes", "/draw", "/reset", "/quit")


class Chat:
    def __init__(self, assistant: Assistant, image: Image.Image, name: str, max_new_tokens: int) -> None:
        self.assistant, self.image, self.name, self.max_new_tokens = assistant, image, name, max_new_tokens
        self.refined = assistant.refine(image)
        self.row = self.refined.row(assistant.frozen.settings.storage.top_q)
        self.history: list[tuple[str, str]] = []

    def ask(self, question: str) -> str:
        answer = self.assistant.generate([self.row], [question], self.max_new_tokens, [self.history])[0]
        self.history.append((question if self.history else with_image(question), answer))
        return answer

    def tags(self) -> str:
        r = self.refined
        return ", ".join(f"{tag} ({score:.2f})" for tag, score in zip(r.tags, r.tag_scores)) or "(no tags)"

    def boxes(self) -> str:
        r, (width, height) = self.refined, self.image.size
        lines = [
            f"{label} {score:.2f}: ({box[0] * width:.0f}, {box[1] * height:.0f}, {box[2] * width:.0f}, {box[3] * height:.0f}) px  {format_box(box)}"
            for label, score, box in zip(r.box_labels, r.box_scores, r.boxes.tolist())
        ]
        return "\n".join(lines) or "(no objects)"

    def draw(self, out: Path) -> Path:
        width, height = self.image.size
        figure, axis = plt.subplots(figsize=(6, 6 * height / width + 0.5))
        axis.axis("off")
        draw_item(axis, self.image, refined_item(self.refined, self.name))
        figure.tight_layout()
        out.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(out, dpi=100)
        plt.close(figure)
        return out

    def handle(self, line: str) -> str | None:
        """The reply to one input line; None ends the chat."""
        command, _, argument = line.strip().partition(" ")
        if command in ("", "/quit"):
            return None
        if command == "/tags":
            return self.tags()
        if command == "/boxes":
            return self.boxes()
        if command == "/draw":
            return f"wrote {self.draw(Path(argument or f'{self.name}_refiner.png'))}"
        if command == "/reset":
            self.history.clear()
            return "(conversation cleared)"
        if command.startswith("/"):
            return f"unknown command {command}; commands: {' '.join(COMMANDS)}"
        return self.ask(line.strip())


def refined_item(refined: Refined, name: str) -> dict:
    """The online refiner output in the shape ``extract.show.draw_item`` draws (a cache row's)."""
    return {
        "sam_mask": torch.from_numpy(refined.sam_mask), "sam_masks": torch.from_numpy(refined.sam_masks),
        "boxes": refined.boxes.tolist(), "box_labels": refined.box_labels, "box_scores": refined.box_scores,
        "tags": refined.tags, "source": json.dumps({"sample_key": name}), "key": name,
    }  # fmt: skip


def converse(chat: Chat, lines: Iterable[str], interactive: bool) -> None:
    for line in lines:
        if not interactive:
            print(f"> {line}")
        reply = chat.handle(line)
        if reply is None:
            return
        print(reply, flush=True)


def prompts() -> Iterable[str]:
    while True:
        try:
            yield input("> ")
        except EOFError:
            return


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m lyrics.chat", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, required=True, help="the photo to talk about")
    parser.add_argument("--model", type=Path, help="stage-2 result (default: {runs}/finetune-<profile>/lyrics)")
    parser.add_argument("--ask", nargs="+", help="answer these questions (one conversation) and exit")
    parser.add_argument("--max-new-tokens", type=int, help="answer length (default: evaluation.max_new_tokens)")
    parser.add_argument("--profile", help="model profile (default: training.profile)")
    parser.add_argument("--config", type=Path, help="pipelines file (default: the repository's pipelines.yaml)")
    args = parser.parse_args()
    try:
        config = load_config(args.config)
        profile = args.profile or config.training.profile
        model = args.model or config.path(config.training.runs) / f"finetune-{profile}" / "lyrics"
        image = decode_image(args.image.read_bytes(), ImageLimits.of(config.extraction))  # upright RGB
        assistant = Assistant.load(config, model, profile)
    except ImageRejected as e:
        sys.exit(f"error: {args.image}: {e}")
    except (ConfigError, FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    chat = Chat(assistant, image, args.image.stem, args.max_new_tokens or config.evaluation.max_new_tokens)
    print(f"{args.image}: {len(chat.refined.tags)} tags, {len(chat.refined.box_labels)} objects. "
          f"Ask about the photo, or {' '.join(COMMANDS)}.")  # fmt: skip
    converse(chat, args.ask, interactive=False) if args.ask else converse(chat, prompts(), interactive=True)


if __name__ == "__main__":
    main()
