"""Expert trajectories (SPEC section 4): training, the on-disk store, and DATM/MTT buffer interop.

An expert is a ConvNet trained from a random init with GSAM around plain SGD, DSA on every batch and a
constant learning rate; its flat parameters are saved before training and after every epoch. Each expert is
one safetensors file (``expert_0007.safetensors``) rewritten atomically after every epoch together with the
RNG state, so a killed run resumes exactly where it stopped and gives bitwise the result of an uninterrupted
run (same device and thread count). Every expert draws all its randomness from one CPU generator seeded by
(seed, expert index): experts are independent of each other, of the order they are trained in and of how
they are split over processes.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import torch

from challenge_kit import parts
from challenge_kit.core import augment
from challenge_kit.core.contract import DatasetSpec
from challenge_kit.core.errors import KitFileError
from challenge_kit.core.expert_file import (
    EXPERT_FORMAT,
    EXPERT_VERSION,
    Expert,
    _load_checked,
    infer_model_config,
    read_expert,
)
from challenge_kit.core.models import ConvNet, FunctionalConvNet, ModelConfig, param_shapes, unflatten_params
from challenge_kit.core.storage import load_rows, load_tensors, load_torch, read_metadata, save_tensors, save_torch
from challenge_kit.parts.expert_parts import el2n
from challenge_kit.recipes import ExpertConfig

EVAL_BATCH = 1024
DIFFICULTY = "difficulty.safetensors"
# Fields of ExpertConfig that do not change an expert's trajectory (how many experts, how far to train).
NOT_TRAJECTORY = ("num_experts", "epochs")
EXPERT_NAME = re.compile(r"expert_[0-9]{4}\.safetensors")


def expert_path(out_dir: str | Path, index: int) -> Path:
    return Path(out_dir) / f"expert_{index:04d}.safetensors"


def expert_files(out_dir: str | Path) -> list[Path]:
    """The store's expert files; none for a missing folder, an error (not an empty store) for an unreadable one."""
    folder = Path(out_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if EXPERT_NAME.fullmatch(p.name))


# ------------------------------------------------------------------------------------------ optimizer math

