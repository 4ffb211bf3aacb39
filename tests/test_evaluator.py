"""The bundled scorer: recipe schedule, reproducibility, both CLI forms, output format, bad inputs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from challenge_kit.cli import app
from challenge_kit.core.artifact import DistilledArtifact
from challenge_kit.core.contract import CIFAR100, TINYIMAGENET, default_labels
from challenge_kit.core.errors import KitValueError
from challenge_kit.core.submission import resolve_spec
from evaluator import scorer
from evaluator.evaluate import main
from evaluator.scorer import drop_epoch, evaluate_images, lr_at, train_and_test

REPO = Path(__file__).resolve().parent.parent
TINY = CIFAR100.subset(5, ipc=2)  # still named cifar100, so the folder scorer finds cifar100.pt
COLORS = torch.tensor([[2, -2, -2], [-2, 2, -2], [-2, -2, 2], [2, 2, -2], [-2, 2, 2]], dtype=torch.float32)


def coloured(per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable task: each class is a flat colour plus noise, in default (class-major) order."""
    g = torch.Generator().manual_seed(seed)
    labels = default_labels(5, per_class)
    return COLORS[labels].view(-1, 3, 1, 1) + 0.3 * torch.randn(len(labels), 3, 32, 32, generator=g), labels


def write_folder(root: Path, images, test_images, test_labels) -> None:
    (root / "res").mkdir(parents=True)
    (root / "ref").mkdir(parents=True)
    torch.save(images, root / "res" / "cifar100.pt")
    torch.save({"images_val": test_images, "labels_val": test_labels}, root / "ref" / "cifar100_test.pt")


def test_lr_schedule_drops_after_epoch_501():
    assert drop_epoch(1001) == 501
    assert lr_at(0) == lr_at(501) == 0.01
    assert lr_at(502) == pytest.approx(0.001) and lr_at(1000) == pytest.approx(0.001)
    assert [lr_at(e, epochs=6) for e in range(6)] == pytest.approx([0.01] * 4 + [0.001] * 2)


def test_optimizer_recreated_at_the_drop(monkeypatch):
    created, completed = [], []
    real = scorer.make_optimizer

    def counting(params, lr):
        opt = real(params, lr)
        created.append((lr, len(completed), opt))
        return opt

    monkeypatch.setattr(scorer, "make_optimizer", counting)
    images, labels = coloured(2, 0)
    train_and_test(images, labels, images, labels, num_classes=5, epochs=6, seed=0, device="cpu",
                   progress=lambda epoch, loss, acc: completed.append(epoch))
    # a fresh SGD at the start, another after epoch index 3 (drop_epoch(6)) finished: momentum restarts
    assert [(lr, n) for lr, n, _ in created] == [(0.01, 0), (pytest.approx(0.001), 4)]
    assert created[0][2] is not created[1][2]
    assert created[1][2].param_groups[0]["momentum"] == 0.9 and created[1][2].state  # used for 2 epochs


def test_learnable_task_scores_well_above_chance():
    images, _ = coloured(2, 0)
    test_images, test_labels = coloured(10, 1)
    result = evaluate_images(images, TINY, test_images, test_labels, rounds=2, epochs=3, seed=0,
                             device="cpu", show_progress=False)
    assert result["mean"] > 0.6  # chance is 0.2
    assert len(result["rounds"]) == len(result["seeds"]) == 2 and result["seeds"][0] != result["seeds"][1]
    assert result["epochs"] == 3 and result["device"] == "cpu" and result["official"] is False


def test_default_order_is_the_labelling():
    """Scored under default labels, a set whose images are not class-major is learnt wrongly."""
    images, _ = coloured(2, 0)
    test_images, test_labels = coloured(10, 1)
    shuffled = images[torch.tensor([2, 3, 4, 5, 6, 7, 8, 9, 0, 1])]  # every class shifted by one
    result = evaluate_images(shuffled, TINY, test_images, test_labels, rounds=1, epochs=3, seed=0,
                             device="cpu", show_progress=False)
    assert result["mean"] < 0.4


def test_seeded_runs_are_reproducible_on_cpu():
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(10, 3, 32, 32, generator=g), default_labels(5, 2)

    def run(seed):
        trace = []
        acc = train_and_test(images, labels, images, labels, num_classes=5, epochs=3, batch_size=4, seed=seed,
                             device="cpu", progress=lambda e, loss, a: trace.append(loss))
        return trace, acc

    first, again, other = run(7), run(7), run(8)
    assert first == again
    assert first[0] != other[0]


