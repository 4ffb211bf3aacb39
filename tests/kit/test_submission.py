"""Export and the whole make-submission pipeline, ending in files the scorer and the checker accept."""

import json
import subprocess
import sys

import pytest
import torch
from fakes import MINI, distilled_images, needs_mini, write_cifar, write_run
from PIL import Image
from typer.testing import CliRunner

from challenge_kit.cli import app
from challenge_kit.core.contract import CIFAR100, default_labels
from challenge_kit.core.errors import ExportRefused
from challenge_kit.core.reading import load_torch, sha256
from challenge_kit.export import export_run
from challenge_kit.plots import LABEL_WIDTH, TITLE_HEIGHT

SUBSET = CIFAR100.subset(5)


def _run_dir(tmp_path, labels=None, images=None):
    return write_run(tmp_path / "run", SUBSET, labels=labels, images=images)


def test_export_writes_the_file_manifest_and_preview(tmp_path):
    out = tmp_path / "out"
    manifest = export_run(_run_dir(tmp_path), out)
    pt = out / "cifar100.pt"
    tensor = load_torch(pt)
    assert type(tensor) is torch.Tensor and tensor.dtype == torch.float32 and tensor.is_contiguous()
    assert tuple(tensor.shape) == SUBSET.shape and not tensor.requires_grad
    assert torch.equal(tensor, distilled_images(SUBSET))
    saved = json.loads((out / "manifest.json").read_text())
    assert saved["sha256"] == sha256(pt) == manifest["sha256"]
    assert saved["challenge_submission"] is False and saved["spec"]["num_classes"] == 5
    assert saved["verify"]["ok"] and saved["best_iteration"] == 7
    assert {"torch", "ddkit", "python"} <= set(saved["versions"])
    with Image.open(out / "preview.png") as png:  # 5 rows of 10 images, 2 px padding, drawn twice as large
        assert png.size == (LABEL_WIDTH + 2 * (10 * 34 + 2), 2 * (5 * 34 + 2) + TITLE_HEIGHT)
    result = CliRunner().invoke(app, ["verify", str(pt), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["spec"]["num_classes"] == 5  # spec from the manifest beside the file


@pytest.mark.parametrize("problem", ["soft labels", "wrong order", "nan"])
def test_export_refuses_a_set_that_fails_verify_and_writes_nothing(tmp_path, problem):
    labels, images = None, None
    if problem == "soft labels":
        labels = torch.nn.functional.one_hot(default_labels(5, 10), 5).float() * 0.6 + 0.08
    elif problem == "wrong order":
        labels = torch.arange(5).repeat(10)
    else:
        images = distilled_images(SUBSET)
        images[3, 0, 0, 0] = float("nan")
    run = _run_dir(tmp_path, labels=labels, images=images)
    with pytest.raises(ExportRefused, match="verify failed"):
        export_run(run, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_make_submission_at_full_cifar100_shapes_is_accepted_by_verify_and_the_evaluator(tmp_path):
    """1000 x 3 x 32 x 32, 100 classes, through the real pickle loader, experts, distill, export."""
    write_cifar(tmp_path / "data", n_train=6, n_test=2, per_class=True, smooth=True)
    out = tmp_path / "out"
    args = ["make-submission", "cifar100", "--data-root", str(tmp_path / "data"), "--out", str(out),
            "--device", "cpu", "--set", "experts.num_experts=1", "--set", "experts.epochs=1",
            "--set", "distill.iterations=2", "--set", "distill.syn_steps=1", "--set", "distill.expert_epochs=1",
            "--set", "distill.current_max_start_epoch=0", "--set", "distill.max_start_epoch=0",
            "--set", "distill.batch_syn=50", "--set", "eval.every=0", "--set", "eval.holdout_per_class=0",
            "--set", "distill.threshold=100"]  # a 1-epoch expert's match is above 1: all skipped, the run would stop
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    pt = out / "cifar100.pt"
    assert tuple(load_torch(pt).shape) == (1000, 3, 32, 32)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["challenge_submission"] is True and manifest["run"]["iterations"] == 2
    assert set(manifest["timings_s"]) == {"data", "plan", "experts", "distill"}
    assert set(manifest["plan"]["stages"]) == {"experts", "distillation", "official score"} and \
        manifest["plan"]["run_seconds"] > 0

    verify = CliRunner().invoke(app, ["verify", str(pt)])
    assert verify.exit_code == 0, verify.output

    ref = CliRunner().invoke(app, ["reference", "cifar100", "--data-root", str(tmp_path / "data"),
                                   "--out-file", str(tmp_path / "in" / "ref" / "cifar100_test.pt")])
    assert ref.exit_code == 0, ref.output
    (tmp_path / "in" / "res").mkdir()
    (tmp_path / "in" / "res" / "cifar100.pt").write_bytes(pt.read_bytes())
    done = subprocess.run([sys.executable, "-m", "evaluator", str(tmp_path / "in"), str(tmp_path / "scores"),
                           "--epochs", "1", "--rounds", "1", "--seed", "0", "--partial"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "scores" / "scores.txt").read_text().startswith("correct: ")

    again = CliRunner().invoke(app, args)  # a finished run is not silently overwritten
    assert again.exit_code != 0 and "--resume" in again.output


@needs_mini
def test_make_submission_on_the_real_mini_tiny_imagenet(tmp_path):
    """Real JPEGs through the whole pipeline; the export is a subset submission that verify accepts."""
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "make-submission", "tinyimagenet", "--data-root", str(MINI), "--out", str(out), "--device", "cpu",
        "--cache-dir", str(tmp_path / "cache"), "--profile", "quick", "--set", "experts.num_experts=1",
        "--set", "experts.epochs=1", "--set", "distill.iterations=1", "--set", "distill.syn_steps=1",
        "--set", "distill.expert_epochs=1", "--set", "distill.max_start_epoch=0", "--set", "distill.batch_syn=10",
        "--set", "eval.every=0", "--set", "distill.threshold=100"])  # as above: its one match is above 1
    assert result.exit_code == 0, result.output
    pt = out / "tinyimagenet.pt"
    assert tuple(load_torch(pt).shape) == (200, 3, 64, 64)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["challenge_submission"] is False
    assert manifest["spec"]["class_names"] == sorted((MINI / "wnids.txt").read_text().split())
    verify = CliRunner().invoke(app, ["verify", str(pt), "--json"])
    assert verify.exit_code == 0, verify.output
    assert json.loads(verify.stdout)["spec"]["challenge"] is False
