"""`make serve`: a local web demo (Gradio): what the refiner sees on a photo, and a chat with the model.

    python -m lyrics.serve [--model RUN_OR_EXPORT] [--profile tiny] [--port 7860] [--config pipelines.yaml]

- Upload a photo (or pick a sample photo): RAM++ tags with their scores, Grounding-DINO boxes and
  SAM-HQ masks drawn on it, and the time each model took. The score slider redraws the boxes kept
  without running the models again.
- Ask questions about the photo; the conversation goes on until the photo changes or "Clear".
- REC: type a referring expression, see the box the model answers with drawn on the photo.

The model is the fine-tuned one of ``make finetune`` (default ``{runs}/finetune-<profile>/lyrics``) or a
folder of ``python -m lyrics.export``; the frozen models are the profile's checkpoints. Each browser
tab has its own photo and conversation (Gradio session state). A file that is not an image, an
image over the size limits and a model not trained yet get a message, not a stack trace.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from PIL import Image  # noqa: E402

from lyrics.config import PipelinesConfig, load_config  # noqa: E402
from lyrics.evaluate.assistant import Assistant  # noqa: E402
from lyrics.evaluate.benchmarks import REC_PROMPT  # noqa: E402
from lyrics.evaluate.rec import predicted_box  # noqa: E402
from lyrics.evaluate.run import default_model  # noqa: E402
from lyrics.extract.cache_location import STAGES  # noqa: E402
from lyrics.extract.checkpoints import component_spec  # noqa: E402
from lyrics.extract.images import ImageLimits, ImageRejected, decode_image  # noqa: E402
from lyrics.extract.refiner import FrozenModels, Refined, refine  # noqa: E402
from lyrics.extract.show import draw_item  # noqa: E402
from lyrics.export import stage2_result  # noqa: E402

STAGE_NAMES = {"clip": "CLIP ViT", "ram": "RAM++", "gdino": "Grounding-DINO", "sam": "SAM-HQ"}
MAX_NEW_TOKENS = 48


@dataclass
class Photo:
    """One tab's photo: decoded once, refined once; the slider and the chat reuse it."""

    image: Image.Image
    name: str
    refined: Refined
    seconds: dict[str, float]
    history: list[tuple[str, str]] = field(default_factory=list)


class Demo:
    """The models behind the page, loaded on first use and shared by every tab (requests run one at a time)."""

    def __init__(self, config: PipelinesConfig, model: Path, profile: str) -> None:
        self.config, self.model, self.profile = config, model, profile
        self._assistant: Assistant | None = None
        self._frozen: FrozenModels | None = None

    @property
    def assistant(self) -> Assistant:
        if self._assistant is None:
            if not (self.model / "config.json").is_file():
                raise gr.Error(f"No fine-tuned model at {self.model} yet: run `make demo` (or `make finetune`) first, or start with --model DIR.")
            self._assistant = load_assistant(self.config, self.model, self.profile)
            self._assistant._frozen = self._frozen  # the photo tab's frozen models, when it loaded them first
        return self._assistant

    @property
    def frozen(self) -> FrozenModels:
        """The frozen models: the refiner needs no fine-tuned model, so the photo tab works before one exists."""
        if self._assistant is not None:
            return self._assistant.frozen
        if self._frozen is None:
            self._frozen = FrozenModels.load(self.config, self.profile)
        return self._frozen

    def open_photo(self, path: str | None) -> Photo | None:
        if not path:
            return None
        try:
            image = decode_image(Path(path).read_bytes(), ImageLimits.of(self.config.extraction))
        except ImageRejected as e:
            raise gr.Error(f"{Path(path).name} cannot be read as a photo: {e}") from None
        seconds: dict[str, float] = {}
        refined = refine(image, self.frozen, seconds)
        return Photo(image, Path(path).name, refined, seconds)

    def answer(self, photo: Photo, prompt: str, history: list[tuple[str, str]]) -> str:
        row = photo.refined.row(self.config.extraction.storage.top_q)
        return self.assistant.generate([row], [prompt], MAX_NEW_TOKENS, [tuple(history)])[0]


def load_assistant(config: PipelinesConfig, model: Path, profile: str) -> Assistant:
    """A run's stage-2 result, or an export folder (its frozen models: the profile's checkpoints)."""
    described = json.loads((model / "config.json").read_text())
    if described.get("model_type") == "lyrics":
        from lyrics.pretrained import LyricsModel

        frozen = {name: component_spec(config, profile, name).checkpoint for name in STAGES}
        return LyricsModel.from_pretrained(model, frozen=frozen).assistant
    return Assistant.load(config, model, profile)


def drawn(photo: Photo, threshold: float) -> np.ndarray:
    """The photo with the masks and the boxes scoring at least ``threshold`` (tags in the title)."""
    keep = [n for n, score in enumerate(photo.refined.box_scores) if score >= threshold]
    refined = photo.refined
    item = {
        "boxes": [refined.boxes[n].tolist() for n in keep],
        "box_labels": [refined.box_labels[n] for n in keep],
        "box_scores": [refined.box_scores[n] for n in keep],
        "sam_mask": np.isin(np.arange(len(refined.sam_mask)), keep) & np.asarray(refined.sam_mask, dtype=bool),
        "sam_masks": refined.sam_masks,
        "tags": refined.tags,
        "source": json.dumps({"sample_key": photo.name}),
        "key": photo.name,
    }
    return figure_array(lambda axis: draw_item(axis, photo.image, item), photo.image.size)


