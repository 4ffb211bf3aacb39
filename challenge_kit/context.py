"""What every stage of a run shares and none changes: where it computes, which rank of a torchrun job it is,
whether it shows progress, where its real images come from and which sinks watch it.

The command line builds one ``RunContext`` from its options and the stages hand it down, so each stage takes
its own inputs and one context rather than six arguments it only passes on. Math and pure functions keep plain
arguments.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from challenge_kit.core.devices import usable_device
from challenge_kit.core.parallel import LOCAL, Shard, process_group
from challenge_kit.tracking import Track


@dataclass(frozen=True)
class DataSource:
    """The real images: ``root`` in the dataset's own layout (or, with ``image_folder``, an ImageFolder), put there
    first with ``download``, decoded once into ``cache_dir`` (None: the default cache)."""

    root: str | Path
    image_folder: bool = False
    download: bool = False
    cache_dir: str | Path | None = None


@dataclass(frozen=True)
class RunContext:
    """One run's surroundings: ``device`` and ``shard`` this process's (``joined`` makes them so under torchrun),
    ``progress`` bars on or off, the ``data`` it reads (None: its caller hands it tensors), ``track`` the sinks
    that watch a distillation (rank 0's)."""

    device: torch.device = torch.device("cpu")
    shard: Shard = LOCAL
    progress: bool = True
    data: DataSource | None = None
    track: tuple[Track, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", torch.device(self.device))  # "cuda:1" as well as a torch.device

    @classmethod
    def on(cls, device: str | None = None, **fields) -> RunContext:
        """A context on the ``--device`` asked for (None: CUDA when present, else the CPU), proven usable now."""
        return cls(usable_device(device), **fields)

    @contextmanager
    def joined(self) -> Iterator[RunContext]:
        """This context inside the torchrun job, with this rank's shard and GPU (outside it, a world of one)."""
        with process_group(self.device) as (shard, device):
            yield replace(self, shard=shard, device=device)
