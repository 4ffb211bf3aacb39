"""Time per distillation iteration and peak memory: exact vs unrolled gradient, 1 vs K ranks, allocator settings.

Each configuration runs in its own process (under torchrun for K > 1 ranks) so peak memory is that
configuration's alone: CUDA peak allocated memory on a GPU, peak resident set size above the post-setup
baseline on a CPU, per rank. The reference variants are measured in the same run: ``unrolled`` for the
gradient, 1 rank for sharding, glibc's default allocator (DDKIT_NO_MALLOPT=1) for the allocator tuning.

    python bench/distill_speed.py                                  # CIFAR-100 shapes, N in 10 20 40
    python bench/distill_speed.py --batch 1000 --steps 10 20 40 80 # the paper's batch, on a GPU
    python bench/distill_speed.py --nproc 1 2 --modes exact        # sharded over 2 ranks (gloo on a CPU)
    python bench/distill_speed.py --allocator --modes exact        # tuned vs default glibc allocator
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
from rich.table import Table

from challenge_kit.core.contract import get_spec
from challenge_kit.core.devices import tune_allocator
from challenge_kit.core.models import FunctionalConvNet, ModelConfig
from challenge_kit.core.parallel import process_group
from challenge_kit.core.progress import make_console
from challenge_kit.matching import Matching, match, plan_inner_steps


def killed(returncode: int) -> str | None:
    """What a child's negative exit status says (SIGKILL on a CPU is most often the out-of-memory killer)."""
    if returncode >= 0:
        return None
    return f"killed by signal {-returncode}" + (" (out of memory? see dmesg)" if returncode == -9 else "")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def child(mode: str, steps: int, batch: int, dataset: str, iters: int, device: str, warmup: int = 1) -> dict | None:
    if not os.environ.get("DDKIT_NO_MALLOPT"):
        tune_allocator()
    with process_group(device) as (shard, dev):
        torch.manual_seed(0)
        spec = get_spec(dataset)
        net = FunctionalConvNet(ModelConfig.for_spec(spec), device=dev)
        images = torch.randn(spec.shape, device=dev)
        labels = torch.arange(spec.num_classes, device=dev).repeat_interleave(spec.ipc)
        start = net.init_flat(0)
        problem = Matching(start, start, [(steps, start + 0.01 * torch.randn_like(start))])
        lr = torch.tensor(0.01, device=dev)
        gen = torch.Generator().manual_seed(0)
        aug = torch.Generator(device=dev).manual_seed(1)

        def one() -> None:
            plan = plan_inner_steps(spec.num_images, batch, steps, spec.image_size, dev, generator=gen,
                                    aug_generator=aug)
            float(match(net, images, labels, lr, problem, plan, mode, shard).loss)

        if dev.type == "cuda":  # the baseline is taken before the warm-up: a tuned allocator keeps what it used
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated() / 2**20
        else:
            base = _rss_mb()
        for _ in range(warmup):  # kernels, allocator, process group
            one()
        shard.barrier()
        tick = time.perf_counter()
        for _ in range(iters):
            one()
        if dev.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() / 2**20 - base
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
        seconds = (time.perf_counter() - tick) / iters
        peaks = shard.gather(peak)
        return {"mode": mode, "steps": steps, "batch": batch, "ranks": shard.world, "seconds": seconds,
                "peak_mb": max(peaks), "device": str(dev), "threads": torch.get_num_threads(),
                "warmup": warmup} if shard.leader else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="cifar100")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 40], help="inner steps N")
    parser.add_argument("--batch", type=int, default=None, help="batch_syn (default 1000 on CUDA, 100 on CPU)")
    parser.add_argument("--iters", type=int, default=1, help="timed iterations per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations before them")
    parser.add_argument("--modes", nargs="+", default=["exact", "unrolled"])
    parser.add_argument("--nproc", type=int, nargs="+", default=[1], help="ranks (K > 1 runs under torchrun)")
    parser.add_argument("--allocator", action="store_true", help="also measure glibc's default allocator")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    batch = args.batch or (1000 if args.device.startswith("cuda") else 100)

    if args.child:
        row = child(args.modes[0], args.steps[0], batch, args.dataset, args.iters, args.device, args.warmup)
        if row is not None:
            print(json.dumps(row))
        return

    rows = []
    for steps in args.steps:
        for nproc in args.nproc:
            for mode in args.modes:
                for allocator in (["tuned", "default"] if args.allocator else ["tuned"]):
                    launcher = [sys.executable] if nproc == 1 else [
                        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
                    cmd = [*launcher, __file__, "--child", "--modes", mode, "--steps", str(steps), "--batch",
                           str(batch), "--dataset", args.dataset, "--iters", str(args.iters), "--warmup",
                           str(args.warmup), "--device", args.device]
                    env = {**os.environ, **({"DDKIT_NO_MALLOPT": "1"} if allocator == "default" else {})}
                    if nproc > 1 and args.device == "cpu":  # share the cores between the ranks
                        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
                    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
                    found = [line for line in done.stdout.splitlines() if line.startswith("{")]
                    if done.returncode != 0 or not found:
                        tail = killed(done.returncode) or (done.stderr.strip().splitlines() or ["failed"])[-1]
                        row = {"mode": mode, "steps": steps, "batch": batch, "ranks": nproc, "error": tail}
                    else:
                        row = json.loads(found[-1])
                    row["allocator"] = "default" if env.get("DDKIT_NO_MALLOPT") else "tuned"  # as the child ran
                    rows.append(row)
                    make_console(stderr=True).print(f"done {mode} N={steps} ranks={nproc} {row['allocator']}: {row}")
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"distillation iteration, {args.dataset} shapes, batch_syn {batch}, {args.device}, "
                        f"{args.iters} timed iteration(s)")
    for col in ("N", "mode", "ranks", "allocator", "s / iteration", "peak MiB per rank", "time vs reference",
                "memory vs reference"):
        table.add_column(col, justify="right")

    def reference(row: dict) -> dict | None:
        """Unrolled, 1 rank, default allocator: the first of these that differs from this row."""
        for key, ref_value in (("mode", "unrolled"), ("ranks", 1), ("allocator", "default")):
            if row[key] != ref_value:
                match_ = [r for r in rows if "error" not in r and r["steps"] == row["steps"] and r[key] == ref_value
                          and all(r[k] == row[k] for k in ("mode", "ranks", "allocator") if k != key)]
                if match_:
                    return match_[0]
        return None

    for row in rows:
        if "error" in row:
            table.add_row(str(row["steps"]), row["mode"], str(row["ranks"]), row["allocator"], "-", "-", "-",
                          row["error"][:60])
            continue
        ref = reference(row)
        table.add_row(str(row["steps"]), row["mode"], str(row["ranks"]), row["allocator"], f"{row['seconds']:.2f}",
                      f"{row['peak_mb']:.0f}", f"{row['seconds'] / ref['seconds']:.2f}x" if ref else "-",
                      f"{row['peak_mb'] / ref['peak_mb']:.2f}x" if ref and ref["peak_mb"] > 0 else "-")
    make_console().print(table)


if __name__ == "__main__":
    main()
