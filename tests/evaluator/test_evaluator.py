"""The bundled scorer: recipe schedule, reproducibility, both CLI forms, output format, bad inputs."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fakes import TINY, coloured, write_folder
from typer.testing import CliRunner

from challenge_kit.cli import app
from challenge_kit.core.artifact import DistilledArtifact
from challenge_kit.core.contract import CIFAR100, TINYIMAGENET, default_labels
from challenge_kit.core.errors import KitError, KitValueError
from challenge_kit.core.submission import resolve_spec
from evaluator import evaluate, scorer
from evaluator.evaluate import main, parse_args, score_directory
from evaluator.fast import FAST, Arithmetic
from evaluator.scorer import drop_epoch, evaluate_images, lr_at, train_rounds

REPO = Path(__file__).resolve().parents[2]


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
    train_rounds(images[..., :8, :8], labels, [0], num_classes=5, epochs=6, device="cpu",  # 8 px: quicker
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
    assert result.mean > 0.6  # chance is 0.2
    assert len(result.rounds) == len(result.seeds) == 2 and result.seeds[0] != result.seeds[1]
    assert result.epochs == 3 and result.device == "cpu" and result.official is False


def test_default_order_is_the_labelling():
    """Scored under default labels, a set whose images are not class-major is learnt wrongly."""
    images, _ = coloured(2, 0)
    test_images, test_labels = coloured(10, 1)
    shuffled = images[torch.tensor([2, 3, 4, 5, 6, 7, 8, 9, 0, 1])]  # every class shifted by one
    result = evaluate_images(shuffled, TINY, test_images, test_labels, rounds=1, epochs=3, seed=0,
                             device="cpu", show_progress=False)
    assert result.mean < 0.4


def test_seeded_runs_are_reproducible_on_cpu():
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(10, 3, 32, 32, generator=g), default_labels(5, 2)

    def run(seed):
        trace = []
        (net,) = train_rounds(images, labels, [seed], num_classes=5, epochs=3, batch_size=4, device="cpu",
                              progress=lambda e, loss, a: trace.append(loss))
        return trace, scorer.test_accuracy(net, images, labels)

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

    def train(net, images, labels, *, generator, group_generator, **kwargs):
        states["data"], states["group"] = generator.get_state(), group_generator.get_state()

    monkeypatch.setattr(scorer, "ConvNet", convnet)
    monkeypatch.setattr(scorer, "train", train)
    images, labels = coloured(2, 0)
    train_rounds(images, labels, [7], num_classes=5, epochs=1, device="cpu")
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


def test_a_scored_folder_prints_and_writes_the_documented_record(tmp_path, capsys, monkeypatch):
    """Two datasets, in the specs' order: what is read and what verify finds, then each dataset's rounds, then the
    final figure, the plain mean of the datasets' means; ``scores.json`` holds the keys docs/scorer.md lists, each
    dataset's rounds seeded ``seed * 1000 + r``. On a machine whose default device would be a GPU (said so here), the
    CPU asked for is the one every round runs on; a progress bar per dataset is drawn on stderr."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    small = TINYIMAGENET.subset(5, ipc=2)
    images, _ = coloured(2, 0)
    write_folder(tmp_path / "in", images, *coloured(2, 1))
    large = F.interpolate(images, size=64)
    torch.save(large, tmp_path / "in" / "res" / "tinyimagenet.pt")
    test_images, test_labels = coloured(2, 2)
    torch.save({"images_val": F.interpolate(test_images, size=64), "labels_val": (test_labels + 1) % 5},  # worse
               tmp_path / "in" / "ref" / "tinyimagenet_test.pt")
    assert main([str(tmp_path / "in"), str(tmp_path / "out"), "--epochs", "1", "--rounds", "2", "--seed", "5",
                 "--device", "cpu"], specs=[TINY, small]) == 0
    summary = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert (summary["skipped"], summary["partial"], summary["epochs"], summary["rounds"], summary["seed"],
            summary["device"], summary["official"]) == ([], False, 1, 2, 5, "cpu", False)
    assert set(summary) == {"correct", "datasets", "skipped", "partial", "epochs", "rounds", "seed", "device",
                            "official"}
    assert list(summary["datasets"]) == ["cifar100", "tinyimagenet"]
    lines = ["shortened run: 1 epochs x 2 rounds instead of the official 1001 x 3; not comparable to the leaderboard"]
    report = []
    for name, spec in (("cifar100", TINY), ("tinyimagenet", small)):
        got, sub, ref = summary["datasets"][name], tmp_path / "in" / "res" / f"{name}.pt", tmp_path / "in" / "ref"
        assert set(got) == {"dataset", "mean", "rounds", "epochs", "seeds", "device", "official", "scorer", "spec",
                            "test_images", "seconds", "submission", "reference", "verify"}
        assert (got["dataset"], got["seeds"], got["epochs"], got["device"], got["official"], got["test_images"]) == (
            name, [5000, 5001], 1, "cpu", False, 10)
        assert (got["submission"], got["reference"], got["spec"]) == (str(sub), str(ref / f"{name}_test.pt"),
                                                                      spec.to_dict())
        assert got["mean"] == pytest.approx(sum(got["rounds"]) / 2, abs=1e-12)
        assert any(line.startswith(f"{sub}: WARN spec: ") and "(spec from file name)" in line
                   for line in got["verify"])
        lines += [f"{name}: scoring {sub} on {ref / f'{name}_test.pt'}", *got["verify"]]
        rounds = " ".join(f"{a:.4f}" for a in got["rounds"])
        report.append(f"{name}: {got['mean']:.4f} (rounds {rounds}; seeds [5000, 5001]; 1 epochs on cpu)")
    means = [summary["datasets"][name]["mean"] for name in ("cifar100", "tinyimagenet")]
    assert means[0] != means[1] and summary["correct"] == pytest.approx(sum(means) / 2, abs=1e-12)
    printed = capsys.readouterr()
    assert printed.out.splitlines() == [*lines, *report, f"correct: {summary['correct']}"]
    assert "scoring cifar100" in printed.err and "scoring tinyimagenet" in printed.err
    assert (tmp_path / "out" / "scores.txt").read_text() == f"correct: {summary['correct']}"


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


