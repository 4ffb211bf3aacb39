"""The paper's shapes, once: one exact-gradient distillation iteration and one expert epoch per dataset at its
full recipe (CIFAR-100: N 40, batch 1000, 49,000 training images; Tiny ImageNet: N 25, batch 1000, 64 px,
98,000), each timed in its own process for its own peak memory, beside what ``ddkit plan`` predicts for them.

The plan is calibrated in the same run on the same device, so the two columns meet the same machine state.
Images are random tensors of the real shapes: the work does not depend on their values. Peak memory is CUDA's
peak allocated memory on a GPU, the peak resident set above the post-setup baseline (data included for the
iteration, excluded for the epoch) on a CPU; the plan's figure is the live tensor bytes it counts.

    python bench/full_shapes.py                                   # both datasets, both units (an hour here)
    python bench/full_shapes.py --datasets cifar100 --units iteration --out full.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from distill_speed import killed  # the sibling script (run as a script, bench/ is on the path)
from rich.table import Table

from challenge_kit.core.contract import get_spec
from challenge_kit.core.devices import tune_allocator
from challenge_kit.core.models import FunctionalConvNet, ModelConfig
from challenge_kit.core.progress import make_console
from challenge_kit.experts.training import train_epoch
from challenge_kit.plan import make_plan, train_images
from challenge_kit.recipes import load_recipe

HERE = Path(__file__).resolve().parent
UNITS = ("iteration", "expert epoch")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def expert_epoch(dataset: str, device: str) -> dict:
    """One expert epoch of the full recipe on random images of the training set's shape."""
    tune_allocator()
    recipe, spec, dev = load_recipe(dataset), get_spec(dataset), torch.device(device)
    n = train_images(recipe, spec)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(n, spec.channels, spec.image_size, spec.image_size, generator=gen).to(dev)
    labels = (torch.arange(n) % spec.num_classes).to(dev)
    net = FunctionalConvNet(ModelConfig.for_spec(spec), device=dev)
    p = net.init_flat(0)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = _rss_mb()
    tick = time.perf_counter()
    p, _, loss = train_epoch(net, p, None, images, labels, recipe.experts, gen)  # float(loss) synchronizes
    seconds = time.perf_counter() - tick
    peak = (torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024) - base
    return {"seconds": seconds, "peak_mb": peak, "images": n, "loss": loss}


def measure(dataset: str, unit: str, device: str) -> dict:
    """``unit`` in a child process (so its peak memory is its own)."""
    recipe = load_recipe(dataset).distill
    if unit == "iteration":
        cmd = [sys.executable, str(HERE / "distill_speed.py"), "--json", "--dataset", dataset, "--steps",
               str(recipe.syn_steps), "--batch", str(recipe.batch_syn), "--modes", "exact", "--device", device,
               "--warmup", "1" if device.startswith("cuda") else "0"]  # a CPU has no kernels to warm: one is the run
    else:
        cmd = [sys.executable, __file__, "--child", "--datasets", dataset, "--device", device]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": killed(done.returncode) or (done.stderr.strip().splitlines() or ["failed"])[-1]}
    row = json.loads(done.stdout)
    return row[0] if isinstance(row, list) else row


def planned(dataset: str, device: str) -> dict[str, tuple[float | None, float]]:
    """unit -> (plan seconds, plan peak MiB) for the full recipe here."""
    recipe, spec = load_recipe(dataset), get_spec(dataset)
    n = train_images(recipe, spec)
    stages = {s.name: s for s in make_plan(recipe, spec, n, torch.device(device)).stages}
    experts, distill = stages["experts"], stages["distillation"]
    per_epoch = experts.units // (recipe.experts.num_experts * recipe.experts.epochs)
    return {"iteration": (distill.seconds, distill.peak_bytes / 2**20),
            "expert epoch": (experts.seconds * per_epoch, experts.peak_bytes / 2**20)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["cifar100", "tinyimagenet"])
    parser.add_argument("--units", nargs="+", default=list(UNITS), choices=UNITS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, help="also write the rows here as JSON")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(expert_epoch(args.datasets[0], args.device)))
        return

    rows, console = [], make_console(stderr=True)
    for dataset in args.datasets:
        tick = time.perf_counter()
        plan = planned(dataset, args.device)
        console.print(f"{dataset}: plan calibrated in {time.perf_counter() - tick:.0f} s")
        for unit in args.units:
            row = {"dataset": dataset, "unit": unit, "plan_s": plan[unit][0], "plan_peak_mb": plan[unit][1],
                   **measure(dataset, unit, args.device)}
            rows.append(row)
            console.print(f"{dataset} {unit}: {row}")
            if args.out:
                args.out.write_text(json.dumps(rows, indent=2) + "\n")
    table = Table(title=f"full shapes on {args.device} ({torch.get_num_threads()} threads): measured beside the plan")
    for column in ("dataset", "unit", "seconds", "plan seconds", "measured / plan", "peak MiB", "plan peak MiB"):
        table.add_column(column, justify="left" if column in ("dataset", "unit") else "right")
    for r in rows:
        if "error" in r:
            table.add_row(r["dataset"], r["unit"], "-", f"{r['plan_s']:.1f}", "-", r["error"][:60], "-")
            continue
        table.add_row(r["dataset"], r["unit"], f"{r['seconds']:.1f}", f"{r['plan_s']:.1f}",
                      f"{r['seconds'] / r['plan_s']:.2f}", f"{r['peak_mb']:,.0f}", f"{r['plan_peak_mb']:,.0f}")
    make_console().print(table)


if __name__ == "__main__":
    main()
