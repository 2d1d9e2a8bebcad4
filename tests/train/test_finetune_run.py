"""Stage-2 runs from a cache: what trains, what is saved, save -> load -> same tokens, exact resume, refusals.

The cache is the synthetic one of the stage-1 tests; the LLM is a small random LLaMA saved as a
Hugging Face folder with SmolLM2's real tokenizer and chat template (the loader reads it as it reads
Vicuna's folder), so a run takes seconds.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file
from synthetic_cache import ROWS, write_cache, write_config
from PIL import Image

from lyrics.chat import Chat
from lyrics.config import ConfigError, load_config
from lyrics.data.instructions import Instruction, MissingImagesError, write_jsonl
from lyrics.evaluate.assistant import Assistant
from lyrics.evaluate.run import EvalPlan, evaluate, summary
from lyrics.model.factory import build_stage1_model
from lyrics.model.llm import load_llm
from lyrics.model.lvlm import load_lvlm
from lyrics.model.pretraining import save_stage1
from lyrics.extract.checkpoints import component_spec
from lyrics.train.finetune import FinetunePlan, prepare, train
from lyrics.train.cache_data import cache_expectation
from lyrics.train.finetune_data import IGNORE, open_instruction_sets
from lyrics.train.loss_curve import metrics_files, read_losses
from tests.models import write_small_llm

NEW_TOKENS = 6


def instructions(keys: list[str]) -> list[Instruction]:
    examples = []
    for i, key in enumerate(keys):
        examples.append(Instruction(f"t/caption/{i}", "caption", key, "t", ((f"<Image>Describe image {i}.", f"a photo number {i}"),)))
        examples.append(Instruction(f"t/vqa/{i}", "vqa", key, "t", (("<Image>Is it red?", "yes" if i % 2 else "no"), ("Why?", "it is"))))
    examples.append(Instruction("t/conversation/text", "conversation", None, "t", (("Hello?", "Hi."),)))  # text only: left out
    return examples


def edit(root: Path, llm: Path):
    def change(raw: dict) -> None:
        raw["profiles"]["tiny"]["llm"]["checkpoint"] = str(llm)
        raw["instructions"] = {"synthetic": {"instructions": str(root / "synthetic.jsonl"), "images": "sample"}}
        raw["training"]["finetune"]["data"] = ["synthetic"]
        raw["training"]["finetune"]["recipes"]["tiny"].update(
            steps=4, global_batch=4, micro_batch=2, lr=2e-3, checkpoint_every=2, log_every=1,
            max_spatial_tokens=48, max_prompt_objects=2, max_text_tokens=256, lora_rank=4, lora_alpha=8,
        )  # fmt: skip

    return change


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    llm = write_small_llm(root / "llm")
    config = load_config(write_config(root, edit(root, llm)))
    write_cache(config)
    write_jsonl(root / "synthetic.jsonl", instructions([f"img{i}" for i in range(ROWS)]))
    return root, config


def plan_for(config, root: Path, name: str, **kwargs) -> FinetunePlan:
    return FinetunePlan.make(config, from_scratch=True, run_dir=root / "runs" / name, **kwargs)


def test_a_run_trains_the_mqformer_projection_and_lora_and_saves_them(setup):
    root, config = setup
    plan = plan_for(config, root, "plain")
    assert plan.accumulate == 2 and plan.recipe.steps == 4
    prepared = prepare(plan)
    assert len(prepared.dataset) == 2 * ROWS  # the text-only example is left out
    model = prepared.model
    llm_before = {n: p.detach().clone() for n, p in model.llm.named_parameters() if "lora_" not in n}
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {n for n, _ in model.named_parameters() if n.startswith(("mqformer.", "projection.")) or "lora_" in n} - {
        n for n, p in model.mqformer.named_parameters(prefix="mqformer") if not p.requires_grad
    }
    # LoRA rank 4 on q_proj (64 -> 64) and v_proj (64 -> 32) of two layers.
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) == 2 * (4 * (64 + 64) + 4 * (64 + 32))
    result = train(plan, prepared, progress=False)

    assert result == plan.run_dir / "lyrics"
    assert {p.name for p in result.iterdir()} == {"model.safetensors", "config.json", "lora", "tokenizer"}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (result / "lora").iterdir()}
    assert all(k.startswith(("mqformer.", "projection.")) for k in load_file(result / "model.safetensors"))
    assert all(torch.equal(p, llm_before[n]) for n, p in model.llm.named_parameters() if "lora_" not in n)
    # Checkpoints hold the trained parameters only, not the frozen LLM.
    state = torch.load(plan.run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert {k.removeprefix("model.") for k in state} == trained
    losses = read_losses(metrics_files(plan.run_dir / "logs" / "csv"))["loss"]
    assert sorted(losses) == [0, 1, 2, 3] and all(v > 0 for v in losses.values())
    assert (plan.run_dir / "loss_curve.png").stat().st_size > 0
    saved = json.loads((result / "config.json").read_text())
    assert saved["prompt"] == {"semantic_aware": True, "spatial_text_in_prompt": True, "max_spatial_tokens": 48,
                               "max_prompt_objects": 2, "max_text_tokens": 256}  # fmt: skip


def train_then_reload(config, root: Path, name: str):
    """Two steps of a run, then its saved result on a freshly loaded LLM: (prepared, result folder,
    loaded model, tokens the trained model generates, tokens the loaded one generates) for three rows."""
    plan = plan_for(config, root, name, steps=2)
    prepared = prepare(plan)
    result = train(plan, prepared, progress=False)
    items = [prepared.dataset[i] for i in (0, 3, 8)]
    batch = prepared.encoder.prompt_batch(items, [()] * 3, ["<Image>Describe the image."] * 3)
    before = prepared.model.eval().generate(batch.image, batch.input_ids, batch.attention_mask, batch.image_positions, NEW_TOKENS)
    llm, _ = load_llm(component_spec(config, "tiny", "llm"))
    loaded = load_lvlm(result, llm)
    after = loaded.model.generate(batch.image, batch.input_ids, batch.attention_mask, batch.image_positions, NEW_TOKENS)
    return prepared, result, loaded, before, after


def test_a_saved_model_reloads_and_generates_the_same_tokens(setup):
    root, config = setup
    prepared, _, loaded, before, after = train_then_reload(config, root, "reload")
    assert before.shape[1] > 0 and torch.equal(before, after)
    assert loaded.prompt == prepared.encoder.settings and loaded.lora == prepared.lora
    # The loaded LoRA is the trained one, not a fresh initialisation (fresh lora_B is zero).
    assert any(p.abs().sum() > 0 for n, p in loaded.model.named_parameters() if "lora_B" in n)


class CrashAt(L.Callback):
    """Fails like a killed job: after the checkpoint at step 2, in the middle of step 3."""

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == 3:
            raise RuntimeError("simulated crash")


def test_a_resumed_run_ends_exactly_where_an_uninterrupted_one_does(setup):
    root, config = setup
    straight, resumed = plan_for(config, root, "straight"), plan_for(config, root, "resumed")
    train(straight, prepare(straight), progress=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(resumed, prepare(resumed), progress=False, callbacks=[CrashAt()])
    assert not (resumed.run_dir / "lyrics").exists()
    again = prepare(resumed)
    assert again.resume == resumed.run_dir / "checkpoints" / "last.ckpt"
    train(resumed, again, progress=False)
    a, b = (load_file(plan.run_dir / "lyrics" / "model.safetensors") for plan in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    a, b = (load_file(plan.run_dir / "lyrics" / "lora" / "adapter_model.safetensors") for plan in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logged = [read_losses(metrics_files(plan.run_dir / "logs" / "csv"))["loss"] for plan in (straight, resumed)]
    assert logged[0] == logged[1]


def test_examples_whose_images_are_not_cached_stop_the_run_naming_them(setup):
    root, config = setup
    path = root / "missing.jsonl"
    write_jsonl(path, instructions(["img0", "nowhere", "elsewhere"]))

    def change(raw: dict) -> None:
        edit(root, Path(config.profiles["tiny"].llm.checkpoint))(raw)
        raw["instructions"]["synthetic"]["instructions"] = str(path)

    other = load_config(write_config(root, change))
    with pytest.raises(MissingImagesError, match=r"2 image\(s\) of the examples have no row in .*: elsewhere, nowhere"):
        prepare(plan_for(other, root, "missing"))


def test_plans_are_refused_before_any_work(setup):
    root, config = setup
    with pytest.raises(ConfigError, match=r"pretrain-tiny/stage1: no stage-1 result \(run `make pretrain` first"):
        FinetunePlan.make(config)
    with pytest.raises(ConfigError, match="exclude each other"):
        FinetunePlan.make(config, stage1=root, from_scratch=True)
    with pytest.raises(ConfigError, match="no instruction set 'vqav2'"):
        FinetunePlan.make(config, data=["vqav2"], from_scratch=True)
    with pytest.raises(ConfigError, match="global_batch 4 is not a multiple of micro_batch 3"):
        FinetunePlan.make(load_config(write_config(root, lambda raw: (edit(root, root / "llm")(raw), raw["training"]["finetune"]["recipes"]["tiny"].update(micro_batch=3, global_batch=4)))), from_scratch=True)  # fmt: skip


def test_a_stage1_without_spatial_representation_reads_no_spatial_text(setup):
    root, config = setup
    init = build_stage1_model(config, "tiny", spatial_representation=False)
    stage1 = save_stage1(init.model, init.tokenizer, root / "runs" / "pretrain-tiny-no-spatial" / "stage1")
    plan = FinetunePlan.make(config, stage1=stage1)
    assert plan.run_dir.name == "finetune-tiny-no-spatial"
    encoder = prepare(plan).encoder
    assert not encoder.settings.semantic_aware and not encoder.settings.spatial_text_in_prompt


def test_the_sample_encoder_puts_the_spatial_text_after_the_image_and_labels_the_answers(setup):
    root, config = setup
    prepared = prepare(plan_for(config, root, "encoder"))
    encoder = prepared.encoder
    item = next(i for i in (prepared.dataset[2 * n] for n in range(ROWS)) if i["spatial_text"].count("<br>") >= 3)
    batch = encoder.training_batch([item])
    text = encoder.llm_tokenizer.decode(batch.input_ids[0][~batch.image_positions[0]])
    objects = ["<br>" + o for o in item["spatial_text"].split("<br>")[1:]]
    assert f"<|im_start|>user\n{''.join(objects[:2])}\nDescribe image" in text and objects[2] not in text  # max_prompt_objects = 2
    labelled = batch.labels[0] != IGNORE
    assert encoder.llm_tokenizer.decode(batch.input_ids[0][labelled]) == f"{item['turns'][0][1]}<|im_end|>\n"
    # The MQ-Former reads "[BOS]" and whole objects, as many as fit in max_spatial_tokens (48).
    ids = batch.image.spatial_ids[0, : batch.image.spatial_lengths[0]]
    assert ids[0] == encoder.mq_tokenizer.convert_tokens_to_ids("[BOS]") and len(ids) <= 48
    read = encoder.mq_tokenizer.decode(ids[1:]).replace(" ", "")
    assert read in {"".join(objects[:k]).replace(" ", "") for k in range(1, len(objects) + 1)}
    # A prompt that would not leave room for the whole answer loses prompt objects first.
    whole = len(batch.input_ids[0])
    short = dataclasses.replace(encoder, settings=dataclasses.replace(encoder.settings, max_text_tokens=whole - 1)).training_batch([item])
    text = encoder.llm_tokenizer.decode(short.input_ids[0][~short.image_positions[0]])
    assert objects[0] in text and objects[1] not in text and len(short.input_ids[0]) < whole
    assert encoder.llm_tokenizer.decode(short.input_ids[0][short.labels[0] != IGNORE]) == f"{item['turns'][0][1]}<|im_end|>\n"


@pytest.fixture(scope="module")
def trained(setup) -> tuple[FinetunePlan, Assistant, list[dict]]:
    """The "plain" run (trained by the first test unless this runs alone), its assistant and the cache rows."""
    root, config = setup
    plan = plan_for(config, root, "plain")
    if not (plan.run_dir / "lyrics").exists():
        train(plan, prepare(plan), progress=False)
    return plan, Assistant.load(config, plan.run_dir / "lyrics"), prepare_rows(config, root)


def test_the_assistant_answers_batches_and_photos_and_the_chat_holds_a_conversation(setup, trained, sample_dir, tmp_path):
    """Generation for evaluation (batched = one by one; a photo = its refined row) and `lyrics.chat`'s commands."""
    _, config = setup
    _, assistant, all_rows = trained
    rows = [all_rows[i] for i in (0, 5, 9)]
    prompts = ["Describe the image.", "<Image>What is in it?", "Is it red?"]
    batched = assistant.generate(rows, prompts, NEW_TOKENS)
    assert batched == [assistant.generate([row], [prompt], NEW_TOKENS)[0] for row, prompt in zip(rows, prompts)]
    photo = Image.open(sample_dir / "images" / "chelsea.jpg").convert("RGB")
    refined = assistant.refine(photo)
    assert assistant.generate([photo], ["What animal is this?"], NEW_TOKENS) == assistant.generate(
        [refined.row(config.extraction.storage.top_q)], ["What animal is this?"], NEW_TOKENS
    )

    chat = Chat(assistant, photo, "chelsea", NEW_TOKENS)
    assert chat.handle("/tags") == chat.tags() and all(tag in chat.tags() for tag in refined.tags)
    assert len(chat.handle("/boxes").splitlines()) == max(1, len(refined.box_labels))
    first = chat.handle("What animal is this?")
    chat.handle("And its color?")
    assert [h for h, _ in chat.history] == ["<Image>What animal is this?", "And its color?"] and chat.history[0][1] == first
    assert chat.handle("/draw " + str(tmp_path / "chat.png")).startswith("wrote") and (tmp_path / "chat.png").stat().st_size > 0
    assert chat.handle("/nope").startswith("unknown command /nope")
    assert chat.handle("/reset") == "(conversation cleared)" and chat.history == []
    assert chat.handle("/quit") is None and chat.handle("") is None


