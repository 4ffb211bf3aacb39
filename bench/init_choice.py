"""Which initialization should a profile start from? Each init part's set, scored on the held-out split only.

A profile's ``distill.init`` is a tuning choice like any other, so it is made where the other choices are: on the
images the recipe holds out of the training split (``eval.split = "holdout"``), never on the test split a report
quotes. For each init part named, this builds the set exactly as ``ddkit distill`` would start from it (the
recipe's seed, the store's experts checked against the kept training pool, so no held-out image shaped them) and
trains the challenge ConvNet on it with the scorer's recipe, the same round seeds for every set (``ddkit
compare``'s scoring, into --out). The first init is what the others are measured against.

    ddkit experts tinyimagenet --data-root ROOT --out STORE --profile mini
    python bench/init_choice.py --data-root ROOT --experts STORE --out WORK/init-choice
"""

from __future__ import annotations

import argparse
import json
import time

from challenge_kit.cli.compare import table
from challenge_kit.compare import Entry, compare
from challenge_kit.context import DataSource, RunContext
from challenge_kit.core.devices import tune_allocator
from challenge_kit.core.errors import KitValueError
from challenge_kit.core.models import ModelConfig
from challenge_kit.core.seeds import distill_generators
from challenge_kit.experts.store import ExpertStore, data_fingerprint
from challenge_kit.parts import build
from challenge_kit.parts.kinds import InitContext
from challenge_kit.pipeline import load_data
from challenge_kit.recipes import load_recipe
from challenge_kit.recipes.configs import section_dict
from challenge_kit.recipes.identity import expert_settings
from challenge_kit.synthetic import check_init
from evaluator.fast import FAST, MODES

# Real-image starts; "noise" is left out, and so are the hardest picks, which at ten images per class are known to
# train worse than random ones (small budgets favour easy examples: Sorscher et al., 2022).
INITS = ("real_correct", "real", "kmeans", "herding", "kcenter", "el2n_easy", "el2n_band", "forgetting_easy",
         "forgetting_band")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, help="the data the profile runs on")
    parser.add_argument("--experts", required=True, help="a store the profile trained (ddkit experts --profile)")
    parser.add_argument("--out", required=True, help="the compare folder (its rounds are kept: a rerun resumes)")
    parser.add_argument("--dataset", default="tinyimagenet")
    parser.add_argument("--profile", default="mini")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--inits", nargs="+", default=list(INITS), help="init parts; the first is the reference")
    parser.add_argument("--epochs", type=int, default=200, help="scorer epochs per round (same for every set)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=2000, help="round seeds: not the test compare's, not selection's")
    parser.add_argument("--device", default=None)
    parser.add_argument("--scorer", default=FAST, choices=MODES)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tune_allocator()

    tick = time.perf_counter()
    recipe = load_recipe(args.dataset, args.profile, args.overrides)
    ctx = RunContext.on(args.device, data=DataSource(args.data_root, cache_dir=args.cache_dir))
    splits = load_data(recipe, ctx)
    if splits.selection != "holdout":
        raise KitValueError(f"--profile {args.profile}: holds no images out (eval.split must be \"holdout\")")
    cfg, spec = recipe.distill, splits.spec
    model = ModelConfig.for_spec(spec)
    experts = ExpertStore(args.experts).trajectories(spec, model,
                                                     cfg.max_start_epoch + cfg.expert_epochs,
                                                     data_fingerprint(*splits.train),
                                                     expert_settings(section_dict(recipe.experts)))
    entries, seconds = [], {}
    for name in args.inits:
        init = build("init", load_recipe(args.dataset, args.profile, [*args.overrides, f"distill.init={name}"]).distill)
        start = time.perf_counter()
        images = init(InitContext(spec, *splits.train, experts, model,
                                  distill_generators(cfg.seed, ctx.device)[0], ctx.device))
        check_init(images, spec, name)
        seconds[name] = round(time.perf_counter() - start, 3)
        entries.append(Entry(name, images.float().cpu(), f"init part {name}, seed {cfg.seed}, experts {args.experts}",
                             baseline=name != args.inits[0]))
    result = compare(entries, spec, splits.select, args.out, rounds=args.rounds, epochs=args.epochs, seed=args.seed,
                     device=ctx.device, mode=args.scorer,
                     extra={"split": f"held out of the training split ({len(splits.select[1])} images)",
                            "profile": args.profile, "overrides": args.overrides, "init_seconds": seconds})
    result["bench_seconds"] = round(time.perf_counter() - tick, 1)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    table(result)


if __name__ == "__main__":
    main()
