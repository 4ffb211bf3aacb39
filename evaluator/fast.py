"""The fast scorer: the scorer's recipe run cheaper, for the kit's own decisions, never for the leaderboard.

Same network, init, shuffles, augmentation draws, optimizer and schedule as the faithful scorer; what changes
is the arithmetic. The network's forward runs under bfloat16 autocast where the hardware computes it natively
(CPUs with AVX-512 BF16 or AMX, CUDA GPUs that support it) and is compiled by ``torch.compile`` when a C++
compiler is there to build its kernels: at 64 px the scorer's step is memory-bound (ReLU, norm and pooling
passes over hundreds of MB), and the compiled graph fuses them. Losses and the optimizer stay in float32.
Fast scores are not bit-identical to the official script's; ``tests/test_fast_scorer.py`` shows they decide the
same (paired rounds on real images), and every result names the mode it was scored in.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import asdict, dataclass

import torch

from challenge_kit.core.contract import FAITHFUL, FAST, SCORER_MODES

MODES = SCORER_MODES
COMPILERS = ("g++", "c++", "clang++")  # what inductor's C++ builder calls when $CXX is unset


@dataclass(frozen=True)
class Arithmetic:
    """How one scorer mode computes on one device: recorded beside every score it produces."""

    mode: str = FAITHFUL
    precision: str = "float32"
    compiled: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        if self.mode == FAITHFUL:
            return "faithful scorer (float32, bit-identical to the official script)"
        return f"fast scorer ({self.precision} forward{', compiled' if self.compiled else ''}; not the leaderboard's)"


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware (emulated bf16 would be slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def can_compile(device: torch.device) -> bool:
    """Whether ``torch.compile`` can build kernels here: inductor needs a C/C++ compiler on the CPU and for
    Triton's launcher on CUDA (the CUDA runtime image has none unless one is installed)."""
    if device.type not in ("cpu", "cuda") or os.environ.get("DDKIT_NO_COMPILE"):
        return False
    return any(shutil.which(c) for c in ((os.environ["CXX"],) if os.environ.get("CXX") else COMPILERS))


def arithmetic(mode: str, device: torch.device) -> Arithmetic:
    """What ``mode`` means on ``device``: the faithful mode is always float32 eager."""
    if mode not in MODES:
        raise ValueError(f"scorer mode {mode!r} is not one of {', '.join(MODES)}")
    if mode == FAITHFUL:
        return Arithmetic()
    return Arithmetic(FAST, "bfloat16" if native_bfloat16(device) else "float32", can_compile(device))


def forward(net: torch.nn.Module, how: Arithmetic):
    """The callable a training step runs: the net itself, or its compiled graph (shared across nets of one
    shape in a process: a new round's net reuses the kernels)."""
    return torch.compile(net) if how.compiled else net


def precision(device: torch.device, how: Arithmetic):
    """The autocast context of a training step's forward (a no-op for float32)."""
    if how.precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, how.precision))
