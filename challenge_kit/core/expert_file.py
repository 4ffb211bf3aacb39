"""The expert file: one ConvNet trajectory in safetensors, read and checked without trusting its contents.

Every layer reads it: distillation matches its snapshots, and verify's class-order check takes an expert's
last snapshot as a reference model. The header (metadata and the snapshot shape) is checked before any value
is read, so a listing never loads the trajectories.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from challenge_kit.core.contract import DatasetSpec
from challenge_kit.core.errors import KitFileError
from challenge_kit.core.models import ConvNet, ModelConfig, param_shapes
from challenge_kit.core.reading import load_rows, load_tensors, read_metadata

EXPERT_FORMAT = "ddkit-expert"
EXPERT_VERSION = 1
ALIASED = ("likely a buffer written on a CPU by a script that snapshots with `p.detach().cpu()`, which on a CPU is "
           "the live parameter itself, not a copy, so every snapshot holds the final weights; snapshot with "
           "`p.detach().cpu().clone()`")


@dataclass
class Expert:
    """One expert file: metadata always, the (k+1, P) snapshots only when asked for."""

    path: Path
    spec: DatasetSpec
    model_config: ModelConfig
    meta: dict
    complete: bool
    snapshots: torch.Tensor | None = None

    @property
    def epochs(self) -> int:
        """Target epochs (== completed epochs for a complete expert)."""
        return int(self.meta["epochs"])

    @property
    def completed_epochs(self) -> int:
        return int(self.meta["completed_epochs"])

    @property
    def test_acc(self) -> list[float | None]:
        return list(self.meta.get("test_acc") or [])

    @property
    def train_loss(self) -> list[float | None]:
        return list(self.meta.get("train_loss") or [])

    def snapshot(self, epoch: int) -> torch.Tensor:
        """Flat parameters after ``epoch`` epochs (0 = init), read alone from disk unless already loaded."""
        if not 0 <= epoch <= self.completed_epochs:
            raise IndexError(f"{self.path}: epoch {epoch} not within 0..{self.completed_epochs}")
        if self.snapshots is not None:
            return self.snapshots[epoch]
        row = load_rows(self.path, "snapshots", [epoch])[0]
        if not torch.isfinite(row).all():
            raise KitFileError(self.path, f"snapshot {epoch} holds non-finite values")
        return row


def standing_still(snapshots: torch.Tensor, epochs: list[int] | None = None) -> str | None:
    """What is wrong with a trajectory in which two consecutive snapshots (of ``epochs``, default 0..k) are
    identical, or None.

    Any such pair is refused, not only a trajectory that never moves: a snapshot is taken after each epoch of
    SGD with a positive lr, which always changes float32 weights, so an identical pair is no epoch at all but
    snapshots that share one tensor; matching a start epoch against an equal target divides by a distance of 0
    (an infinite loss, every such iteration skipped), and a trajectory of identical snapshots teaches nothing.
    """
    epochs = list(range(len(snapshots))) if epochs is None else epochs
    same = [torch.equal(a, b) for a, b in zip(snapshots[:-1], snapshots[1:], strict=True)]
    if not any(same):
        return None
    if all(same) and len(same) > 1:
        what = f"all {len(snapshots)} snapshots (epochs {epochs[0]}..{epochs[-1]}) are identical"
    else:
        i = same.index(True)
        what = f"snapshots {epochs[i]} and {epochs[i + 1]} are identical"
    return f"{what}: weights that do not change teach nothing (matching divides by their distance, 0); {ALIASED}"


def _check_meta(path: Path, meta: dict) -> tuple[DatasetSpec, ModelConfig, bool]:
    """Validate an expert's metadata; returns (spec, model, complete) or raises KitFileError."""
    if meta.get("format") != EXPERT_FORMAT:
        raise KitFileError(path, f"not a ddkit expert (format={meta.get('format')!r})")
    if meta.get("version") != EXPERT_VERSION:
        raise KitFileError(path, f"expert format version {meta.get('version')!r}; this kit reads "
                                 f"{EXPERT_VERSION}")
    try:
        spec, model = DatasetSpec.from_dict(meta["spec"]), ModelConfig(**meta["model"])
        epochs, done = int(meta["epochs"]), int(meta["completed_epochs"])
    except (KeyError, TypeError, ValueError) as e:
        raise KitFileError(path, f"expert metadata is incomplete or malformed ({e!r})") from None
    if not 0 <= done <= epochs:
        raise KitFileError(path, f"completed_epochs {done} is not within 0..{epochs}")
    for key in ("train_loss", "test_acc"):
        if not isinstance(meta.get(key), list) or len(meta[key]) != done:
            raise KitFileError(path, f"metadata {key!r} must list one value per completed epoch ({done})")
    return spec, model, done == epochs


