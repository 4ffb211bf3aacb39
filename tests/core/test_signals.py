"""SIGTERM (docker stop, Slurm pre-emption, timeout) stops a command as Ctrl-C does: no temporary file left, the
lock released, one line saying how to continue, exit 143 (130 for Ctrl-C); continuing gives the bytes of a run
that was never interrupted.

Each command runs in a subprocess on tiny fake data. The signal is sent while the command writes: the wrapper
below holds one chosen file's write until the signal comes, inside torch.save (whose zip writer then fails on
its own) or just before the complete temporary file is renamed into place, so the moment an interruption could
leave a half-written file is hit every time, on a loaded machine too. Runs compared bit for bit use one thread,
in the subprocess and here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from fakes import distilled_images, write_run, write_tiny
from helpers import SMALL, ddkit_ok
from safetensors.torch import load_file

from challenge_kit.core.contract import CIFAR100, TINYIMAGENET
from challenge_kit.core.folders import LOCK_FILE
from challenge_kit.core.reading import read_metadata
from challenge_kit.experts.store import expert_files
from challenge_kit.export import export_images
from challenge_kit.runs import BEST, CHECKPOINT, HISTORY, read_history

REPO = Path(__file__).resolve().parents[2]
SUBSET = CIFAR100.subset(5)
WALL_CLOCK = {"epoch_seconds", "seconds"}  # the README's exceptions to same content, same bytes

HOLD = textwrap.dedent("""
    import os, sys, time
    import torch
    torch.set_num_threads(1)
    name, nth, where = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    seen = []

    def hold(path):
        seen.append(path)
        if len(seen) == nth:
            print("writing", path, flush=True)
            # short sleeps: a signal the kernel hands to another thread (torch's) does not cut a long sleep
            # short, and Python runs the handler only between them
            for _ in range(3000):
                time.sleep(0.1)

    save = torch.save

    class Stalling:
        # a file whose third write stalls: torch.save is stopped inside its zip writer
        def __init__(self, f):
            self.f, self.writes = f, 0

        def write(self, data):
            self.writes += 1
            if self.writes == 3:
                hold(self.f.name)
            return self.f.write(data)

        def flush(self):
            self.f.flush()

    def stalling_save(obj, f, *args, **kwargs):
        # the file's temporary, or an export's images serialized in memory (a stream without a name)
        target = getattr(f, "name", None)
        if isinstance(target, int):  # a temporary held open by its descriptor
            target = os.readlink(f"/proc/self/fd/{target}")
        mine = where == "torch.save" and (target is None or os.path.basename(str(target)).startswith(f".{name}."))
        return save(obj, Stalling(f) if mine else f, *args, **kwargs)

    torch.save = stalling_save

    # a group's renames run with signals held back: "rename" holds just before them, once all is written
    import contextlib
    from challenge_kit.core import storage
    together, group, current = storage.write_together, storage._uninterrupted, []

    def write_together(writes):  # groups nest (an export's preview is itself written atomically)
        current.append([os.path.basename(str(t)) for t, _ in writes])
        try:
            return together(writes)
        finally:
            current.pop()

    @contextlib.contextmanager
    def held():
        if where == "rename" and name in current[-1]:
            hold(name)
        with group():
            yield

    storage.write_together, storage._uninterrupted = write_together, held
    sys.argv = ["ddkit", *sys.argv[4:]]
    from challenge_kit.cli import app
    app()
""")
pytestmark = pytest.mark.usefixtures("one_thread")


def default_sigint() -> None:
    """A child inherits an ignored SIGINT (something earlier in the test process may ignore it), and Python then
    installs no Ctrl-C handler; a user's shell starts ddkit with the default one."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt(tmp_path: Path, name: str, nth: int, argv: list, sig: int = signal.SIGTERM,
              where: str = "rename") -> tuple[int, list[str]]:
    """Run ``ddkit ARGV``, signal it while it writes ``name`` for the ``nth`` time, just before the rename of
    the complete temporary file or (``where="torch.save"``) inside torch.save: (exit code, stderr lines)."""
    log = tmp_path / f"stderr-{len(list(tmp_path.glob('stderr-*')))}.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", HOLD, name, str(nth), where, *map(str, argv)], cwd=REPO,
                                env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=err,
                                text=True, preexec_fn=default_sigint)
        try:
            for line in proc.stdout:
                if line.startswith("writing"):
                    proc.send_signal(sig)
                    break
            else:
                pytest.fail(f"ended before writing {name} ({proc.wait()}): {log.read_text()[-2000:]}")
            code = proc.wait(timeout=120)
        finally:
            proc.kill()
            proc.wait()
    return code, log.read_text().strip().splitlines()


