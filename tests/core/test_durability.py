"""Durable writes: every file the kit publishes has its bytes fsynced before the rename that names it and its
folder fsynced after that rename, in that order, so a power cut leaves the old file or the new one whole; a
crash between the calls leaves the same; a live history is synced before each checkpoint and read back, after a
power cut, as what it held before its torn tail.

How: ``os.fsync``, ``os.replace`` and ``os.rename`` are wrapped with recorders that name each descriptor by its
``/proc/self/fd`` link, around the real commands on small fake data; a crash is a child process that dies
(``os._exit``) at the chosen call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from fakes import write_cifar, write_run, write_tiny
from helpers import ddkit_ok

from challenge_kit import parts
from challenge_kit.context import RunContext
from challenge_kit.core.contract import CIFAR100
from challenge_kit.core.models import ModelConfig
from challenge_kit.core.reading import load_torch
from challenge_kit.core.storage import save_torch
from challenge_kit.data.subset import MANIFEST as SUBSET_MANIFEST
from challenge_kit.distill import distill
from challenge_kit.experts import training
from challenge_kit.experts.store import expert_path
from challenge_kit.export import export_files
from challenge_kit.recipes import DistillConfig, EvalConfig, ExpertConfig, Recipe
from challenge_kit.report import build_report
from challenge_kit.runs import BEST, CHECKPOINT, HISTORY, SUMMARY, read_history

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(),
                                reason="platform: names descriptors through /proc (Linux)")

REPO = Path(__file__).resolve().parents[2]
SUBSET = CIFAR100.subset(5)
SMALL = replace(CIFAR100.subset(3, ipc=2), image_size=16)  # a distillation of seconds


@pytest.fixture
def calls(monkeypatch) -> list[tuple[str, ...]]:
    """The process's fsyncs and renames as they happen: ``("fsync", path)``, ``("rename", source, target)``."""
    seen: list[tuple[str, ...]] = []
    fsync, rename, replace_ = os.fsync, os.rename, os.replace

    def record_fsync(fd):
        seen.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return fsync(fd)

    def recorder(real):
        def call(source, target, **kwargs):
            seen.append(("rename", os.path.realpath(source), os.path.realpath(target)))
            return real(source, target, **kwargs)
        return call

    monkeypatch.setattr(os, "fsync", record_fsync)
    monkeypatch.setattr(os, "rename", recorder(rename))
    monkeypatch.setattr(os, "replace", recorder(replace_))
    return seen


def about(seen: list[tuple[str, ...]], target: str) -> list[tuple[str, ...]]:
    """The calls on ``target``, its temporary files and its folder: what a failure shows."""
    folder, name = str(Path(target).parent), Path(target).name
    return [e for e in seen if any(p == folder or Path(p).name.startswith((name, f".{name}.")) for p in e[1:])]


def published(seen: list[tuple[str, ...]], *targets: Path) -> tuple[int, int]:
    """Assert that ``targets``, files replaced together (or one alone), were published durably: each one's
    temporary file, beside it, fsynced before the group's first rename; then the renames; then each one's folder
    fsynced after the last. Returns the positions of the first and the last rename."""
    where = {}
    for target in map(os.path.realpath, targets):
        renames = [i for i, e in enumerate(seen) if e[0] == "rename" and e[2] == target]
        assert renames, f"{target} was never renamed into place: {about(seen, target)}"
        where[target] = renames[-1]
    first, last = min(where.values()), max(where.values())
    for target, i in where.items():
        temp = seen[i][1]
        assert Path(temp).parent == Path(target).parent and Path(temp).name.startswith(f".{Path(target).name}.")
        synced = [j for j, e in enumerate(seen) if e == ("fsync", temp)]
        assert synced and synced[-1] < first, \
            f"{target}: its bytes were not fsynced before the rename: {about(seen, target)}"
        assert ("fsync", str(Path(target).parent)) in seen[last + 1:], \
            f"{target}: its folder was not fsynced after the rename: {about(seen, target)}"
    return first, last


def test_an_export_its_preview_and_manifest_are_synced_then_renamed_then_their_folder(tmp_path, calls):
    run = write_run(tmp_path / "run", SUBSET)
    ddkit_ok("export", run, "--out", tmp_path / "out")
    published(calls, *export_files(SUBSET, tmp_path / "out"))


def test_the_upload_zip_and_its_manifest(tmp_path, small_exports, calls):
    ddkit_ok("bundle", *small_exports, "--out-file", tmp_path / "up" / "submission.zip")
    published(calls, tmp_path / "up" / "submission.zip", tmp_path / "up" / "submission.manifest.json")


def test_a_reference_file(tmp_path, calls):
    write_cifar(tmp_path / "data", n_train=2, n_test=2, per_class=True, smooth=True)
    ddkit_ok("reference", "cifar100", "--data-root", tmp_path / "data", "--out-file", tmp_path / "ref" / "ref.pt")
    published(calls, tmp_path / "ref" / "ref.pt")
    assert ("fsync", str(tmp_path)) in calls  # the new folder itself, in its parent


def test_an_expert_file_at_every_epoch(tmp_path, calls):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 16, 16, generator=g), torch.arange(8) % 3
    training.train_experts(x, y, x, y, SMALL, ExpertConfig(num_experts=1, epochs=2, batch_size=4), tmp_path,
                           model=ModelConfig.for_spec(SMALL, width=8))
    target = os.path.realpath(expert_path(tmp_path, 0))
    assert sum(e[0] == "rename" and e[2] == target for e in calls) == 3  # the init, then each epoch
    published(calls, expert_path(tmp_path, 0))