def test_round_init_shuffle_and_augmentation_draw_separate_streams(monkeypatch):
    """On the CPU every stream is the same kind of generator: seeded alike, they would repeat each other."""
    states = {}
    real_convnet = scorer.ConvNet

    def convnet(config):
        states["init"] = torch.get_rng_state()
        return real_convnet(config)

    def train(nets, images, labels, streams, **kwargs):
        (generator, group_generator), = streams
        states["data"], states["group"] = generator.get_state(), group_generator.get_state()

    monkeypatch.setattr(scorer, "ConvNet", convnet)
    monkeypatch.setattr(scorer, "train_together", train)
    images, labels = coloured(2, 0)
    train_and_test(images, labels, images, labels, num_classes=5, epochs=1, seed=7, device="cpu")
    draws = {}
    for name, state in states.items():
        g = torch.Generator()
        g.set_state(state)
        draws[name] = torch.rand(8, generator=g)
    assert not torch.equal(draws["init"], draws["data"])
    assert not torch.equal(draws["init"], draws["group"]) and not torch.equal(draws["data"], draws["group"])


def test_every_invocation_writes_the_same_scores(tmp_path, capsys, monkeypatch):
    images, _ = coloured(2, 0)
    write_folder(tmp_path / "in", images, *coloured(4, 1))
    flags = ["--epochs", "2", "--rounds", "2", "--seed", "3", "--device", "cpu", "--partial"]
    specs = [TINY, TINYIMAGENET]
    assert main([str(tmp_path / "in"), str(tmp_path / "out1"), *flags], specs=specs) == 0
    capsys.readouterr()
    ref = tmp_path / "in" / "ref"
    for slash, out in (("", "out2"), ("/", "out3")):  # the official joins truth_dir by string: both work here
        assert main(["--submit_dir", str(tmp_path / "in" / "res"), "--truth_dir", f"{ref}{slash}",
                     "--output_dir", str(tmp_path / out), *flags], specs=specs) == 0
        printed = capsys.readouterr().out
        assert f"scoring {tmp_path / 'in' / 'res' / 'cifar100.pt'} on {ref / 'cifar100_test.pt'}" in printed
        assert ("no trailing slash" in printed) == (slash == "")
        assert "partial:" in printed and "skipped tinyimagenet" in printed
    (tmp_path / "cwd").mkdir()  # the official defaults: --truth_dir ./reference_data/, --output_dir ./
    shutil.copytree(ref, tmp_path / "cwd" / "reference_data")
    monkeypatch.chdir(tmp_path / "cwd")
    assert main(["--submit_dir", str(tmp_path / "in" / "res"), *flags], specs=specs) == 0
    assert f"on {Path('reference_data') / 'cifar100_test.pt'}" in capsys.readouterr().out
    text = (tmp_path / "out1" / "scores.txt").read_bytes()
    assert text == (tmp_path / "out2" / "scores.txt").read_bytes() == (tmp_path / "out3" / "scores.txt").read_bytes()
    assert text == (tmp_path / "cwd" / "scores.txt").read_bytes()
    assert re.fullmatch(rb"correct: \d+\.\d+(e-?\d+)?", text)  # exactly one line, no newline
    summary = json.loads((tmp_path / "out1" / "scores.json").read_text())
    assert summary["skipped"] == ["tinyimagenet"] and summary["partial"] is True and summary["official"] is False
    cifar = summary["datasets"]["cifar100"]
    assert cifar["epochs"] == 2 and len(cifar["rounds"]) == 2 and len(cifar["seeds"]) == 2
    assert float(text.split()[1]) == pytest.approx(cifar["mean"])