def sgd_step(p: torch.Tensor, grad: torch.Tensor, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
             buf: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """torch.optim.SGD's update (no dampening, no Nesterov) on a flat vector; returns (p, momentum buffer)."""
    if weight_decay:
        grad = grad + weight_decay * p
    if momentum:
        buf = grad.clone() if buf is None else buf * momentum + grad
        grad = buf
    return p - lr * grad, buf


def lr_at(config: ExpertConfig, epoch: int) -> float:
    """The lr of epoch ``epoch`` (1-based): constant, or times lr_decay after ``lr_decay_epoch``."""
    if config.lr_decay_epoch and epoch > config.lr_decay_epoch:
        return config.lr * config.lr_decay
    return config.lr


@torch.no_grad()
def accuracy(f: FunctionalConvNet, p: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> float:
    f.module.eval()
    correct = 0
    for i in range(0, images.shape[0], EVAL_BATCH):
        correct += (f(p, images[i:i + EVAL_BATCH]).argmax(1) == labels[i:i + EVAL_BATCH]).sum().item()
    f.module.train()
    return correct / max(1, images.shape[0])


def expert_generator(seed: int, index: int) -> torch.Generator:
    """The one CPU generator behind everything random in expert ``index`` (init, shuffling, DSA)."""
    digest = hashlib.sha256(f"ddkit-expert:{seed}:{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def train_epoch(f: FunctionalConvNet, p: torch.Tensor, buf: torch.Tensor | None, images: torch.Tensor,
                labels: torch.Tensor, config: ExpertConfig, gen: torch.Generator, epoch: int = 1,
                on_step: Callable[[], None] | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """One shuffled pass (epoch ``epoch``, 1-based) in ``batch_size`` batches, fresh per-image DSA each, with
    the recipe's objective part; returns (p, buf, mean loss)."""
    objective = parts.build("objective", config)
    n, device = images.shape[0], images.device
    perm = torch.randperm(n, generator=gen).to(device)
    total = torch.zeros((), device=device)
    for i in range(0, n, config.batch_size):
        idx = perm[i:i + config.batch_size]
        # parameters drawn on the CPU generator, so the trajectory does not depend on the device's RNG
        params = augment.sample(idx.numel(), images.shape[-1], "cpu", generator=gen, group_generator=gen)
        x = augment.apply(images[idx], params.to(device))
        loss, grad = objective(f, p, x, labels[idx], epoch - 1)
        p, buf = sgd_step(p, grad, lr_at(config, epoch), config.momentum, config.weight_decay, buf)
        total += loss * idx.numel()
        if on_step is not None:
            on_step()
    return p, buf, float(total) / n


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


def inspect_expert(path: str | Path) -> ExpertStatus:
    """Full validation (values included) of one file, reported rather than raised."""
    path = Path(path)
    size = path.stat().st_size if path.exists() else 0
    try:
        e = read_expert(path)
    except KitFileError as err:
        return ExpertStatus(path, "corrupt", size=size, problem=err.problem)
    return ExpertStatus(path, "complete" if e.complete else "partial", e.completed_epochs, e.epochs,
                        e.test_acc, size)


def store_status(out_dir: str | Path) -> list[ExpertStatus]:
    return [inspect_expert(p) for p in expert_files(out_dir)]


def complete_experts(out_dir: str | Path) -> list[Path]:
    """Paths of a store's complete experts (header check only); corrupt files are skipped with a warning."""
    paths = []
    for path in expert_files(out_dir):
        try:
            if read_expert(path, snapshots=False).complete:
                paths.append(path)
        except KitFileError as e:
            warnings.warn(f"skipping {e}", RuntimeWarning, stacklevel=2)
    return paths


class ExpertStore:
    """A folder of expert files."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def paths(self) -> list[Path]:
        return expert_files(self.root)

    def complete(self) -> list[Expert]:
        """Complete experts, headers only (use ``Expert.snapshot`` to read single epochs)."""
        return [read_expert(p, snapshots=False) for p in complete_experts(self.root)]

    def status(self) -> list[ExpertStatus]:
        return store_status(self.root)

    def next_index(self) -> int:
        paths = self.paths()
        return int(paths[-1].stem.split("_")[1]) + 1 if paths else 0


@dataclass
class Trajectories:
    """The complete experts of a store, as matching reads them: a few snapshots of one expert at a time."""

    paths: list[Path]
    epochs: int

    @classmethod
    def open(cls, root: str | Path, spec: DatasetSpec, model: ModelConfig, needed_epochs: int,
             train_sha256: str | None = None) -> Trajectories:
        """The store's complete experts, checked against the run: the same network and, when both are known,
        the same training data (``train_sha256``), so held-out images cannot have shaped the experts."""
        paths, epochs = [], None
        for path in complete_experts(root):
            expert = read_expert(path, snapshots=False)
            if expert.model_config != model or expert.spec.num_classes != spec.num_classes \
                    or expert.spec.image_size != spec.image_size:
                raise KitFileError(path, f"expert was trained for {expert.spec.describe()} with {expert.model_config}, "
                                         f"not for {spec.describe()}")
            trained_on = expert.meta.get("train_sha256")
            if train_sha256 and trained_on and trained_on != train_sha256:
                raise KitFileError(path, f"expert was trained on other data than this run's training split "
                                         f"({expert.meta.get('num_train')} images; held-out images must not shape the "
                                         "experts): train the store with the same recipe (eval.split, "
                                         "eval.holdout_per_class) or choose another --experts")
            paths.append(path)
            epochs = expert.epochs if epochs is None else min(epochs, expert.epochs)
        if not paths:
            raise KitFileError(root, "no complete experts in this store; train them with `ddkit experts` first")
        if epochs < needed_epochs:
            raise KitFileError(root, f"experts have {epochs} epochs, matching needs max_start_epoch + expert_epochs "
                                     f"= {needed_epochs}")
        return cls(paths, epochs)

    @property
    def count(self) -> int:
        return len(self.paths)

    def snapshots(self, expert: int, epochs: list[int]) -> torch.Tensor:
        """Rows ``epochs`` of expert ``expert`` (memory-mapped reads), checked finite like a full read."""
        rows = load_rows(self.paths[expert], "snapshots", epochs)
        if not torch.isfinite(rows).all():
            raise KitFileError(self.paths[expert], f"snapshots {epochs} hold non-finite values")
        return rows

    def snapshot(self, expert: int, epoch: int) -> torch.Tensor:
        return self.snapshots(expert, [epoch])[0]

    def last(self, expert: int = 0) -> torch.Tensor:
        return self.snapshot(expert, self.epochs)


# ------------------------------------------------------------------------------------------ training

def data_fingerprint(images: torch.Tensor, labels: torch.Tensor) -> str:
    """sha256 of the training tensors: another training set of the same size (a held-out split, another
    subset, other preprocessing) is other data, not a resume."""
    h = hashlib.sha256()
    for t in (images, labels):
        h.update(memoryview(t.detach().cpu().contiguous().numpy()).cast("B"))
    return h.hexdigest()


def _identity(spec: DatasetSpec, model: ModelConfig, config: ExpertConfig, index: int, num_train: int,
              train_sha256: str) -> dict:
    """What must match for an existing file to be continued rather than retrained."""
    trajectory = {k: v for k, v in asdict(config).items() if k not in NOT_TRAJECTORY}
    return {"spec": spec.to_dict(), "model": model.to_dict(), "experts": trajectory, "index": index,
            "num_train": num_train, "train_sha256": train_sha256}


def _identity_of(meta: dict) -> dict:
    trajectory = {k: v for k, v in (meta.get("config") or {}).items() if k not in NOT_TRAJECTORY}
    return {"spec": meta.get("spec"), "model": meta.get("model"), "experts": trajectory,
            "index": meta.get("index"), "num_train": meta.get("num_train"), "train_sha256": meta.get("train_sha256")}


def _flat(identity: dict) -> dict:
    return {f"{k}.{sub}" if isinstance(v, dict) else k: w
            for k, v in identity.items() for sub, w in (v.items() if isinstance(v, dict) else [(None, v)])}


def _differences(meta: dict, identity: dict) -> list[str]:
    """This run's settings that differ from an existing expert's, as 'key old -> new'.

    Files from before the data fingerprint (no ``train_sha256``) are compared on everything else."""
    old, new = _flat(_identity_of(meta)), _flat(identity)
    if old["train_sha256"] is None:
        del old["train_sha256"], new["train_sha256"]
    short = lambda v: (s if len(s := json.dumps(v)) <= 40 else s[:37] + "...")  # noqa: E731
    return [f"{k} {short(old.get(k))} -> {short(new.get(k))}" for k in sorted(old.keys() | new.keys())
            if old.get(k) != new.get(k)]


def _conflict(path: Path, identity: dict, replace: bool) -> str | None:
    """Why an existing file must be trained again (None: continue it); refuses to replace another run's work.

    A file that cannot be read holds nothing to lose and is retrained; one trained with other settings is
    somebody's work: replaced only when asked."""
    try:
        meta = read_metadata(path)
    except KitFileError as err:
        return err.problem
    if meta.get("source"):
        raise KitFileError(path, f"holds an imported expert ({meta['source']}); train into another folder")
    differences = _differences(meta, identity)
    if differences and not replace:
        raise KitFileError(path, f"was trained with other settings ({'; '.join(differences)}); pass "
                                 "--replace-experts to train it again, or choose another --out")
    return f"trained with other settings ({'; '.join(differences)})" if differences else None


def _resume(path: Path, identity: dict, momentum: bool, replace: bool):
    """((snapshots, rng_state, buf, meta) to continue from, or None), and why a file cannot be continued."""
    if not path.exists():
        return None, None
    problem = _conflict(path, identity, replace)
    if problem:
        return None, problem
    try:
        tensors, meta, *_ = _load_checked(path)
    except KitFileError as err:
        return None, err.problem
    no_buf = momentum and meta["completed_epochs"] and "momentum_buffer" not in tensors
    if "rng_state" not in tensors or no_buf:
        return None, "has no saved RNG/optimizer state to continue from"
    return (tensors["snapshots"], tensors["rng_state"], tensors.get("momentum_buffer"), meta), None


def _save(path: Path, snapshots: list[torch.Tensor], gen: torch.Generator, buf: torch.Tensor | None,
          meta: dict) -> None:
    tensors = {"snapshots": torch.stack(snapshots), "rng_state": gen.get_state()}
    if buf is not None:
        tensors["momentum_buffer"] = buf
    save_tensors(tensors, path, meta)


def epoch_subset(config: ExpertConfig, order: torch.Tensor | None, n: int, epoch: int) -> torch.Tensor | None:
    """The training images of epoch ``epoch`` under the recipe's schedule part (None: all of them)."""
    return parts.build("schedule", config).indices(order, n, epoch)


def train_expert(index: int, images: torch.Tensor, labels: torch.Tensor, test_images: torch.Tensor,
                 test_labels: torch.Tensor, spec: DatasetSpec, config: ExpertConfig, out_dir: str | Path, *,
                 order: torch.Tensor | None = None, model: ModelConfig | None = None,
                 progress: Callable[[dict], None] | None = None, replace: bool = False,
                 train_sha256: str | None = None) -> Path:
    """Train (or continue, or skip) expert ``index``; data tensors must already be on the training device.

    ``order`` ranks the images easiest first for schedules that need it. An existing file trained with other
    settings is refused unless ``replace``; ``train_sha256`` is ``data_fingerprint(images, labels)`` when the
    caller has it already."""
    model = model or ModelConfig.for_spec(spec)
    path = expert_path(out_dir, index)
    device = images.device
    f = FunctionalConvNet(model, device=device)
    train_sha256 = train_sha256 or data_fingerprint(images, labels)
    identity = _identity(spec, model, config, index, images.shape[0], train_sha256)
    state, problem = _resume(path, identity, bool(config.momentum), replace)
    emit = progress or (lambda event: None)
    if problem:
        warnings.warn(f"{path}: {problem}; retraining it", RuntimeWarning, stacklevel=2)
    if state is not None and state[3]["completed_epochs"] >= config.epochs:
        emit({"kind": "skip", "expert": index})
        return path
    if state is None:
        gen = expert_generator(config.seed, index)
        p = f.init_flat(int(torch.randint(2**62, (1,), generator=gen)))
        snapshots, buf = [p.detach().cpu()], None
        meta = {"format": EXPERT_FORMAT, "version": EXPERT_VERSION, "spec": spec.to_dict(),
                "model": model.to_dict(), "config": asdict(config), "seed": config.seed, "index": index,
                "num_train": images.shape[0], "train_sha256": train_sha256, "num_test": test_images.shape[0],
                "completed_epochs": 0, "train_loss": [], "test_acc": [], "epoch_seconds": [],
                "epochs": config.epochs}
        _save(path, snapshots, gen, buf, meta)  # visible, and resumable, from the init on
    else:
        rows, rng_state, buf, meta = state
        gen = torch.Generator()
        gen.set_state(rng_state)
        snapshots = list(rows)
        p = rows[-1].to(device)
        buf = buf.to(device) if buf is not None else None
    meta = {**meta, "epochs": config.epochs, "config": asdict(config)}
    for epoch in range(meta["completed_epochs"] + 1, config.epochs + 1):
        start = time.perf_counter()
        subset = epoch_subset(config, order, images.shape[0], epoch)
        x, y = (images, labels) if subset is None else (images[subset], labels[subset])
        on_step = partial(_step_event, emit, index, epoch, -(-x.shape[0] // config.batch_size))
        p, buf, loss = train_epoch(f, p, buf, x, y, config, gen, epoch, on_step)
        if not torch.isfinite(p).all():
            raise FloatingPointError(f"expert {index} diverged in epoch {epoch} (non-finite parameters)")
        acc = accuracy(f, p, test_images, test_labels)
        snapshots.append(p.detach().cpu())
        meta = {**meta, "completed_epochs": epoch, "train_loss": meta["train_loss"] + [loss],
                "test_acc": meta["test_acc"] + [acc],
                "epoch_seconds": meta.get("epoch_seconds", []) + [time.perf_counter() - start]}
        _save(path, snapshots, gen, buf, meta)
        emit({"kind": "epoch", "expert": index, "epoch": epoch, "epochs": config.epochs, "loss": loss,
              "acc": acc, "seconds": meta["epoch_seconds"][-1]})
    return path


def _step_event(emit: Callable[[dict], None], index: int, epoch: int, steps: int) -> None:
    emit({"kind": "step", "expert": index, "epoch": epoch, "steps": steps})


def planned_steps(out_dir: str | Path, indices: Iterable[int], config: ExpertConfig, num_train: int) -> int:
    """Optimizer steps left to do (from file headers and the schedule), for a progress bar's total."""
    everything = torch.arange(num_train)

    def steps(epoch: int) -> int:
        subset = epoch_subset(config, everything, num_train, epoch)
        return -(-(num_train if subset is None else len(subset)) // config.batch_size)

    total = 0
    for index in indices:
        try:
            done = int(read_metadata(expert_path(out_dir, index)).get("completed_epochs", 0))
        except (KitFileError, TypeError, ValueError):
            done = 0
        total += sum(steps(e) for e in range(done + 1, config.epochs + 1))
    return total


@torch.no_grad()
def _logits(f: FunctionalConvNet, p: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    f.module.eval()
    out = torch.cat([f(p, images[i:i + EVAL_BATCH]) for i in range(0, images.shape[0], EVAL_BATCH)])
    f.module.train()
    return out


def difficulty_order(images: torch.Tensor, labels: torch.Tensor, config: ExpertConfig, out_dir: str | Path,
                     data: str, model: ModelConfig) -> torch.Tensor:
    """Training images from easiest to hardest by EL2N, averaged over ``score_models`` networks trained
    ``score_epochs`` epochs with plain SGD and DSA (PAD's FIEX); computed once per store and cached in it."""
    path = Path(out_dir) / DIFFICULTY
    key = hashlib.sha256(repr((data, model.to_dict(), config.score_models, config.score_epochs, config.lr,
                               config.batch_size, config.seed)).encode()).hexdigest()
    if path.is_file():
        tensors, meta = load_tensors(path)
        if meta.get("key") == key and tensors.get("order") is not None and len(tensors["order"]) == len(labels):
            return tensors["order"].to(images.device)
    scorer = replace(config, objective="sgd", momentum=0.0, weight_decay=0.0, lr_decay_epoch=0, schedule="full")
    f = FunctionalConvNet(model, device=images.device)
    total = torch.zeros(len(labels), device=images.device)
    for m in range(config.score_models):
        gen = expert_generator(config.seed, -1 - m)  # streams no expert draws from
        p = f.init_flat(int(torch.randint(2**62, (1,), generator=gen)))
        for epoch in range(1, config.score_epochs + 1):
            p, _, _ = train_epoch(f, p, None, images, labels, scorer, gen, epoch)
        total += el2n(_logits(f, p, images), labels)
    scores = total / config.score_models
    order = torch.argsort(scores, stable=True)
    save_tensors({"order": order, "scores": scores}, path, {"key": key})
    return order


def train_experts(images: torch.Tensor, labels: torch.Tensor, test_images: torch.Tensor,
                  test_labels: torch.Tensor, spec: DatasetSpec, config: ExpertConfig, out_dir: str | Path, *,
                  indices: Iterable[int] | None = None, device: str | torch.device = "cpu",
                  progress: Callable[[dict], None] | None = None, model: ModelConfig | None = None,
                  replace: bool = False) -> list[Path]:
    """Train experts ``indices`` (default all ``config.num_experts``) into ``out_dir``, resuming the store.

    Every existing file is checked against this run's settings before anything is trained: one trained with
    other settings (seed, lr, data, ...) is refused, naming them, unless ``replace``.
    ``progress`` receives dict events: ``plan`` (total steps), ``step``, ``epoch``, ``skip``.
    """
    indices = list(range(config.num_experts) if indices is None else indices)
    device = torch.device(device)
    model = model or ModelConfig.for_spec(spec)
    train_sha256 = data_fingerprint(images, labels)
    for i in indices:
        if expert_path(out_dir, i).exists():
            _conflict(expert_path(out_dir, i), _identity(spec, model, config, i, images.shape[0], train_sha256),
                      replace)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    if progress is not None:
        progress({"kind": "plan", "total": planned_steps(out_dir, indices, config, images.shape[0]),
                  "experts": indices})
    images, labels = images.to(device), labels.to(device)
    test_images, test_labels = test_images.to(device), test_labels.to(device)
    order = None
    if parts.get("schedule", config.schedule).needs_difficulty:
        order = difficulty_order(images, labels, config, out_dir, train_sha256, model)
    return [train_expert(i, images, labels, test_images, test_labels, spec, config, out_dir, order=order,
                         model=model, progress=progress, replace=replace, train_sha256=train_sha256)
            for i in indices]


# ------------------------------------------------------------------------------------------ DATM/MTT buffers

def import_buffers(files: Iterable[str | Path], out_dir: str | Path, spec: DatasetSpec,
                   model: ModelConfig | None = None) -> list[Path]:
    """Copy DATM/MTT ``replay_buffer_{n}.pt`` trajectories into the store, numbered after its experts.

    A buffer is a list of trajectories, each a list of snapshots, each a list of tensors in
    ``net.parameters()`` order; every snapshot is checked against the model (inferred unless given).
    """
    store = ExpertStore(out_dir)
    store.root.mkdir(parents=True, exist_ok=True)
    index, written = store.next_index(), []
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
            k = flat.shape[0] - 1
            meta = {"format": EXPERT_FORMAT, "version": EXPERT_VERSION, "spec": spec.to_dict(),
                    "model": model.to_dict(), "optimizer": None, "seed": None, "index": index, "epochs": k,
                    "completed_epochs": k, "train_loss": [None] * k, "test_acc": [None] * k,
                    "source": f"{Path(file).name}[{t}]"}
            written.append(save_tensors({"snapshots": flat}, expert_path(out_dir, index), meta))
            index += 1
    return written


def export_buffers(store_dir: str | Path, out_dir: str | Path, per_file: int = 10) -> list[Path]:
    """Write the store's complete experts as DATM/MTT ``replay_buffer_{n}.pt`` files, ``per_file`` each."""
    if per_file < 1:
        raise ValueError(f"experts per file must be at least 1, got {per_file}")
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
        written.append(save_torch(buffer, Path(out_dir) / f"replay_buffer_{n}.pt"))
    return written
