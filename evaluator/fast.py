"""The fast scorer: the scorer's recipe run cheaper, for the kit's own decisions, never for the leaderboard.

Same network, init, shuffles, augmentation draws, optimizer and schedule as the faithful scorer; what changes
is the arithmetic. The network's forward runs under bfloat16 autocast where the hardware computes it natively
(CPUs with AVX-512 BF16 or AMX, CUDA GPUs that support it) and is compiled by ``torch.compile`` when a C++
compiler is there to build its kernels: at 64 px the scorer's step is memory-bound (ReLU, norm and pooling
passes over hundreds of MB), and the compiled graph fuses them. Losses and the optimizer stay in float32.
Asked to (``$DDKIT_STACKED_ROUNDS``), the fast mode also trains several rounds at once: one network per round,
their parameters stacked and run by ``torch.vmap`` (each round keeps its own init, shuffles and augmentation
draws), meant for a GPU that one small ConvNet leaves mostly idle. Fast scores are not bit-identical to the
official script's; ``tests/evaluator/test_fast_scorer.py`` shows they decide the same (paired rounds on real
images), and every result names the mode it was scored in.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch.func import functional_call, stack_module_state

from challenge_kit.core.contract import FAITHFUL, FAST, SCORER_MODES
from challenge_kit.core.errors import KitError

MODES = SCORER_MODES
COMPILERS = ("g++", "c++", "clang++")  # what inductor's C++ builder calls when $CXX is unset
# Rounds the fast scorer trains at once: 1 unless asked. On this project's CPU four stacked rounds ran at 0.11x
# the speed of one at a time (bench/evaluator_speed.py); on a GPU it is not measured yet, and
# bench/gpu_acceptance.py measures it. Eight rounds' steps at Tiny ImageNet's shape hold at most 16 GiB (ddkit
# plan counts 2.0 GiB for one in float32).
STACK_ENV = "DDKIT_STACKED_ROUNDS"
# Compiling imports torch.utils.cpp_extension, which on a machine without a CUDA runtime warns "No CUDA runtime is
# found, using CUDA_HOME=..." at the top of every log: it concerns building CUDA extensions, which the fast scorer
# never does (its kernels are inductor's, for the device it runs on).
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Arithmetic:
    """How one scorer mode computes on one device: recorded beside every score it produces."""

    mode: str = FAITHFUL
    precision: str = "float32"
    compiled: bool = False
    stacked: int = 1  # rounds trained at once

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        if self.mode == FAITHFUL:
            return "faithful scorer (float32, bit-identical to the official script)"
        how = [f"{self.precision} forward"] + ["compiled"] * self.compiled + [f"{self.stacked} rounds at once"] * (
            self.stacked > 1)
        return f"fast scorer ({', '.join(how)}; not the leaderboard's)"


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
    """What ``mode`` (a recipe's or an option's word) means on ``device``: the faithful mode is always float32
    eager. The one place a mode's name becomes the arithmetic the scorer takes."""
    if mode not in MODES:
        raise KitError(f"scorer mode {mode!r} is not one of {', '.join(MODES)}")
    if mode == FAITHFUL:
        return Arithmetic()
    return Arithmetic(FAST, "bfloat16" if native_bfloat16(device) else "float32", can_compile(device),
                      stacked_rounds())


def stacked_rounds() -> int:
    """``$DDKIT_STACKED_ROUNDS``: how many rounds the fast scorer trains at once (default 1)."""
    value = os.environ.get(STACK_ENV, "1")
    if not value.isdigit() or int(value) < 1:
        raise KitError(f"{STACK_ENV}: must be a whole number >= 1, got {value!r}")
    return int(value)


def forward(net: torch.nn.Module, how: Arithmetic):
    """The callable a training step runs: the net itself, or its compiled graph (shared across nets of one
    shape in a process: a new round's net reuses the kernels)."""
    return torch.compile(net) if how.compiled else net


def stacked(nets: list[torch.nn.Module], how: Arithmetic
            ) -> tuple[Callable[[torch.Tensor], torch.Tensor], list[torch.Tensor], Callable[[], None]]:
    """Several same-shaped nets as one: (forward of a (rounds, batch, ...) input, the stacked parameters to
    optimize, a call that writes them back into the nets). SGD is elementwise, so stepping the stacked
    parameters is stepping each net; every net's gradient comes from its own loss alone."""
    params, buffers = stack_module_state(nets)
    if buffers:
        raise ValueError("stacked rounds need a network without buffers (the scorer's ConvNet has none)")
    shape = copy.deepcopy(nets[0]).to("meta")
    many = torch.vmap(lambda p, x: functional_call(shape, p, (x,)))
    many = torch.compile(many) if how.compiled else many

    def unstack() -> None:
        with torch.no_grad():
            for r, net in enumerate(nets):
                for name, p in net.named_parameters():
                    p.copy_(params[name][r])

    return (lambda x: many(params, x)), list(params.values()), unstack


def precision(device: torch.device, how: Arithmetic):
    """The autocast context of a training step's forward (a no-op for float32)."""
    if how.precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, how.precision))
