"""Epochs per second: the bundled scorer's device-resident loop vs a plain DataLoader loop, same recipe, and the
fast scorer's arithmetic (bfloat16 autocast alone, then compiled too) on the same loop, and the fast scorer
with several rounds stacked (``--stack``; timed per round, so it compares with one round at a time).

The reference loop is how the public scorer drives training: a DataLoader over CPU tensors, each batch
copied to the device, augmented, and its loss and accuracy pulled back to the host (``.item()``, numpy).
Both variants train the same ConvNet from the same init on the same data with the same optimizer
schedule, on the same device, in one run.

    python bench/evaluator_speed.py                      # CIFAR-100 shapes, a few epochs on CPU
    python bench/evaluator_speed.py --dataset tinyimagenet --classes 20   # the mini profile's 200-image set
    python bench/evaluator_speed.py --device cuda --epochs 200
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from rich.table import Table
from torch.utils.data import DataLoader, TensorDataset

from challenge_kit.core import augment
from challenge_kit.core.contract import SPECS, default_labels, normalize
from challenge_kit.core.devices import resolve_device, tune_allocator
from challenge_kit.core.models import ConvNet, ModelConfig
from challenge_kit.core.progress import make_console
from evaluator import scorer
from evaluator.fast import FAITHFUL, FAST, Arithmetic, arithmetic


def reference_train(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int,
                    device: torch.device) -> None:
    """The plain loop: per-batch host->device copies, per-batch DSA, per-batch host round-trips."""
    loader = DataLoader(TensorDataset(images, labels), batch_size=scorer.BATCH_SIZE, shuffle=True, num_workers=0)
    optimizer = scorer.make_optimizer(net.parameters(), scorer.lr_at(0, epochs))
    for epoch in range(epochs):
        net.train()
        loss_avg, acc_avg, num = 0.0, 0, 0
        for x, y in loader:
            x, y = x.float().to(device), y.long().to(device)
            x, _ = augment.dsa(x)
            out = net(x)
            loss = F.cross_entropy(out, y)
            loss_avg += loss.item() * y.shape[0]
            acc_avg += int(np.sum(np.argmax(out.detach().cpu().numpy(), axis=-1) == y.cpu().numpy()))
            num += y.shape[0]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if epoch == scorer.drop_epoch(epochs):
            optimizer = scorer.make_optimizer(net.parameters(), scorer.lr_at(epoch + 1, epochs))


def bundled(how: Arithmetic):
    def bundled_train(nets: list[torch.nn.Module], images: torch.Tensor, labels: torch.Tensor, epochs: int,
                      device: torch.device) -> None:
        """The bundled loop (rounds of its own nets, as many as given), with the per-epoch progress sync it does
        when drawing a bar."""
        scorer.train_rounds(images, labels, list(range(len(nets))), num_classes=int(labels.max()) + 1, epochs=epochs,
                            device=device, progress=lambda epoch, loss, acc: None, how=how)
    return bundled_train


def timed(train, rounds: int, images, labels, epochs: int, device: torch.device, config: ModelConfig) -> float:
    """Seconds per round of ``epochs`` epochs (``rounds`` nets trained by one call)."""
    torch.manual_seed(0)
    nets = [ConvNet(config).to(device) for _ in range(rounds)]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    train(nets, images, labels, epochs, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(SPECS), default="cifar100")
    parser.add_argument("--epochs", type=int, default=None, help="timed epochs (default: 3 cpu, 200 cuda)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--classes", type=int, default=None, help="a subset's classes (IPC stays 10)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved timings per variant; best is kept")
    parser.add_argument("--stack", type=int, default=4, help="rounds of the stacked fast variant")
    args = parser.parse_args()
    tune_allocator()  # as the CLI does: without it every CPU step page-faults its activations in again
    spec = SPECS[args.dataset] if args.classes is None else SPECS[args.dataset].subset(args.classes)
    device = resolve_device(args.device)
    fast = arithmetic(FAST, device)
    epochs = args.epochs or (200 if device.type == "cuda" else 3)
    g = torch.Generator().manual_seed(0)
    images = normalize(torch.rand(spec.shape, generator=g), spec)
    labels = default_labels(spec.num_classes, spec.ipc)
    config = ModelConfig.for_spec(spec)

    one = replace(fast, stacked=1)
    compiled = ", compiled" if fast.compiled else ""
    variants = {"reference (DataLoader, per-batch .item())": (lambda nets, *a: reference_train(nets[0], *a), 1),
                "bundled, faithful (float32)": (bundled(arithmetic(FAITHFUL, device)), 1),
                f"bundled, {fast.precision} autocast only": (bundled(replace(one, compiled=False)), 1),
                f"bundled, fast ({fast.precision}{compiled})": (bundled(one), 1),
                f"bundled, fast ({fast.precision}{compiled}), {args.stack} rounds stacked":
                    (bundled(replace(one, stacked=args.stack)), args.stack)}
    for train, rounds in variants.values():  # warm-up: allocator, kernels, cudnn autotuning, compilation
        timed(train, rounds, images, labels, 1, device, config)
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(args.repeats):  # interleaved, so load from other processes hits both alike
        for name, (train, rounds) in variants.items():
            best[name] = min(best[name], timed(train, rounds, images, labels, epochs, device, config))
    rows = list(best.items())

    table = Table(title=f"scorer training speed: {spec.name} {tuple(spec.shape)}, batch {scorer.BATCH_SIZE}, "
                        f"device {device}, torch threads {torch.get_num_threads()}")
    for column in ("variant", "epochs", f"seconds per round (best of {args.repeats})", "epochs/s per round"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for name, seconds in rows:
        table.add_row(name, str(epochs), f"{seconds:.2f}", f"{epochs / seconds:.3f}")
    console = make_console()
    console.print(table)
    console.print(f"speed ratio (bundled / reference): {rows[0][1] / rows[1][1]:.2f}x; fast / faithful: "
                  f"{rows[1][1] / rows[3][1]:.2f}x (autocast alone {rows[1][1] / rows[2][1]:.2f}x); "
                  f"{args.stack} rounds stacked / one at a time: {rows[3][1] / rows[4][1]:.2f}x")


if __name__ == "__main__":
    main()
