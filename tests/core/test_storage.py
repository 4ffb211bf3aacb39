"""Atomic writes, safe loading of untrusted files, and the kit's own file formats."""

import errno
import hashlib
import json
import os
import pickle
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from challenge_kit.core import folders
from challenge_kit.core.artifact import ARTIFACT_FORMAT, DistilledArtifact
from challenge_kit.core.contract import CIFAR100, TINYIMAGENET
from challenge_kit.core.errors import KitFileError
from challenge_kit.core.folders import LOCK_FILE, output_file, output_folder, run_lock
from challenge_kit.core.reading import load_tensors, load_torch, load_torch_bytes, read_metadata, refusal_reason, sha256
from challenge_kit.core.storage import atomic_write, save_json, save_tensors, save_torch


class Marker:
    """Unpickling this would create a file: the loader must refuse before running it."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_kit_file_error_names_the_file():
    e = KitFileError("a/b.pt", "is broken")
    assert str(e) == "a/b.pt: is broken" and e.path == "a/b.pt" and e.problem == "is broken"


def test_atomic_write_replaces_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "sub" / "x.txt"
    assert atomic_write(target, lambda tmp: tmp.write_text("one")) == target
    atomic_write(target, lambda tmp: tmp.write_text("two"))
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["x.txt"]


def test_atomic_write_keeps_the_old_file_when_the_writer_raises(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text("old")

    def broken(tmp):
        tmp.write_text("half a fi")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "new.txt", lambda tmp: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_save_torch_and_load_torch_round_trip(tmp_path):
    obj = {"images": torch.randn(4, 3, 2, 2), "labels": torch.arange(4), "lr": 0.01, "names": ["a", "b"]}
    loaded = load_torch(save_torch(obj, tmp_path / "x.pt"))
    assert torch.equal(loaded["images"], obj["images"]) and torch.equal(loaded["labels"], obj["labels"])
    assert loaded["lr"] == 0.01 and loaded["names"] == ["a", "b"]
    t = torch.randn(5, 3, 4, 4)
    assert torch.equal(load_torch(save_torch(t, tmp_path / "t.pt")), t)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("how", ["zip", "legacy", "raw_pickle"])
def test_load_torch_refuses_code_and_runs_none_of_it(tmp_path, how):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"images": torch.zeros(2), "x": Marker(marker)}
    if how == "zip":
        torch.save(payload, path)
    elif how == "legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(payload))
    assert not marker.exists()
    with pytest.raises(KitFileError) as info:
        load_torch(path)
    assert not marker.exists()
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message and "\x1b" not in message
    assert "weights_only" not in message and "trust" not in message  # no advice to run the file's code
    with pytest.raises(KitFileError) as again:
        load_torch_bytes(path.read_bytes(), "bundle.zip:cifar100.pt")
    assert not marker.exists() and str(again.value) == message.replace(str(path), "bundle.zip:cifar100.pt")


@pytest.mark.parametrize("payload, named", [(Marker("x"), "the pickle would call io.open"),
                                            (np.zeros(3), "the pickle would call numpy")])
def test_load_torch_refusal_names_what_the_pickle_would_call(tmp_path, payload, named):
    torch.save(payload, tmp_path / "x.pt")
    with pytest.raises(KitFileError, match=f"refused: holds objects that are not plain tensors \\({named}"):
        load_torch(tmp_path / "x.pt")


def test_refusal_reason_keeps_the_unpickler_detail_only():
    error = pickle.UnpicklingError("Weights only load failed. \x1b[1mdo those steps only if you trust the source"
                                   "\x1b[0m.\n\t(1) Re-running `torch.load` with `weights_only` set to `False` will "
                                   "likely succeed.\n\tWeightsUnpickler error: Unsupported operand 149\n\nCheck the "
                                   "documentation of torch.load")
    assert refusal_reason(error) == "Unsupported operand 149"
    assert refusal_reason(pickle.UnpicklingError("weights_only=False would work")) == "unsafe content"


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("keep", [0, 10, 0.5, -10])
def test_load_torch_reports_truncated_files_by_name(tmp_path, legacy, keep):
    full = tmp_path / "full.pt"
    torch.save({"a": torch.randn(50, 50)}, full, _use_new_zipfile_serialization=not legacy)
    data = full.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[:int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(KitFileError, match="truncated or corrupt") as info:
        load_torch(cut)
    assert info.value.path == str(cut) and str(info.value).startswith(f"{cut}: ")


def test_load_torch_missing_and_garbage_files(tmp_path):
    with pytest.raises(KitFileError, match="no such file"):
        load_torch(tmp_path / "absent.pt")
    junk = tmp_path / "junk.pt"
    junk.write_text("this is not a checkpoint\n")
    with pytest.raises(KitFileError, match=r"junk\.pt: "):
        load_torch(junk)


def test_save_tensors_metadata_round_trip(tmp_path):
    meta = {"format": "ddkit-expert", "version": 1, "spec": CIFAR100.to_dict(), "loss": [2.5, 1.25],
            "flag": True, "nothing": None, "text": "a \"quoted\" string"}
    base = torch.randn(4, 6, requires_grad=True)
    tensors = {"snapshots": base.t(), "idx": torch.arange(3)}  # non-contiguous, requires grad
    path = save_tensors(tensors, tmp_path / "e.safetensors", meta)
    loaded, back = load_tensors(path)
    assert back == meta and read_metadata(path) == meta
    assert torch.equal(loaded["snapshots"], base.detach().t()) and torch.equal(loaded["idx"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["e.safetensors"]


def test_load_tensors_reports_bad_files_by_name(tmp_path):
    path = save_tensors({"a": torch.randn(100)}, tmp_path / "a.safetensors", {"k": 1})
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(KitFileError, match=r"a\.safetensors: not a readable safetensors file"):
        load_tensors(path)
    with pytest.raises(KitFileError, match=r"missing\.safetensors: cannot be read \(No such file or directory\)"):
        read_metadata(tmp_path / "missing.safetensors")


def test_save_json_and_sha256(tmp_path):
    path = save_json({"b": 1, "a": [1, 2]}, tmp_path / "x.json")
    assert json.loads(path.read_text()) == {"b": 1, "a": [1, 2]}
    assert path.read_text().index('"a"') < path.read_text().index('"b"')
    assert sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_distilled_artifact_hard_labels_round_trip(tmp_path):
    spec = CIFAR100.subset(3, ipc=2)
    images = torch.randn(6, 3, 32, 32)
    art = DistilledArtifact(images, torch.arange(3).repeat_interleave(2), spec, lr=0.0123,
                            extra={"iteration": 40, "accuracy": 0.25})
    assert not art.soft
    path = art.save(tmp_path / "best.safetensors")
    meta = read_metadata(path)
    assert meta["format"] == ARTIFACT_FORMAT and meta["labels"] == "hard" and meta["spec"] == spec.to_dict()
    back = DistilledArtifact.load(path)
    assert torch.equal(back.images, images) and back.images.dtype == torch.float32
    assert torch.equal(back.labels, art.labels) and back.labels.dtype == torch.int64
    assert back.spec == spec and not back.soft
    assert back.lr == pytest.approx(0.0123)
    assert back.extra == {"iteration": 40, "accuracy": 0.25}


def test_distilled_artifact_soft_labels_without_lr(tmp_path):
    spec = TINYIMAGENET.subset(2, ("n1", "n2"), ipc=1)
    labels = torch.softmax(torch.randn(2, 2), dim=1)
    art = DistilledArtifact(torch.randn(2, 3, 64, 64, dtype=torch.float64), labels, spec)
    assert art.soft
    path = art.save(tmp_path / "soft.safetensors")
    assert read_metadata(path)["labels"] == "soft"
    back = DistilledArtifact.load(path)
    assert back.soft and torch.equal(back.labels, labels) and back.lr is None
    assert back.images.dtype == torch.float32 and torch.allclose(back.images, art.images.float())
    assert back.spec == spec and back.spec.class_names == ("n1", "n2")


def test_distilled_artifact_refuses_other_files(tmp_path):
    other = save_tensors({"images": torch.zeros(1)}, tmp_path / "o.safetensors", {"format": "ddkit-expert"})
    with pytest.raises(KitFileError, match=r"o\.safetensors: not a ddkit distilled artifact"):
        DistilledArtifact.load(other)
    partial = save_tensors({"images": torch.zeros(1)}, tmp_path / "p.safetensors", {"format": ARTIFACT_FORMAT})
    with pytest.raises(KitFileError, match="no 'labels' tensor"):
        DistilledArtifact.load(partial)


def test_distilled_artifact_with_a_bad_spec_is_a_kit_file_error(tmp_path):
    bad = {**CIFAR100.to_dict(), "num_classes": 3}  # claims to be the challenge spec, is not
    path = save_tensors({"images": torch.zeros(3, 3, 32, 32), "labels": torch.arange(3)}, tmp_path / "b.safetensors",
                        {"format": ARTIFACT_FORMAT, "spec": bad})
    with pytest.raises(KitFileError, match=r"b\.safetensors: artifact metadata has no valid spec"):
        DistilledArtifact.load(path)


def test_save_torch_gives_the_same_bytes_for_the_same_content(tmp_path):
    """The archive's inner name must not come from the random temporary file (manifests record sha256)."""
    x = torch.arange(12.0).view(3, 4)
    save_torch(x, tmp_path / "a.pt")
    save_torch(x, tmp_path / "sub" / "b.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "sub" / "b.pt").read_bytes()


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_atomic_writes_get_the_mode_a_plain_open_would(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "a.txt", lambda tmp: tmp.write_text("x"))
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_safetensors_bytes_do_not_depend_on_metadata_order(tmp_path):
    meta = {k: {"value": i, "text": "é\"\n"} for i, k in enumerate("jihgfedcba")}
    tensors = {"x": torch.arange(6.0), "y": torch.zeros(2, dtype=torch.uint8)}
    paths = [save_tensors(tensors, tmp_path / f"{i}.safetensors", meta) for i in range(5)]
    # safetensors itself writes the metadata in hash-map order, new for every call
    assert len({p.read_bytes() for p in paths}) == 1
    blob = paths[0].read_bytes()
    header = json.loads(blob[8:8 + int.from_bytes(blob[:8], "little")])
    assert list(header["__metadata__"]) == sorted(meta)
    loaded, read = load_tensors(paths[0])
    assert read == meta and all(torch.equal(loaded[k], v) for k, v in tensors.items())


def test_output_folder_is_created_and_refused_when_a_file_is_in_the_way(tmp_path):
    assert output_folder(tmp_path / "a" / "b").is_dir() and not any((tmp_path / "a" / "b").iterdir())
    (tmp_path / "f").write_text("x")
    with pytest.raises(KitFileError, match=r"f: is a file, not a folder$"):
        output_folder(tmp_path / "f")
    with pytest.raises(KitFileError, match=rf"f/out: cannot be created: {tmp_path / 'f'} is a file$"):
        output_folder(tmp_path / "f" / "out")
    with pytest.raises(KitFileError, match=r"a: is a folder; give a file name$"):
        output_file(tmp_path / "a")
    assert output_file(tmp_path / "new" / "x.pt") == tmp_path / "new" / "x.pt" and (tmp_path / "new").is_dir()


def test_run_lock_refuses_a_live_holder_and_is_gone_after_the_run(tmp_path):
    with run_lock(tmp_path / "out") as folder:
        record = json.loads((folder / LOCK_FILE).read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        assert record["command"] and record["started"]
        # flock locks of two open files conflict even within one process: this stands for a second run
        with pytest.raises(KitFileError, match=rf"out: in use by another ddkit run \(pid {os.getpid()} on "):
            with run_lock(tmp_path / "out"):
                pass
    assert not (tmp_path / "out" / LOCK_FILE).exists()


def test_a_lock_left_by_a_dead_run_is_taken_over_saying_so(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": int(dead.stdout), "host": "box", "started": "noon",
                                                  "command": "ddkit distill"}))
    with run_lock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert caplog.messages == [f"{tmp_path / LOCK_FILE}: taking over the lock of a run that is no longer running "
                               f"(pid {int(dead.stdout)} on box since noon: ddkit distill)"]


@pytest.mark.parametrize("where", ["filesystem", "system"])
def test_without_file_locks_a_run_goes_unlocked_saying_so(tmp_path, monkeypatch, caplog, where):
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    if where == "filesystem":  # some FUSE and network mounts
        monkeypatch.setattr(folders.fcntl, "flock", no_locks)
    else:  # Windows has no fcntl
        monkeypatch.setattr(folders, "fcntl", None)
    with run_lock(tmp_path) as folder:
        assert folder == tmp_path
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", f"{tmp_path}: no file locks here (filesystem or system); make sure no other run writes here")]
