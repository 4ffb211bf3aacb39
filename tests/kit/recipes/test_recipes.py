"""The shipped recipes hold M-DATM table 1; profiles, --set, part tables and bad input behave; what stores and
checkpoints are compared on stays what it was (``recipes_identity.json``)."""

import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from challenge_kit import parts
from challenge_kit.core.errors import KitValueError
from challenge_kit.parts import Choice, DeepParams, GsamParams
from challenge_kit.recipes import (
    RECIPE_DIR,
    SECTIONS,
    DistillConfig,
    ExpertConfig,
    Recipe,
    load_recipe,
    parse_overrides,
)
from challenge_kit.recipes.identity import flatten, run_identity

# docs/mdatm.md, M-DATM table 1: N, M, T-, T, T+, Interval, batch_syn, lr (pixels)
TABLE1 = {
    "cifar100": (40, 2, 0, 15, 20, 100, 1000, 1000.0),
    "tinyimagenet": (25, 2, 0, 15, 20, 250, 1000, 10000.0),
}


def table_row(d: DistillConfig):
    return (d.syn_steps, d.expert_epochs, d.min_start_epoch, d.current_max_start_epoch, d.max_start_epoch,
            d.interval, d.batch_syn, d.lr_img)


@pytest.mark.parametrize("dataset", ["cifar100", "tinyimagenet"])
def test_full_profile_is_mdatm_table_1(dataset):
    r = load_recipe(dataset)
    assert isinstance(r, Recipe) and (r.dataset, r.profile) == (dataset, "full")
    assert table_row(r.distill) == TABLE1[dataset]
    d = r.distill
    assert d.iterations == 10000 and d.lr_init == 0.01 and d.momentum == 0.5 and d.threshold == 1.0
    assert d.lr_lr == {"cifar100": 1e-5, "tinyimagenet": 1e-4}[dataset]
    e = r.experts
    assert (e.objective.name, e.lr, e.momentum, e.weight_decay, e.batch_size) == ("gsam", 0.01, 0.0, 0.0, 256)
    assert e.objective.params == GsamParams(rho=0.01, alpha=0.3, adaptive=True)
    assert e.epochs >= d.max_start_epoch + d.expert_epochs


@pytest.mark.parametrize("dataset", ["cifar100", "tinyimagenet"])
def test_quick_profile_overrides_only_what_it_names(dataset):
    full, quick = load_recipe(dataset), load_recipe(dataset, "quick")
    assert quick.profile == "quick"
    assert (quick.experts.num_experts, quick.experts.epochs) == (2, 3)
    assert (quick.distill.iterations, quick.distill.syn_steps, quick.distill.batch_syn) == (20, 4, 40)
    assert quick.experts.epochs >= quick.distill.max_start_epoch + quick.distill.expert_epochs
    assert quick.distill.lr_img == full.distill.lr_img and quick.experts.objective == full.experts.objective
    assert quick.eval.every == 10


def test_recipe_by_path_and_dir():
    path = RECIPE_DIR / "cifar100.toml"
    assert path.is_file() and load_recipe(str(path)) == load_recipe("cifar100")


def test_set_overrides_apply_last_with_type_coercion():
    r = load_recipe("cifar100", "quick", ["distill.iterations=7", "distill.lr_img=1e2", "experts.adaptive=false",
                                          "distill.grad = unrolled", "eval.rounds=3", "distill.lr_init=1"])
    assert r.distill.iterations == 7 and isinstance(r.distill.iterations, int)
    assert r.distill.lr_img == 100.0 and isinstance(r.distill.lr_img, float)
    assert r.distill.lr_init == 1.0 and isinstance(r.distill.lr_init, float)
    assert r.experts.objective.params.adaptive is False and r.distill.grad == "unrolled" and r.eval.rounds == 3
    assert r.distill.syn_steps == 4  # the profile value stays where --set says nothing
    assert load_recipe("cifar100", overrides=["experts.adaptive=TRUE"]).experts.objective.params.adaptive is True
    assert parse_overrides(["a.b=c=d"]) == {"a": {"b": "c=d"}}