def _num_params(model: ModelConfig) -> int:
    return sum(s.numel() for _, s in param_shapes(ConvNet(model)))


def _load_checked(path: Path) -> tuple[dict[str, torch.Tensor], dict, DatasetSpec, ModelConfig, bool]:
    """All tensors and metadata of one expert file, fully validated (values included)."""
    if not path.is_file():
        raise KitFileError(path, "no such expert file")
    tensors, meta = load_tensors(path)
    spec, model, complete = _check_meta(path, meta)
    snapshots = tensors.get("snapshots")
    done, P = int(meta["completed_epochs"]), _num_params(model)
    if snapshots is None:
        raise KitFileError(path, "has no 'snapshots' tensor")
    if snapshots.dtype != torch.float32 or tuple(snapshots.shape) != (done + 1, P):
        raise KitFileError(path, f"snapshots are {snapshots.dtype} {tuple(snapshots.shape)}, expected "
                                 f"float32 ({done + 1}, {P}) for {done} completed epochs of this model")
    if not torch.isfinite(snapshots).all():
        raise KitFileError(path, "snapshots hold non-finite values")
    if (problem := standing_still(snapshots)) is not None:
        raise KitFileError(path, problem)
    return tensors, meta, spec, model, complete


def read_expert(path: str | Path, *, snapshots: bool = True) -> Expert:
    """Load and validate one expert; ``snapshots=False`` reads only the header (cheap: listing, sampling).

    Raises KitFileError for anything unreadable or inconsistent. Partial experts load with ``complete=False``.
    """
    path = Path(path)
    if snapshots:
        tensors, meta, spec, model, complete = _load_checked(path)
        return Expert(path, spec, model, meta, complete, tensors["snapshots"])
    if not path.is_file():
        raise KitFileError(path, "no such expert file")
    meta = read_metadata(path)
    spec, model, complete = _check_meta(path, meta)
    with safe_open(str(path), framework="pt") as f:  # the header gives the shape without reading values
        if "snapshots" not in f.keys():
            raise KitFileError(path, "has no 'snapshots' tensor")
        shape = tuple(f.get_slice("snapshots").get_shape())
    expected = (int(meta["completed_epochs"]) + 1, _num_params(model))
    if shape != expected:
        raise KitFileError(path, f"snapshots have shape {shape}, expected {expected}")
    return Expert(path, spec, model, meta, complete)


def infer_model_config(shapes: list[tuple[int, ...]], spec: DatasetSpec) -> ModelConfig:
    """The ConvNet a list of parameter shapes belongs to (depth, width, norm), for buffers from other code."""
    convs = [s for s in shapes if len(s) == 4]
    if not convs or (len(shapes) - 2) % len(convs):
        raise ValueError(f"parameter shapes {shapes} are not a DC/MTT ConvNet")
    per_block = (len(shapes) - 2) // len(convs)
    norm = "none" if per_block == 2 else "layernorm" if len(shapes[2]) == 3 else "instancenorm"
    return ModelConfig.for_spec(spec, depth=len(convs), width=convs[0][0], norm=norm)
