"""Writers touch only what is theirs: no link or special file followed or replaced, no earlier work replaced
unasked, no work inside a folder another live run holds, files that belong together written together or not at
all, and a full disk said in one line naming the file, nothing half-written.

How each case is made: links, pipes, sockets and hard links are real ones; a device is a real character device
(made with mknod where the tests may, else skipped); another live run is a separate process holding its lock; a
full disk is the writer's stream sent to /dev/full (a real ENOSPC from the kernel, through torch.save's own
error path), or safetensors' error as it words one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fakes import distilled_images, write_cifar, write_run
from helpers import ddkit
from safetensors import SafetensorError

import challenge_kit.baseline  # noqa: F401  (imported now: it binds data.load_split, which no_work replaces)
from challenge_kit import bundle as bundle_module
from challenge_kit import export as export_module
from challenge_kit.core import storage
from challenge_kit.core.contract import CIFAR100
from challenge_kit.core.errors import KitFileError
from challenge_kit.core.folders import LOCK_FILE, run_lock
from challenge_kit.core.storage import atomic_write, save_json, save_tensors, save_torch, write_together
from challenge_kit.runs import RunDir

REPO = Path(__file__).resolve().parents[2]
SUBSET = CIFAR100.subset(5)
FULL = "cannot be written: No space left on device"


def refused(args: list, expected: str) -> None:
    """The command fails with exactly one ``error:`` line that starts with ``expected``."""
    result = ddkit(*args)
    code, err = result.exit_code, result.stderr
    lines = err.strip().splitlines()
    assert code == 1 and "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith(f"error: {expected}"), (lines[0], expected)


def contents(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (links and special files by what they are), hidden temporary files included."""
    found = {}
    for path in sorted(folder.rglob("*")):
        mode = path.lstat().st_mode
        found[str(path.relative_to(folder))] = path.read_bytes() if stat.S_ISREG(mode) else stat.S_IFMT(mode)
    return found


@pytest.fixture
def victim(tmp_path):
    """A file outside every output folder that nothing may touch: its bytes and mode are checked after the test."""
    path = tmp_path / "elsewhere" / "victim.txt"
    path.parent.mkdir()
    path.write_text("precious\n")
    path.chmod(0o600)
    yield path
    assert path.read_text() == "precious\n" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["victim.txt"]


@pytest.fixture
def full_disk(monkeypatch):
    """Writes of the kit's own writers go to /dev/full (for temporary files whose name holds ``only``, when
    given); returns a function that turns it on."""
    real = storage.temp_stream

    def turn_on(only: str = "") -> None:
        @contextlib.contextmanager
        def stream(tmp):
            if only not in Path(tmp).name:
                with real(tmp) as f:
                    yield f
                return
            with open("/dev/full", "wb") as f:
                yield f

        monkeypatch.setattr(storage, "temp_stream", stream)
        monkeypatch.setattr(bundle_module, "temp_stream", stream)

    return turn_on


def special(path: Path, what: str, victim: Path) -> None:
    """Put a link or special file at ``path``."""
    if what == "symlink":
        path.symlink_to(victim)
    elif what == "dangling symlink":
        path.symlink_to(victim.parent / "not-there")
    elif what == "hard link":
        os.link(victim, path)
    elif what == "named pipe":
        os.mkfifo(path)
    elif what == "socket":
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(path))
    elif what == "folder":
        path.mkdir()
    elif what == "device":
        try:
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # what /dev/null is
        except PermissionError:
            pytest.skip("platform: no right to make a device node here")


HOLDER = textwrap.dedent("""
    import sys
    from challenge_kit.core.folders import run_lock
    with run_lock(sys.argv[1]):
        print("held", flush=True)
        sys.stdin.read()
""")


@pytest.fixture
def held(tmp_path):
    """A folder held by a live run of another process, and that process's pid."""
    folder = tmp_path / "held"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield folder, proc.pid
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)


# ------------------------------------------------------------------------------------------ 1: the lock file

@pytest.mark.parametrize("what", ["symlink", "dangling symlink", "hard link", "named pipe", "socket", "device"])
def test_a_lock_file_that_is_not_a_plain_file_is_refused_never_written(tmp_path, victim, no_work, what):
    out = tmp_path / "out"
    out.mkdir()
    special(out / LOCK_FILE, what, victim)
    before = contents(out)
    problem = "file with other hard links, not a lock file" if what == "hard link" else \
        f"{'symbolic link' if 'symlink' in what else what}, not a plain file"
    refused(["export", write_run(tmp_path / "run", SUBSET), "--out", out], f"{out / LOCK_FILE}: is a {problem}")
    assert contents(out) == before  # nothing written, the link left for its owner to see
    with pytest.raises(KitFileError, match="refused, nothing written"), run_lock(out):
        pass