@pytest.mark.parametrize("item,match", [
    ("iterations=5", "expected section.key=value"),
    ("distill.iterations", "expected section.key=value"),
    ("distil.iterations=5", r"unknown section \[distil\]"),
    ("distill.iteration=5", "unknown key 'iteration'"),
    ("distill.iterations=5.5", "iterations must be int, got '5.5'"),
    ("distill.lr_img=fast", "lr_img must be float"),
    ("distill.lr_img=nan", "lr_img must be float"),
    ("experts.adaptive=maybe", "adaptive must be bool"),
    ("distill.interval=0", "distill.interval must be positive"),
    ("distill.lr_lr=-1e-5", "distill.lr_lr must not be negative"),
    ("distill.momentum=1", "distill.momentum must be below 1"),
    ("distill.max_start_epoch=10", "min_start_epoch <= current_max_start_epoch <= max_start_epoch"),
])
def test_bad_overrides_are_refused_clearly(item, match):
    with pytest.raises(KitValueError, match=match):
        load_recipe("cifar100", overrides=[item])


def test_value_errors_after_overrides_name_the_recipe_file():
    with pytest.raises(KitValueError, match=r"cifar100\.toml profile full with --set distill\.interval=0"):
        load_recipe("cifar100", overrides=["distill.interval=0"])


def write(tmp_path, text, name="r.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("body,match", [
    ('dataset = "cifar100"\n[distil]\niterations = 5\n', r"unknown top-level key\(s\) distil"),
    ('dataset = "cifar100"\nseed = 3\n', r"unknown top-level key\(s\) seed"),
    ('dataset = "cifar100"\n[distill]\niteratons = 5\n', r"\[distill\]: unknown key 'iteratons'"),
    ('dataset = "cifar100"\n[distill]\niterations = 1.5\n', "iterations must be int, got 1.5"),
    ('dataset = "cifar100"\n[distill]\niterations = true\n', "iterations must be int, got True"),
    ('dataset = "cifar100"\n[distill]\nlr_img = true\n', "lr_img must be float, got True"),
    ('dataset = "cifar100"\n[experts]\nadaptive = 1\n', "adaptive must be bool, got 1"),
    ('dataset = "cifar100"\n[distill]\ngrad = 3\n', "grad must be str, got 3"),
    ('dataset = "cifar100"\n[distill]\nsyn_steps = 0\n', "distill.syn_steps must be positive, got 0"),
    ('dataset = "cifar100"\ndistill = 3\n', r"\[distill\] must be a table"),
    ('dataset = "cifar10"\n', "unknown dataset 'cifar10'"),
    ('[distill]\niterations = 5\n', "method recipe .no 'dataset'. needs the dataset"),
    ('dataset = "cifar100"\n[distill\n', "not valid TOML"),
    ('dataset = "cifar100"\n[profiles]\nquick = 3\n', "profiles must be tables"),
    ('dataset = "cifar100"\n[profiles.quick]\niterations = 5\n', r"profile quick: unknown section \[iterations\]"),
    ('dataset = "cifar100"\n[profiles.quick.distill]\nbatchsyn = 5\n', r"profile quick \[distill\]: unknown key"),
])
def test_bad_recipe_files_are_refused_naming_the_file(tmp_path, body, match):
    path = write(tmp_path, body)
    with pytest.raises(KitValueError, match=match) as info:
        load_recipe(path)
    assert str(info.value).startswith(path)


def test_missing_recipe_and_missing_profile(tmp_path):
    with pytest.raises(KitValueError, match="recipe not found"):
        load_recipe(str(tmp_path / "nope.toml"))
    with pytest.raises(KitValueError, match=r"nope\.toml: recipe not found"):
        load_recipe("nope", recipe_dir=tmp_path)
    with pytest.raises(KitValueError, match="no profile 'fast'; available: full, quick"):
        load_recipe("cifar100", "fast")