def test_a_distillation_run_its_checkpoint_history_set_summary_and_report(tmp_path, calls):
    """The history reaches the disk before each checkpoint that counts its lines; the chosen set, the summary
    and the report's figures as every other file."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, 3, 16, 16, generator=g), torch.arange(12) % 3
    store = tmp_path / "store"
    training.train_experts(x, y, x, y, SMALL, ExpertConfig(num_experts=1, epochs=2, batch_size=6), store)
    recipe = Recipe(dataset="cifar100", profile="test", experts=ExpertConfig(num_experts=1, epochs=2),
                    distill=DistillConfig(iterations=2, syn_steps=2, expert_epochs=1, min_start_epoch=0,
                                          current_max_start_epoch=1, max_start_epoch=1, batch_syn=6,
                                          checkpoint_every=1, init=parts.choose("init", "real"),
                                          threshold=100.0),
                    eval=EvalConfig(every=0, split="test"))
    run = tmp_path / "run"
    calls.clear()
    distill(recipe, SMALL, store, run, real_images=x, real_labels=y, select_images=None, select_labels=None,
            ctx=RunContext(progress=False))
    checkpoint, history = os.path.realpath(run / CHECKPOINT), os.path.realpath(run / HISTORY)
    for path in (CHECKPOINT, BEST, SUMMARY):
        published(calls, run / path)
    renames = [i for i, e in enumerate(calls) if e[0] == "rename" and e[2] == checkpoint]
    assert len(renames) == 4  # the initialization, iterations 1 and 2, the decision
    for i in renames[1:]:  # each after a history line: the log synced, then the checkpoint's bytes
        log = max(j for j, e in enumerate(calls[:i]) if e == ("fsync", history))
        data = max(j for j, e in enumerate(calls[:i]) if e == ("fsync", calls[i][1]))
        assert log < data < i
    calls.clear()
    build_report(run)
    published(calls, run / "report" / "loss.png")
    published(calls, run / "report" / "summary.txt")


def test_a_subset_is_synced_before_its_manifest_names_it(tmp_path, calls):
    write_tiny(tmp_path / "src", per_class=2)
    ddkit_ok("subset", "tinyimagenet", "--data-root", tmp_path / "src", "--out", tmp_path / "sub", "--classes", "2",
             "--train-per-class", "1")
    manifest = published(calls, tmp_path / "sub" / SUBSET_MANIFEST)[0]
    partial = [e for e in calls if e[0] == "rename" and Path(e[1]).name == "train"]
    (moved,) = partial  # the train folder, moved out of the unfinished one: the folder synced before the manifest
    move = calls.index(moved)
    assert ("fsync", str(tmp_path / "sub")) in calls[move + 1:manifest]
    images = [e for e in calls[:move] if e[0] == "rename" and e[2].endswith(".JPEG")]
    assert images and all(("fsync", e[1]) in calls[:calls.index(e)] for e in images)


# ------------------------------------------------------------------------------------------ crashes

DIE = textwrap.dedent("""
    import os, stat, sys
    from challenge_kit.core.storage import save_torch
    target, when = sys.argv[1], sys.argv[2]
    replace, fsync = os.replace, os.fsync

    def dying_replace(source, to):
        if when == "before rename" and str(to) == target:
            os._exit(9)
        return replace(source, to)

    def dying_fsync(fd):
        if when == "before folder sync" and stat.S_ISDIR(os.fstat(fd).st_mode):
            os._exit(9)
        return fsync(fd)

    os.replace, os.fsync = dying_replace, dying_fsync
    save_torch({"state": "new", "values": list(range(1000))}, target)
""")


@pytest.mark.parametrize("when", ["before rename", "before folder sync"])
def test_a_crash_between_the_calls_leaves_the_old_file_or_the_new_one_whole(tmp_path, when):
    target = tmp_path / "run" / CHECKPOINT
    save_torch({"state": "old"}, target)
    proc = subprocess.run([sys.executable, "-c", DIE, str(target), when], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    temps = [p for p in target.parent.iterdir() if p != target]
    if when == "before rename":  # the new bytes wait, whole, under a hidden temporary name no reader lists
        assert load_torch(target) == {"state": "old"}
        (temp,) = temps
        assert temp.name.startswith(f".{CHECKPOINT}.") and temp.name.endswith(".tmp")
        assert load_torch(temp)["state"] == "new"
    else:
        assert load_torch(target) == {"state": "new", "values": list(range(1000))} and temps == []


def test_a_history_torn_by_a_power_cut_reads_as_the_lines_before_it(tmp_path):
    """Unsynced appends may come back cut, as NUL bytes or as other garbage: each such line is skipped."""
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"iteration": i, "loss": 0.5, "lr": 0.01, "image_change": 0.1} for i in (1, 2)]
    lines = "".join(json.dumps(r) + "\n" for r in rows).encode()
    (run / HISTORY).write_bytes(lines + b'{"iteration": 3, "lo\n' + b"\0" * 64 + b"\n\xff\xfe\x00garbage\n7\n")
    assert read_history(run) == rows