# ------------------------------------------------------------------------------------------ 2: targets

@pytest.mark.parametrize("what", ["symlink", "dangling symlink", "named pipe", "socket", "folder", "device"])
def test_a_target_that_is_not_a_plain_file_is_refused_nothing_written(tmp_path, victim, what):
    out = tmp_path / "out"
    out.mkdir()
    target = out / "x.pt"
    special(target, what, victim)
    before = contents(out)
    kind = "symbolic link" if "symlink" in what else what
    for write in (lambda: save_torch({"a": 1}, target), lambda: save_json({"a": 1}, target),
                  lambda: atomic_write(target, lambda tmp: tmp.write_text("x"))):
        with pytest.raises(KitFileError) as info:
            write()
        assert str(info.value) == f"{target}: is a {kind}, not a plain file: refused, nothing written; remove it " \
                                  "or choose another name"
        assert contents(out) == before  # no temporary file either


@pytest.mark.parametrize("what", ["symlink", "named pipe", "device"])
def test_reference_refuses_such_an_out_before_reading_the_data(tmp_path, victim, no_work, what):
    target = tmp_path / "cifar100_test.pt"
    special(target, what, victim)
    kind = "symbolic link" if what == "symlink" else what
    refused(["reference", "cifar100", "--data-root", tmp_path, "--out-file", target],
            f"{target}: is a {kind}, not a plain")
    assert stat.S_IFMT(target.lstat().st_mode) != stat.S_IFREG


# ------------------------------------------------------------------------------------------ 3: earlier work

def test_export_refuses_to_replace_an_earlier_export_unless_told(tmp_path):
    run, out = write_run(tmp_path / "run", SUBSET), tmp_path / "out"
    assert ddkit("export", run, "--out", out).exit_code == 0
    before = contents(out)
    refused(["export", run, "--out", out], f"{out / 'cifar100.pt'}: already exists (an earlier export, or another "
                                           "file); pass --overwrite to replace it, or choose another --out")
    assert contents(out) == before
    assert ddkit("export", run, "--out", out, "--overwrite").exit_code == 0
    assert contents(out) == before  # the same set: the same bytes


def test_baseline_keeps_files_it_did_not_write_and_takes_the_lock(tmp_path, no_work, held):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text('{"someone": "else"}')
    (out / "preview.png").write_bytes(b"not ours")
    before = contents(out)
    refused(["baseline", "cifar100", "--data-root", tmp_path, "--out", out], f"{out / 'preview.png'}: already exists")
    assert contents(out) == before
    folder, pid = held
    refused(["baseline", "cifar100", "--data-root", tmp_path, "--out", folder],
            f"{folder}: in use by another ddkit run (pid {pid} on ")


def test_reference_and_bundle_refuse_an_existing_output_unless_told(tmp_path, no_work):
    target = tmp_path / "cifar100_test.pt"
    target.write_bytes(b"an earlier reference")
    refused(["reference", "cifar100", "--data-root", tmp_path, "--out-file", target],
            f"{target}: already exists; pass --overwrite to replace it")
    upload = tmp_path / "submission.zip"
    upload.write_bytes(b"an earlier upload")
    refused(["bundle", tmp_path / "a", tmp_path / "b", "--out-file", upload],
            f"{upload}: already exists; pass --overwrite to replace it")
    assert target.read_bytes() == b"an earlier reference" and upload.read_bytes() == b"an earlier upload"


def test_make_submission_and_distill_refuse_an_earlier_run_without_resume(tmp_path, no_work):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    quick = ["--profile", "quick", "--device", "cpu", "--data-root", tmp_path]
    refused(["make-submission", "cifar100", "--out", out, *quick], f"{out / 'manifest.json'}: already exists (an "
                                                                   "earlier run's, or another file); pass --resume")
    run = tmp_path / "run"
    run.mkdir()
    (run / "history.jsonl").write_text("")
    refused(["distill", "cifar100", "--experts", tmp_path, "--out", run, *quick],
            f"{run / 'history.jsonl'}: a run already exists here; pass --resume to continue it")