def test_a_minimal_recipe_uses_the_defaults(tmp_path):
    r = load_recipe(write(tmp_path, 'dataset = "tinyimagenet"\n[distill]\nlr_img = 100\n'))
    assert r.dataset == "tinyimagenet" and r.distill.lr_img == 100.0 and isinstance(r.distill.lr_img, float)
    assert r.experts == ExpertConfig() and r.distill.syn_steps == DistillConfig().syn_steps
    assert r.to_dict()["distill"]["lr_img"] == 100.0


def test_experts_must_cover_the_matching_range():
    with pytest.raises(KitValueError, match=r"quick with --set experts\.epochs=2: experts\.epochs \(2\) must be at "
                                            r"least distill\.max_start_epoch \+ distill\.expert_epochs \(1 \+ 2\)"):
        load_recipe("tinyimagenet", "quick", ["experts.epochs=2"])
    assert load_recipe("tinyimagenet", "quick", ["experts.epochs=2", "distill.max_start_epoch=0"]).experts.epochs == 2


# ------------------------------------------------------------------------------------------ part tables

GOLDEN = json.loads((Path(__file__).parents[2] / "recipes_identity.json").read_text())


@pytest.mark.parametrize("key", sorted(GOLDEN["recipes"]))
def test_every_shipped_recipe_keeps_the_identity_its_stores_and_checkpoints_are_compared_on(key):
    """An expert store is continued and a checkpoint resumed on ``recipes.identity.run_identity`` (the experts'
    part of it less their count and length): a change here makes every store or checkpoint of that recipe
    stale. ``recipes_identity.json`` holds it for every dataset x profile x method (the defaults once, then each
    recipe's flattened settings that differ, and those it lacks); it was first written from the flat dicts
    the kit recorded before parts owned their parameters, with the selection scorer of today (``eval.scorer``)."""
    method, dataset, profile = key.split("/")
    recipe = load_recipe(dataset, profile) if method == dataset else load_recipe(method, profile, dataset=dataset)
    want = {k: v for k, v in {**GOLDEN["defaults"], **GOLDEN["recipes"][key]["set"]}.items()
            if k not in GOLDEN["recipes"][key]["unset"]}
    assert flatten(run_identity(recipe.to_dict())) == want


def test_a_part_table_names_the_part_and_sets_its_parameters(tmp_path):
    table = load_recipe(write(tmp_path, 'dataset = "cifar100"\n[distill.mask]\nname = "deep"\ndiscard_ratio = 0.3\n'))
    assert table.distill.mask == Choice("deep", DeepParams(discard_ratio=0.3))
    plain = load_recipe(write(tmp_path, 'dataset = "cifar100"\n[distill]\nmask = "deep"\n'))
    assert plain.distill.mask == Choice("deep", DeepParams(discard_ratio=0.25))
    flat = load_recipe(write(tmp_path, 'dataset = "cifar100"\n[distill]\nmask = "deep"\ndiscard_ratio = 0.3\n'))
    assert flat == table  # the spelling before part tables is still read
    for sets in (["distill.mask=deep", "distill.mask.discard_ratio=0.3"],
                 ["distill.mask.discard_ratio=0.3", "distill.mask.name=deep"]):
        assert load_recipe("cifar100", overrides=sets).distill.mask == Choice("deep", DeepParams(discard_ratio=0.3))
    pad = load_recipe("pad", "quick", dataset="cifar100", overrides=["distill.mask.discard_ratio=0.5"])
    assert pad.distill.mask.params.discard_ratio == 0.5
    assert pad.experts.schedule.params.add_end_epoch == 2  # the profile's table set the schedule's
    assert table.to_dict()["distill"]["mask"] == {"name": "deep", "discard_ratio": 0.3}  # the recipe file's look
    assert table.to_dict()["experts"]["schedule"] == {"name": "full"}  # unchosen parts leave nothing
    assert parse_overrides(["distill.mask=deep", "distill.mask.discard_ratio=0.3"]) == \
        {"distill": {"mask": {"name": "deep", "discard_ratio": "0.3"}}}


