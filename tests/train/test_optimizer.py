"""The trainers' AdamW: weight decay off for biases and norms, a second peak lr where a recipe asks
for one (stage 2's visual_lr), and every group on the same warm-up and cosine."""

import pytest
import torch

from lyrics.config import FinetuneRecipe
from lyrics.train.runs import adamw_cosine


def recipe(**extra) -> FinetuneRecipe:
    return FinetuneRecipe(steps=10, global_batch=1, micro_batch=1, lr=1e-3, warmup_ratio=0.2, **extra)


def test_groups_by_decay_and_lr_and_the_schedule_scales_them_alike():
    visual, llm = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
    frozen = torch.nn.Linear(3, 3).requires_grad_(False)
    params = [*visual.parameters(), *llm.parameters(), *frozen.parameters()]
    mine = {id(p) for p in visual.parameters()}
    built = adamw_cosine(params, recipe(visual_lr=2e-4), lambda p: 2e-4 if id(p) in mine else 1e-3)
    optimizer, schedule = built["optimizer"], built["lr_scheduler"]["scheduler"]
    groups = [(g["initial_lr"], g["weight_decay"], {id(p) for p in g["params"]}) for g in optimizer.param_groups]
    # The recipe's lr first, decayed before not; frozen parameters in no group.
    assert groups == [
        (1e-3, 0.05, {id(llm.weight)}), (1e-3, 0.0, {id(llm.bias)}),
        (2e-4, 0.05, {id(visual.weight)}), (2e-4, 0.0, {id(visual.bias)}),
    ]  # fmt: skip
    for _ in range(2):  # warm-up: 2 steps of 10
        optimizer.step()
        schedule.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-3, 1e-3, 2e-4, 2e-4])


def test_without_a_second_lr_the_groups_are_the_two_of_every_earlier_run():
    layer = torch.nn.Linear(3, 3)
    groups = adamw_cosine([layer.bias, layer.weight], recipe())["optimizer"].param_groups  # a bias first
    assert [(g["lr"], g["weight_decay"], len(g["params"])) for g in groups] == [(0.0, 0.05, 1), (0.0, 0.0, 1)]  # warm-up starts at 0
