"""Expert training: a ConvNet from a random init, trained with the recipe's objective part (GSAM around plain
SGD by default), DSA on every batch and a constant (or once-decayed) lr; its flat parameters are saved before
training and after every epoch.

Each expert file is rewritten atomically after every epoch together with the RNG state, so a killed run resumes
exactly where it stopped and gives bitwise the result of an uninterrupted run (same device and thread count).
Every expert draws all its randomness from one CPU generator seeded by (seed, expert index): experts are
independent of each other, of the order they are trained in and of how they are split over processes. The
steps compute in ``experts.arithmetic`` (float32, or the fast scorer's arithmetic: ``step_network``), recorded
in every file. An existing file is continued only when everything that shapes its trajectory matches this run
(its identity, the arithmetic included). It is one file of some 370 lines because training, resuming and the
identity check all read and write the same expert file, epoch by epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import NamedTuple

import torch

from challenge_kit import parts
from challenge_kit.arithmetic import autocast_context, autocast_dtype, precision_name
from challenge_kit.core import augment
from challenge_kit.core.contract import DatasetSpec
from challenge_kit.core.errors import KitFileError
from challenge_kit.core.expert_file import EXPERT_FORMAT, EXPERT_VERSION, _load_checked
from challenge_kit.core.models import FunctionalConvNet, ModelConfig, predict
from challenge_kit.core.reading import load_tensors, read_metadata
from challenge_kit.core.seeds import expert_generator
from challenge_kit.core.storage import make_folders, save_tensors
from challenge_kit.experts.store import DIFFICULTY, data_fingerprint, expert_path
from challenge_kit.optim import sgd_step
from challenge_kit.parts import Choice
from challenge_kit.parts.expert_parts import SECOND_ORDER, el2n
from challenge_kit.recipes import ExpertConfig
from challenge_kit.recipes.configs import section_dict
from challenge_kit.recipes.identity import differences, expert_settings
from evaluator.fast import can_compile

log = logging.getLogger(__name__)
EL2N_BATCH = 1024  # EL2N logits: the batch size the cached difficulty orders were computed with
# test accuracy after each epoch, a progress figure: at 64 px a batch of 1024 holds 2 GB per activation and on
# 2 CPU cores that pass took as long as the mini profile's training epoch (10.7-16.7 s against 2.7-3.3 s at 256)
TEST_BATCH = 256


def expert_lr(config: ExpertConfig, epoch: int) -> float:
    """The lr of epoch ``epoch`` (1-based): constant, or times lr_decay after ``lr_decay_epoch``."""
    if config.lr_decay_epoch and epoch > config.lr_decay_epoch:
        return config.lr * config.lr_decay
    return config.lr


@torch.no_grad()
def accuracy(f: FunctionalConvNet, p: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of parameters ``p`` on a test set (0 for an empty one)."""
    if not len(images):
        return 0.0
    predicted = predict(f.module, partial(f, p), images, batch_size=TEST_BATCH).argmax(1)
    return (predicted == labels).sum().item() / images.shape[0]


Network = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (flat parameters, images) -> float32 logits


