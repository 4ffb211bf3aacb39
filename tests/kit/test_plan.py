"""``ddkit plan``: counts that follow the recipe, FLOPs and memory counted on the meta device, a calibrated time."""

import json
import math
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import replace
from pathlib import Path

import torch
from fakes import write_cifar, write_tiny
from PIL import Image
from typer.testing import CliRunner

from challenge_kit import data
from challenge_kit import plan as plan_module
from challenge_kit.cli import app, render
from challenge_kit.core import augment
from challenge_kit.core.contract import CIFAR100
from challenge_kit.core.models import FunctionalConvNet, ModelConfig
from challenge_kit.pipeline import CPU_PATH
from challenge_kit.plan import (
    CALIBRATION_PASSES,
    META,
    Timing,
    count,
    iteration_count,
    make_plan,
    matching_iteration,
    selection_rounds,
    selection_what,
    timed,
    train_images,
)
from challenge_kit.recipes import load_recipe
from challenge_kit.selection import Selector
from evaluator.fast import native_bfloat16

SPEC = replace(CIFAR100.subset(2, ipc=4), image_size=16)
REPO = Path(__file__).resolve().parents[2]
SUBMISSIONS = REPO / "submissions"


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
    assert "(sgd objective, float32)" in stages["experts"].what  # the recipe's arithmetic, the default one
    assert "(exact gradient, float32)" in stages["distillation"].what
    assert stages["official score"].units == 3 * 1001 * 1 and not stages["official score"].in_run
    assert plan.run_seconds is None and set(plan.matching_peak_bytes) == {"exact", "unrolled"}


def test_the_plan_times_and_names_the_arithmetic_the_run_will_use():
    """Experts' steps and matching's inner steps are calibrated in the recipe's arithmetic and the stage says it:
    bfloat16 autocast where the CPU computes it natively (compiled where a compiler is: the tests run without)."""
    cpu = torch.device("cpu")
    fast = load_recipe("tinyimagenet", "mini", ["experts.arithmetic=fast", "distill.arithmetic=fast"])
    words = "bfloat16 autocast" if native_bfloat16(cpu) else "float32"
    stages = {s.name: s.what for s in make_plan(fast, SPEC, 64, cpu, calibrate=False).stages}
    assert f"(sgd objective, {words})" in stages["experts"] and f"(exact gradient, {words})" in stages["distillation"]


