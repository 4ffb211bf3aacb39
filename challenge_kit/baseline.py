"""Real-subset baselines: the organizers' sample submission (random real training images, IPC per class, in
default order) and the coreset selections (``challenge_kit.coresets``).

A floor to compare a distilled set with, scored by the same scorer: a distilled set that does not beat the best
of them is not worth uploading. Seeded, verified and exported exactly like a distillation run's set.
"""

from __future__ import annotations

from pathlib import Path

import torch

from challenge_kit.core.contract import DatasetSpec, get_spec
from challenge_kit.core.errors import KitFileError
from challenge_kit.core.folders import run_lock
from challenge_kit.coresets import SCORE_EPOCHS, SCORE_MODELS, check_method, describe, expert_select, select
from challenge_kit.data import default_cache_dir, load_split
from challenge_kit.export import claim_export, export_images


def random_real(images: torch.Tensor, labels: torch.Tensor, spec: DatasetSpec, seed: int) -> torch.Tensor:
    """IPC seeded random images of each class from the pool (``images``, ``labels``), in default order."""
    return select("random", images, labels, spec, seed=seed).images


def make_baseline(dataset: str, data_root: str | Path, out_dir: str | Path, *, seed: int = 0,
                  method: str = "random", score_epochs: int = SCORE_EPOCHS, score_models: int = SCORE_MODELS,
                  experts_dir: str | Path | None = None, device: str | torch.device | None = None,
                  download: bool = False,
                  cache_dir: str | Path | None = None, image_folder: bool = False, overwrite: bool = False) -> dict:
    """Pick the set from the training split and export it into the held ``out_dir``; returns the manifest. An
    earlier export there is refused unless ``overwrite``, before the data is decoded (minutes for Tiny ImageNet).
    With ``experts_dir`` the coresets read the store's experts instead of training a proxy."""
    check_method(method, epochs=score_epochs, models=score_models)
    if experts_dir is not None and not Path(experts_dir).is_dir():
        raise KitFileError(experts_dir, "no expert store here (a folder of `ddkit experts`)")
    with run_lock(out_dir):
        claim_export(get_spec(dataset), out_dir, overwrite)
        images, labels, spec = load_split(dataset, data_root, "train", download=download, cache_dir=cache_dir,
                                          image_folder=image_folder)
        chosen = select(method, images, labels, spec, seed=seed, score_epochs=score_epochs,
                        score_models=score_models, device=device,
                        cache_dir=cache_dir or default_cache_dir()) if experts_dir is None else expert_select(
            method, images, labels, spec, seed=seed, experts_dir=experts_dir, device=device)
        return export_images(chosen.images, spec, out_dir, source=f"{dataset} baseline from {data_root}", extra={
            "baseline": {"description": f"{describe(method)}, {spec.ipc} per class, default order",
                         **chosen.record(), "data_root": str(data_root)},
        })
