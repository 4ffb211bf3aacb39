"""Untrusted counts and names refused in one line that names the option or file, before any work: seeds and scorer
rounds a user typed, devices torch cannot compute on, a run's malformed run.json or checkpoint; and a score that
cannot be written is still shown.
"""

from __future__ import annotations

import errno
import json
import zipfile
from pathlib import Path

import pytest
import torch
from fakes import distilled_images, write_cifar, write_run
from helpers import EVALUATOR, invoke

import evaluator.evaluate
from challenge_kit.core import seeds
from challenge_kit.core.contract import CIFAR100
from challenge_kit.core.storage import save_json
from challenge_kit.runs import CHECKPOINT, SUMMARY, RunDir
from evaluator.fast import Arithmetic
from evaluator.scorer import Score

SUBSET = CIFAR100.subset(5)
HUGE = 10**30


def refused(argv: list, code: int, line: str) -> None:
    """The command ends with ``code`` and exactly ``line`` as its last stderr line, with no traceback."""
    got, _, err = invoke(argv)
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines and lines[-1] == line, err
    assert got == code, (got, err)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("messages")
    write_cifar(base / "data", n_train=30, n_test=20)
    torch.save(distilled_images(SUBSET), base / "sub.pt")
    torch.save({"images_val": torch.randn(20, 3, 32, 32), "labels_val": torch.arange(20) % 5}, base / "ref.pt")
    (base / "scoring" / "res").mkdir(parents=True)
    (base / "scoring" / "ref").mkdir()
    torch.save(distilled_images(CIFAR100), base / "scoring" / "res" / "cifar100.pt")
    torch.save({"images_val": torch.randn(20, 3, 32, 32), "labels_val": torch.arange(20) * 5},
               base / "scoring" / "ref" / "cifar100_test.pt")
    return base


def commands(w: Path, out: Path) -> dict[str, list]:
    """A valid command line of each command that takes --seed, --rounds or --device."""
    return {
        "baseline": ["baseline", "cifar100", "--data-root", w / "data", "--out", out],
        "experts": ["experts", "cifar100", "--data-root", w / "data", "--out", out, "--profile", "quick"],
        "distill": ["distill", "cifar100", "--experts", w / "store", "--data-root", w / "data", "--out", out,
                    "--profile", "quick"],
        "make-submission": ["make-submission", "cifar100", "--data-root", w / "data", "--out", out, "--profile",
                            "quick"],
        "ablate": ["ablate", "m-datm", "--experts", w / "store", "--data-root", w / "data", "--out", out],
        "evaluate": ["evaluate", w / "sub.pt", "--reference", w / "ref.pt"],
        "compare": ["compare", w / "sub.pt", "--reference", w / "ref.pt", "--out", out],
        EVALUATOR: [EVALUATOR, w / "scoring", out, "--partial"],
    }


# ------------------------------------------------------------------------------------------ seeds

SEEDED = ["baseline", "experts", "ablate", "evaluate", "compare"]
SEED_LINE = "error: --seed: must be a whole number from 0 to 4294967295 (2**32 - 1), got "


@pytest.mark.parametrize("command", SEEDED)
@pytest.mark.parametrize("seed, shown", [(HUGE, str(HUGE)), (10**50, "a 51-digit number"), (-1, "-1"),
                                         (2**32, "4294967296")])
def test_a_seed_out_of_bounds_is_refused_as_the_option_is_read(world, tmp_path, no_work, command, seed, shown):
    out = tmp_path / "out"
    refused([*commands(world, out)[command], "--seed", seed], 1, SEED_LINE + shown)
    assert not out.exists()


def test_the_evaluator_refuses_such_a_seed_as_argparse_refuses_any_option(world, tmp_path, no_work):
    out = tmp_path / "out"
    refused([*commands(world, out)[EVALUATOR], "--seed", HUGE], 2, "python -m evaluator: error: argument --seed: "
            f"must be a whole number from 0 to 4294967295 (2**32 - 1), got {HUGE}")
    assert not out.exists()


def test_every_stream_takes_the_largest_seed():
    top = seeds.MAX_SEED
    assert seeds.seed_problem(top) is None and seeds.seed_problem(0) is None
    cpu, device = seeds.distill_generators(top, torch.device("cpu"))  # seed + 1
    assert cpu.initial_seed() == top and device.initial_seed() == top + 1
    seeds.expert_generator(top, 99)
    assert len(set(seeds.round_seeds(top, seeds.ROUNDS_PER_SEED))) == seeds.ROUNDS_PER_SEED
    assert seeds.generator(seeds.final_round_seed(top)).initial_seed() == top + 1
    assert len(seeds.stream_seeds(top)) == 3