# ------------------------------------------------------------------------------------------ 4: inside a held folder

def test_no_run_works_inside_a_folder_another_live_run_holds(tmp_path, no_work, held):
    folder, pid = held
    quick = ["--profile", "quick", "--device", "cpu", "--data-root", tmp_path]
    for argv, inner in ((["experts", "cifar100", *quick], folder / "work" / "experts"),
                        (["distill", "cifar100", "--experts", tmp_path, *quick], folder / "work" / "distill"),
                        (["export", write_run(tmp_path / "run", SUBSET)], folder / "sub"),
                        (["reference", "cifar100", "--data-root", tmp_path], folder / "sub" / "ref.pt")):
        refused([*argv, "--out-file" if inner.suffix else "--out", inner],
                f"{inner.parent if inner.suffix else inner}: inside {folder.resolve()}, which is in use by another "
                f"ddkit run (pid {pid} on ")
    assert [p.name for p in folder.iterdir()] == [LOCK_FILE]  # refused before any folder was made


def test_a_run_may_work_inside_a_folder_it_holds_itself(tmp_path):
    with run_lock(tmp_path / "out") as out, run_lock(out / "work" / "experts") as inner:
        save_json({"a": 1}, inner / "x.json")
    assert not (out / LOCK_FILE).exists() and not (inner / LOCK_FILE).exists()


# ------------------------------------------------------------------------------------------ 5: together

def test_an_export_whose_preview_fails_leaves_the_earlier_export_whole(tmp_path, monkeypatch):
    run, out = write_run(tmp_path / "run", SUBSET), tmp_path / "out"
    assert ddkit("export", run, "--out", out).exit_code == 0
    before = contents(out)
    write_run(run, SUBSET, images=distilled_images(SUBSET, seed=1))  # another set: new bytes, had they gone out

    def broken(images, spec, path, **kwargs):
        Path(path).write_bytes(b"half a p")
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(export_module, "write_preview", broken)
    refused(["export", run, "--out", out, "--overwrite"],
            f"{out / 'preview.png'}: cannot be written (Input/output error); cifar100.pt, manifest.json unchanged")
    assert contents(out) == before  # the new .pt was not put beside the old manifest


def test_a_bundle_whose_manifest_fails_leaves_no_zip_without_it(tmp_path, small_exports, full_disk):
    upload = tmp_path / "up" / "submission.zip"
    assert ddkit("bundle", *small_exports, "--out-file", upload).exit_code == 0
    before = contents(upload.parent)
    full_disk(only=".manifest.json.")
    for args in ([upload.with_name("fresh.zip")], [upload, "--overwrite"]):
        refused(["bundle", *small_exports, "--out-file", *args],
                f"{bundle_module.manifest_path(args[0])}: {FULL}; {Path(args[0]).name} unchanged")
        assert contents(upload.parent) == before


# ------------------------------------------------------------------------------------------ 7: full disk

def test_torch_save_on_a_full_disk_names_the_file_and_leaves_the_old_one(tmp_path, full_disk):
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"the last good checkpoint")
    full_disk()
    with pytest.raises(KitFileError) as info:  # torch's "unexpected pos" RuntimeError, its cause recovered
        save_torch({"state": list(range(1000))}, target)
    assert str(info.value) == f"{target}: {FULL}"
    assert contents(tmp_path) == {"checkpoint.pt": b"the last good checkpoint"}


