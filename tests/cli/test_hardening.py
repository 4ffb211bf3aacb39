"""Every command against what goes wrong outside the kit: one line on stderr, the documented exit code, no traceback,
and before any work.

How each case is made:
- output is a file: a real regular file where the output folder should be (or its parent).
- read-only output: a real folder with mode 0555. Root passes every permission bit, so when the tests run as root
  (as here) the command runs with this thread's overriding capabilities (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) off:
  the kernel's own permission checks, nothing mocked. Root stays the owner of what it owns, so the kit's own files
  (modules, recipes, the Python installation) stay readable wherever they are, a folder only root may enter
  included. A non-root tester needs no switch.
- unreadable input: real files and folders with mode 0000, read the same way (their owner cannot read them either).
- no GPU: ``--device cuda`` on a machine without one (``cuda:N`` past the last GPU where there is one).
- offline ``--download``: torchvision's download raises the URLError an offline machine gives (monkeypatched: a test
  must not depend on the network being down).
- a live second run: a separate process holding the output folder's lock.
Before any work: where a case must fail before data is read or training starts, reading data or scoring is made to
fail the test.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import urllib.error
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torchvision.datasets.cifar
from fakes import distilled_images, write_cifar, write_run
from helpers import EVALUATOR, invoke
from rich.console import Console

import challenge_kit.cli.render
import challenge_kit.pipeline
import challenge_kit.plan
from challenge_kit.context import DataSource, RunContext
from challenge_kit.core.contract import CIFAR100
from challenge_kit.core.errors import KitValueError
from challenge_kit.core.folders import LOCK_FILE
from challenge_kit.core.models import ModelConfig
from challenge_kit.core.reading import read_metadata
from challenge_kit.experts import buffers, training
from challenge_kit.experts.store import expert_path
from challenge_kit.pipeline import make_submission
from challenge_kit.plan import Timing
from challenge_kit.recipes import ExpertConfig, load_recipe

REPO = Path(__file__).resolve().parents[2]
OVERRIDES = (1 << 1) | (1 << 2)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
SUBSET = CIFAR100.subset(5)
STORE_MODEL = ModelConfig.for_spec(CIFAR100, width=8)  # the challenge's classes, a narrow net: quick to train
ROWS: list[tuple] = []  # (case, command, exit code, message): printed by `pytest -s` at the end of the module


class CapHeader(ctypes.Structure):
    """The kernel's header and data structs of capget/capset."""

    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapSets(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


@contextlib.contextmanager
def unprivileged():
    """Permission checks as a non-root user meets them (see the module docstring)."""
    if os.geteuid() != 0:
        yield
        return
    try:
        libc = ctypes.CDLL(None)
        capget, capset = libc.capget, libc.capset
    except (OSError, AttributeError):
        pytest.skip("platform: running as root where capget/capset are not available: permission bits cannot be tested")
    header, sets = CapHeader(0x20080522, 0), (CapSets * 2)()  # _LINUX_CAPABILITY_VERSION_3; pid 0: this thread
    if capget(ctypes.byref(header), sets) != 0:
        pytest.skip("platform: running as root where capget fails: permission bits cannot be tested")
    held = sets[0].effective  # the overrides are in the low word
    sets[0].effective = held & ~OVERRIDES
    if capset(ctypes.byref(header), sets) != 0:
        pytest.skip("platform: running as root without the right to change its capabilities")
    try:
        yield
    finally:
        sets[0].effective = held
        capset(ctypes.byref(header), sets)


@dataclass
class World:
    base: Path
    data: Path
    store: Path
    run: Path
    buffer: Path
    submission: Path
    reference: Path
    scoring: Path  # CodaLab input folder: res/cifar100.pt, ref/cifar100_test.pt
    scratch: Path  # each case's own output folders

    def fresh(self, name: str) -> Path:
        """A path in the scratch folder no earlier case used."""
        return self.scratch / f"{name}-{len(list(self.scratch.iterdir()))}"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Valid inputs for every command."""
    base = tmp_path_factory.mktemp("hardening")
    try:
        write_cifar(base / "data", n_train=30, n_test=20)
        images = torch.randn(48, 3, 32, 32)
        labels = torch.arange(48) % 100
        training.train_experts(images, labels, images[:16], labels[:16], CIFAR100,
                               ExpertConfig(num_experts=1, epochs=1, batch_size=16), base / "store", model=STORE_MODEL)
        (buffer,) = buffers.export_buffers(base / "store", base / "buffers")
        run = write_run(base / "run", SUBSET)
        torch.save(distilled_images(SUBSET), base / "sub.pt")
        torch.save({"images_val": torch.randn(20, 3, 32, 32), "labels_val": torch.arange(20) % 5}, base / "ref.pt")
        scoring = base / "scoring"
        (scoring / "res").mkdir(parents=True)
        (scoring / "ref").mkdir()
        torch.save(torch.randn(CIFAR100.shape), scoring / "res" / "cifar100.pt")
        torch.save({"images_val": torch.randn(20, 3, 32, 32), "labels_val": torch.arange(20) * 5},
                   scoring / "ref" / "cifar100_test.pt")
        (base / "scratch").mkdir()
        yield World(base, base / "data", base / "store", run, buffer, base / "sub.pt", base / "ref.pt", scoring,
                    base / "scratch")
    finally:
        for row in ROWS:
            print(" | ".join(map(str, row)))


def one_line(case: str, argv: list, code: int, expected: str) -> str:
    """Run; assert exactly one stderr line starting with ``expected``, the exit code, no traceback."""
    got, _, err = invoke(argv)
    lines = err.strip().splitlines()
    ROWS.append((case, argv[0], got, lines[0] if lines else ""))
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith(expected), (lines[0], expected)
    assert got == code, (got, err)
    return lines[0]


def writers(w: World, out: Path) -> dict[str, list]:
    """Every command that writes, with valid inputs and ``out`` as its output folder."""
    quick = ["--profile", "quick", "--device", "cpu"]
    return {
        "make-submission": ["make-submission", "cifar100", "--data-root", w.data, "--out", out, *quick],
        "experts": ["experts", "cifar100", "--data-root", w.data, "--out", out, *quick],
        "distill": ["distill", "cifar100", "--experts", w.store, "--data-root", w.data, "--out", out, *quick],
        "export": ["export", w.run, "--out", out],
        "reference": ["reference", "cifar100", "--data-root", w.data, "--out-file", out / "cifar100_test.pt"],
        "experts-import": ["experts-import", w.buffer, "--dataset", "cifar100", "--out", out],
        "experts-export": ["experts-export", w.store, "--out", out],
        EVALUATOR: [EVALUATOR, w.scoring, out, "--partial"],  # the world holds cifar100.pt only
    }


# ------------------------------------------------------------------------------------------ item 1 and 2: outputs

WRITERS = ["make-submission", "experts", "distill", "export", "reference", "experts-import", "experts-export",
           EVALUATOR]


@pytest.mark.parametrize("command", WRITERS)
def test_output_that_is_a_file(world, no_work, command):
    taken = world.fresh("taken")
    taken.write_text("not a folder")
    one_line("output is a file", writers(world, taken)[command], 1, f"error: {taken}: is a file, not a folder")


@pytest.mark.parametrize("command", WRITERS)
def test_read_only_output(world, no_work, command):
    read_only = world.fresh("read-only")
    read_only.mkdir(mode=0o555)
    read_only.chmod(0o555)
    with unprivileged():
        one_line("read-only output", writers(world, read_only)[command], 1,
                 f"error: {read_only}: cannot be written (Permission denied)")
    assert list(read_only.iterdir()) == []


# ------------------------------------------------------------------------------------------ item 1: inputs

@pytest.fixture(scope="module")
def unreadable(world):
    """Inputs nobody may read, their owner included: mode 0000."""
    base = world.base / "unreadable"
    base.mkdir()
    shutil.copytree(world.data, base / "data")
    shutil.copytree(world.store, base / "store")
    shutil.copytree(world.run, base / "run")
    shutil.copytree(world.scoring, base / "scoring")
    shutil.copy(world.submission, base / "sub.pt")
    shutil.copy(world.buffer, base / "buffer.pt")
    closed = [*(base / "data" / "cifar-100-python").iterdir(), base / "run" / "best.safetensors",
              base / "scoring" / "res" / "cifar100.pt", base / "sub.pt", base / "buffer.pt", base / "store"]
    for path in closed:
        path.chmod(0o000)
    yield base
    for path in closed:  # opened again, so that whoever clears the temporary folder later can
        path.chmod(0o755 if path.is_dir() else 0o644)


def readers(w: World, u: Path) -> dict[str, tuple[list, Path, int]]:
    """Every command with one unreadable input: (argv, the path the message must name, exit code)."""
    quick = ["--profile", "quick", "--device", "cpu"]
    train_file = u / "data" / "cifar-100-python" / "train"
    return {
        "make-submission": (["make-submission", "cifar100", "--data-root", u / "data", "--out", w.fresh("sub"),
                             *quick], train_file, 1),
        "experts": (["experts", "cifar100", "--data-root", u / "data", "--out", w.fresh("store"), *quick],
                    train_file, 1),
        "distill": (["distill", "cifar100", "--experts", w.store, "--data-root", u / "data", "--out",
                     w.fresh("run"), *quick], train_file, 1),
        "export": (["export", u / "run", "--out", w.fresh("export")], u / "run" / "best.safetensors", 1),
        "reference": (["reference", "cifar100", "--data-root", u / "data", "--out-file", w.fresh("ref") / "r.pt"],
                      train_file.with_name("test"), 1),
        "verify": (["verify", u / "sub.pt"], u / "sub.pt", 4),
        "evaluate": (["evaluate", u / "sub.pt", "--reference", w.reference, "--device", "cpu"], u / "sub.pt", 1),
        "info": (["info", u / "store"], u / "store", 1),
        "experts-import": (["experts-import", u / "buffer.pt", "--dataset", "cifar100", "--out", w.fresh("import")],
                           u / "buffer.pt", 1),
        "experts-export": (["experts-export", u / "store", "--out", w.fresh("buffers")], u / "store", 1),
        EVALUATOR: ([EVALUATOR, u / "scoring", w.fresh("scores"), "--partial"], u / "scoring" / "res" / "cifar100.pt",
                    1),
    }


@pytest.mark.parametrize("command", ["make-submission", "experts", "distill", "export", "reference", "verify",
                                     "evaluate", "info", "experts-import", "experts-export", EVALUATOR])
def test_unreadable_input(world, unreadable, command):
    argv, named, code = readers(world, unreadable)[command]
    with unprivileged():
        line = one_line("unreadable input", argv, code, f"error: {named}: ")
    assert "Permission denied" in line


# ------------------------------------------------------------------------------------------ item 1 and 2: device

def unusable_gpu() -> str:
    return f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"


@pytest.mark.parametrize("command", ["make-submission", "experts", "distill", "evaluate", EVALUATOR])
def test_unusable_device(world, no_work, command):
    device = unusable_gpu()
    out = world.fresh("device")
    argv = {
        "make-submission": ["make-submission", "cifar100", "--data-root", world.data, "--out", out],
        "experts": ["experts", "cifar100", "--data-root", world.data, "--out", out],
        "distill": ["distill", "cifar100", "--experts", world.store, "--data-root", world.data, "--out", out],
        "evaluate": ["evaluate", world.submission, "--reference", world.reference],
        EVALUATOR: [EVALUATOR, world.scoring, out, "--partial"],
    }[command]
    one_line("unusable device", [*argv, "--device", device], 1, f"error: --device {device}: ")
    assert not out.exists()  # nothing written before the check either


# ------------------------------------------------------------------------------------------ item 2: recipe

@pytest.mark.parametrize("command", ["make-submission", "experts", "distill"])
def test_experts_too_short_for_the_matching_range_fail_first(world, no_work, command):
    out = world.fresh("short")
    argv = {
        "make-submission": ["make-submission", "cifar100", "--data-root", world.data, "--out", out],
        "experts": ["experts", "cifar100", "--data-root", world.data, "--out", out],
        "distill": ["distill", "cifar100", "--experts", world.store, "--data-root", world.data, "--out", out],
    }[command]
    line = one_line("experts shorter than the matching range", [*argv, "--set", "experts.epochs=5"], 1, "error: ")
    assert line.endswith("experts.epochs (5) must be at least distill.max_start_epoch + distill.expert_epochs "
                         "(20 + 2): matching reads expert epochs up to 22")
    assert not out.exists()


# ------------------------------------------------------------------------------------------ item 3: offline

@pytest.mark.parametrize("command", ["make-submission", "experts", "reference"])
def test_offline_download(world, monkeypatch, command):
    def offline(*args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", offline)
    root = world.fresh("empty-data")
    out = world.fresh("out")
    argv = {
        "make-submission": ["make-submission", "cifar100", "--data-root", root, "--out", out, "--device", "cpu",
                            "--profile", "quick"],
        "experts": ["experts", "cifar100", "--data-root", root, "--out", out, "--device", "cpu", "--profile", "quick"],
        "reference": ["reference", "cifar100", "--data-root", root, "--out-file", out / "ref.pt"],
    }[command]
    line = one_line("offline --download", [*argv, "--download"], 1,
                    f"error: {root}: downloading CIFAR-100 failed ([Errno -3] Temporary failure in name resolution); "
                    "to place the files by hand, unpack https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz")
    assert line.endswith("into ROOT so that it holds ROOT/cifar-100-python/{train,test,meta} (torchvision's "
                         "CIFAR-100 python format), and run without --download")


# ------------------------------------------------------------------------------------------ item 5: locks

HOLDER = textwrap.dedent("""
    import contextlib, sys
    from challenge_kit.core.folders import run_lock
    with contextlib.ExitStack() as stack:
        for folder in sys.argv[1:]:
            stack.enter_context(run_lock(folder))
        print("held", flush=True)
        sys.stdin.read()
""")
LOCKED = ["make-submission", "experts", "distill", "export", "experts-import"]


@pytest.fixture(scope="module")
def held(world):
    """Output folders held by a live run of another process: {command: folder}, and that process's pid."""
    folders = {command: world.fresh(f"held-{command}") for command in LOCKED}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, *map(str, folders.values())], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield folders, proc.pid
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)