# ------------------------------------------------------------------------------------------ rounds

ROUNDS_LINE = ("at most 1000 rounds, got 1000000000 (the official score takes 3; each round trains a network for "
               "--epochs epochs, and round r of seed s is seeded s * 1000 + r)")


@pytest.mark.parametrize("command", ["evaluate", "ablate", "compare"])
def test_rounds_beyond_the_seed_scheme_are_refused_before_any_work(world, tmp_path, no_work, command):
    out = tmp_path / "out"
    refused([*commands(world, out)[command], "--rounds", 10**9], 1, f"error: --rounds: {ROUNDS_LINE}")
    assert not out.exists()


def test_the_evaluator_refuses_them_too(world, tmp_path, no_work):
    out = tmp_path / "out"
    refused([*commands(world, out)[EVALUATOR], "--rounds", 10**9], 2,
            f"python -m evaluator: error: --rounds: {ROUNDS_LINE}")
    assert not out.exists()


def test_a_thousand_rounds_is_the_largest_count_let_through():
    assert seeds.rounds_problem(1000) is None and seeds.rounds_problem(1001) is not None


# ------------------------------------------------------------------------------------------ devices

DEVICES = {"meta": "error: --device meta: tensors there have shapes but no values, nothing can be trained or "
                   "scored; use cpu or cuda",
           "privateuseone": "error: --device privateuseone: this torch cannot allocate memory there (No module named "
                            "'torch.privateuseone'); use cpu or cuda"}


UNKNOWN = "error: --device: unknown device '{}'; choose cpu, cuda, cuda:N or mps"


@pytest.mark.parametrize("command", ["experts", "distill", "make-submission", "ablate", "evaluate", EVALUATOR])
@pytest.mark.parametrize("device", DEVICES)
def test_a_device_torch_cannot_compute_on_is_refused_in_one_line(world, tmp_path, no_work, command, device):
    """ddkit takes the devices it lists (a usage error names them); python -m evaluator takes any torch device name
    and refuses one it cannot compute on."""
    out = tmp_path / "out"
    argv = [*commands(world, out)[command], "--device", device]
    if command == EVALUATOR:
        refused(argv, 1, DEVICES[device])
    else:
        refused(argv, 2, UNKNOWN.format(device))
    assert not out.exists()


# ------------------------------------------------------------------------------------------ run files

RUN_JSON = {
    "empty": (b"", "is not valid JSON (Expecting value: line 1 column 1 (char 0)): torn or edited; `ddkit distill "
                   "--resume` rewrites it from the checkpoint"),
    "a list": (b"[]", "is not a run summary (a JSON object)"),
    "bad selection": (b'{"selection": {"candidates": [{"iteration": 1}]}}',
                      "is not a run summary of this kit ('recipe', 'selection' or its candidates)"),
}


@pytest.mark.parametrize("case", RUN_JSON)
@pytest.mark.parametrize("command", ["report", "export"])
def test_a_malformed_run_json_is_named(tmp_path, command, case):
    run = write_run(tmp_path / "run", SUBSET)
    content, problem = RUN_JSON[case]
    (run / SUMMARY).write_bytes(content)
    argv = ["report", run] if command == "report" else ["export", run, "--out", tmp_path / "export"]
    refused(argv, 1, f"error: {run / SUMMARY}: {problem}")
    assert not (tmp_path / "export" / "cifar100.pt").exists()


def test_a_run_json_without_a_spec_is_named_by_report(tmp_path):
    run = write_run(tmp_path / "run", SUBSET)
    save_json({"selection": {}}, run / SUMMARY)
    refused(["report", run], 1, f"error: {run / SUMMARY}: records no dataset spec ('spec' is missing or not an object)")
    save_json({"spec": {"name": "cifar100"}}, run / SUMMARY)
    refused(["report", run], 1, f"error: {run / SUMMARY}: records no valid dataset spec (no 'num_classes'); not "
                                "written by `ddkit distill`, or edited since")


