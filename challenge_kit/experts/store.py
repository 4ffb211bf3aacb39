"""The expert store: a folder of ``expert_0007.safetensors`` files, read through one ``ExpertStore``.

A store is listed (``status``, every file fully checked, for ``ddkit info``), sampled (``complete``, headers
only) or opened for matching (``trajectories``, checked against the run's network and data). Files written
by older versions of the kit read the same: the format lives in ``challenge_kit.core.expert_file``.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from challenge_kit.core.contract import DatasetSpec
from challenge_kit.core.errors import KitFileError
from challenge_kit.core.expert_file import Expert, read_expert, standing_still
from challenge_kit.core.models import ModelConfig
from challenge_kit.core.reading import load_rows
from challenge_kit.recipes.identity import differences, expert_settings

log = logging.getLogger(__name__)
DIFFICULTY = "difficulty.safetensors"
EXPERT_NAME = re.compile(r"expert_[0-9]{4}\.safetensors")


def expert_path(out_dir: str | Path, index: int) -> Path:
    return Path(out_dir) / f"expert_{index:04d}.safetensors"


def expert_files(out_dir: str | Path) -> list[Path]:
    """The store's expert files; none for a missing folder, an error (not an empty store) for an unreadable one."""
    folder = Path(out_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if EXPERT_NAME.fullmatch(p.name))


def data_fingerprint(images: torch.Tensor, labels: torch.Tensor) -> str:
    """sha256 of the training tensors, recorded in every expert: another training set of the same size (a
    held-out split, another subset, other preprocessing) is other data, neither a resume nor a match."""
    h = hashlib.sha256()
    for t in (images, labels):
        h.update(memoryview(t.detach().cpu().contiguous().numpy()).cast("B"))
    return h.hexdigest()


@dataclass
class ExpertStatus:
    """One row of a store listing: what ``ddkit info`` prints."""

    path: Path
    status: str  # complete | partial | corrupt
    completed_epochs: int | None = None
    epochs: int | None = None
    test_acc: list | None = None
    size: int = 0
    problem: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        accs = [a for a in (self.test_acc or []) if a is not None]
        d["last_acc"], d["best_acc"] = (accs[-1], max(accs)) if accs else (None, None)
        return d


def _inspect(path: Path) -> ExpertStatus:
    """Full validation (values included) of one file, reported rather than raised."""
    size = path.stat().st_size if path.exists() else 0
    try:
        e = read_expert(path)
    except KitFileError as err:
        return ExpertStatus(path, "corrupt", size=size, problem=err.problem)
    return ExpertStatus(path, "complete" if e.complete else "partial", e.completed_epochs, e.epochs,
                        e.test_acc, size)


@dataclass
class Trajectories:
    """The complete experts of a store, as matching reads them: a few snapshots of one expert at a time."""

    paths: list[Path]
    epochs: int
    settings: list[dict] = field(default_factory=list)  # the distinct settings that trained them (imported: none)

    @property
    def count(self) -> int:
        return len(self.paths)

    def snapshots(self, expert: int, epochs: list[int]) -> torch.Tensor:
        """Rows ``epochs`` of expert ``expert`` (memory-mapped reads), checked like a full read: finite, and
        moving from one to the next (a store file written by other means than the kit's checked writers)."""
        rows = load_rows(self.paths[expert], "snapshots", epochs)
        if not torch.isfinite(rows).all():
            raise KitFileError(self.paths[expert], f"snapshots {epochs} hold non-finite values")
        if (problem := standing_still(rows, epochs)) is not None:
            raise KitFileError(self.paths[expert], problem)
        return rows

    def snapshot(self, expert: int, epoch: int) -> torch.Tensor:
        return self.snapshots(expert, [epoch])[0]

    def last(self, expert: int = 0) -> torch.Tensor:
        return self.snapshot(expert, self.epochs)


class ExpertStore:
    """A folder of expert files, read: its listing, its complete experts, the trajectories matching draws from."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def status(self) -> list[ExpertStatus]:
        """Every expert file fully validated, problems reported rather than raised."""
        return [_inspect(p) for p in expert_files(self.root)]

    def complete(self) -> list[Expert]:
        """Complete experts, headers only (``Expert.snapshot`` reads single epochs); corrupt files are skipped
        with a warning."""
        experts = []
        for path in expert_files(self.root):
            try:
                expert = read_expert(path, snapshots=False)
            except KitFileError as e:
                log.warning(f"skipping {e}")
                continue
            if expert.complete:
                experts.append(expert)
        return experts

    def next_index(self) -> int:
        """The index after the store's last expert file (0 for an empty store)."""
        paths = expert_files(self.root)
        return int(paths[-1].stem.split("_")[1]) + 1 if paths else 0

    def trajectories(self, spec: DatasetSpec, model: ModelConfig, needed_epochs: int,
                     train_sha256: str | None = None, settings: dict | None = None) -> Trajectories:
        """The complete experts, checked against the run: the same network and, when both are known, the same
        training data (``train_sha256``, see ``data_fingerprint``), so held-out images cannot have shaped them,
        and a warning where the experts' settings are not the recipe's ``settings``
        (``recipes.identity.expert_settings``): the run then records the store's."""
        experts = self.complete()
        trained: list[dict] = []
        for expert in experts:
            config = expert.meta.get("config")
            if isinstance(config, dict) and (mine := expert_settings(config)) not in trained:
                trained.append(mine)
            if expert.model_config != model or expert.spec.num_classes != spec.num_classes \
                    or expert.spec.image_size != spec.image_size:
                raise KitFileError(expert.path, f"expert was trained for {expert.spec.describe()} with "
                                                f"{expert.model_config}, not for {spec.describe()}")
            trained_on = expert.meta.get("train_sha256")
            if train_sha256 and trained_on and trained_on != train_sha256:
                raise KitFileError(expert.path, f"expert was trained on other data than this run's training split "
                                                f"({expert.meta.get('num_train')} images; held-out images must not "
                                                "shape the experts): train the store with the same recipe "
                                                "(eval.split, eval.holdout_per_class) or choose another --experts")
        if not experts:
            raise KitFileError(self.root, "no complete experts in this store; train them with `ddkit experts` first")
        epochs = min(e.epochs for e in experts)
        if epochs < needed_epochs:
            raise KitFileError(self.root, f"experts have {epochs} epochs, matching needs max_start_epoch + "
                                          f"expert_epochs = {needed_epochs}")
        for other in (t for t in trained if settings and t != settings):
            said = "; ".join(f"{k} {a!r} (recipe {b!r})" for k, a, b in differences(other, settings))
            log.warning(f"{self.root}: experts trained with other settings than the recipe's experts section "
                        f"({said}); they are matched as they are, and the run records their settings")
        return Trajectories([e.path for e in experts], epochs, trained)
