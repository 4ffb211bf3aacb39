"""A user's own part, named by its dotted path: defined in a module outside the kit (a temporary folder on the
path), checked when the recipe loads (one line naming the place and what is wrong), listed by ``ddkit methods``,
and run by ``ddkit distill`` and ``ddkit ablate`` (docs/parts.md)."""

import json
import os
import textwrap

import pytest
import torch
from fakes import write_tiny
from typer.testing import CliRunner

from challenge_kit.cli import app
from challenge_kit.core.contract import TINYIMAGENET
from challenge_kit.core.errors import KitValueError
from challenge_kit.recipes import load_recipe, shipped_methods
from challenge_kit.runs import CHECKPOINT, SUMMARY, read_checkpoint
from challenge_kit.synthetic import check_init

MODULE = "ddkit_user_parts"
PARTS = textwrap.dedent('''
    """Parts of a user's own, outside the kit."""
    from __future__ import annotations

    from dataclasses import dataclass

    import torch

    from challenge_kit.parts.params import fraction


    @dataclass
    class Flat:
        """every synthetic image starts as one grey level"""

        level: float = fraction(0.5)

        def __call__(self, ctx):
            return torch.full(ctx.spec.shape, self.level)


    class Unread:
        """hard labels kept apart from the scorer's (a research set)"""

        learned = False
        challenge = False
        sgd = None

        def initial(self, images, ctx):
            return torch.arange(len(images)) % ctx.spec.num_classes

        def targets(self, labels, images, net, target):
            return labels

        def record(self, labels, images, ctx):
            return labels


    class NoChallenge:
        learned = False
        sgd = None
        initial, targets, record = Unread.initial, Unread.targets, Unread.record


    class Thumbnail:
        """one image of the wrong size"""

        def __call__(self, ctx):
            return torch.zeros(1, 3, 8, 8)


    def not_a_class(ctx):
        return None


    class NoCall:
        pass


    class TwoArgs:
        def __call__(self, ctx, extra):
            return None


    @dataclass
    class Listed:
        sizes: list = None

        def __call__(self, ctx):
            return None


    @dataclass
    class NoDefault:
        level: float

        def __call__(self, ctx):
            return None
''')
METHOD = f'''method = "Flat init"
description = "M-DATM from one grey level (a user's part)"

[distill.init]
name = "{MODULE}:Flat"
level = 0.25
'''