def test_plan_command_calibrates_on_the_device(capsys, monkeypatch):
    monkeypatch.setenv("DDKIT_CALIBRATION_PASSES", "2")  # a range: two passes at least
    result = CliRunner().invoke(app, ["plan", "cifar100", "--profile", "quick", "--classes", "2",
                                      "--train-per-class", "20", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert [s["name"] for s in plan["stages"]] == ["experts", "distillation", "selection", "official score"]
    assert all(s["seconds"] > 0 and s["flops"] > 0 and s["peak_bytes"] > 0 for s in plan["stages"])
    assert plan["run_seconds"] == sum(s["total_seconds"] for s in plan["stages"] if s["in_run"])
    held = tomllib.loads((SUBMISSIONS / "cifar100.toml").read_text())["eval"]["holdout_per_class"]
    assert plan["train_images"] == 2 * (20 - held)
    assert all(s["timing"]["low"] <= s["timing"]["median"] <= s["timing"]["high"] for s in plan["stages"])
    capsys.readouterr()
    render.plan_table(plan)  # what a newcomer reads
    text = " ".join(capsys.readouterr().err.split())
    assert "official score (not in this run)" in text and "the challenge's own scoring of the export" in text
    # the passes' range, or one figure where they agree to the digit shown
    run = re.search(r"the run: about [\d.]+ \w+ here \(([\d.]+)(?:-([\d.]+))? \w+ over the calibration's passes; "
                    r"the official score is not part of it\)", text)
    assert run and (run[2] is None or float(run[1]) <= float(run[2])), text
    assert f"2 classes, a subset), profile quick, M-DATM: {2 * (20 - held)} training images" in text


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


# ------------------------------------------------------------------------------------------ the user's data

def planned(argv: list[str]) -> dict:
    result = CliRunner().invoke(app, ["plan", *argv, "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_the_plan_counts_the_images_in_the_data_root(tmp_path):
    """A Tiny ImageNet tree of 3 classes (one with a grayscale extra), an ImageFolder: the plan bills the files that
    are there, less the held-out images, and its experts' steps follow (counted here by listing the folders)."""
    write_tiny(tmp_path / "tiny")
    files = sum(len(os.listdir(tmp_path / "tiny" / "train" / w / "images"))
                for w in (tmp_path / "tiny" / "wnids.txt").read_text().split())
    held = tomllib.loads((SUBMISSIONS / "tinyimagenet.toml").read_text())["profiles"]["quick"]["eval"].get(
        "holdout_per_class", 0)
    recipe = ["--profile", "quick", "--set", "eval.holdout_per_class=1", "--no-calibrate"]
    plan = planned(["tinyimagenet", "--data-root", str(tmp_path / "tiny"), *recipe])
    assert held != 1 and plan["train_images"] == files - 3 * 1 and plan["spec"]["num_classes"] == 3
    assert plan["source"] == str(tmp_path / "tiny") and plan["spec"]["challenge"] is False
    experts = plan["recipe"]["experts"]
    assert plan["stages"][0]["units"] == experts["num_experts"] * experts["epochs"] * math.ceil(
        (files - 3) / experts["batch_size"])
    for c, name in enumerate("ab"):  # an ImageFolder: ROOT/train/<class>/*
        (tmp_path / "folder" / "train" / name).mkdir(parents=True)
        for k in range(2 + c):
            Image.new("RGB", (8, 8)).save(tmp_path / "folder" / "train" / name / f"{k}.png")
    plan = planned(["tinyimagenet", "--data-root", str(tmp_path / "folder"), "--image-folder", *recipe])
    assert plan["train_images"] == 5 - 2 and plan["spec"]["num_classes"] == 2
    refused = CliRunner().invoke(app, ["plan", "tinyimagenet", "--data-root", str(tmp_path / "tiny"), "--classes",
                                       "3", "--no-calibrate"])
    assert refused.exit_code == 1 and "with --data-root the plan counts the images there" in refused.stderr


def test_the_calibration_is_repeated_and_said_as_a_range(monkeypatch):
    calls = []
    ticks = iter([0.0, 1.0, 10.0, 13.0, 20.0, 22.0])  # three passes of 1, 3 and 2 seconds

    monkeypatch.setattr(plan_module.time, "perf_counter", lambda: next(ticks))
    timing = timed(lambda group: lambda: calls.append(group), torch.device("cpu"), CALIBRATION_PASSES)
    assert calls == [augment.GROUPS[0]] + list(augment.GROUPS) * CALIBRATION_PASSES  # a warm-up call, then passes
    n = len(augment.GROUPS)
    assert (timing.low, timing.median, timing.high) == (1 / n, 2 / n, 3 / n)


def test_selection_is_said_in_words_with_no_empty_final_rounds():
    mini = tomllib.loads((SUBMISSIONS / "tinyimagenet.toml").read_text())["profiles"]["mini"]
    what = selection_what(load_recipe("tinyimagenet", "mini"), 2)
    iterations, ev = mini["distill"]["iterations"], mini["eval"]
    assert what == (f"score 2 candidate sets (the initialization and iteration {iterations}) x {ev['rounds']} rounds "
                    f"of {ev['epochs']} epochs with the fast scorer, to choose the set exported")
    assert ev.get("final_rounds", 0) == 0 and "final" not in what  # not "up to 2 x 0 final"


def test_compiling_leaves_no_cuda_runtime_warning_in_the_log(tmp_path):
    """Inductor imports torch.utils.cpp_extension, which without a CUDA runtime warns at the top of every log."""
    env = {**os.environ, "CUDA_HOME": str(tmp_path)}
    kit = subprocess.run([sys.executable, "-c", "import evaluator.fast, torch.utils.cpp_extension"], cwd=REPO,
                         capture_output=True, text=True, env=env, timeout=120)
    assert kit.returncode == 0 and "No CUDA runtime" not in kit.stderr, kit.stderr
    bare = subprocess.run([sys.executable, "-c", "import torch.utils.cpp_extension"], capture_output=True, text=True,
                          env=env, timeout=120)
    if not torch.cuda.is_available():  # the warning this guards against is real here
        assert "No CUDA runtime" in bare.stderr, bare.stderr


def test_a_run_the_plan_puts_at_more_than_a_day_stops_before_any_work_unless_told_to_go_on(tmp_path, monkeypatch):
    write_cifar(tmp_path / "data", n_train=12, n_test=2, per_class=True)
    monkeypatch.setattr(plan_module, "timed", lambda build, device: Timing(9e4, 1e5, 2e5))  # a day a unit of work
    decoded = []

    def decode(*args, **kwargs):
        decoded.append(args)
        raise RuntimeError("decoding started")

    monkeypatch.setattr(data, "load_split", decode)
    argv = ["make-submission", "cifar100", "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
            "--device", "cpu", "--profile", "quick", "--set", "eval.holdout_per_class=2"]
    stopped = CliRunner().invoke(app, argv)
    error = stopped.stderr.strip().splitlines()[-1]
    assert stopped.exit_code == 1 and not decoded, stopped.output
    assert error.startswith("error: --profile quick: the plan puts this run at ") and "days on this cpu" in error
    assert error.endswith(f"take the README's CPU path ({CPU_PATH}), or pass --allow-long-run to go on")
    assert not list((tmp_path / "out").rglob("*.*"))  # nothing written but the (empty) folders
    going = CliRunner().invoke(app, [*argv, "--allow-long-run"])
    assert "going on (--allow-long-run)" in going.stderr and decoded and str(going.exception) == "decoding started"