@pytest.mark.parametrize("item,match", [
    (["distill.mask.discard_ratio=0.3"], r"distill\.mask\.discard_ratio is a parameter of deep, not of the mask part "
                                         r"'all'"),
    (["distill.mask=all", "distill.mask.discard_ratio=0.3"], r"\[distill\.mask\]: discard_ratio is a parameter of "
                                                             r"deep, not of the mask part 'all'"),
    (["experts.objective=sgd", "experts.rho=0.05"], r"experts\.objective\.rho is a parameter of gsam, not of the "
                                                    r"objective part 'sgd'"),
    (["distill.labels.label_epoch=3"], "label_epoch is a parameter of learned_soft and assigned_soft, not of the "
                                       "labels part 'hard'"),
    (["distill.mask.discard_rate=0.3"], r"\[distill\.mask\]: unknown parameter 'discard_rate'; known: discard_ratio "
                                        r"\(deep\)"),
    (["experts.objective.name=gsam", "experts.objective.roh=1"], "unknown parameter 'roh'; known: rho, alpha, "
                                                                 "adaptive$"),
    (["distill.init.k=3"], "unknown parameter 'k'; known: none"),
    (["distill.mask=deep", "distill.mask.discard_ratio=1.5"], r"distill\.discard_ratio is a fraction, got 1\.5"),
    (["distill.mask.discard_ratio=lots", "distill.mask=deep"], "discard_ratio must be float, got 'lots'"),
    (["distill.mask.name=deeep"], "distill.mask: unknown mask part 'deeep'; known: all, deep"),
])
def test_part_parameters_that_no_chosen_part_takes_are_refused_naming_it(item, match):
    with pytest.raises(KitValueError, match=match):
        load_recipe("cifar100", overrides=item)


