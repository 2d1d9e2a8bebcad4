"""How a conversation becomes the LLM's prompt text: the folder's chat template, or Vicuna v1's format.

The LLM's architecture JSON names the format (``prompt_format``):

- ``chat_template``: the tokenizer folder's own chat template, as SmolLM2-Instruct and most recent
  instruction models ship it. A folder without one is refused, naming the setting.
- ``vicuna_v1``: the conversation format Vicuna v1.1+ was trained with and the LLaVA/Lyrics line
  uses (LLaVA's ``conv_vicuna_v1``): the system sentence, then ``USER: ... ASSISTANT: ...</s>``
  turns. Vicuna-13B v1.5 as lmsys ships it has no chat template, so the paper profile uses this::

      <s>A chat between ... questions. USER: <question> ASSISTANT: <answer></s>USER: <question> ASSISTANT:

The format is installed as the tokenizer's chat template, so training, generation and the saved
stage-2 tokenizer all render conversations one way. The answer's tokens and the ``</s>`` that
ends it are what stage 2 trains on; generation stops at ``</s>``.
"""

from __future__ import annotations

from typing import Literal

from transformers import PreTrainedTokenizerBase

PromptFormat = Literal["chat_template", "vicuna_v1"]
PROMPT_FORMATS: tuple[str, ...] = ("chat_template", "vicuna_v1")
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
VICUNA_V1_TEMPLATE = (
    "{{ bos_token }}" + VICUNA_SYSTEM + " "
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {{ message['content'] }} "
    "{% else %}ASSISTANT: {{ message['content'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def apply_prompt_format(tokenizer: PreTrainedTokenizerBase, prompt_format: PromptFormat, where: str) -> None:
    """Make the tokenizer render conversations in ``prompt_format`` and pad batches safely
    (``where``: the folder and the arch file, named in errors)."""
    if prompt_format == "vicuna_v1":
        if tokenizer.eos_token is None:
            raise ValueError(f"{where}: prompt_format vicuna_v1 ends every answer with the end-of-sequence token, and the tokenizer has none")
        tokenizer.chat_template = VICUNA_V1_TEMPLATE
    elif not tokenizer.chat_template:
        raise ValueError(
            f"{where}: the tokenizer has no chat template, and the LLM's arch file sets prompt_format chat_template "
            '(the default); set "prompt_format": "vicuna_v1" for a Vicuna / LLaMA-2 folder as lmsys ships it'
        )
    if tokenizer.pad_token is None:
        # As LLaVA pads Vicuna: with the unknown token, else the end-of-sequence token. Padded places are
        # masked out of attention and carry no labels, so the id never stands for text.
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    if tokenizer.pad_token is None:
        raise ValueError(f"{where}: the tokenizer has no pad, unknown or end-of-sequence token to pad batches with")