def with_box(photo: Photo, answer: str) -> np.ndarray:
    """The photo with the first box of a REC answer (red), or as it is when the answer holds none."""
    box = predicted_box(answer, photo.image.size)

    def draw(axis: plt.Axes) -> None:
        axis.imshow(photo.image)
        if box is not None:
            x1, y1, x2, y2 = box
            axis.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="red", linewidth=3))
        axis.set_title(answer if box is not None else f"no box in the answer: {answer!r}", fontsize=8)

    return figure_array(draw, photo.image.size)


def figure_array(draw: Any, size: tuple[int, int]) -> np.ndarray:
    width, height = size
    figure, axis = plt.subplots(figsize=(6, 6 * height / max(width, 1) + 0.4))
    axis.axis("off")
    draw(axis)
    figure.tight_layout()
    figure.canvas.draw()
    pixels = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
    plt.close(figure)
    return pixels


def timing(photo: Photo) -> str:
    parts = ", ".join(f"{STAGE_NAMES[name]} {seconds:.2f} s" for name, seconds in photo.seconds.items())
    return f"**{photo.name}** ({photo.image.width} x {photo.image.height}): {parts}; {len(photo.refined.boxes)} objects"


def build(demo: Demo, examples: list[str]) -> gr.Blocks:
    with gr.Blocks(title="Lyrics") as page:
        gr.Markdown(f"# Lyrics\nModel: `{demo.model}` ({demo.profile} profile)")
        photo_state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                # A file, not gr.Image: gr.Image opens the upload itself, so a broken file would fail
                # before this module could say what is wrong with it.
                upload = gr.File(label="Photo (JPEG, PNG, ...)", file_types=["image"], type="filepath", elem_id="photo")
                if examples:
                    gr.Examples(examples, inputs=upload, label="Sample photos")
                threshold = gr.Slider(0.0, 1.0, value=demo.config.extraction.detection.box_threshold, step=0.05, label="Box score at least", elem_id="threshold")
                times = gr.Markdown(elem_id="timing")
                tags = gr.Label(num_top_classes=10, label="RAM++ tags", elem_id="tags")
            with gr.Column(scale=2):
                refiner = gr.Image(label="Grounding-DINO boxes and SAM-HQ masks", elem_id="refiner", interactive=False)
        with gr.Tab("Chat"):
            chat = gr.Chatbot(label="Conversation about the photo", elem_id="chat")
            question = gr.Textbox(label="Ask about the photo", elem_id="question")
            clear = gr.Button("Clear")
        with gr.Tab("Find an object (REC)"):
            expression = gr.Textbox(label="Referring expression, e.g. 'the cat on the left'", elem_id="expression")
            rec_image = gr.Image(label="The model's box", elem_id="rec", interactive=False)
            rec_answer = gr.Markdown(elem_id="rec-answer")

        def on_photo(path: str | None, level: float) -> tuple:
            photo = demo.open_photo(path)
            if photo is None:
                return None, None, "", {}, []
            scores = dict(zip(photo.refined.tags, map(float, photo.refined.tag_scores)))
            return photo, drawn(photo, level), timing(photo), scores, []

        def on_threshold(photo: Photo | None, level: float) -> np.ndarray | None:
            return drawn(photo, level) if photo else None

        def on_question(message: str, photo: Photo | None, messages: list[dict]) -> tuple:
            if photo is None:
                raise gr.Error("Upload a photo first.")
            if not message.strip():
                return "", messages
            prompt = message if photo.history else f"<Image>{message}"
            reply = demo.answer(photo, prompt, photo.history)
            photo.history.append((prompt, reply))
            return "", [*messages, {"role": "user", "content": message}, {"role": "assistant", "content": reply or "(no answer)"}]

        def on_clear(photo: Photo | None) -> list:
            if photo is not None:
                photo.history.clear()
            return []

        def on_expression(text: str, photo: Photo | None) -> tuple:
            if photo is None:
                raise gr.Error("Upload a photo first.")
            answer = demo.answer(photo, REC_PROMPT.format(expression=text.strip()), [])
            return with_box(photo, answer), f"Answer: `{answer}`" if answer else "Answer: (empty: the model answered nothing)"

        upload.change(on_photo, [upload, threshold], [photo_state, refiner, times, tags, chat])
        threshold.release(on_threshold, [photo_state, threshold], refiner)
        question.submit(on_question, [question, photo_state, chat], [question, chat])
        clear.click(on_clear, photo_state, chat)
        expression.submit(on_expression, [expression, photo_state], [rec_image, rec_answer])
    return page


def sample_photos(config: PipelinesConfig) -> list[str]:
    folder = config.path("{root}/data/sample/images")
    return sorted(str(p) for p in folder.glob("*.jpg"))[:8] if folder.is_dir() else []


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m lyrics.serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a stage-2 run folder, its lyrics/ result, or an export folder (default: {runs}/finetune-<profile>/lyrics)")
    parser.add_argument("--profile", help="model profile (default: training.profile)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--config", type=Path, help="pipelines file (default: the repository's pipelines.yaml)")
    args = parser.parse_args()
    config = load_config(args.config)
    profile = args.profile or config.training.profile
    model = args.model or default_model(config, profile)
    try:
        demo = Demo(config, stage2_result(model) if model.exists() else model, profile)  # a run folder names its lyrics/
    except FileNotFoundError as e:
        sys.exit(f"error: {e}")
    build(demo, sample_photos(config)).queue().launch(server_port=args.port, show_error=True)


if __name__ == "__main__":
    main()
