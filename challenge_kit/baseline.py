"""The organizers' sample submission: random real training images, IPC per class, in default order.

A floor to compare a distilled set with, scored by the same scorer: a distilled set that does not beat
it is not worth uploading. Seeded, verified and exported exactly like a distillation run's set.
"""

from __future__ import annotations

from pathlib import Path

import torch

from challenge_kit.core.contract import DatasetSpec, get_spec
from challenge_kit.core.folders import run_lock
from challenge_kit.core.seeds import generator
from challenge_kit.data import load_split
from challenge_kit.export import claim_export, export_images
from challenge_kit.parts.initializations import real
from challenge_kit.parts.kinds import InitContext


def random_real(images: torch.Tensor, labels: torch.Tensor, spec: DatasetSpec, seed: int) -> torch.Tensor:
    """IPC seeded random images of each class from the pool (``images``, ``labels``), in default order."""
    return real(InitContext(spec, images, labels, None, None, generator(seed), torch.device("cpu")))


def make_baseline(dataset: str, data_root: str | Path, out_dir: str | Path, *, seed: int = 0,
                  download: bool = False, cache_dir: str | Path | None = None,
                  image_folder: bool = False, overwrite: bool = False) -> dict:
    """Draw the set from the training split and export it into the held ``out_dir``; returns the manifest. An
    earlier export there is refused unless ``overwrite``, before the data is decoded (minutes for Tiny ImageNet)."""
    with run_lock(out_dir):
        claim_export(get_spec(dataset), out_dir, overwrite)
        images, labels, spec = load_split(dataset, data_root, "train", download=download, cache_dir=cache_dir,
                                          image_folder=image_folder)
        return export_images(random_real(images, labels, spec, seed), spec, out_dir,
                             source=f"{dataset} baseline from {data_root}", extra={
                                 "baseline": {"method": f"random real training images, {spec.ipc} per class, "
                                                        "default order", "seed": seed, "data_root": str(data_root)},
                             })
