"""Devices and process set-up, done once at the edge (the CLI, the scorer's entry point, benchmarks, tests).

glibc serves every allocation above 32 MiB with a fresh ``mmap`` and returns it to the OS on free, so each
CPU training step page-faults its activation buffers in again (hundreds of MB at 64 px): about 40% of a
CPU step was kernel time. Raising the mmap and trim thresholds keeps freed buffers in the heap for reuse;
``bench/distill_speed.py --allocator`` measures the difference. GPU memory is not affected.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re

from challenge_kit.core.errors import KitValueError

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # mallopt parameters (glibc malloc.h)
HEAP_LIMIT = 2**31 - 1  # mallopt takes an int: keep up to 2 GiB of freed memory for reuse
TOP_PAD = 2**28  # grow the heap in 256 MiB steps rather than page by page


def tune_allocator() -> bool:
    """Keep large freed CPU buffers for reuse (glibc only; elsewhere, or with DDKIT_NO_MALLOPT=1, a no-op)."""
    if os.environ.get("DDKIT_NO_MALLOPT"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return all(mallopt(param, value) == 1 for param, value in
               ((M_MMAP_THRESHOLD, HEAP_LIMIT), (M_TRIM_THRESHOLD, HEAP_LIMIT), (M_TOP_PAD, TOP_PAD)))


DEVICES = ("cpu", "cuda", "cuda:N", "mps")  # what --device takes; usable_device proves the one asked for


def known_device(name: str) -> bool:
    """Whether ``--device`` names one of ``DEVICES`` (``cuda:N`` for any N)."""
    return name in DEVICES and name != "cuda:N" or re.fullmatch(r"cuda:\d+", name) is not None


def _first_sentence(e: Exception) -> str:
    return str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else type(e).__name__


def resolve_device(device=None):
    """The device asked for, else CUDA when present, else the CPU: one code path for both."""
    import torch

    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_memory(device) -> int | None:
    """Bytes ``device`` has: a GPU's total memory, a CPU's physical memory (None where it cannot say)."""
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_properties(device).total_memory
    if device.type != "cpu":
        return None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def usable_device(device: str | None = None):
    """The torch device to run on, proven usable before any data is read: a missing GPU is one line now, not a
    CUDA traceback after the data is loaded. ``None`` picks CUDA when present, else the CPU."""
    import torch

    name = f"--device {device}" if device else "default device"
    try:
        dev = resolve_device(device)
    except RuntimeError as e:
        raise KitValueError(f"{name}: not a torch device ({_first_sentence(e)})") from None
    if dev.type == "cuda":  # no test allocation here: it would open a context on GPU 0 in every torchrun process
        if not torch.cuda.is_available():
            raise KitValueError(f"{name}: no usable CUDA GPU here (torch.cuda.is_available() is False); "
                                "use --device cpu")
        if (dev.index or 0) >= torch.cuda.device_count():
            raise KitValueError(f"{name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
        return dev
    if dev.type == "meta":
        raise KitValueError(f"{name}: tensors there have shapes but no values, nothing can be trained or scored; "
                            "use cpu or cuda")
    try:
        torch.empty(1, device=dev)
    except Exception as e:  # whatever the backend raises (not built in, no module for it): it is unusable
        raise KitValueError(f"{name}: this torch cannot allocate memory there ({_first_sentence(e)}); "
                            "use cpu or cuda") from None
    return dev