def test_a_misspelt_part_in_a_part_table_fails_before_torch_is_imported(tmp_path):
    path = write(tmp_path, 'method = "typo"\n[experts.schedule]\nname = "easy-first"\ninitial_ratio = 0.5\n')
    code = ("import sys\nfrom challenge_kit.core.errors import KitValueError\nfrom challenge_kit.recipes import "
            "load_recipe\ntry:\n    load_recipe(sys.argv[1], dataset='cifar100')\nexcept KitValueError as e:\n"
            "    print(e, 'torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().endswith("unknown schedule part 'easy-first'; known: full, easy_first False"), \
        done.stdout + done.stderr


# The constraints the checks had before they moved into the fields; seeds are now bounded (0..MAX_SEED), and
# every other number is explicitly non-negative.
CONSTRAINTS = {
    "positive": {"experts.num_experts", "experts.epochs", "experts.lr", "experts.batch_size", "experts.add_end_epoch",
                 "experts.score_models", "experts.score_epochs", "distill.iterations", "distill.syn_steps",
                 "distill.expert_epochs", "distill.interval", "distill.batch_syn", "distill.lr_img", "distill.lr_init",
                 "distill.threshold", "distill.checkpoint_every", "distill.balance_offset", "eval.epochs",
                 "eval.rounds"},
    "signed": {"distill.label_epoch"},
    "seed": {"experts.seed", "distill.seed", "eval.seed"},
    "non_negative": {"experts.weight_decay", "experts.lr_decay_epoch", "experts.lr_decay", "experts.rho",
                     "experts.alpha", "experts.clip_epochs", "experts.gp_weight", "experts.gp_target",
                     "distill.min_start_epoch", "distill.current_max_start_epoch", "distill.max_start_epoch",
                     "distill.lr_lr", "distill.lr_labels", "distill.label_experts", "distill.perturb_scale",
                     "eval.every", "eval.final_rounds", "eval.holdout_per_class"},
    "one_of exact, unrolled": {"distill.grad"},
    "one_of holdout, test": {"eval.split"},
    "one_of faithful, fast": {"eval.scorer"},
    "one_of float32, fast": {"experts.arithmetic", "distill.arithmetic"},
    "fraction": {"experts.initial_ratio", "experts.drop_easy", "experts.clip_start", "distill.discard_ratio"},
    "below_one": {"experts.momentum", "distill.momentum", "distill.labels_momentum"},
}


def test_each_field_carries_its_own_constraint():
    """Every section field and every part's parameter (named ``section.parameter`` in messages)."""
    declared = [(section, f) for section, cls in SECTIONS.items() for f in fields(cls) if f.name not in parts.KINDS]
    declared += [(parts.FIELDS[p.kind].split(".")[0], f) for p in parts.catalogue() if p.params
                 for f in fields(p.params)]
    got: dict[str, set[str]] = {}
    for section, f in declared:
        if "check" in f.metadata:
            got.setdefault(f.metadata["check"].name, set()).add(f"{section}.{f.name}")
        else:  # only switches go unchecked
            assert f.type == "bool", f"{section}.{f.name} declares no check"
    assert got == CONSTRAINTS


@pytest.mark.parametrize("item,match", [
    ("distill.seed=4294967296", r"distill\.seed must be a seed in 0\.\.4294967295, got "
                                r"4294967296"),
    ("experts.seed=-1", r"experts\.seed must be a seed in 0\.\.4294967295, got -1"),
    ("eval.seed=" + "9" * 30, r"eval\.seed must be a seed in 0\.\.4294967295"),
])
def test_every_seed_is_bounded_when_the_recipe_loads(item, match):
    """A seed too large for a generator is refused before any data is read, not when distillation starts."""
    with pytest.raises(KitValueError, match=match):
        load_recipe("cifar100", overrides=[item])


def test_the_largest_seed_runs_its_generators():
    """MAX_SEED itself passes, and a distillation run's two generators (seed and seed + 1) take it."""
    from challenge_kit.core.seeds import MAX_SEED, distill_generators

    recipe = load_recipe("cifar100", overrides=[f"{s}.seed={MAX_SEED}" for s in SECTIONS])
    assert (recipe.experts.seed, recipe.distill.seed, recipe.eval.seed) == (MAX_SEED,) * 3
    assert [g.initial_seed() for g in distill_generators(MAX_SEED, "cpu")] == [MAX_SEED, MAX_SEED + 1]


def test_a_dataset_profile_keeps_its_part_parameters_but_not_its_choice_over_a_method(tmp_path):
    """A method's part stays in every profile; a profile's parameters for that kind still apply to it, and are
    refused when the method's part does not take them."""
    (tmp_path / "cifar100.toml").write_text('dataset = "cifar100"\n[experts]\nobjective = "smooth"\n'
                                            '[profiles.quick.experts.objective]\nname = "gsam"\nrho = 0.05\n')
    assert load_recipe("cifar100", "quick", recipe_dir=tmp_path).experts.objective.name == "gsam"
    write(tmp_path, '[experts]\nobjective = "gsam"\n', "gsam.toml")
    write(tmp_path, '[experts.objective]\nname = "sgd"\n', "sgd.toml")
    gsam = load_recipe(str(tmp_path / "gsam.toml"), "quick", dataset="cifar100", recipe_dir=tmp_path).experts
    assert gsam.objective == Choice("gsam", GsamParams(rho=0.05))
    sgd = load_recipe(str(tmp_path / "sgd.toml"), dataset="cifar100", recipe_dir=tmp_path).experts
    assert sgd.objective == Choice("sgd")  # the dataset's rho stays behind, for a later choice of gsam
    with pytest.raises(KitValueError, match=r"profile quick: experts\.objective\.rho is a parameter of gsam, not of "
                                            r"the objective part 'sgd'"):
        load_recipe(str(tmp_path / "sgd.toml"), "quick", dataset="cifar100", recipe_dir=tmp_path)


def test_a_value_given_for_one_part_stays_for_a_later_choice_of_a_part_that_takes_it(tmp_path):
    """The profile's plain-SGD experts take no rho; a later --set choosing GSAM again finds the dataset's."""
    (tmp_path / "cifar100.toml").write_text('dataset = "cifar100"\n[experts.objective]\nname = "gsam"\nrho = 0.05\n'
                                            '[profiles.quick.experts]\nobjective = "sgd"\n')
    assert load_recipe("cifar100", "quick", recipe_dir=tmp_path).experts.objective == Choice("sgd")
    again = load_recipe("cifar100", "quick", ["experts.objective=gsam"], recipe_dir=tmp_path).experts.objective
    assert again == Choice("gsam", GsamParams(rho=0.05))
