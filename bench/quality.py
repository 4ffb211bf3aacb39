"""Does distillation help? Scorer accuracy of three sets on the shared mini Tiny ImageNet, same budget:

(a) random real images per class, (b) the M-DATM initialization alone (real images an expert gets
right), (c) the distilled set of the quick profile. All are scored by the bundled evaluator with the
challenge recipe (default-order labels, lr 0.01) on the same seeds.

    python bench/quality.py --data-root ../shared/data/tiny-imagenet-mini --work /tmp/ddkit-quality
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from challenge_kit import experts
from challenge_kit.distill import (
    BEST,
    CHECKPOINT,
    Trajectories,
    distill,
    expert_classifier,
    initial_images,
    select_real,
)
from challenge_kit.models import ModelConfig
from challenge_kit.pipeline import load_data
from challenge_kit.recipes import load_recipe
from challenge_kit.storage import DistilledArtifact
from evaluator.scorer import evaluate_images, resolve_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="../shared/data/tiny-imagenet-mini")
    parser.add_argument("--dataset", default="tinyimagenet")
    parser.add_argument("--work", default="/tmp/ddkit-quality", help="experts and the distillation run (reused)")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--epochs", type=int, default=100, help="scorer epochs per round (same for every set)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    console = Console(stderr=True)
    device = resolve_device(args.device)
    recipe = load_recipe(args.dataset, args.profile, args.overrides)
    spec, (train_x, train_y), (test_x, test_y) = load_data(args.dataset, args.data_root)
    work = Path(args.work)
    store, run_dir = work / "experts", work / "distill"
    console.print(f"{spec.describe()}; experts -> {store}")
    experts.train_experts(train_x, train_y, test_x, test_y, spec, recipe.experts, store, device=device)
    if not (run_dir / BEST).exists():
        distill(recipe, spec, store, run_dir, real_images=train_x, real_labels=train_y, test_images=test_x,
                test_labels=test_y, device=device, resume=(run_dir / CHECKPOINT).exists())

    cfg = recipe.distill
    model = ModelConfig.for_spec(spec)
    trajectories = Trajectories.open(store, spec, model, cfg.max_start_epoch + cfg.expert_epochs)
    classifier = expert_classifier(trajectories, model, device)
    sets = {
        "(a) random real images": select_real(train_x, train_y, spec, "real", torch.Generator().manual_seed(123)),
        "(b) M-DATM initialization": initial_images(cfg.init, spec, train_x, train_y,
                                                     torch.Generator().manual_seed(cfg.seed), classifier),
        f"(c) distilled ({args.profile}, {cfg.iterations} it.)": DistilledArtifact.load(run_dir / BEST).images,
    }
    rows = []
    for name, images in sets.items():
        console.print(f"scoring {name}")
        res = evaluate_images(images, spec, test_x, test_y, rounds=args.rounds, epochs=args.epochs,
                              seed=args.seed, device=device)
        rows.append({"set": name, "mean": res["mean"], "std": statistics.pstdev(res["rounds"]),
                     "rounds": res["rounds"], "seconds": res["seconds"]})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{spec.describe()} | scorer recipe, {args.epochs} epochs x {args.rounds} rounds, {device}")
    for col in ("set", "accuracy", "std", "rounds", "vs (a)"):
        table.add_column(col, justify="right" if col != "set" else "left")
    base = rows[0]["mean"]
    for row in rows:
        table.add_row(row["set"], f"{row['mean']:.4f}", f"{row['std']:.4f}",
                      " ".join(f"{r:.3f}" for r in row["rounds"]), f"{row['mean'] - base:+.4f}")
    Console().print(table)


if __name__ == "__main__":
    main()