@pytest.mark.parametrize("command", LOCKED)
def test_a_second_live_run_refuses_naming_the_holder(world, held, no_work, command):
    folders, pid = held
    out = folders[command]
    before = sorted(p.name for p in out.iterdir())
    one_line("output folder in use by a live run", writers(world, out)[command], 1,
             f"error: {out}: in use by another ddkit run (pid {pid} on {socket.gethostname()} since ")
    assert sorted(p.name for p in out.iterdir()) == before


@pytest.mark.parametrize("command", ["export", "experts-import"])
def test_a_stale_lock_is_taken_over_saying_so(world, command):
    out = world.fresh("stale")
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = {"pid": int(dead.stdout), "host": socket.gethostname(), "command": "ddkit export", "started": "then"}
    (out / LOCK_FILE).write_text(json.dumps(record))
    code, _, err = invoke(writers(world, out)[command])
    ROWS.append(("stale lock (dead run)", command, code, err.strip().splitlines()[0]))
    assert code == 0, err
    assert err.startswith(f"warning: {out / LOCK_FILE}: taking over the lock of a run that is no longer running "
                          f"(pid {record['pid']} on ")
    assert not (out / LOCK_FILE).exists()


# ------------------------------------------------------------------------------------------ item 6: expert stores

def test_an_expert_store_trained_otherwise_is_refused_unless_replaced(world):
    store = world.fresh("experts")
    argv = ["experts", "cifar100", "--data-root", world.data, "--out", store, "--profile", "quick", "--device", "cpu",
            "--set", "experts.num_experts=1", "--set", "eval.every=0", "--set", "eval.holdout_per_class=0"]
    assert invoke(argv)[0] == 0
    expert = expert_path(store, 0)
    before = expert.read_bytes()
    for change, named in ((["--seed", "1"], "experts.seed 0 -> 1"), (["--set", "experts.lr=0.02"],
                                                                      "experts.lr 0.01 -> 0.02")):
        code, _, err = invoke([*argv, *change])  # after the line saying what data was loaded, before training
        ROWS.append(("expert store trained with other settings", "experts", code, err.strip().splitlines()[-1]))
        assert code == 1 and "Traceback" not in err
        assert err.strip().splitlines()[-1] == (f"error: {expert}: was trained with other settings ({named}); pass "
                                                "--replace-experts to train it again, or choose another --out")
        assert expert.read_bytes() == before
    code, _, err = invoke([*argv, "--seed", "1", "--replace-experts"])
    assert code == 0, err
    assert f"warning: {expert}: trained with other settings (experts.seed 0 -> 1); retraining it\n" in err
    assert read_metadata(expert)["seed"] == 1