def prepare_rows(config, root: Path) -> list[dict]:
    """Cache rows as the assistant takes them (features and spatial text)."""
    dataset = open_instruction_sets(config, "tiny", ["synthetic"], cache_expectation(config, "tiny"))
    return [dataset[2 * i] for i in range(ROWS)]


def test_an_evaluation_scores_resumes_after_a_kill_and_refuses_missing_files(setup):
    """`make eval` on an MME-style benchmark of the synthetic cache's images (the runner's path is the same for every task)."""
    root, config = setup
    plan = plan_for(config, root, "plain")
    if not (plan.run_dir / "lyrics").exists():  # trained by the first test unless it runs alone
        train(plan, prepare(plan), progress=False)
    questions = [{"subtask": "existence", "image": f"img{i}.jpg", "question": q, "answer": a}
                 for i in range(3) for q, a in (("Is there a tag?", "Yes"), ("Is there a cat?", "No"))]  # fmt: skip
    (root / "mme.json").write_text(json.dumps(questions))

    def with_bench(raw: dict) -> None:
        edit(root, root / "llm")(raw)
        raw["evaluation"].update(batch_size=4, max_new_tokens=4)
        raw["benchmarks"] = {"synthetic-mme": {"task": "mme", "format": "mme", "images": "sample", "source": "the test",
                                               "files": {"questions": str(root / "mme.json")}},
                             "synthetic-pope": {"task": "pope", "format": "pope", "images": "sample", "source": "the test",
                                                "splits": ["random", "popular"], "files": {"questions": str(root / "pope_{split}.json")}},
                             "synthetic-test-dev": {"task": "vqa", "format": "vqa", "submission": True, "images": "sample", "source": "the test",
                                                    "files": {"questions": str(root / "questions.json"), "image_names": str(root / "images.json")}},
                             "absent": {"task": "vqa", "format": "vqa", "images": "sample", "source": "https://visualqa.org",
                                        "files": {"questions": str(root / "nowhere.json")}}}  # fmt: skip

    bench_config = load_config(write_config(root, with_bench))
    with pytest.raises(ConfigError, match=r"(?s)files not found:.*questions: .*nowhere\.json.*They come from: https://visualqa\.org"):
        EvalPlan.make(bench_config, "absent", model=plan.run_dir / "lyrics")
    with pytest.raises(ConfigError, match="no stage-2 result"):
        EvalPlan.make(bench_config, "synthetic-mme", model=root / "missing")
    evaluation = EvalPlan.make(bench_config, "synthetic-mme", model=plan.run_dir / "lyrics")
    out = evaluation.out_dir("synthetic-mme")
    assert out == root / "results" / "synthetic-mme" / plan.run_dir.name
    (first,) = evaluate(evaluation, progress=False)
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 6 and first["items"] == 6 and set(first["metrics"]["subtasks"]) == {"existence"}
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(first))
    # A kill mid-write: two whole lines and half a third survive; the rerun completes to the same predictions.
    (out / "predictions.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:15])
    (again,) = evaluate(evaluation, progress=False)
    assert (out / "predictions.jsonl").read_text().splitlines() == lines and again == first

    # A benchmark of two splits: the file of each ({split} in its path), a result of each.
    for setting, label in (("random", "yes"), ("popular", "no")):
        records = [{"question_id": i, "image": f"img{i}.jpg", "text": "Is there a cat in the image?", "label": label} for i in range(3)]
        (root / f"pope_{setting}.json").write_text("".join(json.dumps(r) + "\n" for r in records))
    pope = EvalPlan.make(bench_config, "synthetic-pope", model=plan.run_dir / "lyrics")
    assert pope.results == {"random": "synthetic-pope-random", "popular": "synthetic-pope-popular"}
    random, popular = evaluate(pope, progress=False)
    assert (random["benchmark"], random["split"], popular["benchmark"], popular["split"]) == ("synthetic-pope-random", "random", "synthetic-pope-popular", "popular")
    for result, label in ((random, "yes"), (popular, "no")):
        records = [json.loads(line) for line in (pope.out_dir(result["benchmark"]) / "predictions.jsonl").read_text().splitlines()]
        assert [r["target"]["label"] for r in records] == [label] * 3
        assert result["metrics"]["total"] == 3
    assert EvalPlan.make(bench_config, "synthetic-pope", model=plan.run_dir / "lyrics", split="popular").results == {"popular": "synthetic-pope-popular"}

    # A test-dev split without answers: the VQA server's file, no scores.
    (root / "questions.json").write_text(json.dumps({"questions": [{"question_id": 70 + i, "image_id": i, "question": "What is it?"} for i in range(2)]}))
    (root / "images.json").write_text(json.dumps({"images": [{"id": i, "file_name": f"img{i}.jpg"} for i in range(2)]}))
    test_dev = EvalPlan.make(bench_config, "synthetic-test-dev", model=plan.run_dir / "lyrics")
    (result,) = evaluate(test_dev, progress=False)
    submission = json.loads(Path(result["submission"]).read_text())
    predictions = [json.loads(line)["prediction"] for line in (test_dev.out_dir("synthetic-test-dev") / "predictions.jsonl").read_text().splitlines()]
    assert submission == [{"question_id": 70, "answer": predictions[0]}, {"question_id": 71, "answer": predictions[1]}]
    assert "metrics" not in result and "server file" in summary(result)
    assert not (test_dev.out_dir("synthetic-test-dev") / "metrics.json").exists()


def test_an_export_answers_as_its_run_and_refuses_other_frozen_models(setup, trained, sample_dir, tmp_path):
    """`python -m lyrics.export` -> `LyricsModel.from_pretrained`: the same greedy answers as the run, plain and merged."""
    from lyrics.export import export
    from lyrics.pretrained import FingerprintMismatchError, LyricsModel

    _, config = setup
    plan, assistant, all_rows = trained
    rows = [all_rows[i] for i in (0, 5)]
    photo = Image.open(sample_dir / "images" / "chelsea.jpg").convert("RGB")
    prompts = ["Describe the image.", "<Image>What is in it?", "What animal is this?"]
    expected = assistant.generate([*rows, photo], prompts, NEW_TOKENS)
    frozen = {name: component_spec(config, "tiny", name).checkpoint for name in ("clip", "ram", "gdino", "sam")}

    plain = export(config, plan.run_dir, tmp_path / "plain")
    assert sorted(p.name for p in plain.iterdir()) == ["README.md", "config.json", "frozen", "llm_arch.json", "lora", "model.safetensors", "tokenizer"]
    description = json.loads((plain / "config.json").read_text())
    assert description["llm"]["location"] == str(component_spec(config, "tiny", "llm").checkpoint.resolve())
    assert description["frozen"]["clip"]["fingerprint"] == component_spec(config, "tiny", "clip").fingerprint()
    assert "LyricsModel.from_pretrained" in (plain / "README.md").read_text()
    model = LyricsModel.from_pretrained(plain, frozen=frozen)
    assert model.answer([*rows, photo], prompts, NEW_TOKENS) == expected

    merged = export(config, plan.run_dir / "lyrics", tmp_path / "merged", merge_lora=True)
    assert (merged / "llm" / "config.json").is_file() and not (merged / "lora").exists()
    assert LyricsModel.from_pretrained(merged, frozen=frozen).answer(rows, prompts[:2], NEW_TOKENS) == expected[:2]

    with pytest.raises(FileExistsError, match="exists and is not empty"):
        export(config, plan.run_dir, plain)
    other = tmp_path / "other-clip"
    shutil.copytree(frozen["clip"], other) if frozen["clip"].is_dir() else shutil.copy(frozen["clip"], other)
    changed = next(p for p in sorted(other.rglob("*")) if p.is_file()) if other.is_dir() else other
    changed.write_bytes(changed.read_bytes() + b"\0")
    with pytest.raises(FingerprintMismatchError, match=rf"{other}: clip checkpoint has fingerprint sha256:\w+/arch:\w+, but the model was trained on features of {description['frozen']['clip']['fingerprint']}"):
        LyricsModel.from_pretrained(plain, frozen={**frozen, "clip": other})
    with pytest.raises(FileNotFoundError, match="nowhere"):
        LyricsModel.from_pretrained(plain, frozen=frozen, llm=tmp_path / "nowhere")
