"""Stage 2 on an LLM folder laid out exactly as lmsys ships Vicuna-13B v1.5 (small and random here):
a sentencepiece-only tokenizer without chat template or pad token, `.bin` weight shards with an index.

It loads, renders prompts in Vicuna v1's format with labels on the answers and `</s>` only, trains,
saves and reloads to the same tokens, and answers batches as it answers one by one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from synthetic_cache import ROWS, write_cache, write_config
from test_finetune_run import NEW_TOKENS, edit, instructions, prepare_rows, train_then_reload

from lyrics.config import REPO_ROOT, load_config
from lyrics.data.instruction_templates import TEMPLATES
from lyrics.data.instructions import write_jsonl
from lyrics.evaluate.assistant import Assistant
from lyrics.extract.checkpoints import component_spec
from lyrics.model.llm import load_llm
from lyrics.model.prompt_format import VICUNA_SYSTEM
from lyrics.model.vicuna_layout import write_vicuna_folder
from lyrics.train.finetune_text import IGNORE, encode_conversation


def corpus() -> list[str]:
    """Text like the prompts the model will see, for the test's sentencepiece model."""
    lines = (REPO_ROOT / "data" / "sample" / "annotations.yaml").read_text().splitlines()
    templates = [t for group in TEMPLATES.values() for t in group]
    return [VICUNA_SYSTEM, "USER: ASSISTANT:", *templates, *lines] * 3


def with_arch(root: Path, prompt_format: str):
    arch = {"dtype": "float32", "lora_targets": ["q_proj", "v_proj"], "prompt_format": prompt_format}
    path = root / f"llm-{prompt_format}.json"
    path.write_text(json.dumps(arch))
    base = edit(root, root / "vicuna")

    def change(raw: dict) -> None:
        base(raw)
        raw["profiles"]["tiny"]["llm"]["arch"] = str(path)

    return change


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("vicuna")
    write_vicuna_folder(root / "vicuna", corpus(), seed=0)
    config = load_config(write_config(root, with_arch(root, "vicuna_v1")))
    write_cache(config)
    write_jsonl(root / "synthetic.jsonl", instructions([f"img{i}" for i in range(ROWS)]))
    return root, config


def test_the_folder_is_vicunas_layout(setup):
    root, _ = setup
    names = sorted(p.name for p in (root / "vicuna").iterdir())
    assert names == ["config.json", "generation_config.json", "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin",
                     "pytorch_model.bin.index.json", "special_tokens_map.json", "tokenizer.model", "tokenizer_config.json"]  # fmt: skip
    tokenizer_config = json.loads((root / "vicuna" / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "LlamaTokenizer" and tokenizer_config["pad_token"] is None
    assert "chat_template" not in tokenizer_config


def test_it_loads_with_vicunas_prompt_format_and_a_pad_token(setup):
    _, config = setup
    model, tokenizer = load_llm(component_spec(config, "tiny", "llm"))
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (tokenizer.pad_token, tokenizer.pad_token_id, tokenizer.eos_token_id) == ("<unk>", 0, 2)  # pads as LLaVA pads Vicuna
    assert model.generation_config.eos_token_id == 2  # generation stops at </s>
    messages = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Who?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == f"<s>{VICUNA_SYSTEM} USER: Hi? ASSISTANT: Hello.</s>USER: Who? ASSISTANT:"


def test_labels_are_the_answers_and_their_end_of_sequence_only(setup):
    _, config = setup
    _, tokenizer = load_llm(component_spec(config, "tiny", "llm"))
    tokens = encode_conversation(tokenizer, [("<Image>What is it?", "a red bus"), ("Where?", "on a street")], num_image_tokens=4)
    labelled = tokens.labels != IGNORE
    runs = torch.tensor_split(tokens.labels[labelled], torch.where(torch.diff(torch.where(labelled)[0]) > 1)[0] + 1)
    assert [tokenizer.decode(run) for run in runs] == ["a red bus</s>", "on a street</s>"]
    assert int(tokens.image_positions.sum()) == 4 and tokens.input_ids[0] == tokenizer.bos_token_id
    assert (tokens.input_ids[labelled] == tokens.labels[labelled]).all()


def test_a_folder_without_chat_template_and_no_format_is_refused_naming_the_setting(setup):
    root, _ = setup
    config = load_config(write_config(root, with_arch(root, "chat_template")))
    with pytest.raises(ValueError, match=r'no chat template.*prompt_format chat_template.*"prompt_format": "vicuna_v1"'):
        load_llm(component_spec(config, "tiny", "llm"))


def test_it_trains_saves_reloads_and_generates_in_batches(setup):
    root, config = setup
    _, result, _, before, after = train_then_reload(config, root, "vicuna")
    assert before.shape[1] > 0 and torch.equal(before, after)
    assistant = Assistant.load(config, result)
    rows = [prepare_rows(config, root)[i] for i in (0, 5, 9)]
    prompts = ["Describe the image.", "<Image>What is in it?", "Is it red?"]
    assert assistant.generate(rows, prompts, NEW_TOKENS) == [assistant.generate([r], [p], NEW_TOKENS)[0] for r, p in zip(rows, prompts)]
