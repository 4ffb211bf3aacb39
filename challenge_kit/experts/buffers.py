"""DATM/MTT interop: their ``replay_buffer_{n}.pt`` trajectories into a store, and a store's experts out as them.

A buffer is a list of trajectories, each a list of snapshots, each a list of tensors in ``net.parameters()``
order; an imported trajectory becomes one complete expert file that names its source, so training never
overwrites it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from challenge_kit.core.contract import DatasetSpec
from challenge_kit.core.errors import KitFileError, KitValueError
from challenge_kit.core.expert_file import (
    EXPERT_FORMAT,
    EXPERT_VERSION,
    infer_model_config,
    read_expert,
    standing_still,
)
from challenge_kit.core.folders import run_lock
from challenge_kit.core.models import ConvNet, ModelConfig, param_shapes, unflatten_params
from challenge_kit.core.reading import load_torch
from challenge_kit.core.storage import make_folders, refuse_replacing, save_tensors, save_torch
from challenge_kit.experts.store import ExpertStore, expert_path


def import_buffers(files: Iterable[str | Path], out_dir: str | Path, spec: DatasetSpec,
                   model: ModelConfig | None = None) -> list[Path]:
    """Copy DATM/MTT ``replay_buffer_{n}.pt`` trajectories into the store, numbered after its experts; every
    snapshot is checked against the model (inferred unless given). The store is held (``run_lock``) meanwhile."""
    with run_lock(out_dir):
        return _import(files, out_dir, spec, model)


def _import(files: Iterable[str | Path], out_dir: str | Path, spec: DatasetSpec,
            model: ModelConfig | None) -> list[Path]:
    make_folders(out_dir)
    index, written = ExpertStore(out_dir).next_index(), []
    for file in files:
        buffer = load_torch(file)
        if not isinstance(buffer, list) or not buffer:
            raise KitFileError(file, "not a replay buffer (expected a non-empty list of trajectories)")
        for t, trajectory in enumerate(buffer):
            if not isinstance(trajectory, list) or not trajectory:
                raise KitFileError(file, f"trajectory {t} is not a non-empty list of snapshots")
            for s, snap in enumerate(trajectory):
                if not isinstance(snap, list) or not all(isinstance(x, torch.Tensor) for x in snap):
                    raise KitFileError(file, f"trajectory {t} snapshot {s} is not a list of tensors")
            if model is None:
                try:
                    model = infer_model_config([tuple(x.shape) for x in trajectory[0]], spec)
                except ValueError as e:
                    raise KitFileError(file, str(e)) from None
            expected = [tuple(s) for _, s in param_shapes(ConvNet(model))]
            for s, snap in enumerate(trajectory):
                got = [tuple(x.shape) for x in snap]
                if got != expected:
                    raise KitFileError(file, f"trajectory {t} snapshot {s}: parameter shapes {got} do not "
                                             f"match {model} for {spec.describe()} ({expected})")
            flat = torch.stack([torch.cat([x.detach().float().reshape(-1) for x in snap])
                                for snap in trajectory])
            if not torch.isfinite(flat).all():
                raise KitFileError(file, f"trajectory {t} holds non-finite values")
            if (problem := standing_still(flat)) is not None:
                raise KitFileError(file, f"trajectory {t}: {problem}")
            k = flat.shape[0] - 1
            meta = {"format": EXPERT_FORMAT, "version": EXPERT_VERSION, "spec": spec.to_dict(),
                    "model": model.to_dict(), "optimizer": None, "seed": None, "index": index, "epochs": k,
                    "completed_epochs": k, "train_loss": [None] * k, "test_acc": [None] * k,
                    "source": f"{Path(file).name}[{t}]"}
            written.append(save_tensors({"snapshots": flat}, expert_path(out_dir, index), meta))
            index += 1
    return written


def export_buffers(store_dir: str | Path, out_dir: str | Path, per_file: int = 10, *,
                   overwrite: bool = False) -> list[Path]:
    """Write the store's complete experts as DATM/MTT ``replay_buffer_{n}.pt`` files, ``per_file`` each, in the
    held ``out_dir``; an earlier export's files there (replaced, or left beside the new ones) are refused before
    any work unless ``overwrite``."""
    if per_file < 1:
        raise KitValueError(f"--per-file: experts per file must be at least 1, got {per_file}")
    with run_lock(out_dir) as folder:
        if not overwrite:
            refuse_replacing(sorted(folder.glob("replay_buffer_*.pt")))
        experts = ExpertStore(store_dir).complete()
        if not experts:
            raise KitFileError(store_dir, "no complete experts to export")
        written = []
        for n, first in enumerate(range(0, len(experts), per_file)):
            buffer = []
            for e in experts[first:first + per_file]:
                shapes = param_shapes(ConvNet(e.model_config))
                rows = read_expert(e.path).snapshots
                buffer.append([[v.clone() for v in unflatten_params(row, shapes).values()] for row in rows])
            written.append(save_torch(buffer, folder / f"replay_buffer_{n}.pt"))
        return written
