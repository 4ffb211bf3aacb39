"""The shipped recipes hold M-DATM table 1; profiles, --set and bad input behave."""

import pytest

from challenge_kit.recipes import RECIPE_DIR, DistillConfig, ExpertConfig, Recipe, load_recipe, parse_overrides

# SPEC section 5, M-DATM table 1: N, M, T-, T, T+, Interval, batch_syn, lr (pixels)
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
    assert (e.objective, e.lr, e.momentum, e.weight_decay, e.batch_size) == ("gsam", 0.01, 0.0, 0.0, 256)
    assert (e.rho, e.alpha, e.adaptive) == (0.01, 0.3, True)
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
    assert r.experts.adaptive is False and r.distill.grad == "unrolled" and r.eval.rounds == 3
    assert r.distill.syn_steps == 4  # the profile value stays where --set says nothing
    assert load_recipe("cifar100", overrides=["experts.adaptive=TRUE"]).experts.adaptive is True
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
    with pytest.raises(ValueError, match=match):
        load_recipe("cifar100", overrides=[item])


def test_value_errors_after_overrides_name_the_recipe_file():
    with pytest.raises(ValueError, match=r"cifar100\.toml profile full with --set distill\.interval=0"):
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
    with pytest.raises(ValueError, match=match) as info:
        load_recipe(path)
    assert str(info.value).startswith(path)


def test_missing_recipe_and_missing_profile(tmp_path):
    with pytest.raises(ValueError, match="recipe not found"):
        load_recipe(str(tmp_path / "nope.toml"))
    with pytest.raises(ValueError, match=r"nope\.toml: recipe not found"):
        load_recipe("nope", recipe_dir=tmp_path)
    with pytest.raises(ValueError, match="no profile 'fast'; available: full, quick"):
        load_recipe("cifar100", "fast")


def test_a_minimal_recipe_uses_the_defaults(tmp_path):
    r = load_recipe(write(tmp_path, 'dataset = "tinyimagenet"\n[distill]\nlr_img = 100\n'))
    assert r.dataset == "tinyimagenet" and r.distill.lr_img == 100.0 and isinstance(r.distill.lr_img, float)
    assert r.experts == ExpertConfig() and r.distill.syn_steps == DistillConfig().syn_steps
    assert r.to_dict()["distill"]["lr_img"] == 100.0


def test_experts_must_cover_the_matching_range():
    with pytest.raises(ValueError, match=r"quick with --set experts\.epochs=2: experts\.epochs \(2\) must be at least "
                                         r"distill\.max_start_epoch \+ distill\.expert_epochs \(1 \+ 2\)"):
        load_recipe("tinyimagenet", "quick", ["experts.epochs=2"])
    assert load_recipe("tinyimagenet", "quick", ["experts.epochs=2", "distill.max_start_epoch=0"]).experts.epochs == 2
