"""The official scorer's training recipe, run with data kept on the device.

Same recipe as the challenge's ``evaluate.py``: the default ConvNet trained from a fresh
init with SGD for 1001 epochs on the distilled images, DSA on every batch, lr divided by 10 (and a new
optimizer, so momentum restarts) after epoch index 501, then one test pass. What differs is only how the
loop is driven: the whole set lives on the device, batches are gathered by a device permutation and
augmented on the device, and losses and correct counts stay on the device until the epoch ends.

Read ``train`` beside the official script: it is the whole loop for one network. ``train_rounds`` trains
seeded rounds (stacked ones through ``_train_stacked``, the fast scorer's variant) and ``evaluate_images``
scores a set as the leaderboard does; both take the arithmetic as one ``Arithmetic`` (``evaluator.fast``). The
recipe is kept in one file (past 300 lines) so that it reads beside the official script as a whole.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from challenge_kit.core import augment
from challenge_kit.core.contract import (
    BATCH_SIZE,
    CHALLENGE_NET,
    EPOCHS,
    LR,
    LR_DECAY,
    MOMENTUM,
    ROUNDS,
    WEIGHT_DECAY,
    DatasetSpec,
    default_labels,
)
from challenge_kit.core.devices import resolve_device
from challenge_kit.core.errors import KitError
from challenge_kit.core.models import ConvNet, ModelConfig, build_network
from challenge_kit.core.parallel import LOCAL, Shard, rank_indices
from challenge_kit.core.progress import make_progress
from challenge_kit.core.seeds import round_seeds, stream_seeds
from evaluator.fast import FAITHFUL, Arithmetic, forward, precision, stacked

Progress = Callable[[int, float, float], None]  # (epoch index, mean train loss, train accuracy)
Streams = tuple[torch.Generator | None, torch.Generator | None]  # (device generator, CPU group generator)


def drop_epoch(epochs: int = EPOCHS) -> int:
    """Epoch index after which the lr drops: ``Epoch // 2 + 1`` for the reference's ``Epoch = epochs - 1``."""
    return (epochs - 1) // 2 + 1


def lr_at(epoch: int, epochs: int = EPOCHS, lr: float = LR) -> float:
    """Learning rate used during epoch index ``epoch`` (0.01 up to 501, 0.001 from 502 on)."""
    return lr if epoch <= drop_epoch(epochs) else lr * LR_DECAY


