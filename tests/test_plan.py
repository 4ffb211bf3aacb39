"""``ddkit plan``: counts that follow the recipe, FLOPs and memory counted on the meta device, a calibrated time."""

import json
from dataclasses import replace

import torch
from fakes import write_cifar
from typer.testing import CliRunner

from challenge_kit import plan as plan_module
from challenge_kit.cli import app
from challenge_kit.core.contract import CIFAR100
from challenge_kit.core.models import FunctionalConvNet, ModelConfig
from challenge_kit.plan import (
    META,
    count,
    iteration_count,
    make_plan,
    matching_iteration,
    selection_rounds,
    train_images,
)
from challenge_kit.recipes import load_recipe
from challenge_kit.selection import Selector

SPEC = replace(CIFAR100.subset(2, ipc=4), image_size=16)


def test_an_iteration_extends_linearly_from_two_and_three_inner_steps():
    recipe = load_recipe("cifar100", "quick")
    for mode in ("exact", "unrolled"):
        flops, peak = count(matching_iteration(recipe, SPEC, META, 6, 4, mode))
        extended = iteration_count(recipe, SPEC, 6, 4, mode)
        assert extended[0] == flops > 0
        assert abs(extended[1] - peak) < 0.01 * peak  # small tensors, freed as Python drops them


def test_the_exact_gradient_keeps_memory_flat_and_unrolling_does_not():
    recipe = load_recipe("cifar100", "quick")
    peak = {mode: [count(matching_iteration(recipe, SPEC, META, k, 8, mode))[1] for k in (2, 8)]
            for mode in ("exact", "unrolled")}
    params = 4 * FunctionalConvNet(ModelConfig.for_spec(SPEC), device=META).num_params
    assert peak["exact"][1] - peak["exact"][0] <= 6 * params * 1.05  # only the snapshots theta_k are kept
    assert peak["unrolled"][1] > 2.5 * peak["unrolled"][0]


def test_selection_rounds_follow_the_selector_schedule():
    for every, iterations, final in ((10, 20, 2), (7, 20, 0), (60, 60, 0), (0, 20, 3)):
        recipe = load_recipe("cifar100", "quick", [f"eval.every={every}", f"distill.iterations={iterations}",
                                                   f"eval.final_rounds={final}"])
        selector = Selector(recipe.eval, SPEC, None, None, "cpu")
        due = sum(selector.due(i, iterations) for i in range(1, iterations + 1))
        candidates = 1 + due if selector.enabled else 0
        rounds = candidates * recipe.eval.rounds + 2 * final if candidates else 0
        assert selection_rounds(recipe) == (candidates, rounds)


def test_counts_follow_the_recipe():
    recipe = load_recipe("tinyimagenet", "mini")
    assert train_images(recipe, CIFAR100.subset(20), 100) == 20 * (100 - recipe.eval.holdout_per_class)
    plan = make_plan(recipe, SPEC, 64, torch.device("cpu"), calibrate=False)
    stages = {s.name: s for s in plan.stages}
    e = recipe.experts
    assert stages["experts"].units == e.num_experts * e.epochs * -(-64 // e.batch_size)
    assert stages["distillation"].units == recipe.distill.iterations
    assert stages["official score"].units == 3 * 1001 * 1 and not stages["official score"].in_run
    assert plan.run_seconds is None and set(plan.matching_peak_bytes) == {"exact", "unrolled"}


def test_plan_command_calibrates_on_the_device():
    result = CliRunner().invoke(app, ["plan", "cifar100", "--profile", "quick", "--classes", "2",
                                      "--train-per-class", "20", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert [s["name"] for s in plan["stages"]] == ["experts", "distillation", "selection", "official score"]
    assert all(s["seconds"] > 0 and s["flops"] > 0 and s["peak_bytes"] > 0 for s in plan["stages"])
    assert plan["run_seconds"] == sum(s["total_seconds"] for s in plan["stages"] if s["in_run"])
    assert plan["train_images"] == 2 * (20 - load_recipe("cifar100", "quick").eval.holdout_per_class)


def test_the_counted_peak_is_the_same_every_time():
    """Random augmentation groups once made the extension from two and three steps swing by 20% (the third
    step's temporaries against the second's, times N - 2); the count draws one group and repeats."""
    recipe = load_recipe("cifar100", "quick")
    counts = {iteration_count(recipe, SPEC, 12, 8, "exact") for _ in range(4)}
    assert len(counts) == 1


def test_a_run_whose_iteration_cannot_fit_the_device_is_refused_before_any_expert(tmp_path, monkeypatch):
    write_cifar(tmp_path / "data", n_train=12, n_test=2, per_class=True)
    monkeypatch.setattr(plan_module, "device_memory", lambda device: 2**20)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["make-submission", "cifar100", "--data-root", str(tmp_path / "data"), "--out",
                                      str(out), "--device", "cpu", "--profile", "quick",
                                      "--set", "eval.holdout_per_class=2"])
    assert result.exit_code == 1
    *log, error = result.stderr.strip().splitlines()  # the log (data, the plan) goes to stderr, then the error
    assert error.startswith("error: --device cpu: one distillation iteration (exact gradient, N = 4, batch_syn 40) "
                            "holds ") and "more than the 1.0 MiB this cpu has;" in error
    assert "this cpu has 1.0 MiB: exact does not fit, unrolled does not fit" in "\n".join(log)
    assert not list(out.rglob("*.safetensors")) and not list(out.rglob("*.pt"))  # no expert, nothing exported