def test_what_is_missing_is_named_before_anything_is_written(tmp_path, capsys):
    """Each in one line, exit 1, no output folder: a submission missing (both files named, as the official script
    reads both), its reference missing (a broken link counts as a submission there: its loader names it), and a
    folder with neither submission."""
    images, _ = coloured(2, 0)
    write_folder(tmp_path / "in", images, *coloured(2, 1))
    res, ref, out = tmp_path / "in" / "res", tmp_path / "in" / "ref", tmp_path / "out"
    specs = [TINY, TINYIMAGENET]

    def refused(*flags: str) -> str:
        assert main([str(tmp_path / "in"), str(out), "--epochs", "1", *flags], specs=specs) == 1
        assert not out.exists()
        (err,) = capsys.readouterr().err.splitlines()
        return err

    assert refused() == (f"error: {res / 'tinyimagenet.pt'}: no such file; the official evaluate.py reads "
                         "cifar100.pt and tinyimagenet.pt and crashes without one (leaving an empty scores.txt); "
                         "--partial scores the others alone")
    (ref / "cifar100_test.pt").rename(tmp_path / "elsewhere.pt")
    assert refused("--partial") == (f"error: {ref / 'cifar100_test.pt'}: no such reference file (needed to score "
                                    f"{res / 'cifar100.pt'})")
    (tmp_path / "elsewhere.pt").rename(ref / "cifar100_test.pt")
    (res / "cifar100.pt").unlink()
    (res / "tinyimagenet.pt").symlink_to(tmp_path / "nowhere.pt")
    assert refused("--partial") == (f"error: {ref / 'tinyimagenet_test.pt'}: no such reference file (needed to "
                                    f"score {res / 'tinyimagenet.pt'})")  # a broken link is there: its loader says why
    (res / "tinyimagenet.pt").unlink()
    assert refused("--partial") == f"error: {res}: holds no submission (cifar100.pt or tinyimagenet.pt)"