@pytest.fixture
def user(tmp_path, monkeypatch):
    """The module on this process's path and on a child's (PYTHONPATH), and a method recipe naming its part."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / f"{MODULE}.py").write_text(PARTS)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])))
    (folder / "flat_init.toml").write_text(METHOD)
    return folder


def _flat(level: float):
    from ddkit_user_parts import Flat

    return Flat(level=level)


def test_a_user_part_is_chosen_with_its_parameters_like_a_shipped_one(user):
    recipe = load_recipe(str(user / "flat_init.toml"), dataset="cifar100")
    assert recipe.distill.init.name == f"{MODULE}:Flat" and recipe.distill.init.params == _flat(0.25)
    assert recipe.to_dict()["distill"]["init"] == {"name": f"{MODULE}:Flat", "level": 0.25}
    later = load_recipe(str(user / "flat_init.toml"), overrides=["distill.init.level=0.75"], dataset="cifar100")
    assert later.distill.init.params == _flat(0.75)  # a parameter given without the name: the chosen part's
    plain = load_recipe("cifar100", overrides=[f"distill.init={MODULE}:Flat"])
    assert plain.distill.init.params == _flat(0.5)  # its defaults
    labels = load_recipe("cifar100", overrides=[f"distill.labels={MODULE}:Unread"]).distill.labels
    assert labels.name == f"{MODULE}:Unread" and labels.params is None  # no dataclass: no parameters


FLAT = f"distill.init={MODULE}:Flat"


@pytest.mark.parametrize("overrides,problem", [
    ([f"distill.init={MODULE}:NoCall"], f"{MODULE}:NoCall: not an init part: has no method __call__(ctx) (the "
                                        "init protocol, parts/kinds.py Init)"),
    ([f"distill.init={MODULE}:TwoArgs"], f"{MODULE}:TwoArgs: not an init part: cannot be called as __call__(ctx) "
                                         "(the init protocol, parts/kinds.py Init)"),
    ([f"experts.objective={MODULE}:Flat"], f"{MODULE}:Flat: not an objective part: cannot be called as "
                                           "__call__(f, p, x, y, epoch) (the objective protocol, parts/kinds.py "
                                           "Objective)"),
    ([f"distill.labels={MODULE}:NoChallenge"], f"{MODULE}:NoChallenge: not a labels part: has no class attribute "
                                               "'challenge' (the labels protocol, parts/kinds.py Labels)"),
    ([f"distill.init={MODULE}:not_a_class"], f"{MODULE}:not_a_class: is not a class (function); a part is a class"),
    ([f"distill.init={MODULE}:Listed"], f"{MODULE}:Listed: parameter sizes is list; a part's parameters are int, "
                                        "float, bool or str"),
    ([f"distill.init={MODULE}:NoDefault"], f"{MODULE}:NoDefault: parameter level has no default"),
    ([f"distill.init={MODULE}:Nope"], f"{MODULE}:Nope: module {MODULE} has no Nope"),
    (["distill.init=ddkit_no_such_module:Flat"], "ddkit_no_such_module:Flat: cannot import ddkit_no_such_module "
                                                 "(ModuleNotFoundError: No module named 'ddkit_no_such_module')"),
    ([f"distill.init={MODULE}:"], f"'{MODULE}:': a user part is named module:Class, e.g. my_pkg.parts:MyInit"),
    ([FLAT, "distill.init.lavel=0.3"], "unknown parameter 'lavel'; known: level"),
    ([FLAT, "distill.init.level=high"], "level must be float, got 'high'"),
])
def test_a_user_part_that_does_not_fit_is_refused_at_load_naming_the_place(user, overrides, problem):
    with pytest.raises(KitValueError) as raised:
        load_recipe("cifar100", overrides=overrides)
    assert str(raised.value) == f"--set [{overrides[0].split('=')[0]}]: {problem}"


def test_a_user_parts_parameters_are_checked_as_the_kits_are(user):
    with pytest.raises(KitValueError, match=r"with --set distill\.init\.level=1\.5: distill\.level is a fraction, "
                                            r"got 1\.5$"):
        load_recipe(str(user / "flat_init.toml"), overrides=["distill.init.level=1.5"], dataset="cifar100")
    with pytest.raises(KitValueError, match=r"flat_init\.toml \[distill\.init\]: unknown parameter 'discard_ratio'"):
        (user / "flat_init.toml").write_text(METHOD + "discard_ratio = 0.3\n")
        load_recipe(str(user / "flat_init.toml"), dataset="cifar100")


def test_methods_lists_a_given_recipe_and_its_user_parts(user):
    rows = {r["name"]: r for r in shipped_methods(extra=[str(user / "flat_init.toml")])}
    assert rows["flat_init"]["parts"]["init"] == f"{MODULE}:Flat" and not rows["flat_init"]["research"]
    (user / "unread.toml").write_text(f'method = "Unread"\n[distill]\nlabels = "{MODULE}:Unread"\n')
    assert shipped_methods(extra=[str(user / "unread.toml")])[-1]["research"]  # its declared challenge = False
    result = CliRunner().invoke(app, ["methods", "--recipe", str(user / "flat_init.toml"), "--json"])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.stdout)
    assert listing["methods"][-1]["name"] == "flat_init"
    inits = [p for p in listing["parts"] if p["kind"] == "init"]
    assert inits[-1] == {"kind": "init", "name": f"{MODULE}:Flat", "source": f"user ({MODULE})",
                         "params": {"level": 0.5},
                         "summary": "every synthetic image starts as one grey level (parameters: level = 0.5)"}
    kinds = [p["kind"] for p in listing["parts"]]
    assert kinds == sorted(kinds, key=list(dict.fromkeys(kinds)).index)  # among its kind's, for the table
    table = CliRunner().invoke(app, ["methods", "--recipe", str(user / "flat_init.toml")], env={"COLUMNS": "250"})
    assert table.exit_code == 0 and f"{MODULE}:Flat" in table.output and "level = 0.5" in table.output


BUDGET = ["--profile", "quick", "--device", "cpu", "--set", "experts.num_experts=1", "--set", "experts.epochs=1",
          "--set", "experts.objective=sgd", "--set", "experts.batch_size=9", "--set", "eval.every=0",
          "--set", "eval.holdout_per_class=0", "--set", "distill.syn_steps=1", "--set", "distill.expert_epochs=1",
          "--set", "distill.max_start_epoch=0", "--set", "distill.batch_syn=10",
          "--set", "distill.threshold=100"]  # a match against so short an expert is above 1: all skipped, a stop


def test_ablate_and_distill_run_a_user_part_from_outside_the_kit(user, tmp_path):
    write_tiny(tmp_path / "data", per_class=6)
    common = ["--experts", str(tmp_path / "store"), "--data-root", str(tmp_path / "data"), "--cache-dir",
              str(tmp_path / "cache"), *BUDGET]
    ablate = CliRunner().invoke(app, ["ablate", "m-datm", str(user / "flat_init.toml"), "--out",
                                      str(tmp_path / "ablate"), "--iterations", "1", "--rounds", "1", "--epochs", "1",
                                      *common])
    assert ablate.exit_code == 0, ablate.output
    rows = {r["variant"]: r for r in json.loads((tmp_path / "ablate" / "ablate.json").read_text())["variants"]}
    assert rows["flat_init"]["status"] == rows["m-datm"]["status"] == "ok", rows
    assert rows["flat_init"]["parts"]["init"] == f"{MODULE}:Flat" and "difference" in rows["flat_init"]
    assert rows["flat_init"]["experts"] == rows["m-datm"]["experts"] == str(tmp_path / "store")  # one store

    distill = CliRunner().invoke(app, ["distill", "tinyimagenet", "--recipe", str(user / "flat_init.toml"), "--out",
                                       str(tmp_path / "run"), "--set", "distill.iterations=1", *common])
    assert distill.exit_code == 0, distill.output
    init = read_checkpoint(tmp_path / "run" / CHECKPOINT)[2].init["images"]
    assert torch.equal(init, torch.full_like(init, 0.25))  # the part, bound with the recipe's level
    summary = json.loads((tmp_path / "run" / SUMMARY).read_text())
    assert summary["recipe"]["distill"]["init"] == {"name": f"{MODULE}:Flat", "level": 0.25}


def test_an_init_part_that_returns_the_wrong_shape_stops_the_run_in_one_line_before_any_matching(user, tmp_path):
    write_tiny(tmp_path / "data", per_class=6)
    common = ["--data-root", str(tmp_path / "data"), "--cache-dir", str(tmp_path / "cache"), *BUDGET]
    experts = CliRunner().invoke(app, ["experts", "tinyimagenet", "--out", str(tmp_path / "store"), *common])
    assert experts.exit_code == 0, experts.output
    result = CliRunner().invoke(app, ["distill", "tinyimagenet", "--out", str(tmp_path / "run"), "--experts",
                                      str(tmp_path / "store"), *common, "--set", f"distill.init={MODULE}:Thumbnail",
                                      "--set", "distill.iterations=1"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"error: distill.init {MODULE}:Thumbnail: returned shape (1, 3, 8, 8), the set is (30, 3, 64, 64) "
        "(tinyimagenet: 3 classes x 10 IPC, 3x64x64, subset (not a challenge submission))")
    assert not (tmp_path / "run" / CHECKPOINT).exists()


@pytest.mark.parametrize("returned,problem", [
    (torch.zeros(20, 3, 64, 64, dtype=torch.uint8), "returned Tensor of torch.uint8, not a float tensor"),
    ([0.0] * 20, "returned list, not a float tensor"),
    (torch.full((20, 3, 64, 64), float("nan")), "returned non-finite values"),
])
def test_what_an_init_part_returns_is_a_finite_float_set_of_the_specs_shape(returned, problem):
    spec = TINYIMAGENET.subset(2)
    check_init(torch.zeros(spec.shape), spec, "mine")
    with pytest.raises(KitValueError) as raised:
        check_init(returned, spec, "mine")
    assert str(raised.value) == f"distill.init mine: {problem}"
