"""Time per M-DATM iteration and peak memory: exact constant-memory gradient vs unrolled autograd.

Each (mode, N) runs in its own process so peak memory is that configuration's alone: CUDA peak
allocated memory on a GPU, peak resident set size above the post-setup baseline on a CPU.

    python bench/distill_speed.py                       # CIFAR-100 shapes, N in 10 20 40
    python bench/distill_speed.py --batch 1000 --steps 10 20 40 80
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from rich.console import Console
from rich.table import Table

from challenge_kit.contract import get_spec
from challenge_kit.matching import match, plan_inner_steps
from challenge_kit.models import FunctionalConvNet, ModelConfig


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def child(mode: str, steps: int, batch: int, dataset: str, iters: int, device: str) -> dict:
    torch.manual_seed(0)
    spec = get_spec(dataset)
    dev = torch.device(device)
    net = FunctionalConvNet(ModelConfig.for_spec(spec), device=dev)
    images = torch.randn(spec.shape, device=dev)
    labels = torch.arange(spec.num_classes, device=dev).repeat_interleave(spec.ipc)
    start = net.init_flat(0)
    target = start + 0.01 * torch.randn_like(start)
    lr = torch.tensor(0.01, device=dev)
    gen = torch.Generator().manual_seed(0)
    aug = torch.Generator(device=dev).manual_seed(1)

    def one() -> None:
        plan = plan_inner_steps(spec.num_images, batch, steps, spec.image_size, dev, generator=gen, aug_generator=aug)
        res = match(net, images, labels, lr, start, target, plan, mode)
        float(res.loss)

    if dev.type == "cuda":
        one()  # warm-up: kernels, allocator
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = _rss_mb()
    tick = time.perf_counter()
    for _ in range(iters):
        one()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20 - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    return {"mode": mode, "steps": steps, "batch": batch, "seconds": (time.perf_counter() - tick) / iters,
            "peak_mb": peak, "device": str(dev), "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="cifar100")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 40], help="inner steps N")
    parser.add_argument("--batch", type=int, default=None, help="batch_syn (default 1000 on CUDA, 100 on CPU)")
    parser.add_argument("--iters", type=int, default=1, help="timed iterations per configuration")
    parser.add_argument("--modes", nargs="+", default=["exact", "unrolled"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    batch = args.batch or (1000 if args.device.startswith("cuda") else 100)

    if args.child:
        print(json.dumps(child(args.modes[0], args.steps[0], batch, args.dataset, args.iters, args.device)))
        return

    rows = []
    for steps in args.steps:
        for mode in args.modes:
            cmd = [sys.executable, __file__, "--child", "--modes", mode, "--steps", str(steps), "--batch", str(batch),
                   "--dataset", args.dataset, "--iters", str(args.iters), "--device", args.device]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                tail = (done.stderr.strip().splitlines() or ["failed"])[-1]
                rows.append({"mode": mode, "steps": steps, "batch": batch, "error": tail})
            else:
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            Console(stderr=True).print(f"done {mode} N={steps}: {rows[-1]}")
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"M-DATM iteration, {args.dataset} shapes, batch_syn {batch}, {args.device}")
    for col in ("N", "mode", "s / iteration", "peak memory (MiB)", "time vs unrolled", "memory vs unrolled"):
        table.add_column(col, justify="right")
    for row in rows:
        ref = next((r for r in rows if r["steps"] == row["steps"] and r["mode"] == "unrolled" and "error" not in r),
                   None)
        if "error" in row:
            table.add_row(str(row["steps"]), row["mode"], "-", "-", "-", row["error"][:60])
            continue
        t_ratio = f"{row['seconds'] / ref['seconds']:.2f}x" if ref else "-"
        m_ratio = f"{row['peak_mb'] / ref['peak_mb']:.2f}x" if ref else "-"
        table.add_row(str(row["steps"]), row["mode"], f"{row['seconds']:.2f}", f"{row['peak_mb']:.0f}",
                      t_ratio, m_ratio)
    Console().print(table)


if __name__ == "__main__":
    main()