def left_behind(folder: Path) -> list[Path]:
    """Temporary files and lock files under ``folder``: an interruption must leave neither."""
    return sorted([*folder.rglob("*.tmp"), *folder.rglob(LOCK_FILE)])


def assert_stopped(code: int, lines: list[str], command: str, how: str, folder: Path, sig=signal.SIGTERM) -> None:
    assert code == 128 + sig, (code, lines)
    name = "SIGTERM" if sig == signal.SIGTERM else "Ctrl-C (SIGINT)"
    said = [line for line in lines if line.startswith("interrupted")]
    assert said == [f"interrupted by {name}: ddkit {command} stopped; {how}"], lines
    assert lines[-1] == said[0] and not any("Traceback" in line for line in lines), lines
    assert left_behind(folder) == []


def digests(folder: Path, names) -> dict[str, str]:
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in names}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 3-class Tiny ImageNet subset (10 images a class) and an uninterrupted expert store trained on it."""
    root = tmp_path_factory.mktemp("signals")
    write_tiny(root / "data", per_class=10)
    torch.set_num_threads(1)
    ddkit_ok("experts", "tinyimagenet", "--data-root", root / "data", "--out", root / "store", "--cache-dir",
             root / "cache", *SMALL)
    return root


def test_sigterm_during_experts_keeps_the_saved_epochs_and_continues_to_the_same_store(tiny, tmp_path):
    store = tmp_path / "store"
    argv = ["experts", "tinyimagenet", "--data-root", tiny / "data", "--out", store, "--cache-dir", tiny / "cache",
            *SMALL]
    code, lines = interrupt(tmp_path, "expert_0000.safetensors", 3, argv)  # saves: epochs 0, 1, then 2
    assert_stopped(code, lines, "experts", "run the same command again to continue: finished experts and saved "
                                           "epochs are kept", store)
    assert read_metadata(store / "expert_0000.safetensors")["completed_epochs"] == 1  # epoch 1, whole
    ddkit_ok(*argv)
    (mine,), (clean,) = expert_files(store), expert_files(tiny / "store")
    assert load_file(str(mine)).keys() == load_file(str(clean)).keys()
    for key, tensor in load_file(str(mine)).items():
        assert torch.equal(tensor, load_file(str(clean))[key]), key
    strip = lambda meta: {k: v for k, v in meta.items() if k not in WALL_CLOCK}  # noqa: E731
    assert strip(read_metadata(mine)) == strip(read_metadata(clean))


def test_sigterm_during_distill_resumes_to_the_bytes_of_an_uninterrupted_run(tiny, tmp_path):
    def argv(out):
        return ["distill", "tinyimagenet", "--experts", tiny / "store", "--data-root", tiny / "data", "--out", out,
                "--cache-dir", tiny / "cache", *SMALL]

    run = tmp_path / "run"
    code, lines = interrupt(tmp_path, "checkpoint.pt", 3, argv(run), where="torch.save")  # iteration 2's
    assert_stopped(code, lines, "distill", "run the same command with --resume to continue from the last "
                                           "checkpoint", run)
    assert not (run / BEST).exists() and len(read_history(run)) == 2
    ddkit_ok(*argv(run), "--resume")
    ddkit_ok(*argv(tmp_path / "clean"))
    assert digests(run, [BEST]) == digests(tmp_path / "clean", [BEST])
    strip = lambda rows: [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in rows]  # noqa: E731
    assert strip(read_history(run)) == strip(read_history(tmp_path / "clean"))
    assert (run / HISTORY).read_text().count("\n") == 4


@pytest.mark.parametrize("sig, where", [(signal.SIGTERM, "torch.save"), (signal.SIGINT, "rename")])
def test_a_signal_during_export_leaves_no_file_and_a_rerun_writes_the_same_bytes(tmp_path, sig, where):
    run = write_run(tmp_path / "run", SUBSET)
    out = tmp_path / "export"
    names = ["cifar100.pt", "manifest.json", "preview.png"]
    ddkit_ok("export", run, "--out", out)  # uninterrupted, into the same folder: the manifest names the file's path
    clean = digests(out, names)
    shutil.rmtree(out)
    code, lines = interrupt(tmp_path, "cifar100.pt", 1, ["export", run, "--out", out], sig, where)
    assert_stopped(code, lines, "export", "run the same command again", out, sig)
    assert list(out.iterdir()) == []
    ddkit_ok("export", run, "--out", out)
    assert digests(out, names) == clean


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Both datasets exported at the full challenge shapes (verify passes), as `ddkit bundle` takes them."""
    root = tmp_path_factory.mktemp("exports")
    for spec in (CIFAR100, TINYIMAGENET):
        export_images(distilled_images(spec), spec, root / spec.name, source="test")
    return root