def checkpoint_cases() -> dict:
    state = {"iteration": 1, "images": torch.zeros(1), "labels": torch.zeros(1), "lr": torch.tensor(0.01),
             "upper": 1, "rng": torch.zeros(1, dtype=torch.uint8), "aug_rng": torch.zeros(1, dtype=torch.uint8)}
    good = {"recipe": {}, "spec": SUBSET.to_dict(), "state": state}
    kit = "is not a distillation checkpoint of this kit"
    return {
        "a tensor": (torch.zeros(3), "is not a distillation checkpoint (recipe, spec and state)"),
        "no spec": ({**good, "spec": None}, "records no dataset spec ('spec' is missing or not an object)"),
        "missing state": ({**good, "state": {"iteration": 1}},
                          f"{kit} (state: aug_rng, images, labels, lr, rng, upper); move it away to start the run "
                          "afresh"),
        "unknown state": ({**good, "state": {**state, "extra": 1}}, f"{kit} (state: extra); move it away to start "
                                                                    "the run afresh"),
        "wrong type": ({**good, "state": {**state, "iteration": "1"}}, f"{kit} (state: iteration); move it away to "
                                                                       "start the run afresh"),
        "bad candidates": ({**good, "state": {**state, "candidates": [5]}}, f"{kit} (state: candidates); move it "
                                                                            "away to start the run afresh"),
    }


@pytest.mark.parametrize("case", checkpoint_cases())
def test_a_malformed_checkpoint_is_named_by_report_and_by_a_resumed_run(tmp_path, case):
    saved, problem = checkpoint_cases()[case]
    run = tmp_path / "run"
    run.mkdir()
    torch.save(saved, run / CHECKPOINT)
    refused(["report", run], 1, f"error: {run / CHECKPOINT}: {problem}")
    with pytest.raises(Exception, match=f"^{run / CHECKPOINT}: ") as raised:
        RunDir(run, None, SUBSET).load()
    assert type(raised.value).__name__ == "KitFileError"


# ------------------------------------------------------------------------------------------ scores not lost

def fake_scores(images, spec, test_images, test_labels, **kwargs):
    return Score(spec.name, mean=0.25, rounds=[0.25], epochs=kwargs["epochs"], seeds=[1], device="cpu", official=False,
                 scorer=Arithmetic(), spec=spec, test_images=len(test_images), seconds=0.0)


def failing_write(monkeypatch, how: str) -> None:
    """scores.txt cannot be written: a full disk (no file named by the error), or a folder in its place."""
    if how == "full disk":
        def full(path, write):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(evaluator.evaluate, "atomic_write", full)


@pytest.mark.parametrize("how", ["full disk", "a folder in the way"])
def test_evaluate_shows_the_score_when_scores_txt_cannot_be_written(world, tmp_path, monkeypatch, how):
    monkeypatch.setattr(evaluator.evaluate, "evaluate_images", fake_scores)
    failing_write(monkeypatch, how)
    upload = tmp_path / "submission.zip"
    with zipfile.ZipFile(upload, "w") as zf:
        zf.write(world / "scoring" / "res" / "cifar100.pt", "cifar100.pt")
    out = tmp_path / "scores"
    (out / "scores.txt").mkdir(parents=True)
    named, kept = f"error: {out / 'scores.txt'}: ", "; not written, the result is the one printed above"

    def said(err: str) -> str:
        line = err.strip().splitlines()[-1]
        assert line.startswith(named) and line.endswith(kept), err
        return line

    code, stdout, err = invoke(["evaluate", upload, "--reference-dir", world / "scoring" / "ref", "--out",
                                out, "--partial", "--epochs", "1", "--rounds", "1", "--json"])
    assert code == 1 and json.loads(stdout)["correct"] == 0.25
    first = said(err)
    if how == "full disk":
        assert first == f"{named}No space left on device{kept}"
    code, stdout, err = invoke([EVALUATOR, world / "scoring", out, "--partial", "--epochs", "1", "--rounds", "1"])
    assert code == 1 and err.strip().splitlines() == [said(err)] == [first]
    assert stdout.strip().splitlines()[-1] == "correct: 0.25"
    assert [p.name for p in out.iterdir()] == ["scores.txt"] and (out / "scores.txt").is_dir()


def test_a_command_asked_for_json_refuses_in_json_too():
    """With --json, the error line on stderr is also the one JSON object on stdout."""
    code, stdout, err = invoke(["plan", "cifar100", "--set", "distill.mask=dep", "--no-calibrate", "--json"])
    line = err.strip()
    assert code == 1 and line.startswith("error: ") and "mask" in line, err
    assert json.loads(stdout) == {"ok": False, "exit_code": 1, "error": line.removeprefix("error: ")}


# ------------------------------------------------------------------------------------------ checks before work

def test_baseline_checks_its_output_folder_before_it_reads_the_data(world, tmp_path, no_work):
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    refused(commands(world, taken)["baseline"], 1, f"error: {taken}: is a file, not a folder")
