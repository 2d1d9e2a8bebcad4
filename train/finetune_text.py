"""Stage-2 text: a conversation in the LLM's prompt format, the image slot, labels on the responses only.

The tokenizer renders conversations with its chat template, which ``load_llm`` sets from the LLM's
``prompt_format`` (the folder's own template, or Vicuna v1's format: ``model/prompt_format.py``).

The first human turn holds ``<Image>`` where the image goes (the paper's prompts). The rendered
conversation is split there: the text before and after is tokenized as is, and ``num_image_tokens``
placeholder ids fill the slot (``image_positions`` marks them; the LVLM replaces their embeddings).
Labels are -100 everywhere except the tokens each assistant turn adds to the conversation (its
answer and end-of-turn token), found by rendering the conversation turn by turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from lyrics.data.instruction_templates import IMAGE_TOKEN as IMAGE  # where the image goes in a prompt

IGNORE = -100


@dataclass
class ChatTokens:
    input_ids: torch.Tensor  # (L,)
    labels: torch.Tensor  # (L,) IGNORE except response tokens
    image_positions: torch.Tensor  # (L,) bool, num_image_tokens True
    truncated: bool = False  # max_length cut into the first turn (its answer is incomplete)


def _messages(turns: Sequence[tuple[str, str]], upto: int, with_answer: bool) -> list[dict[str, str]]:
    messages = []
    for i, (human, assistant) in enumerate(turns[: upto + 1]):
        messages.append({"role": "user", "content": human})
        if i < upto or with_answer:
            messages.append({"role": "assistant", "content": assistant})
    return messages


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _ids(tokenizer: PreTrainedTokenizerBase, text: str, num_image_tokens: int) -> tuple[list[int], list[bool]]:
    """Token ids of rendered text whose ``<Image>`` (once, if at all) becomes the placeholder run."""
    before, found, after = text.partition(IMAGE)
    ids = tokenizer(before, add_special_tokens=False)["input_ids"]
    if not found:
        return ids, [False] * len(ids)
    rest = tokenizer(after, add_special_tokens=False)["input_ids"]
    placeholder = tokenizer.pad_token_id  # replaced by the visual tokens' embeddings; load_llm sets a pad token
    return ids + [placeholder] * num_image_tokens + rest, [False] * len(ids) + [True] * num_image_tokens + [False] * len(rest)


def encode_conversation(
    tokenizer: PreTrainedTokenizerBase, turns: Sequence[tuple[str, str]], num_image_tokens: int, max_length: int | None = None
) -> ChatTokens:
    """Training tokens of a conversation; ``max_length`` cuts whole turns from the end (never the first)."""
    if not turns or IMAGE not in turns[0][0] or any(IMAGE in h for h, _ in turns[1:]):
        raise ValueError(f"a conversation needs exactly one {IMAGE}, in its first human turn: {list(turns)[:1]}")
    ids: list[int] = []
    labels: list[int] = []
    image: list[bool] = []
    for k in range(len(turns)):
        prompt, prompt_image = _ids(tokenizer, _render(tokenizer, _messages(turns, k, False), True), num_image_tokens)
        full, full_image = _ids(tokenizer, _render(tokenizer, _messages(turns, k, True), False), num_image_tokens)
        if full[: len(prompt)] != prompt or full[: len(ids)] != ids:
            raise ValueError("the chat template does not render a conversation as a prefix of its continuation")
        if max_length is not None and len(full) > max_length and k > 0:
            break
        labels += [IGNORE] * (len(prompt) - len(ids)) + full[len(prompt) :]
        ids, image = full, full_image
    truncated = max_length is not None and len(ids) > max_length
    if truncated:
        ids, labels, image = ids[:max_length], labels[:max_length], image[:max_length]
        if sum(image) != num_image_tokens:
            raise ValueError(f"max_length {max_length} cuts into the image slot")
    return ChatTokens(torch.tensor(ids), torch.tensor(labels), torch.tensor(image), truncated)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, history: Sequence[tuple[str, str]], question: str, num_image_tokens: int) -> ChatTokens:
    """Generation input: the history and a new question, ending with the assistant's turn opened (no labels)."""
    turns = [*history, (question, "")]
    ids, image = _ids(tokenizer, _render(tokenizer, _messages(turns, len(turns) - 1, False), True), num_image_tokens)
    return ChatTokens(torch.tensor(ids), torch.full((len(ids),), IGNORE), torch.tensor(image))