def test_sigterm_during_bundle_leaves_no_zip_and_a_rerun_writes_the_same_bytes(exports, tmp_path):
    out = tmp_path / "upload"
    argv = ["bundle", exports / "cifar100", exports / "tinyimagenet", "--out-file", out / "submission.zip"]
    names = ["submission.zip", "submission.manifest.json"]
    ddkit_ok(*argv)  # uninterrupted
    clean = digests(out, names)
    shutil.rmtree(out)
    out.mkdir()
    code, lines = interrupt(tmp_path, "submission.zip", 1, argv)
    assert_stopped(code, lines, "bundle", "run the same command again", out)
    assert list(out.iterdir()) == []  # neither the zip nor its manifest
    ddkit_ok(*argv)
    assert digests(out, names) == clean


def test_sigterm_while_the_evaluator_scores_writes_nothing(tmp_path):
    """``python -m evaluator``: stopped while training, it says so in one line and leaves no scores.txt."""
    (tmp_path / "in" / "res").mkdir(parents=True)
    (tmp_path / "in" / "ref").mkdir()
    torch.save(distilled_images(CIFAR100), tmp_path / "in" / "res" / "cifar100.pt")
    torch.save({"images_val": torch.randn(20, 3, 32, 32), "labels_val": torch.arange(20) * 5},
               tmp_path / "in" / "ref" / "cifar100_test.pt")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "evaluator", tmp_path / "in", out, "--partial",
                             "--epochs", "1000", "--rounds", "1", "--seed", "0", "--device", "cpu"], cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if "scoring" in line:
                proc.send_signal(signal.SIGTERM)
                break
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert err.strip().splitlines() == ["interrupted by SIGTERM: python -m evaluator stopped; run the same "
                                        "command again"]
    assert list(out.iterdir()) == []


def test_sigterm_to_ablate_stops_its_variant_cleanly_and_a_rerun_continues_it(tiny, tmp_path):
    """SIGTERM to ``ddkit ablate`` alone (docker stop, a batch system) reaches the variant's own process as
    SIGTERM: it stops as a command does (its log says so, no temporary or lock file), and a rerun finishes."""
    out = tmp_path / "ablate"
    argv = ["ablate", "m-datm", "--experts", tiny / "store", "--data-root", tiny / "data", "--out", out,
            "--cache-dir", tiny / "cache", "--rounds", "1", "--epochs", "1", *SMALL,
            "--set", "distill.iterations=400", "--set", "distill.checkpoint_every=20"]
    checkpoint = out / "m-datm" / "run" / CHECKPOINT
    proc = subprocess.Popen([sys.executable, "-m", "challenge_kit", *map(str, argv)], cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    try:
        deadline = time.monotonic() + 300
        while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)  # the parent alone, not its process group
        _, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
        proc.wait()
    assert_stopped(proc.returncode, err.strip().splitlines(), "ablate", "run the same command again to continue: "
                                                                       "finished variants are kept", out)
    log = (out / "m-datm" / "log.txt").read_text().strip().splitlines()
    assert log[-1] == "interrupted by SIGTERM: this variant stopped; run ddkit ablate again to continue it", log
    assert not (out / "m-datm" / "variant.json").exists()
    ddkit_ok(*argv)
    row, = json.loads((out / "ablate.json").read_text())["variants"]
    assert row["status"] == "ok" and row["iterations"] == 400, row


def test_the_handler_is_the_one_before_after_a_command(tmp_path):
    """In-process callers (tests, notebooks) get their own SIGTERM handling back once a command ends."""
    before = signal.getsignal(signal.SIGTERM)
    ddkit_ok("methods", "--json")
    assert signal.getsignal(signal.SIGTERM) is before
