"""Watching a distillation where a team already looks: TensorBoard event files, or a wandb run.

``--track tensorboard[=DIR]`` and ``--track wandb[=DIR]`` (repeatable) send, per iteration, the fields
``history.jsonl`` gets, and at every selection point the candidate's scores and the image grid. wandb runs in
offline mode unless ``WANDB_MODE`` says otherwise, so nothing leaves the machine until ``wandb sync``. Both
packages are optional extras, imported only when their sink is asked for (and this module imports no torch:
``--track`` is checked before anything heavy loads); only the leader (rank 0) tracks.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from challenge_kit.core.contract import DatasetSpec
from challenge_kit.core.errors import KitValueError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
SINKS = ("tensorboard", "wandb")  # each the name of its extra and of the module it needs
TENSORBOARD_DIR = "tensorboard"  # default folder of the event files, inside the run folder
IMAGES = "images"


@dataclass(frozen=True)
class Track:
    """One ``--track`` value: the sink and the folder it writes to (None: inside the run folder)."""

    sink: str
    folder: str | None = None


def parse_track(values: list[str]) -> list[Track]:
    """``SINK`` or ``SINK=DIR`` per value; a sink whose package is not installed is refused now, naming its extra."""
    tracks = []
    for value in values:
        sink, _, folder = value.partition("=")
        if sink not in SINKS:
            raise KitValueError(f"--track {value}: choose {' or '.join(SINKS)}, optionally =DIR")
        if importlib.util.find_spec(sink) is None:
            raise KitValueError(f'--track {sink}: the {sink} package is not installed; pip install "ddkit[{sink}]"')
        tracks.append(Track(sink, folder or None))
    return tracks


class Sink(Protocol):
    """Where tracked values go: scalars and images at a step (the iteration)."""

    def scalars(self, step: int, values: dict[str, float]) -> None: ...

    def image(self, step: int, tag: str, grid: torch.Tensor) -> None: ...

    def close(self) -> None: ...


class TensorBoardSink:
    def __init__(self, folder: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def image(self, step: int, tag: str, grid: torch.Tensor) -> None:
        self.writer.add_image(tag, grid, step)  # (3, H, W) in [0, 1]

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    def __init__(self, folder: Path, name: str, config: dict) -> None:
        import wandb

        self.wandb = wandb
        folder.mkdir(parents=True, exist_ok=True)  # else wandb warns that it finds no git root there
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "ddkit"), name=name, dir=str(folder),
                              config=config, mode=os.environ.get("WANDB_MODE", "offline"),
                              settings=wandb.Settings(console="off", silent=True))  # the kit's bars stay intact
        log.info(f"wandb: run in {self.run.dir}" + (f" (offline: `wandb sync {Path(self.run.dir).parent}` uploads "
                                                     "it)" if self.run.offline else ""))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def image(self, step: int, tag: str, grid: torch.Tensor) -> None:
        pixels = (grid.permute(1, 2, 0) * 255).round().byte().numpy()
        self.run.log({tag: self.wandb.Image(pixels)}, step=step)

    def close(self) -> None:
        self.run.finish()


def history_scalars(row: dict) -> dict[str, float]:
    """A ``history.jsonl`` row as scalars: ``distill/<field>``, a list's items as ``distill/<field>/<i>``."""
    out = {}
    for key, value in row.items():
        if key == "iteration":  # the step itself
            continue
        for name, v in ([(f"{key}/{i}", x) for i, x in enumerate(value)] if isinstance(value, list) else
                        [(key, value)]):
            if isinstance(v, bool | int | float):
                out[f"distill/{name}"] = float(v)
    return out


class Tracker:
    """A run's sinks, fed by the monitor; with none, every call does nothing."""

    def __init__(self, sinks: list[Sink], spec: DatasetSpec) -> None:
        self.sinks, self.spec = sinks, spec

    @classmethod
    def open(cls, tracks: list[Track], run_dir: str | Path, spec: DatasetSpec, config: dict) -> Tracker:
        run_dir = Path(run_dir)
        sinks: list[Sink] = []
        for t in tracks:
            if t.sink == "tensorboard":
                sinks.append(TensorBoardSink(Path(t.folder) if t.folder else run_dir / TENSORBOARD_DIR))
            else:
                sinks.append(WandbSink(Path(t.folder) if t.folder else run_dir, str(run_dir), config))
        return cls(sinks, spec)

    def iteration(self, row: dict) -> None:
        if self.sinks:
            values = history_scalars(row)
            for sink in self.sinks:
                sink.scalars(row["iteration"], values)

    def selection(self, candidate: dict, images: torch.Tensor) -> None:
        """A scored candidate: its mean and standard error over the selection rounds, and the set as a grid."""
        if self.sinks:
            from challenge_kit.plots import preview_grid

            values = {"selection/mean": candidate["mean"], "selection/se": candidate["se"]}
            grid = preview_grid(images, self.spec)
            for sink in self.sinks:
                sink.scalars(candidate["iteration"], values)
                sink.image(candidate["iteration"], IMAGES, grid)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
