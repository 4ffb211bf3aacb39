"""Experts in the fast arithmetic against float32: the same seeds trained both ways on real images, test accuracy
after each epoch.

For each seed, one expert of the recipe (``--profile``, ``--set``) is trained in float32 and one in
``experts.arithmetic = "fast"`` (the order alternates from seed to seed), each into its own store under --out
(stores resume: a rerun continues). The table gives, per epoch, each arithmetic's test accuracy as mean +- s.e.
over seeds and the paired difference (fast - float32) with its s.e.; the issue's rule allows the fast arithmetic
where every epoch's difference is within 2 s.e. Seconds per epoch are each store's own (the fast one's first
epoch holds the compilation).

    python bench/expert_arithmetic.py --data-root DIR --seeds 0 1 2                  # mini profile experts
    python bench/expert_arithmetic.py --data-root DIR --seeds 0 1 --set experts.epochs=4
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace
from pathlib import Path

from challenge_kit.context import DataSource, RunContext
from challenge_kit.core.devices import resolve_device, tune_allocator
from challenge_kit.core.reading import read_metadata
from challenge_kit.experts.store import expert_path
from challenge_kit.experts.training import train_experts
from challenge_kit.pipeline import load_data
from challenge_kit.recipes import load_recipe
from challenge_kit.stats import mean_se, paired

ARITHMETICS = ("float32", "fast")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, help="the subset to train on (ddkit subset)")
    parser.add_argument("--out", default="/tmp/ddkit-expert-arithmetic", help="one store per arithmetic and seed")
    parser.add_argument("--dataset", default="tinyimagenet")
    parser.add_argument("--profile", default="mini")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default=None)
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    tune_allocator()

    device = resolve_device(args.device)
    recipe = load_recipe(args.dataset, args.profile, args.overrides)
    splits = load_data(recipe, RunContext(progress=False, data=DataSource(args.data_root, cache_dir=args.cache_dir)))
    acc: dict[str, list[list[float]]] = {a: [] for a in ARITHMETICS}
    seconds: dict[str, list[float]] = {a: [] for a in ARITHMETICS}
    for i, seed in enumerate(args.seeds):
        for arithmetic in (ARITHMETICS if i % 2 == 0 else ARITHMETICS[::-1]):
            config = replace(recipe.experts, num_experts=1, seed=seed, arithmetic=arithmetic)
            store = Path(args.out) / f"{arithmetic}-seed{seed}"
            train_experts(*splits.train, *splits.test, splits.spec, config, store, device=device)
            meta = read_metadata(expert_path(store, 0))
            acc[arithmetic].append(meta["test_acc"])
            seconds[arithmetic] += meta["epoch_seconds"]
            how = meta.get("arithmetic", "float32, written before the record")
            print(f"seed {seed} {arithmetic} ({how}): test accuracy per epoch "
                  f"{[round(a, 4) for a in meta['test_acc']]}, {sum(meta['epoch_seconds']):.0f} s", flush=True)

    print(f"\n{len(args.seeds)} paired seeds {args.seeds}, {recipe.experts.epochs} epochs, {device}; seconds per "
          f"epoch, median: float32 {statistics.median(seconds['float32']):.1f}, fast "
          f"{statistics.median(seconds['fast']):.1f}\n")
    print("| epoch | float32 | fast | fast - float32 | within 2 s.e. |")
    print("|---|---|---|---|---|")
    for epoch in range(recipe.experts.epochs):
        (m32, s32), (mf, sf) = (mean_se([run[epoch] for run in acc[a]]) for a in ARITHMETICS)
        diff = paired([run[epoch] for run in acc["fast"]], [run[epoch] for run in acc["float32"]])
        within = "yes" if abs(diff["mean"]) <= 2 * diff["se"] else "no"
        print(f"| {epoch + 1} | {m32:.4f} +- {s32:.4f} | {mf:.4f} +- {sf:.4f} | {diff['mean']:+.4f} +- "
              f"{diff['se']:.4f} | {within} |")


if __name__ == "__main__":
    main()