def test_python_m_evaluator_exits_nonzero_on_bad_file(tmp_path):
    named = _malformed(tmp_path / "in", "dict")
    dirs = ["--submit_dir", str(tmp_path / "in" / "res"), "--truth_dir", str(tmp_path / "in" / "ref"),
            "--output_dir", str(tmp_path / "out"), "--partial"]
    proc = subprocess.run([sys.executable, "-m", "evaluator", *dirs], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode != 0 and str(named) in proc.stderr and "not a bare tensor" in proc.stderr


def test_the_help_is_the_documented_one(monkeypatch, capsys):
    """``python -m evaluator --help`` at 120 columns prints the block docs/scorer.md shows, word for word."""
    monkeypatch.setenv("COLUMNS", "120")
    with pytest.raises(SystemExit) as exited:
        parse_args(["--help"])
    assert exited.value.code == 0
    doc = (REPO / "docs" / "scorer.md").read_text()
    block = doc.split("`COLUMNS=120 python -m evaluator --help`", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    assert capsys.readouterr().out == block


def test_the_options_default_as_the_official_script_and_refuse_what_it_cannot_run(capsys):
    """The official script's flag defaults (--truth_dir ./reference_data/, --output_dir ./) and its budget (3 rounds
    of 1001 epochs); the CodaLab form reads INPUT/res and INPUT/ref. Each refusal is argparse's exit 2 with its line."""
    flags = vars(parse_args(["--submit_dir", "S"]))
    assert flags == {"input": None, "output": None, "submit_dir": "S", "truth_dir": "./reference_data/",
                     "output_dir": "./", "seed": None, "rounds": 3, "epochs": 1001, "device": None, "partial": False}
    codalab = vars(parse_args(["IN", "OUT", "--seed", "4294967295", "--rounds", "1000", "--epochs", "1",
                               "--device", "cpu", "--partial"]))
    assert codalab == {"input": "IN", "output": "OUT", "submit_dir": str(Path("IN") / "res"),
                       "truth_dir": str(Path("IN") / "ref"), "output_dir": "OUT", "seed": 2**32 - 1, "rounds": 1000,
                       "epochs": 1, "device": "cpu", "partial": True}
    assert vars(parse_args(["--submit_dir", "S", "--truth_dir", "T", "--output_dir", "O"]))["truth_dir"] == "T"
    both = "give either INPUT OUTPUT or --submit_dir [--truth_dir] [--output_dir], not both"
    for argv, says in [([], "give INPUT OUTPUT, or --submit_dir (with --truth_dir and --output_dir, or their "
                            "defaults)"),
                       (["IN"], both), (["IN", "OUT", "--submit_dir", "S"], both),
                       (["IN", "OUT", "--truth_dir", "T"], both), (["IN", "OUT", "--output_dir", "O"], both),
                       (["IN", "OUT", "--rounds", "0"], "--rounds and --epochs must be at least 1"),
                       (["IN", "OUT", "--epochs", "0"], "--rounds and --epochs must be at least 1"),
                       (["IN", "OUT", "--rounds", "1001"], "--rounds: at most 1000 rounds, got 1001 (the official "
                                                            "score takes 3; each round trains a network for --epochs "
                                                            "epochs, and round r of seed s is seeded s * 1000 + r)"),
                       (["IN", "OUT", "--seed", "-1"], "argument --seed: must be a whole number from 0 to 4294967295 "
                                                        "(2**32 - 1), got -1")]:
        with pytest.raises(SystemExit) as exited:
            parse_args(argv)
        assert exited.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1] == f"python -m evaluator: error: {says}", argv


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
    for spec, rounds, epochs, labels, how in [(TINY, 3, 1001, None, Arithmetic()),
                                              (CIFAR100, 2, 1001, None, Arithmetic()),
                                              (CIFAR100, 3, 1000, None, Arithmetic()),
                                              (CIFAR100, 3, 1001, default_labels(100, 10), Arithmetic()),
                                              (CIFAR100, 3, 1001, None, Arithmetic(FAST))]:
        assert not scorer.is_official(spec, rounds, epochs, labels, how)


def test_a_wrong_shape_or_no_rounds_is_refused_before_training():
    test_images, test_labels = coloured(2, seed=1)
    with pytest.raises(KitError, match=r"^images have shape \(2, 3, 32, 32\), cifar100 expects \(10, 3, 32, 32\)$"):
        evaluate_images(torch.zeros(2, 3, 32, 32), TINY, test_images, test_labels, epochs=1)
    for rounds, epochs in ((0, 1), (1, 0)):
        with pytest.raises(KitError, match=rf"^rounds and epochs must be >= 1 \(got rounds={rounds}, "
                                             rf"epochs={epochs}\)$"):
            evaluate_images(torch.zeros(TINY.shape), TINY, test_images, test_labels, rounds=rounds, epochs=epochs)


def test_the_folder_scorer_hands_back_what_it_wrote_held_by_the_only_rank(tmp_path):
    """One process is rank 0: it holds the summary, and the summary is what scores.json says."""
    images, _ = coloured(2, 0)
    write_folder(tmp_path / "in", images, *coloured(4, 1))
    held = score_directory(tmp_path / "in" / "res", tmp_path / "in" / "ref", tmp_path / "out", specs=[TINY],
                           rounds=1, epochs=1, seed=0, device="cpu", show_progress=False, partial=True)
    assert held.held and held.value == json.loads((tmp_path / "out" / "scores.json").read_text())


@pytest.mark.parametrize("signum,name,code", [(None, "Ctrl-C (SIGINT)", 130), (signal.SIGTERM, "SIGTERM", 143)])
def test_evaluator_main_says_an_interrupt_in_one_line_and_exits_128_plus_the_signal(tmp_path, capsys, monkeypatch,
                                                                                     signum, name, code):
    """Ctrl-C or SIGTERM while scoring: one line on stderr naming the signal and how to continue, exit 130 or 143
    (128 + the signal's number), nothing on stdout."""
    def stopped(*args, **kwargs):
        stop = KeyboardInterrupt()
        if signum is not None:
            stop.signum = signum
        raise stop

    monkeypatch.setattr(evaluate, "score_directory", stopped)
    assert main([str(tmp_path / "in"), str(tmp_path / "out")]) == code
    printed = capsys.readouterr()
    assert (printed.out, printed.err) == ("", f"interrupted by {name}: python -m evaluator stopped; run the same "
                                              "command again\n")


def test_evaluator_main_prints_the_notes_and_a_partial_result_with_its_folder(tmp_path, capsys, monkeypatch):
    """What main prints around a run: the notes (a shortened run, a --truth_dir without its trailing slash, as the
    official script joins paths by string), then each skipped dataset with the folder it was looked for in, the
    partial-run line and the figure."""
    summary = {"datasets": {}, "skipped": ["tinyimagenet"], "partial": True, "correct": 0.25}

    def scored(submit_dir, truth_dir, output_dir, *, report, before, **kwargs):
        before()
        report(summary)

    monkeypatch.setattr(evaluate, "score_directory", scored)
    assert main(["--submit_dir", "subs", "--truth_dir", "truth", "--epochs", "2", "--rounds", "1"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "shortened run: 2 epochs x 1 rounds instead of the official 1001 x 3; not comparable to the leaderboard",
        "note: --truth_dir has no trailing slash: the official evaluate.py would read truthcifar100_test.pt (it "
        "joins by string); give truth/ there",
        "skipped tinyimagenet: no tinyimagenet.pt in subs",
        "partial: the mean of the datasets present, not a figure the official scorer gives",
        "correct: 0.25"]
    assert main(["--submit_dir", "subs", "--truth_dir", "truth/"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "skipped tinyimagenet: no tinyimagenet.pt in subs"


def test_evaluator_refuses_an_unwritable_output_or_a_foreign_reference_before_any_training(tmp_path, monkeypatch):
    """OUTPUT is probed before the files are read (the folder scorer) or the first round trains (the in-memory one),
    and each reference is checked against its dataset; a scores file that cannot be written names the file and the
    problem."""
    monkeypatch.setattr(evaluate, "evaluate_images", lambda *a, **k: pytest.fail("trained before refusing"))
    images, _ = coloured(2, 0)
    write_folder(tmp_path / "in", images, *coloured(2, 1))
    (tmp_path / "file").write_text("not a folder")
    res, ref = tmp_path / "in" / "res", tmp_path / "in" / "ref"
    load_entry = evaluate.load_entry
    monkeypatch.setattr(evaluate, "load_entry", lambda *a: pytest.fail("read the files before probing OUTPUT"))
    with pytest.raises(KitError, match="file"):
        score_directory(res, ref, tmp_path / "file" / "out", specs=[TINY], rounds=1, epochs=1, device="cpu")
    entry = load_entry(TINY, res / "cifar100.pt", ref / "cifar100_test.pt")
    with pytest.raises(KitError, match="file"):
        evaluate.score_entries([entry], tmp_path / "file" / "out", rounds=1, epochs=1, device="cpu")
    torch.save({"images_val": torch.zeros(4, 3, 64, 64), "labels_val": torch.zeros(4)}, ref / "cifar100_test.pt")
    with pytest.raises(KitError, match="cifar100_test.pt"):
        load_entry(TINY, res / "cifar100.pt", ref / "cifar100_test.pt")
    with pytest.raises(KitError, match="no such file"):  # not --partial: every dataset must be there
        score_directory(res, ref, tmp_path / "out", specs=[TINY, TINYIMAGENET], rounds=1, epochs=1, device="cpu")

    def full_disk(path, write):
        raise OSError("the disk filled")

    monkeypatch.setattr(evaluate, "atomic_write", full_disk)
    with pytest.raises(KitError) as failed:
        evaluate.write_scores({"correct": 0.5}, tmp_path)
    assert str(failed.value) == f"{tmp_path / 'scores.txt'}: the disk filled; not written, the result is the one " \
                                "printed above"


def test_evaluator_scoring_draws_a_bar_unless_told_not_to(tmp_path, capsys):
    images, _ = coloured(2, 0)
    write_folder(tmp_path / "in", images, *coloured(2, 1))
    folder = tmp_path / "in"
    entry = evaluate.load_entry(TINY, folder / "res" / "cifar100.pt", folder / "ref" / "cifar100_test.pt")
    capsys.readouterr()
    evaluate.score_entries([entry], rounds=1, epochs=1, seed=0, device="cpu")
    assert "round" in capsys.readouterr().err
    evaluate.score_entries([entry], rounds=1, epochs=1, seed=0, device="cpu", show_progress=False)
    assert capsys.readouterr().err == ""
    score_directory(folder / "res", folder / "ref", tmp_path / "out", specs=[TINY], rounds=1, epochs=1, seed=0,
                    device="cpu", show_progress=False)
    assert capsys.readouterr().err == ""