def test_safetensors_on_a_full_disk_names_the_file(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(storage, "save_file", full)
    with pytest.raises(KitFileError, match=f"^{tmp_path / 'expert_0000.safetensors'}: {FULL}$"):
        save_tensors({}, tmp_path / "expert_0000.safetensors")
    assert contents(tmp_path) == {}


def test_a_member_that_writes_atomically_itself_is_named_by_its_target(tmp_path, full_disk):
    full_disk()
    with pytest.raises(KitFileError) as info:  # as the preview is: plots writes its own temporary file
        write_together([(tmp_path / "a.pt", lambda tmp: save_torch([1], tmp)), (tmp_path / "m.json", print)])
    assert str(info.value) == f"{tmp_path / 'a.pt'}: {FULL}; m.json unchanged"
    assert contents(tmp_path) == {}


def test_a_lock_that_cannot_be_written_names_the_lock_file(tmp_path, monkeypatch):
    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(KitFileError) as info, run_lock(tmp_path / "out"):
        pass
    assert str(info.value) == f"{tmp_path / 'out' / LOCK_FILE}: {FULL}"
    assert contents(tmp_path) == {"out": stat.S_IFDIR}


def test_every_command_on_a_full_disk_says_it_in_one_line_naming_the_file(tmp_path, small_exports, full_disk):
    write_cifar(tmp_path / "data", n_train=2, n_test=2, per_class=True, smooth=True)
    run = write_run(tmp_path / "run", SUBSET)
    full_disk()
    out = tmp_path / "out"
    refused(["export", run, "--out", out], f"{out / 'cifar100.pt'}: {FULL}; preview.png, manifest.json unchanged")
    refused(["reference", "cifar100", "--data-root", tmp_path / "data", "--out-file", out / "ref.pt"],
            f"{out / 'ref.pt'}: {FULL}")
    refused(["bundle", *small_exports, "--out-file", out / "s.zip"],
            f"{out / 's.zip'}: {FULL}; s.manifest.json unchanged")
    assert contents(out) == {}
    refused(["baseline", "cifar100", "--data-root", tmp_path / "data", "--out", out / "base"],
            f"{out / 'base' / 'cifar100.pt'}: {FULL}")
    assert contents(out) == {"base": stat.S_IFDIR}


# ------------------------------------------------------------------------------------------ links in the folders

@pytest.mark.parametrize("sub", ["work", "work/distill", "report"])
def test_make_submission_refuses_a_link_in_place_of_its_own_subfolders(tmp_path, victim, no_work, sub):
    out = tmp_path / "out"
    (out / sub).parent.mkdir(parents=True)
    (out / sub).symlink_to(victim.parent, target_is_directory=True)
    refused(["make-submission", "cifar100", "--data-root", tmp_path, "--out", out, "--profile", "quick"],
            f"{out / sub}: is a symbolic link, not a folder: the kit makes this folder itself")


def test_report_refuses_a_link_in_place_of_its_folder(tmp_path, victim):
    run = write_run(tmp_path / "run", SUBSET)
    (run / "report").symlink_to(victim.parent, target_is_directory=True)
    refused(["report", run], f"{run / 'report'}: is a symbolic link, not a folder")


def test_a_temporary_file_swapped_for_a_link_is_never_written_through(tmp_path, victim):
    target = tmp_path / "out" / "x.json"

    def swap(tmp):
        tmp.unlink()
        tmp.symlink_to(victim)  # what another user racing the run could do

    with pytest.raises(KitFileError, match="its temporary file was replaced by a link"):
        atomic_write(target, swap)

    def swap_then_write(tmp):
        swap(tmp)
        storage.write_bytes(tmp, b"the run's data")  # the kit's own writers write through their descriptor

    with pytest.raises(KitFileError, match="its temporary file was replaced by a link"):
        atomic_write(target, swap_then_write)
    assert contents(target.parent) == {}


def test_the_live_history_is_never_appended_through_a_link(tmp_path, victim):
    run = RunDir(tmp_path / "run", None, SUBSET)
    run.path.mkdir()
    (run.path / "history.jsonl").symlink_to(victim)
    with pytest.raises(KitFileError, match="history.jsonl: is a symbolic link, not a plain file"):
        run.record({"iteration": 1})
    (run.path / "history.jsonl").unlink()
    run.record({"iteration": 1})
    assert json.loads((run.path / "history.jsonl").read_text()) == {"iteration": 1}


def test_a_signal_during_a_groups_renames_lands_after_the_last(tmp_path, monkeypatch):
    """SIGTERM sent while the first of two files is renamed into place: both are replaced, then the stop."""
    import signal

    from challenge_kit.core.interrupts import sigterm_as_interrupt

    rename, sent = os.replace, []

    def replace(src, dst):
        if not sent:
            sent.append(os.kill(os.getpid(), signal.SIGTERM))
        return rename(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    (tmp_path / "a.bin").write_bytes(b"old a")
    (tmp_path / "b.json").write_bytes(b"old b")
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
        write_together([(tmp_path / "a.bin", lambda tmp: tmp.write_bytes(b"new a")),
                        (tmp_path / "b.json", lambda tmp: tmp.write_bytes(b"new b"))])
    assert (tmp_path / "a.bin").read_bytes() == b"new a" and (tmp_path / "b.json").read_bytes() == b"new b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.json"]
