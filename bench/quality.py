"""Does distillation help? Scorer accuracy of three sets on a 20-class Tiny ImageNet subset (`ddkit subset`),
paired rounds:

(a) random real images per class, (b) the run's initialization (the profile's init part),
(c) the set the run exported (chosen on its held-out split). All three are trained on with the challenge
scorer's recipe (default-order labels, lr 0.01) with the same round seeds and tested on the TEST split,
which neither the distillation nor its model selection ever looked at, by default with the fast scorer
(``--scorer faithful`` for the official arithmetic). The scoring is ``ddkit compare``'s
(``challenge_kit.compare``), into --out (WORK/quality); (a) is drawn from the run's own training pool (held-out
images excluded) with --seed, as it always was here, where ``ddkit compare --baseline random`` draws from the whole
training split with --baseline-seed (``ddkit baseline``'s set).

    python bench/quality.py                       # the mini profile (runs it first; both it and the scoring resume)
    python bench/quality.py --epochs 300 --rounds 8
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from challenge_kit.baseline import random_real
from challenge_kit.cli.compare import table
from challenge_kit.compare import Entry, compare, init_images
from challenge_kit.context import DataSource, RunContext
from challenge_kit.core.artifact import DistilledArtifact
from challenge_kit.core.devices import resolve_device, tune_allocator
from challenge_kit.core.progress import make_console
from challenge_kit.pipeline import RUN_SUBDIR, load_data, make_submission
from challenge_kit.recipes import load_recipe
from challenge_kit.runs import BEST, CHECKPOINT
from evaluator.fast import FAST, MODES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data/tiny-20", help="the subset the run read (ddkit subset)")
    parser.add_argument("--dataset", default="tinyimagenet")
    parser.add_argument("--work", default="/tmp/ddkit-quality", help="the make-submission output (reused)")
    parser.add_argument("--out", default=None, help="the compare folder, its rounds kept (default WORK/quality)")
    parser.add_argument("--profile", default="mini")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--epochs", type=int, default=200, help="scorer epochs per round (same for every set)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1000, help="round seeds (never the run's selection seeds)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--scorer", default=FAST, choices=MODES, help="fast (default: the kit's decisions' scorer) "
                                                                      "or faithful (the official arithmetic)")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tune_allocator()

    device = resolve_device(args.device)
    work = Path(args.work)
    tick = time.perf_counter()
    recipe = load_recipe(args.dataset, args.profile, args.overrides)
    ctx = RunContext.on(args.device, data=DataSource(args.data_root, cache_dir=args.cache_dir))
    if not (work / "manifest.json").is_file():
        make_submission(recipe, work, ctx, resume=(work / RUN_SUBDIR / CHECKPOINT).exists(),
                        command={"dataset": args.dataset, "profile": args.profile, "overrides": args.overrides})
    manifest = json.loads((work / "manifest.json").read_text())
    run_seconds = sum(manifest["timings_s"].values())
    splits = load_data(recipe, ctx)
    exported = DistilledArtifact.load(work / RUN_SUBDIR / BEST)
    entries = [Entry(f"(c) exported (iteration {exported.extra['iteration']})", exported.images, str(work)),
               Entry(f"(b) initialization ({recipe.distill.init})", init_images(work), str(work), baseline=True),
               Entry("(a) random real images", random_real(*splits.train, splits.spec, args.seed),
                     f"{args.data_root} training pool (held-out images excluded), seed {args.seed}", baseline=True)]
    result = compare(entries, splits.spec, splits.test, args.out or work / "quality", rounds=args.rounds,
                     epochs=args.epochs, seed=args.seed, device=device, mode=args.scorer, extra={
                         "profile": args.profile, "run_wall_seconds": run_seconds,
                         "run_timings_s": manifest["timings_s"], "selection": manifest.get("selection")})
    result["bench_seconds"] = time.perf_counter() - tick
    if args.json:
        print(json.dumps(result, indent=2))
        return
    table(result)
    make_console().print(f"{args.profile} profile run: {run_seconds / 60:.1f} min (data, experts, distillation with "
                    f"selection); exported: {manifest.get('selection', {}).get('reason')}")


if __name__ == "__main__":
    main()
