"""Which frozen-model work runs in bf16: one switch, shared by the models that use it."""

from __future__ import annotations

import torch


def bf16_autocast(device: torch.device, bf16: bool | None) -> torch.autocast:
    """bf16 autocast when ``bf16`` is True; None (the extraction's default): on a GPU only.

    On a CPU bf16 is slower than float32 for these models, and the tiny profile's tests compare
    float32 outputs; ``bench/gpu_check.py`` sets True and False to measure what bf16 costs in fidelity.
    """
    enabled = device.type == "cuda" if bf16 is None else bf16
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)