def make_optimizer(params, lr: float) -> torch.optim.Optimizer:
    """A fresh SGD: the reference builds a new one at the lr drop, so momentum buffers restart."""
    return torch.optim.SGD(params, lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def _targets(labels: torch.Tensor) -> torch.Tensor:
    """Class indices of hard labels, or of soft labels' largest entry (for the accuracy count)."""
    return labels.argmax(1) if labels.dim() == 2 else labels


def _batch(images: torch.Tensor, idx: torch.Tensor, streams: Streams) -> torch.Tensor:
    """The images at ``idx``, DSA-augmented: one group for the batch, parameters per image."""
    generator, group_generator = streams
    params = augment.sample(idx.shape[0], images.shape[-1], images.device, generator=generator,
                            group_generator=group_generator)
    return augment.apply(images[idx], params)


def _epoch(net: torch.nn.Module, step, optimizer: torch.optim.Optimizer, images: torch.Tensor,
           labels: torch.Tensor, streams: Streams, batch_size: int, how: Arithmetic) -> torch.Tensor:
    """One epoch of the official loop: a fresh shuffle, then per batch DSA, cross-entropy, one SGD step.
    Returns (summed loss, correct count), left on the device."""
    device, targets = images.device, _targets(labels)
    net.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    perm = torch.randperm(images.shape[0], device=device, generator=streams[0])
    for i in range(0, images.shape[0], batch_size):
        idx = perm[i:i + batch_size]
        x = _batch(images, idx, streams)
        with precision(device, how):
            out = step(x)
        loss = F.cross_entropy(out.float(), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * idx.shape[0]
        correct += (out.detach().argmax(1) == targets[idx]).sum()
    return torch.stack([loss_sum, correct.to(loss_sum.dtype)])


def train(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *, epochs: int = EPOCHS,
          lr: float = LR, batch_size: int = BATCH_SIZE, generator: torch.Generator | None = None,
          group_generator: torch.Generator | None = None, progress: Progress | None = None,
          how: Arithmetic = Arithmetic()) -> None:
    """The official script's training loop, for one net on tensors already on its device: SGD (lr 0.01,
    momentum 0.9, weight decay 5e-4) for ``epochs`` epochs, the lr a tenth, with a fresh optimizer, once
    epoch ``drop_epoch`` is done. ``how`` is the faithful float32 loop unless a fast mode asks otherwise."""
    step = forward(net, how)
    optimizer = make_optimizer(net.parameters(), lr_at(0, epochs, lr))
    for epoch in range(epochs):
        stats = _epoch(net, step, optimizer, images, labels, (generator, group_generator), batch_size, how)
        if progress is not None:  # the only sync with the device
            total, right = stats.tolist()
            progress(epoch, total / images.shape[0], right / images.shape[0])
        if epoch == drop_epoch(epochs):
            optimizer = make_optimizer(net.parameters(), lr_at(epoch + 1, epochs, lr))


def _train_stacked(nets: list[torch.nn.Module], images: torch.Tensor, labels: torch.Tensor,
                   streams: list[Streams], *, epochs: int, lr: float, batch_size: int, progress: Progress | None,
                   how: Arithmetic) -> None:
    """``train`` for several nets at once (``evaluator.fast.stacked``), net r drawing its shuffles and
    augmentations from ``streams[r]`` exactly as it would alone; ``progress`` gets the rounds' means."""
    n, device, rounds, targets = images.shape[0], images.device, len(nets), _targets(labels)
    step, leaves, unstack = stacked(nets, how)
    optimizer = make_optimizer(leaves, lr_at(0, epochs, lr))
    for epoch in range(epochs):
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        perms = [torch.randperm(n, device=device, generator=g) for g, _ in streams]
        for i in range(0, n, batch_size):
            idx = [perm[i:i + batch_size] for perm in perms]
            x = torch.stack([_batch(images, j, s) for j, s in zip(idx, streams, strict=True)])
            with precision(device, how):
                outs = step(x).unbind(0)
            losses = [F.cross_entropy(o.float(), labels[j]) for o, j in zip(outs, idx, strict=True)]
            optimizer.zero_grad(set_to_none=True)
            torch.stack(losses).sum().backward()  # each net's gradient: its own loss
            optimizer.step()
            for o, j, loss in zip(outs, idx, losses, strict=True):
                loss_sum += loss.detach() * j.shape[0]
                correct += (o.detach().argmax(1) == targets[j]).sum()
        if progress is not None:
            total, right = torch.stack([loss_sum, correct.to(loss_sum.dtype)]).tolist()
            progress(epoch, total / n / rounds, right / n / rounds)
        if epoch == drop_epoch(epochs):
            optimizer = make_optimizer(leaves, lr_at(epoch + 1, epochs, lr))
    unstack()


def _init_net(config: ModelConfig, seed: int, device: torch.device, arch: str = CHALLENGE_NET) -> torch.nn.Module:
    """Round ``seed``'s fresh network (the challenge ConvNet unless ``arch`` names another), drawn from its own
    stream: the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seeds(seed)[0])
        net = ConvNet(config) if arch == CHALLENGE_NET else build_network(arch, config)
    return net.to(device)


def _generators(seed: int, device: torch.device) -> Streams:
    """A device RNG (shuffling, augmentation parameters) and a CPU RNG (augmentation group, no sync)."""
    _, on_device, on_cpu = stream_seeds(seed)
    return torch.Generator(device=device).manual_seed(on_device), torch.Generator().manual_seed(on_cpu)


def fresh_round(config: ModelConfig, seed: int, device: torch.device, arch: str = CHALLENGE_NET
                ) -> tuple[torch.nn.Module, Streams]:
    """Round ``seed``'s fresh network and its streams, for a caller that drives ``train`` itself (to look at the
    network between epochs) and still trains the round as ``train_rounds`` would."""
    return _init_net(config, seed, device, arch), _generators(seed, device)


def train_rounds(images: torch.Tensor, labels: torch.Tensor, seeds: list[int], *, num_classes: int,
                 epochs: int = EPOCHS, lr: float = LR, batch_size: int = BATCH_SIZE,
                 device: torch.device | str | None = None, progress: Progress | None = None,
                 how: Arithmetic = Arithmetic(), arch: str = CHALLENGE_NET) -> list[torch.nn.Module]:
    """The scorer's rounds of ``seeds``: per seed a fresh network (the challenge ConvNet unless ``arch`` names
    another, ``core.contract.ARCHITECTURES``) trained on (images, labels); the trained nets.

    ``labels`` are class indices (N,) or soft targets (N, K); the challenge always uses default order. A seed
    fixes init, shuffling and augmentation, each its own stream (bit-reproducible on CPU). Rounds train one at
    a time, or ``how.stacked`` at once, each as it would alone (one at a time for a network with buffers: batch
    norm's running statistics cannot be stacked).
    """
    device = resolve_device(device)
    config = ModelConfig(num_classes=num_classes, image_size=images.shape[-1], channels=images.shape[1])
    nets = [_init_net(config, seed, device, arch) for seed in seeds]
    images = images.detach().to(device, torch.float32)
    labels = labels.detach().to(device)
    labels = labels.float() if labels.is_floating_point() else labels.long()
    together = 1 if any(True for _ in nets[0].buffers()) else how.stacked
    for b in range(0, len(seeds), together):
        group = nets[b:b + together]
        streams = [_generators(seed, device) for seed in seeds[b:b + together]]
        if len(group) == 1:
            train(group[0], images, labels, epochs=epochs, lr=lr, batch_size=batch_size, generator=streams[0][0],
                  group_generator=streams[0][1], progress=progress, how=how)
        else:
            _train_stacked(group, images, labels, streams, epochs=epochs, lr=lr, batch_size=batch_size,
                           progress=progress, how=how)
    return nets


@torch.no_grad()
def class_correct(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                  batch_size: int = BATCH_SIZE) -> torch.Tensor:
    """Correct predictions per class in eval mode, no augmentation (stays on the device: no sync)."""
    net.eval()
    device = next(net.parameters()).device
    correct = torch.zeros(num_classes, dtype=torch.long, device=device)
    for i in range(0, images.shape[0], batch_size):
        x = images[i:i + batch_size].to(device, torch.float32, non_blocking=True)
        y = labels[i:i + batch_size].to(device, non_blocking=True)
        correct += torch.bincount(y[net(x).argmax(1) == y], minlength=num_classes)
    return correct


def test_accuracy(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                  batch_size: int = BATCH_SIZE) -> float:
    """Accuracy fraction in eval mode, no augmentation; one host sync at the end."""
    num_classes = int(labels.max()) + 1 if labels.numel() else 1
    return class_correct(net, images, labels, num_classes, batch_size).sum().item() / images.shape[0]


def is_official(spec: DatasetSpec, rounds: int, epochs: int, labels: torch.Tensor | None = None,
                how: Arithmetic = Arithmetic()) -> bool:
    """Whether a run is the leaderboard's recipe exactly: challenge spec, default labels, full budget, the
    faithful arithmetic."""
    return spec.challenge and rounds == ROUNDS and epochs == EPOCHS and labels is None and how.mode == FAITHFUL


@dataclass(frozen=True)
class Score:
    """What scoring a set gives: every round's accuracy and seed, their mean, and the conditions."""

    dataset: str
    mean: float
    rounds: list[float]
    epochs: int
    seeds: list[int]
    device: str
    official: bool
    scorer: Arithmetic
    spec: DatasetSpec
    test_images: int
    seconds: float
    per_class: list[float] | None = None  # each class's test accuracy, mean over rounds, when asked

    def to_dict(self) -> dict:
        """The keys of ``scores.json``'s per-dataset entries and ``ddkit evaluate --json``."""
        out = {"dataset": self.dataset, "mean": self.mean, "rounds": self.rounds, "epochs": self.epochs,
               "seeds": self.seeds, "device": self.device, "official": self.official,
               "scorer": self.scorer.to_dict(), "spec": self.spec.to_dict(), "test_images": self.test_images,
               "seconds": self.seconds}
        return out if self.per_class is None else {**out, "per_class": self.per_class}


def evaluate_images(images: torch.Tensor, spec: DatasetSpec, test_images: torch.Tensor,
                    test_labels: torch.Tensor, *, rounds: int = ROUNDS, epochs: int = EPOCHS,
                    seed: int | None = None, device: torch.device | str | None = None,
                    labels: torch.Tensor | None = None, show_progress: bool = True, per_class: bool = False,
                    shard: Shard = LOCAL, how: Arithmetic = Arithmetic()) -> Score:
    """Score a distilled set as the challenge does: ``rounds`` fresh trainings, mean test accuracy.

    ``labels=None`` uses the scorer's default order (image i is class i // ipc), as the leaderboard does.
    ``per_class`` adds each class's accuracy (mean over rounds). Under ``torchrun`` (``shard``) rank r runs
    rounds r, r + K, ...; each round keeps its seed, so the result equals a single process's. ``how`` other
    than the faithful arithmetic (``evaluator.fast.arithmetic``) is recorded in the score, never official.
    """
    if tuple(images.shape) != spec.shape:
        raise KitError(f"images have shape {tuple(images.shape)}, {spec.name} expects {spec.shape}")
    if rounds < 1 or epochs < 1:
        raise KitError(f"rounds and epochs must be >= 1 (got rounds={rounds}, epochs={epochs})")
    device = resolve_device(device)
    train_labels = default_labels(spec.num_classes, spec.ipc) if labels is None else labels
    seeds = round_seeds(seed, rounds) if shard.world == 1 or seed is not None else shard.gather(
        round_seeds(None, rounds))[0]  # unseeded: every rank must run the seeds rank 0 drew
    test_labels = test_labels.long()
    totals = torch.bincount(test_labels, minlength=spec.num_classes).clamp_min(1)
    mine = rank_indices(rounds, shard.rank, shard.world)
    results: dict[int, tuple[float, list[float]]] = {}
    start = time.perf_counter()
    with make_progress(disable=not show_progress or not shard.leader) as bar:
        task = bar.add_task(f"scoring {spec.name}", total=len(mine) * epochs, status="")
        for group in [mine[i:i + how.stacked] for i in range(0, len(mine), how.stacked)]:
            which = f"round {group[0] + 1}" + (f"-{group[-1] + 1}" if len(group) > 1 else "") + f"/{rounds}"

            def report(epoch: int, loss: float, acc: float, which: str = which, k: int = len(group)) -> None:
                bar.update(task, advance=k, status=f"{which} loss {loss:.3f} acc {acc:.3f}")

            nets = train_rounds(images, train_labels, [seeds[r] for r in group], num_classes=spec.num_classes,
                                epochs=epochs, device=device, progress=report if show_progress else None, how=how)
            for r, net in zip(group, nets, strict=True):
                correct = class_correct(net, test_images.to(device, torch.float32), test_labels.to(device),
                                        spec.num_classes).cpu()
                results[r] = (correct.sum().item() / test_images.shape[0], (correct / totals).tolist())
            bar.update(task, status=f"{which} test acc {results[group[-1]][0]:.4f}")
    for part in shard.gather(results):
        results.update(part)
    accuracies = [results[r][0] for r in range(rounds)]
    return Score(dataset=spec.name, mean=sum(accuracies) / len(accuracies), rounds=accuracies, epochs=epochs,
                 seeds=seeds, device=str(device), official=is_official(spec, rounds, epochs, labels, how),
                 scorer=how, spec=spec, test_images=int(test_images.shape[0]),
                 seconds=round(time.perf_counter() - start, 3),
                 per_class=[sum(results[r][1][c] for r in range(rounds)) / rounds for c in range(spec.num_classes)]
                 if per_class else None)