def step_network(model: ModelConfig, config: ExpertConfig, device: torch.device) -> tuple[Network, dict]:
    """The network an expert's training step calls, and what it computes in (recorded in every file). float32:
    the plain functional net. "fast": the fast scorer's arithmetic, its forward (and so its backward) under
    bfloat16 autocast where the device has it natively and compiled where ``can_compile`` (not for an objective
    that differentiates its own gradient), the logits back in float32 for the loss. Built once per store: a
    compiled graph is shared by every expert and epoch (its first call compiles, a minute on 2 CPU cores)."""
    f = FunctionalConvNet(model, device=device)
    dtype = autocast_dtype(config.arithmetic, device)
    compiled = config.arithmetic == "fast" and can_compile(device) and config.objective.name not in SECOND_ORDER
    how = {"arithmetic": config.arithmetic, "precision": precision_name(dtype), "compiled": compiled}
    if dtype is None and not compiled:
        return f, how
    run = torch.compile(f.__call__) if compiled else f

    def forward(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with autocast_context(device, dtype):
            out = run(p, x)
        return out.float()

    return forward, how


def train_epoch(f: FunctionalConvNet | Network, p: torch.Tensor, buf: torch.Tensor | None, images: torch.Tensor,
                labels: torch.Tensor, config: ExpertConfig, gen: torch.Generator, epoch: int = 1,
                on_step: Callable[[], None] | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """One shuffled pass (epoch ``epoch``, 1-based) in ``batch_size`` batches, fresh per-image DSA each, with
    the recipe's objective part calling ``f`` (a ``step_network``); returns (p, buf, mean loss)."""
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
        p, buf = sgd_step(p, grad, expert_lr(config, epoch), config.momentum, config.weight_decay, buf)
        total += loss * idx.numel()
        if on_step is not None:
            on_step()
    return p, buf, float(total) / n


def _identity(spec: DatasetSpec, model: ModelConfig, config: ExpertConfig, index: int, num_train: int,
              train_sha256: str) -> dict:
    """What must match for an existing file to be continued rather than retrained (``recipes.identity``)."""
    return {"spec": spec.to_dict(), "model": model.to_dict(), "experts": expert_settings(section_dict(config)),
            "index": index, "num_train": num_train, "train_sha256": train_sha256}


def _identity_of(meta: dict) -> dict:
    """An existing file's identity, whichever version of the kit wrote its settings."""
    config = meta.get("config")
    return {"spec": meta.get("spec"), "model": meta.get("model"),
            "experts": expert_settings(config if isinstance(config, dict) else {}), "index": meta.get("index"),
            "num_train": meta.get("num_train"), "train_sha256": meta.get("train_sha256")}


def _differences(meta: dict, identity: dict) -> list[str]:
    """This run's settings that differ from an existing expert's, as 'key old -> new'.

    Files from before the data fingerprint (no ``train_sha256``) are compared on everything else."""
    old = _identity_of(meta)
    if old["train_sha256"] is None:
        identity = {**identity, "train_sha256": None}
    short = lambda v: (s if len(s := json.dumps(v)) <= 40 else s[:37] + "...")  # noqa: E731
    return [f"{k} {short(a)} -> {short(b)}" for k, a, b in sorted(differences(old, identity))]


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


class Saved(NamedTuple):
    """An expert file's training so far, to continue from: its snapshots, RNG, momentum buffer and header."""

    snapshots: torch.Tensor
    rng_state: torch.Tensor
    buf: torch.Tensor | None
    meta: dict


def _resume(path: Path, identity: dict, momentum: bool, replace: bool) -> tuple[Saved | None, str | None]:
    """(the training to continue from, or None), and why a file cannot be continued."""
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
    return Saved(tensors["snapshots"], tensors["rng_state"], tensors.get("momentum_buffer"), meta), None


def _save(path: Path, snapshots: list[torch.Tensor], gen: torch.Generator, buf: torch.Tensor | None,
          meta: dict) -> None:
    tensors = {"snapshots": torch.stack(snapshots), "rng_state": gen.get_state()}
    if buf is not None:
        tensors["momentum_buffer"] = buf
    save_tensors(tensors, path, meta)


def epoch_subset(config: ExpertConfig, order: torch.Tensor | None, n: int, epoch: int) -> torch.Tensor | None:
    """The training images of epoch ``epoch`` under the recipe's schedule part (None: all of them)."""
    return parts.build("schedule", config).indices(order, n, epoch)


@dataclass(frozen=True)
class ExpertJob:
    """What the experts of one ``train_experts`` call share: the data (on the training device) and its fingerprint,
    the spec, settings and network, the store, the easiest-first ``order`` for schedules that need it, where
    progress events go, and whether a file trained with other settings may be replaced."""

    images: torch.Tensor
    labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    spec: DatasetSpec
    config: ExpertConfig
    model: ModelConfig
    out_dir: str | Path
    train_sha256: str
    order: torch.Tensor | None = None
    progress: Callable[[dict], None] | None = None
    replace: bool = False
    network: Network | None = None  # what the steps call (step_network); None: a float32 net
    arithmetic: dict | None = None  # what it computes in, recorded in every file

    def identity(self, index: int) -> dict:
        return _identity(self.spec, self.model, self.config, index, self.images.shape[0], self.train_sha256)


def train_expert(index: int, job: ExpertJob) -> Path:
    """Train (or continue, or skip) expert ``index`` of ``job``; an existing file trained with other settings is
    refused unless ``job.replace``."""
    images, labels, test_images, test_labels = job.images, job.labels, job.test_images, job.test_labels
    spec, config, model, order = job.spec, job.config, job.model, job.order
    path = expert_path(job.out_dir, index)
    device = images.device
    f = FunctionalConvNet(model, device=device)
    saved, problem = _resume(path, job.identity(index), bool(config.momentum), job.replace)
    emit = job.progress or (lambda event: None)
    if problem:
        log.warning(f"{path}: {problem}; retraining it")
    if saved is not None and saved.meta["completed_epochs"] >= config.epochs:
        emit({"kind": "skip", "expert": index})
        return path
    if saved is None:
        gen = expert_generator(config.seed, index)
        p = f.init_flat(int(torch.randint(2**62, (1,), generator=gen)))
        snapshots, buf = [p.detach().cpu()], None
        meta = {"format": EXPERT_FORMAT, "version": EXPERT_VERSION, "spec": spec.to_dict(),
                "model": model.to_dict(), "config": section_dict(config), "seed": config.seed, "index": index,
                "num_train": images.shape[0], "train_sha256": job.train_sha256, "num_test": test_images.shape[0],
                "completed_epochs": 0, "train_loss": [], "test_acc": [], "epoch_seconds": [],
                "epochs": config.epochs, "arithmetic": job.arithmetic}
        _save(path, snapshots, gen, buf, meta)  # visible, and resumable, from the init on
    else:
        meta = saved.meta
        gen = torch.Generator()
        gen.set_state(saved.rng_state)
        snapshots = list(saved.snapshots)
        p = saved.snapshots[-1].to(device)
        buf = saved.buf.to(device) if saved.buf is not None else None
    meta = {**meta, "epochs": config.epochs, "config": section_dict(config)}
    for epoch in range(meta["completed_epochs"] + 1, config.epochs + 1):
        start = time.perf_counter()
        subset = epoch_subset(config, order, images.shape[0], epoch)
        x, y = (images, labels) if subset is None else (images[subset], labels[subset])
        on_step = partial(_step_event, emit, index, epoch, -(-x.shape[0] // config.batch_size))
        p, buf, loss = train_epoch(job.network or f, p, buf, x, y, config, gen, epoch, on_step)
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


def schedule_steps(config: ExpertConfig, num_train: int, after_epoch: int = 0) -> int:
    """Optimizer steps of one expert's epochs after ``after_epoch`` under the recipe's schedule part."""
    everything = torch.arange(num_train)

    def steps(epoch: int) -> int:
        subset = epoch_subset(config, everything, num_train, epoch)
        return -(-(num_train if subset is None else len(subset)) // config.batch_size)

    return sum(steps(e) for e in range(after_epoch + 1, config.epochs + 1))


def planned_steps(out_dir: str | Path, indices: Iterable[int], config: ExpertConfig, num_train: int) -> int:
    """Optimizer steps left to do (from file headers and the schedule), for a progress bar's total."""
    total = 0
    for index in indices:
        try:
            done = int(read_metadata(expert_path(out_dir, index)).get("completed_epochs", 0))
        except (KitFileError, TypeError, ValueError):
            done = 0
        total += schedule_steps(config, num_train, done)
    return total


@torch.no_grad()
def _logits(f: FunctionalConvNet, p: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    return predict(f.module, partial(f, p), images, batch_size=EL2N_BATCH)


def difficulty_order(images: torch.Tensor, labels: torch.Tensor, config: ExpertConfig, out_dir: str | Path,
                     data: str, model: ModelConfig) -> torch.Tensor:
    """Training images from easiest to hardest by EL2N, averaged over the schedule part's ``difficulty``
    (networks, epochs each) trained with plain SGD and DSA (PAD's FIEX); computed once per store and cached in it."""
    path = Path(out_dir) / DIFFICULTY
    models, epochs = parts.build("schedule", config).difficulty
    key = hashlib.sha256(repr((data, model.to_dict(), models, epochs, config.lr, config.batch_size,
                               config.seed)).encode()).hexdigest()
    if path.is_file():
        tensors, meta = load_tensors(path)
        if meta.get("key") == key and tensors.get("order") is not None and len(tensors["order"]) == len(labels):
            return tensors["order"].to(images.device)
    scorer = replace(config, objective=Choice("sgd"), momentum=0.0, weight_decay=0.0, lr_decay_epoch=0,
                     schedule=Choice("full"), arithmetic="float32")
    f = FunctionalConvNet(model, device=images.device)
    total = torch.zeros(len(labels), device=images.device)
    for m in range(models):
        gen = expert_generator(config.seed, -1 - m)  # streams no expert draws from
        p = f.init_flat(int(torch.randint(2**62, (1,), generator=gen)))
        for epoch in range(1, epochs + 1):
            p, _, _ = train_epoch(f, p, None, images, labels, scorer, gen, epoch)
        total += el2n(_logits(f, p, images), labels)
    scores = total / models
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
    make_folders(out_dir)
    if progress is not None:
        progress({"kind": "plan", "total": planned_steps(out_dir, indices, config, images.shape[0]),
                  "experts": indices})
    images, labels = images.to(device), labels.to(device)
    order = None
    if parts.build("schedule", config).difficulty:
        order = difficulty_order(images, labels, config, out_dir, train_sha256, model)
    network, how = step_network(model, config, device)
    job = ExpertJob(images, labels, test_images.to(device), test_labels.to(device), spec, config, model, out_dir,
                    train_sha256, order, progress, replace, network, how)
    return [train_expert(i, job) for i in indices]