# ------------------------------------------------------------------------------------------ item 4: CPU notice

def test_full_profile_on_a_cpu_opens_with_the_plan_and_stops_unless_told_to_go_on(world, monkeypatch, caplog):
    class Stop(Exception):
        pass

    def first_steps(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(training, "train_experts", first_steps)
    monkeypatch.setattr(challenge_kit.plan, "timed", lambda build, device: Timing(3.0, 3.5, 4.0))  # a CPU's seconds
    console = Console(file=io.StringIO(), width=400)
    monkeypatch.setattr(challenge_kit.cli.render, "console", console)
    recipe = load_recipe("cifar100", overrides=["eval.every=0", "eval.holdout_per_class=0"])
    with pytest.raises(KitValueError, match=r"^--profile full: the plan puts this run at .* days on this cpu; .*"
                                            r"--profile mini\), or pass --allow-long-run to go on$"):
        make_submission(recipe, world.fresh("cpu"), RunContext(progress=False, data=DataSource(world.data)),
                        show_plan=challenge_kit.cli.render.plan_table)
    said = console.file.getvalue()
    assert "cifar100 (100 classes), profile full, M-DATM: " in said and "the run: about " in said
    assert "experts: train 100 experts x 30 epochs" in said and "distillation: 10000 iterations, each 40 inner" in said
    with pytest.raises(Stop):  # told to go on, it reaches the experts
        make_submission(recipe, world.fresh("cpu"), RunContext(progress=False, data=DataSource(world.data)),
                        allow_long_run=True)
    assert caplog.messages[0].endswith("days on this cpu: going on (--allow-long-run)"), caplog.messages
