"""The first GPU run, in one call: everything that needs CUDA checked, timed and written down in under 10 minutes.

    python bench/gpu_acceptance.py --data-root data/tiny-20 --out gpu-acceptance   # on a CUDA machine

Steps (each one's outcome is kept even when a later one fails):
1. the device-marked tests (``pytest -m device``) on the device;
2. no host synchronization inside the scorer's epoch loop or a distillation match
   (``torch.cuda.set_sync_debug_mode("error")``; the documented syncs are outside both);
3. scorer throughput: the kit's device-resident loop (faithful, fast, fast with its rounds stacked) against a
   plain DataLoader loop of the official recipe;
4. one distillation iteration at the paper's shapes (N and batch of each dataset's full recipe): time, peak memory;
5. a quick-profile ``make-submission`` on ``--data-root`` and ``verify`` on its export;
6. the matching iteration at the paper's shapes in each arithmetic: strict float32 (no TF32 anywhere), TF32
   (cuDNN's and cuBLAS's), and the kit's fast one (bfloat16 autocast, ``distill.arithmetic = "fast"``): time,
   peak memory, and the image and lr gradients against strict float32's (the fast one is usable where the
   image-gradient cosine is at least 0.99).

It writes ``OUT/acceptance.json`` and prints a table. Without CUDA it says so in one line and exits 2;
``--device cpu --tiny`` runs the same steps at tiny sizes (the test suite does), so a first GPU run fails only on
what is truly CUDA's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.table import Table

from challenge_kit.arithmetic import autocast_dtype
from challenge_kit.core import augment
from challenge_kit.core.contract import BATCH_SIZE, default_labels, get_spec
from challenge_kit.core.models import ConvNet, FunctionalConvNet, ModelConfig
from challenge_kit.core.progress import make_console
from challenge_kit.core.storage import save_json
from challenge_kit.matching import Matching, match, plan_inner_steps
from challenge_kit.recipes import load_recipe
from evaluator.fast import FAST, Arithmetic, arithmetic
from evaluator.scorer import make_optimizer, train, train_rounds

HERE = Path(__file__).resolve().parent
STACK_MEASURED = 8  # rounds of the stacked fast scorer's throughput
CLI = [sys.executable, "-c", "from challenge_kit.cli import app; app()"]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tests(device: torch.device) -> dict:
    """The device-marked tests, run by pytest in a child process on ``device``."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "device", str(HERE.parent / "tests")]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "DDKIT_TEST_DEVICE": str(device)},
                          cwd=HERE.parent)
    last = (done.stdout.strip().splitlines() or ["no output"])[-1]
    return {"ok": done.returncode == 0, "summary": last}


