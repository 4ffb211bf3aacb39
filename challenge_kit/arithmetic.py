"""What ``experts.arithmetic`` and ``distill.arithmetic`` mean on a device: "float32", or "fast", bfloat16
autocast where the device computes bfloat16 natively (``evaluator.fast.native_bfloat16``: CPUs with AVX-512 BF16
or AMX, CUDA GPUs that support it) and float32 where it does not (emulated bfloat16 is slower than float32).

Under autocast the network's convolutions and matrix products (forward, and following them their backward) run in
bfloat16; the parameters, losses, optimizer updates and everything accumulated across steps stay float32.
"""

from __future__ import annotations

import contextlib

import torch

from challenge_kit.parts import ARITHMETICS
from evaluator.fast import native_bfloat16


def autocast_dtype(arithmetic: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of ``arithmetic`` on ``device``: bfloat16, or None (the tensors' own dtype)."""
    if arithmetic not in ARITHMETICS:
        raise ValueError(f"unknown arithmetic {arithmetic!r}; expected one of {ARITHMETICS}")
    return torch.bfloat16 if arithmetic == "fast" and native_bfloat16(torch.device(device)) else None


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """The context a forward runs in: autocast to ``dtype``, or nothing for None."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def precision_name(dtype: torch.dtype | None) -> str:
    """What a file or a result records: "bfloat16", or "float32" for None."""
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")
