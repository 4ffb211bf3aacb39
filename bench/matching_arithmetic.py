"""Matching in the fast arithmetic against float32, over the iterations of a real run.

A distillation run of the recipe (``--profile``, ``--set``) on real images, from an expert store the kit trained
on the same training split (``ddkit experts ... --profile mini``), follows the float32 gradient; every iteration
also computes the gradient with the inner steps under bfloat16 autocast (``distill.arithmetic = "fast"``) on the
same draws, the two interleaved in the same process (their order alternates). Per iteration: each arithmetic's
seconds, the cosine and the relative norm of the fast image gradient against the float32 one, and the relative
error of the lr gradient (a scalar: its cosine is its sign). The issue's rule makes the fast one usable where
the image-gradient cosine is at least 0.99.

    python bench/matching_arithmetic.py --data-root DIR --experts STORE                       # the mini profile
    python bench/matching_arithmetic.py --data-root DIR --experts STORE --set distill.syn_steps=4 \\
        --set distill.min_start_epoch=0 --set distill.current_max_start_epoch=0 --set distill.max_start_epoch=1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from challenge_kit.arithmetic import autocast_dtype
from challenge_kit.context import DataSource, RunContext
from challenge_kit.core.devices import resolve_device, tune_allocator
from challenge_kit.core.models import FunctionalConvNet, ModelConfig
from challenge_kit.core.progress import make_console
from challenge_kit.distill import draw
from challenge_kit.experts.store import ExpertStore, data_fingerprint
from challenge_kit.matching import match
from challenge_kit.pipeline import load_data
from challenge_kit.recipes import load_recipe
from challenge_kit.synthetic import Method, Synthetic, initial_state


def synchronized(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, help="the subset the experts were trained on (ddkit subset)")
    parser.add_argument("--experts", required=True, help="an expert store trained on it with the same recipe")
    parser.add_argument("--dataset", default="tinyimagenet")
    parser.add_argument("--profile", default="mini")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--iterations", type=int, default=20, help="iterations of the run (after one warm-up)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--json", action="store_true", help="print every iteration's row as JSON")
    args = parser.parse_args()
    tune_allocator()

    device = resolve_device(args.device)
    fast = autocast_dtype("fast", device)
    if fast is None:
        raise SystemExit(f"error: --device {device}: no native bfloat16 here, the fast arithmetic is float32")
    recipe = load_recipe(args.dataset, args.profile, args.overrides)
    cfg = recipe.distill
    splits = load_data(recipe, RunContext(progress=False, data=DataSource(args.data_root, cache_dir=args.cache_dir)))
    spec, (real_x, real_y) = splits.spec, splits.train
    net = FunctionalConvNet(ModelConfig.for_spec(spec), device=device)
    experts = ExpertStore(args.experts).trajectories(spec, net.config, cfg.max_start_epoch + cfg.expert_epochs,
                                                     data_fingerprint(real_x, real_y))
    method = Method.bind(recipe, net, device)
    state = initial_state(recipe, spec, experts, net, method, real_x, real_y, device)
    gen = torch.Generator().set_state(state.rng)
    aug_gen = torch.Generator(device=device)
    aug_gen.set_state(state.aug_rng)
    syn = Synthetic(state, device, method.labels.sgd)

    rows = []
    for i in range(args.iterations + 1):
        _, start_epoch, problem, plan = draw(cfg, spec, state.upper, experts, method, net, gen, aug_gen, device)
        labels = method.labels.targets(syn.labels, syn.images, net, problem.targets[-1][1])
        results, seconds = {}, {}
        for dtype in ((None, fast) if i % 2 else (fast, None)):
            tick = synchronized(device)
            results[dtype] = match(net, syn.images, labels, syn.lr, problem, plan, cfg.grad, autocast=dtype)
            seconds[dtype] = synchronized(device) - tick
        exact, cheap = results[None], results[fast]
        if i:  # the first is a warm-up
            rows.append({"iteration": i, "start_epoch": start_epoch, "float32_s": seconds[None],
                         "fast_s": seconds[fast], "loss": exact.loss.item(),
                         "loss_rel": (cheap.loss / exact.loss - 1).item(),
                         "cos_images": F.cosine_similarity(cheap.grad_images.flatten(), exact.grad_images.flatten(),
                                                           0).item(),
                         "norm_images": (cheap.grad_images.norm() / exact.grad_images.norm()).item(),
                         "lr_rel": ((cheap.grad_lr - exact.grad_lr).abs() / exact.grad_lr.abs()).item()})
            make_console(stderr=True).print(f"iteration {i}: {json.dumps(rows[-1])}")
        if exact.loss.item() <= cfg.threshold:  # the run goes on in float32, as distill would
            syn.step(exact, cfg)
        state.iteration += 1
        if state.iteration % cfg.interval == 0:
            state.upper = min(state.upper + 1, cfg.max_start_epoch)

    if args.json:
        print(json.dumps(rows, indent=2))
    med = lambda k: statistics.median(r[k] for r in rows)  # noqa: E731
    print(f"| {args.profile} {' '.join(args.overrides)} | N {cfg.syn_steps}, batch {cfg.batch_syn}, "
          f"{spec.num_images} x {spec.image_size} px | {len(rows)} | {med('float32_s'):.2f} | {med('fast_s'):.2f} | "
          f"{med('fast_s') / med('float32_s'):.2f}x | {statistics.mean(r['cos_images'] for r in rows):.4f} "
          f"(min {min(r['cos_images'] for r in rows):.4f}) | {med('norm_images'):.4f} | {med('lr_rel'):.4f} "
          f"(max {max(r['lr_rel'] for r in rows):.4f}) | {max(abs(r['loss_rel']) for r in rows):.1e} | {device}, "
          f"{torch.get_num_threads()} threads |")


if __name__ == "__main__":
    main()
