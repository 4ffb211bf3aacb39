"""The research side of the kit: `ddkit methods`, `ddkit ablate`, `ddkit report`, and research sets that export
only with their labels explicitly dropped."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from fakes import distilled_images, write_tiny
from helpers import SPEC as SMALL
from helpers import _real, _recipe, _run
from PIL import Image
from typer.testing import CliRunner

from challenge_kit.ablate import expert_dir
from challenge_kit.cli import app
from challenge_kit.core.artifact import DistilledArtifact
from challenge_kit.core.contract import CIFAR100, default_labels
from challenge_kit.core.errors import ExportRefused
from challenge_kit.core.storage import save_json
from challenge_kit.experts.training import train_experts
from challenge_kit.export import export_run
from challenge_kit.recipes import ExpertConfig, load_recipe
from challenge_kit.runs import BEST

runner = CliRunner()
SUBSET = CIFAR100.subset(5)


def test_methods_lists_every_shipped_recipe_and_part():
    result = runner.invoke(app, ["methods", "--json"])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.stdout)
    names = {m["name"]: m for m in listing["methods"]}
    assert set(names) == {"m-datm", "datm", "tesla", "pad", "pad-fiem", "smooth", "smooth-init-balanced"}
    assert names["datm"]["research"] and names["tesla"]["research"] and not names["pad"]["research"]
    assert names["pad-fiem"]["parts"]["mask"] == "deep" and names["smooth"]["parts"]["objective"] == "smooth"
    kinds = {p["kind"] for p in listing["parts"]}
    assert kinds == {"init", "labels", "mask", "weights", "terms", "perturb", "objective", "schedule"}
    table = runner.invoke(app, ["methods"])
    assert table.exit_code == 0 and "pad-fiem" in table.output and "easy_first" in table.output


# ------------------------------------------------------------------------------------------ research export

def _research_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    soft = torch.nn.functional.one_hot(default_labels(5, 10), 5).float() * 4
    DistilledArtifact(distilled_images(SUBSET), soft, SUBSET, lr=0.01,
                      extra={"iteration": 3, "method": "DATM", "labels_part": "learned_soft"}).save(run / BEST)
    save_json({"selection": {"split": "holdout", "export": 3, "reason": "iteration 3 beat the initialization"}},
              run / "run.json")
    return run


def test_a_research_set_is_refused_unless_its_labels_are_dropped_and_then_says_where_it_came_from(tmp_path):
    run = _research_run(tmp_path)
    with pytest.raises(ExportRefused, match="soft labels .* --drop-labels"):
        export_run(run, tmp_path / "refused")
    assert not (tmp_path / "refused" / "cifar100.pt").exists()
    result = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "out"), "--drop-labels", "--json"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    dropped = manifest["labels_dropped"]
    assert dropped["method"] == "DATM" and dropped["labels_part"] == "learned_soft"
    assert manifest["selection"] == {"split": "holdout", "export": 3, "reason": "iteration 3 beat the initialization"}
    verify = runner.invoke(app, ["verify", str(tmp_path / "out" / "cifar100.pt"), "--json"])
    assert verify.exit_code == 0, verify.output
    checks = {c["name"]: c for c in json.loads(verify.stdout)["checks"]}
    assert checks["provenance"]["status"] == "WARN" and "DATM research run" in checks["provenance"]["reason"]


# ------------------------------------------------------------------------------------------ ablate and report

FAILING = """method = "broken"
description = "asks for more held-out images than a class has: fails at run time, after the recipe loads"
[eval]
holdout_per_class = 50
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    write_tiny(root / "data", per_class=12)
    return root


def test_ablate_runs_variants_side_by_side_reports_a_crash_and_resumes(tiny, tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text(FAILING)
    args = ["ablate", "m-datm", "datm", str(broken), "--experts", str(tmp_path / "experts"), "--data-root",
            str(tiny / "data"), "--out", str(tmp_path / "ablate"), "--profile", "quick", "--iterations", "2",
            "--rounds", "2", "--epochs", "2", "--cache-dir", str(tmp_path / "cache"), "--device", "cpu",
            "--set", "experts.num_experts=1", "--set", "distill.threshold=100"]  # else both matches skip: a stop
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "ablate" / "ablate.json").read_text())
    rows = {r["variant"]: r for r in summary["variants"]}
    assert summary["dataset"] == "tinyimagenet" and summary["split"] == "test"  # detected from the data root
    assert rows["m-datm"]["status"] == rows["datm"]["status"] == "ok"
    assert rows["broken"]["status"] == "failed" and "cannot hold out 50" in rows["broken"]["error"]
    assert rows["datm"]["seeds"] == rows["m-datm"]["seeds"] and len(rows["datm"]["rounds"]) == 2
    assert rows["datm"]["difference"]["rounds"] == 2 and rows["datm"]["parts"]["labels"] == "learned_soft"
    assert rows["datm"]["experts"] == rows["m-datm"]["experts"] == str(tmp_path / "experts")  # shared store
    assert rows["m-datm"]["seconds_per_iteration"] > 0 and rows["m-datm"]["peak_mb"] > 0
    with Image.open(tmp_path / "ablate" / "ablate.png") as png:
        assert png.size[0] > 0
    assert "broken" in result.output and "failed" in result.output
    logs = {name: (tmp_path / "ablate" / name / "log.txt").stat().st_mtime_ns for name in rows}
    again = runner.invoke(app, [*args, "--json"])  # finished variants are not run again, the failed one is
    assert again.exit_code == 0
    assert json.loads(again.stdout)["variants"] == summary["variants"]
    rerun = {name for name in rows if (tmp_path / "ablate" / name / "log.txt").stat().st_mtime_ns != logs[name]}
    assert rerun == {"broken"}


def test_variants_with_other_expert_settings_train_their_own_keyed_store(tiny, tmp_path):
    base = load_recipe("m-datm", "quick", dataset="tinyimagenet").experts
    smooth = load_recipe("smooth", "quick", dataset="tinyimagenet").experts
    assert expert_dir(tmp_path, base) == tmp_path  # an empty store takes the first settings
    x = torch.randn(6, 3, 64, 64)
    y = torch.arange(6) % 3
    train_experts(x, y, x, y, replace(CIFAR100.subset(3), image_size=64), replace(base, num_experts=1, epochs=1),
                  tmp_path)
    assert expert_dir(tmp_path, base) == tmp_path
    keyed = expert_dir(tmp_path, smooth)
    assert keyed.parent == tmp_path / "by-settings" and keyed.name.startswith("smooth-full-")
    assert expert_dir(tmp_path, replace(smooth, num_experts=7, epochs=9)) == keyed  # count and length not part of it


def test_report_draws_a_finished_run(tmp_path):
    x, y = _real()
    train_experts(x, y, x, y, SMALL, ExpertConfig(num_experts=1, epochs=3, batch_size=16), tmp_path / "experts")
    _run(_recipe(iterations=4, every=2), tmp_path / "experts", tmp_path / "run")
    result = runner.invoke(app, ["report", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.output
    files = json.loads(result.stdout)["files"]
    assert set(files) == {"loss", "lr", "image_change", "selection", "classes", "images", "summary"}
    for name, path in files.items():
        if name != "summary":
            with Image.open(path) as png:
                assert png.format == "PNG"
    text = Path(files["summary"]).read_text()
    assert "exported: iteration" in text and "selection on the holdout split" in text and "iteration      2" in text