def no_syncs(device: torch.device) -> dict:
    """Run the scorer's loop and one match with CUDA's sync debug mode set to raise on any host sync."""
    if device.type != "cuda":
        return {"ok": True, "summary": "not applicable: the sync debug mode is CUDA's"}
    spec = get_spec("cifar100")
    images = torch.randn(spec.shape, device=device)
    labels = default_labels(spec.num_classes, spec.ipc, device)
    net = ConvNet(ModelConfig.for_spec(spec)).to(device)
    fnet = FunctionalConvNet(ModelConfig.for_spec(spec), device=device)
    start = fnet.init_flat(0)
    problem = Matching(start, start, [(4, start + 0.01)])
    plan = plan_inner_steps(spec.num_images, 100, 4, spec.image_size, device,
                            aug_generator=torch.Generator(device=device).manual_seed(0))
    lr = torch.tensor(0.01, device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    torch.cuda.set_sync_debug_mode("error")
    try:
        train(net, images, labels, epochs=2, generator=generator, group_generator=torch.Generator().manual_seed(0))
        train_rounds(images, labels, [0, 1], num_classes=spec.num_classes, epochs=2, device=device,
                     how=replace(arithmetic(FAST, device), stacked=2))
        match(fnet, images, labels, lr, problem, plan, "exact")
    except RuntimeError as e:
        return {"ok": False, "summary": f"host sync: {str(e).splitlines()[0]}"}
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return {"ok": True, "summary": "scorer epochs (one round, two stacked) and an exact match ran without a host sync"}


def _images_per_second(run: Callable[[], None], images: int, device: torch.device) -> float:
    run()  # warm-up
    synchronize(device)
    tick = time.perf_counter()
    run()
    synchronize(device)
    return images / (time.perf_counter() - tick)


def throughput(device: torch.device, tiny: bool) -> dict:
    """Training images per second: the kit's scorer loop, faithful and fast, and the official script's DataLoader
    loop."""
    spec = get_spec("cifar100")
    n, epochs = (64, 1) if tiny else (spec.num_images, 20)
    images = torch.randn(n, *spec.shape[1:])
    labels = torch.arange(n) % spec.num_classes

    def kit(how: Arithmetic = Arithmetic()) -> None:
        train_rounds(images, labels, list(range(how.stacked)), num_classes=spec.num_classes, epochs=epochs,
                     device=device, how=how)

    fast = arithmetic(FAST, device)
    one = replace(fast, stacked=1)
    fast = replace(fast, stacked=2 if tiny else STACK_MEASURED)  # measured whatever DDKIT_STACKED_ROUNDS says

    def dataloader() -> None:  # the official script's shape: a DataLoader, a host copy and a .item() per batch
        net = ConvNet(ModelConfig.for_spec(spec)).to(device)
        optimizer = make_optimizer(net.parameters(), 0.01)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=BATCH_SIZE,
                                             shuffle=True)
        for _ in range(epochs):
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                loss = F.cross_entropy(net(augment.dsa(x)[0]), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                loss.item()

    kit_rate, fast_rate, loader_rate = (_images_per_second(f, n * epochs, device)
                                        for f in (kit, lambda: kit(one), dataloader))
    stacked_rate = _images_per_second(lambda: kit(fast), n * epochs * fast.stacked, device)
    return {"ok": True, "kit_images_per_s": kit_rate, "fast_images_per_s": fast_rate, "fast": fast.to_dict(),
            "fast_stacked_images_per_s": stacked_rate, "dataloader_images_per_s": loader_rate,
            "summary": f"kit {kit_rate:,.0f} images/s, fast scorer {fast_rate:,.0f} ({fast.precision}"
                       f"{', compiled' if fast.compiled else ''}), {fast.stacked} stacked {stacked_rate:,.0f}, "
                       f"DataLoader loop {loader_rate:,.0f} (kit {kit_rate / loader_rate:.2f}x, fast "
                       f"{fast_rate / loader_rate:.2f}x, stacked {stacked_rate / loader_rate:.2f}x)"}


def full_shapes(device: torch.device, tiny: bool) -> dict:
    """One exact-gradient iteration per dataset at its full recipe's N and batch (bench/distill_speed.py)."""
    rows = []
    for dataset in ("cifar100", "tinyimagenet"):
        d = load_recipe(dataset).distill
        steps, batch = (2, 10) if tiny else (d.syn_steps, d.batch_syn)
        done = subprocess.run([sys.executable, str(HERE / "distill_speed.py"), "--json", "--dataset", dataset,
                               "--steps", str(steps), "--batch", str(batch), "--modes", "exact", "--device",
                               str(device)], capture_output=True, text=True)
        row = json.loads(done.stdout)[0] if done.returncode == 0 else {"error": done.stderr.strip()[-300:]}
        rows.append({"dataset": dataset, **row})
    ok = all("error" not in r for r in rows)
    summary = "; ".join(f"{r['dataset']} N={r.get('steps')} batch {r.get('batch')}: " +
                        (f"{r['seconds']:.2f} s, {r['peak_mb']:.0f} MiB" if "error" not in r else r["error"][-80:])
                        for r in rows)
    return {"ok": ok, "rows": rows, "summary": summary}


def _tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def matching_arithmetic(device: torch.device, tiny: bool) -> dict:
    """One exact match per dataset at its full recipe's N and batch, on the same draws in each arithmetic: seconds
    (after a warm-up), peak memory, and the fast gradients' agreement with strict float32's."""
    fast = autocast_dtype("fast", device)
    cuda = device.type == "cuda"
    arithmetics = {"float32": (False, None), **({"tf32": (True, None)} if cuda else {}),
                   **({"bfloat16": (False, fast)} if fast is not None else {})}
    tf32_before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    rows = []
    try:
        for dataset in ("cifar100", "tinyimagenet"):
            spec, d = get_spec(dataset), load_recipe(dataset).distill
            steps, batch = (2, 10) if tiny else (d.syn_steps, d.batch_syn)
            net = FunctionalConvNet(ModelConfig.for_spec(spec), device=device)
            g = torch.Generator(device=device).manual_seed(0)
            images = torch.randn(spec.shape, device=device, generator=g)
            labels = default_labels(spec.num_classes, spec.ipc, device)
            start = net.init_flat(0)
            problem = Matching(start, start, [(steps, start + 0.01 * torch.randn(start.shape, device=device,
                                                                                 generator=g))])
            plan = plan_inner_steps(spec.num_images, batch, steps, spec.image_size, device,
                                    generator=torch.Generator().manual_seed(1),
                                    aug_generator=torch.Generator(device=device).manual_seed(2))
            lr = torch.tensor(d.lr_init, device=device)
            results = {}
            for name, (tf32, dtype) in arithmetics.items():
                if cuda:
                    _tf32(tf32)
                    torch.cuda.reset_peak_memory_stats(device)
                match(net, images, labels, lr, problem, plan, "exact", autocast=dtype)  # warm-up
                synchronize(device)
                tick = time.perf_counter()
                result = match(net, images, labels, lr, problem, plan, "exact", autocast=dtype)
                synchronize(device)
                seconds = time.perf_counter() - tick
                results[name] = result
                exact = results["float32"]
                rows.append({"dataset": dataset, "steps": steps, "batch": batch, "arithmetic": name,
                             "seconds": seconds, "peak_mb": torch.cuda.max_memory_allocated(device) / 2**20 if cuda
                             else None,
                             "cos_images": F.cosine_similarity(result.grad_images.flatten(),
                                                               exact.grad_images.flatten(), 0).item(),
                             "norm_images": (result.grad_images.norm() / exact.grad_images.norm()).item(),
                             "lr_rel": ((result.grad_lr - exact.grad_lr).abs() / exact.grad_lr.abs()).item()})
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32_before
    base = {r["dataset"]: r["seconds"] for r in rows if r["arithmetic"] == "float32"}

    def said(r: dict) -> str:
        memory = "" if r["peak_mb"] is None else f", {r['peak_mb']:.0f} MiB"
        return (f"{r['dataset']} {r['arithmetic']} {r['seconds']:.2f} s ({base[r['dataset']] / r['seconds']:.2f}x"
                f"{memory}, cos {r['cos_images']:.4f})")

    summary = "; ".join(said(r) for r in rows)
    ok = all(r["cos_images"] >= 0.99 for r in rows)
    return {"ok": ok, "rows": rows, "summary": summary}


def make_submission(device: torch.device, tiny: bool, data_root: Path, out: Path, overrides: list[str]) -> dict:
    """A quick-profile run on ``data_root`` and ``verify`` on what it exported."""
    run = out / "quick"
    sets = [a for o in overrides for a in ("--set", o)]
    tick = time.perf_counter()
    made = subprocess.run([*CLI, "make-submission", "tinyimagenet", "--data-root", str(data_root), "--out", str(run),
                           "--profile", "quick", "--device", str(device), *sets], capture_output=True, text=True)
    seconds = time.perf_counter() - tick
    if made.returncode != 0:
        return {"ok": False, "summary": (made.stderr.strip().splitlines() or ["failed"])[-1], "seconds": seconds}
    checked = subprocess.run([*CLI, "verify", str(run / "tinyimagenet.pt")], capture_output=True, text=True)
    return {"ok": checked.returncode == 0, "seconds": seconds,
            "summary": f"make-submission {seconds:.0f} s; verify exit {checked.returncode}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, type=Path, help="a Tiny ImageNet folder (e.g. from ddkit subset)")
    parser.add_argument("--out", required=True, type=Path, help="folder for acceptance.json and the quick run")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: a check of this script, not of the device")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override for step 5")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"error: --device {args.device}: no CUDA device here (torch {torch.__version__}); this check is for "
              "a GPU machine (--device cpu --tiny checks the script itself)", file=sys.stderr)
        return 2
    if args.out.exists() and any(args.out.iterdir()):
        print(f"error: {args.out}: not empty; choose a new --out", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    steps = {"device tests": lambda: tests(device), "no host syncs": lambda: no_syncs(device),
             "scorer throughput": lambda: throughput(device, args.tiny),
             "full-shape iteration": lambda: full_shapes(device, args.tiny),
             "quick make-submission": lambda: make_submission(device, args.tiny, args.data_root, args.out,
                                                              args.overrides),
             "matching arithmetic": lambda: matching_arithmetic(device, args.tiny)}
    results = {}
    for name, step in steps.items():
        tick = time.perf_counter()
        try:
            results[name] = step()
        except Exception as e:  # one step's failure must not hide the others' results
            results[name] = {"ok": False, "summary": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
        results[name]["wall_s"] = round(time.perf_counter() - tick, 1)
        make_console(stderr=True).print(f"{name}: {results[name]['summary']}")
    report = {"device": str(device), "name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "tiny": args.tiny, "steps": results}
    save_json(report, args.out / "acceptance.json")
    table = Table(title=f"GPU acceptance on {report['name']} (torch {torch.__version__})")
    for column in ("step", "ok", "wall s", "result"):
        table.add_column(column)
    for name, r in results.items():
        table.add_row(name, "yes" if r["ok"] else "[red]NO[/red]", f"{r['wall_s']:.0f}", r["summary"])
    make_console().print(table)
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