def test_python_m_evaluator_on_the_challenge_shape(tmp_path):
    images = torch.randn(1000, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    write_folder(tmp_path / "in", images, torch.randn(20, 3, 32, 32, generator=g), torch.arange(20) * 5)
    command = [sys.executable, "-m", "evaluator", str(tmp_path / "in"), str(tmp_path / "out"),
               "--epochs", "1", "--rounds", "1", "--seed", "0", "--device", "cpu"]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    missing = tmp_path / "in" / "res" / "tinyimagenet.pt"
    assert proc.returncode == 1 and proc.stderr.startswith(f"error: {missing}: no such file")
    assert "--partial" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # fails before training, not after

    proc = subprocess.run([*command, "--partial"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "shortened run" in proc.stdout and "skipped tinyimagenet" in proc.stdout and "partial:" in proc.stdout
    assert re.fullmatch(r"correct: [0-9.e-]+", (tmp_path / "out" / "scores.txt").read_text())
    assert json.loads((tmp_path / "out" / "scores.json").read_text())["partial"] is True


def _malformed(root: Path, case: str) -> Path:
    """Write a folder with one defect; return the file the error must name."""
    images, _ = coloured(2, 0)
    test_images, test_labels = coloured(2, 1)
    write_folder(root, images, test_images, test_labels)
    sub, ref = root / "res" / "cifar100.pt", root / "ref" / "cifar100_test.pt"
    if case == "dict":
        torch.save({"images": images}, sub)
    elif case == "shape":
        torch.save(images[:9], sub)
    elif case == "truncated":
        sub.write_bytes(sub.read_bytes()[:300])
    elif case == "reference":
        torch.save({"images_val": test_images}, ref)
        return ref
    elif case == "missing":
        sub.unlink()
    return sub


@pytest.mark.parametrize("case", ["dict", "shape", "truncated", "reference", "missing"])
def test_malformed_inputs_fail_naming_the_file(tmp_path, capsys, case):
    named = _malformed(tmp_path / "in", case)
    assert main([str(tmp_path / "in"), str(tmp_path / "out"), "--epochs", "1"], specs=[TINY]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {named}") and "\n" not in err
    assert not (tmp_path / "out" / "scores.txt").exists()


@pytest.mark.parametrize("case, says", [
    ("nan", "FAIL finite: 1 NaN"), ("0-255", "FAIL normalization: raw [0, 255] pixels"),
    ("integer", "FAIL dtype: int64: integer images")])
def test_scoring_says_what_verify_finds_before_the_score(tmp_path, capsys, case, says):
    images, _ = coloured(2, 0)
    if case == "nan":
        images[0, 0, 0, 0] = float("nan")
    else:
        pixels = (torch.sigmoid(images) * 255).round()
        images = pixels.long() if case == "integer" else pixels
    write_folder(tmp_path / "in", images, *coloured(2, 1))
    assert main([str(tmp_path / "in"), str(tmp_path / "out"), "--epochs", "1", "--rounds", "1"], specs=[TINY]) == 0
    lines = capsys.readouterr().out.splitlines()
    found = [i for i, line in enumerate(lines) if line.startswith(f"{tmp_path / 'in' / 'res' / 'cifar100.pt'}: ")]
    assert any(says in lines[i] for i in found), lines
    assert max(found) < next(i for i, line in enumerate(lines) if re.match(r"cifar100: \d", line))
    scores = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert any(says in line for line in scores["datasets"]["cifar100"]["verify"])


def test_python_m_evaluator_exits_nonzero_on_bad_file(tmp_path):
    named = _malformed(tmp_path / "in", "dict")
    dirs = ["--submit_dir", str(tmp_path / "in" / "res"), "--truth_dir", str(tmp_path / "in" / "ref"),
            "--output_dir", str(tmp_path / "out"), "--partial"]
    proc = subprocess.run([sys.executable, "-m", "evaluator", *dirs], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode != 0 and str(named) in proc.stderr and "not a bare tensor" in proc.stderr


def test_spec_resolution_order():
    manifest_spec = CIFAR100.subset(10, ipc=1)
    assert resolve_spec((10, 3, 32, 32), declared=(manifest_spec,)) == (manifest_spec, "manifest.json")
    assert resolve_spec(CIFAR100.shape, declared=(manifest_spec,)) == (CIFAR100, "shape")
    spec, source = resolve_spec((40, 3, 64, 64), reference_labels=torch.arange(20))
    assert source == "reference labels" and (spec.name, spec.num_classes, spec.ipc) == ("tinyimagenet", 20, 2)
    # nothing fits: the named dataset, whose shape asserts then fail with the expected shape
    assert resolve_spec((999, 3, 32, 32), dataset="cifar100") == (CIFAR100, "--dataset")
    with pytest.raises(KitValueError, match="--dataset"):
        resolve_spec((7, 3, 48, 48))


def test_ddkit_evaluate_json(tmp_path):
    images, _ = coloured(2, 0)
    test_images, test_labels = coloured(4, 1)
    torch.save({"images_val": test_images, "labels_val": test_labels}, tmp_path / "ref.pt")
    DistilledArtifact(images, default_labels(5, 2), TINY).save(tmp_path / "set.safetensors")
    torch.save(images, tmp_path / "set.pt")  # no manifest: spec from the reference's 5 classes at 32 px
    runner = CliRunner()
    for name, source in (("set.safetensors", "artifact metadata"), ("set.pt", "reference labels")):
        res = runner.invoke(app, ["evaluate", str(tmp_path / name), "--reference", str(tmp_path / "ref.pt"),
                                  "--epochs", "2", "--rounds", "1", "--seed", "0", "--device", "cpu",
                                  "--json"])
        assert res.exit_code == 0, res.output
        out = json.loads(res.stdout)
        assert 0.0 <= out["mean"] <= 1.0 and len(out["rounds"]) == 1 and out["spec_source"] == source
        assert out["official"] is False and out["spec"]["num_classes"] == 5


def test_ddkit_evaluate_bad_file(tmp_path):
    torch.save({"images_val": torch.zeros(2, 3, 32, 32), "labels_val": torch.zeros(2)}, tmp_path / "ref.pt")
    torch.save([1, 2], tmp_path / "bad.pt")
    res = CliRunner().invoke(app, ["evaluate", str(tmp_path / "bad.pt"), "--reference",
                                   str(tmp_path / "ref.pt"), "--dataset", "cifar100"])
    assert res.exit_code != 0 and f"{tmp_path / 'bad.pt'}" in res.output


def test_ddkit_evaluate_says_what_verify_finds_first(tmp_path):
    images, _ = coloured(2, 0)
    images[1, 2, 3, 4] = float("nan")
    torch.save(images, tmp_path / "set.pt")
    torch.save({"images_val": images[:5].nan_to_num(), "labels_val": torch.arange(5)}, tmp_path / "ref.pt")
    res = CliRunner().invoke(app, ["evaluate", str(tmp_path / "set.pt"), "--reference", str(tmp_path / "ref.pt"),
                                   "--epochs", "1", "--rounds", "1", "--json"])
    assert res.exit_code == 0, res.output
    said = f"{tmp_path / 'set.pt'}: FAIL finite: 1 NaN and 0 inf values"
    assert said in res.stderr and any(said in line for line in json.loads(res.stdout)["verify"])


class Payload:
    def __reduce__(self):
        return (print, ("ran",))


def test_refused_pickle_is_one_plain_line_without_torchs_advice(tmp_path):
    torch.save(Payload(), tmp_path / "cifar100.pt")
    reference = tmp_path / "cifar100_test.pt"
    torch.save({"images_val": torch.zeros(2, 3, 32, 32), "labels_val": torch.zeros(2)}, reference)
    res = CliRunner().invoke(app, ["evaluate", str(tmp_path / "cifar100.pt"), "--reference", str(reference)])
    proc = subprocess.run([sys.executable, "-m", "evaluator", "--submit_dir", str(tmp_path), "--truth_dir",
                           str(tmp_path), "--output_dir", str(tmp_path / "out"), "--partial"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    for code, err in ((res.exit_code, res.stderr), (proc.returncode, proc.stderr)):
        assert code == 1 and err.startswith(f"error: {tmp_path / 'cifar100.pt'}: refused") and err.count("\n") == 1
        assert "would call" in err and "print" in err and "weights_only" not in err and "\x1b" not in err


def test_only_the_leaderboards_recipe_is_official():
    """Official: a challenge spec, the recipe's 3 rounds of 1001 epochs, default labels, the faithful arithmetic."""
    assert scorer.is_official(CIFAR100, 3, 1001)
    for spec, rounds, epochs, labels, mode in [(TINY, 3, 1001, None, "faithful"), (CIFAR100, 2, 1001, None, "faithful"),
                                               (CIFAR100, 3, 1000, None, "faithful"),
                                               (CIFAR100, 3, 1001, default_labels(100, 10), "faithful"),
                                               (CIFAR100, 3, 1001, None, "fast")]:
        assert not scorer.is_official(spec, rounds, epochs, labels, mode)


def test_a_wrong_shape_or_no_rounds_is_refused_before_training():
    test_images, test_labels = coloured(2, seed=1)
    with pytest.raises(ValueError, match=r"^images have shape \(2, 3, 32, 32\), cifar100 expects \(10, 3, 32, 32\)$"):
        evaluate_images(torch.zeros(2, 3, 32, 32), TINY, test_images, test_labels, epochs=1)
    for rounds, epochs in ((0, 1), (1, 0)):
        with pytest.raises(ValueError, match=rf"^rounds and epochs must be >= 1 \(got rounds={rounds}, "
                                             rf"epochs={epochs}\)$"):
            evaluate_images(torch.zeros(TINY.shape), TINY, test_images, test_labels, rounds=rounds, epochs=epochs)
