"""Does distillation help? Scorer accuracy of three sets on the shared mini Tiny ImageNet, paired rounds:

(a) random real images per class, (b) the run's initialization (real images an expert gets right),
(c) the set the run exported (chosen on its held-out split). All three are trained on with the challenge
scorer's recipe (default-order labels, lr 0.01) with the same round seeds and tested on the TEST split,
which neither the distillation nor its model selection ever looked at.

    python bench/quality.py                       # the mini profile (runs it first; both it and the scoring resume)
    python bench/quality.py --epochs 300 --rounds 8
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from challenge_kit.core.artifact import DistilledArtifact
from challenge_kit.core.contract import default_labels
from challenge_kit.core.devices import resolve_device, tune_allocator
from challenge_kit.core.models import ModelConfig
from challenge_kit.core.progress import make_progress
from challenge_kit.core.reading import load_torch
from challenge_kit.core.seeds import round_seeds
from challenge_kit.core.storage import save_json
from challenge_kit.experts.store import ExpertStore, data_fingerprint
from challenge_kit.parts.initializations import InitContext, real
from challenge_kit.pipeline import EXPERTS_SUBDIR, RUN_SUBDIR, load_data, make_submission
from challenge_kit.recipes import load_recipe
from challenge_kit.runs import BEST, CHECKPOINT
from challenge_kit.stats import mean_se, paired
from evaluator.scorer import train_and_test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="../shared/data/tiny-imagenet-mini")
    parser.add_argument("--dataset", default="tinyimagenet")
    parser.add_argument("--work", default="/tmp/ddkit-quality", help="the make-submission output (reused)")
    parser.add_argument("--profile", default="mini")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--epochs", type=int, default=200, help="scorer epochs per round (same for every set)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1000, help="round seeds (never the run's selection seeds)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tune_allocator()

    console = Console(stderr=True)
    device = resolve_device(args.device)
    work = Path(args.work)
    tick = time.perf_counter()
    recipe = load_recipe(args.dataset, args.profile, args.overrides)
    if not (work / "manifest.json").is_file():
        make_submission(recipe, args.data_root, work, device=args.device, cache_dir=args.cache_dir,
                        resume=(work / RUN_SUBDIR / CHECKPOINT).exists(),
                        command={"dataset": args.dataset, "profile": args.profile, "overrides": args.overrides})
    manifest = json.loads((work / "manifest.json").read_text())
    run_seconds = sum(manifest["timings_s"].values())
    splits = load_data(recipe, args.data_root, cache_dir=args.cache_dir)
    state = load_torch(work / RUN_SUBDIR / CHECKPOINT)["state"]
    cfg = recipe.distill
    experts = ExpertStore(work / EXPERTS_SUBDIR).trajectories(splits.spec, ModelConfig.for_spec(splits.spec),
                                                              cfg.max_start_epoch + cfg.expert_epochs)
    random_real = real(InitContext(splits.spec, *splits.train, experts, ModelConfig.for_spec(splits.spec),
                                   torch.Generator().manual_seed(args.seed), device))
    exported = DistilledArtifact.load(work / RUN_SUBDIR / BEST)
    sets = {"(a) random real images": random_real, "(b) initialization (real_correct)": state["init"]["images"],
            f"(c) exported (iteration {exported.extra['iteration']})": exported.images}
    # Every round's score is kept in WORK as it comes (a 200-epoch round of 200 images is minutes of CPU, a set's
    # rounds an hour or more): a rerun, or one with more rounds, scores only the rest. Round r's seed does not
    # depend on how many rounds are asked for, so the rounds are keyed by index.
    done_path = work / "quality_scores.json"
    done = json.loads(done_path.read_text()) if done_path.is_file() else {}
    labels = default_labels(splits.spec.num_classes, splits.spec.ipc)  # what the scorer trains every set with
    keys = {name: f"{data_fingerprint(images, labels)[:16]}:{args.epochs} epochs:seed {args.seed}:{device}"
            for name, images in sets.items()}
    seeds = round_seeds(args.seed, args.rounds)
    todo: dict[str, list[int]] = {}
    for name in reversed(sets):  # the exported set and its initialization first: their difference is the question
        if keys[name] not in {keys[n] for n in todo}:  # identical sets are scored once
            todo[name] = [r for r in range(args.rounds) if str(r) not in done.get(keys[name], {})]
    with make_progress() as bar:
        task = bar.add_task("scoring on the test split", total=sum(map(len, todo.values())) * args.epochs,
                            status="")
        for name, rounds in todo.items():
            for r in rounds:
                def report(epoch: int, loss: float, acc: float, name: str = name, r: int = r) -> None:
                    bar.update(task, advance=1, status=f"{name} round {r + 1}/{args.rounds} loss {loss:.3f}")

                tock = time.perf_counter()
                acc = train_and_test(sets[name], labels, *splits.test, num_classes=splits.spec.num_classes,
                                     epochs=args.epochs, seed=seeds[r], device=device, progress=report)
                done.setdefault(keys[name], {})[str(r)] = {"accuracy": acc, "seed": seeds[r],
                                                           "seconds": round(time.perf_counter() - tock, 1)}
                save_json(done, done_path)
                console.print(f"{name} round {r + 1}: {acc:.4f}")
    scores = {name: [done[keys[name]][str(r)]["accuracy"] for r in range(args.rounds)] for name in sets}
    rows = []
    for name in sets:
        mean, se = mean_se(scores[name])
        rows.append({"set": name, "mean": mean, "se": se, "rounds": scores[name], "seeds": seeds})
    a, b, c = (r["rounds"] for r in rows)
    differences = {"(c) - (b)": paired(c, b), "(b) - (a)": paired(b, a), "(c) - (a)": paired(c, a)}
    result = {"sets": rows, "differences": differences, "epochs": args.epochs, "rounds": args.rounds,
              "profile": args.profile, "run_wall_seconds": run_seconds, "run_timings_s": manifest["timings_s"],
              "selection": manifest.get("selection"), "bench_seconds": time.perf_counter() - tick,
              "device": str(device)}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"{splits.spec.describe()}\nscorer recipe on the test split, {args.epochs} epochs x "
                        f"{args.rounds} paired rounds, {device}",
                  caption=f"{args.profile} profile run: {run_seconds / 60:.1f} min (data, experts, distillation "
                          f"with selection); exported: {manifest.get('selection', {}).get('reason')}")
    for col in ("set", "accuracy (mean +- s.e.)", "rounds"):
        table.add_column(col, justify="left" if col == "set" else "right")
    for row in rows:
        table.add_row(row["set"], f"{row['mean']:.4f} +- {row['se']:.4f}", " ".join(f"{r:.3f}" for r in row["rounds"]))
    for name, d in differences.items():
        ratio = f"{d['mean'] / d['se']:+.1f} s.e." if d["se"] > 0 else ("equal" if d["mean"] == 0 else "no spread")
        table.add_row(f"paired {name}", f"{d['mean']:+.4f} +- {d['se']:.4f}", ratio)
    Console().print(table)


if __name__ == "__main__":
    main()
