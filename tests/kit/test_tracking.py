"""``--track``: a tiny distillation watched by TensorBoard and wandb (offline), each read back with its own tools and
checked against ``history.jsonl``; a missing package is one line naming the extra."""

import importlib.util
import json
import struct
from pathlib import Path

import pytest
from helpers import SPEC, _real
from typer.testing import CliRunner

from challenge_kit.cli import app
from challenge_kit.context import RunContext
from challenge_kit.distill import distill
from challenge_kit.experts.training import train_experts
from challenge_kit.parts import Choice
from challenge_kit.recipes import DistillConfig, EvalConfig, ExpertConfig, Recipe
from challenge_kit.runs import read_history
from challenge_kit.tracking import TENSORBOARD_DIR, Track, Tracker, history_scalars

INSTALLED = [s for s in ("tensorboard", "wandb") if importlib.util.find_spec(s) is not None]
BLOCK = 32768  # the .wandb file is a LevelDB-style log: 32 KiB blocks of (crc32, length, type) chunks


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One 4-iteration run with selection at 0, 2 and 4, watched by every installed sink."""
    root = tmp_path_factory.mktemp("tracked")
    x, y = _real(12, 0)
    train_experts(x, y, *_real(4, 1), SPEC, ExpertConfig(num_experts=1, epochs=2, batch_size=16), root / "experts")
    recipe = Recipe(dataset="cifar100", profile="test", experts=ExpertConfig(num_experts=1, epochs=2),
                    distill=DistillConfig(iterations=4, syn_steps=2, expert_epochs=1, min_start_epoch=0,
                                          current_max_start_epoch=0, max_start_epoch=1, interval=2, batch_syn=6,
                                          lr_img=100.0, lr_lr=1e-5, checkpoint_every=2, init=Choice("real"),
                                          threshold=10.0),
                    eval=EvalConfig(every=2, epochs=1, rounds=1, final_rounds=0, split="holdout"))
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("WANDB_MODE", raising=False)  # the default: offline
        state = distill(recipe, SPEC, root / "experts", root / "run", real_images=x, real_labels=y,
                        select_images=_real(4, 2)[0], select_labels=_real(4, 2)[1],
                        ctx=RunContext(progress=False, track=tuple(Track(s, str(root / s)) for s in INSTALLED)))
    return root, read_history(root / "run"), state.candidates


def test_tensorboard_events_read_back_hold_every_history_field_at_its_iteration(run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, history, candidates = run
    events = EventAccumulator(str(root / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    expected = {tag for row in history for tag in history_scalars(row)}
    assert {"distill/loss", "distill/lr", "distill/grad_norm", "distill/terms/0", "distill/skipped"} <= expected
    assert set(events.Tags()["scalars"]) == expected | {"selection/mean", "selection/se"}
    for tag in expected:
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        want = [(row["iteration"], history_scalars(row)[tag]) for row in history]
        assert [s for s, _ in got] == [s for s, _ in want] == [1, 2, 3, 4]
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)  # float32 in the event file
    assert [e.step for e in events.Scalars("selection/mean")] == [c["iteration"] for c in candidates] == [0, 2, 4]
    assert [e.value for e in events.Scalars("selection/mean")] == pytest.approx([c["mean"] for c in candidates])
    assert [e.step for e in events.Images("images")] == [0, 2, 4]


def _wandb_records(path: Path):
    """The protobuf records of a .wandb file: its 7-byte header (":W&B", magic, version), then the log's chunks
    (type 1 a whole record, 2/3/4 its first, middle and last parts)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, parts = 7, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a chunk header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        parts, pos = parts + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            yield record
            parts = b""


def test_a_wandb_offline_run_holds_every_history_field_selection_and_images_at_their_steps(run):
    pytest.importorskip("wandb")
    root, history, candidates = run
    (folder,) = (root / "wandb" / "wandb").glob("offline-run-*")  # offline by default: nothing was sent
    rows = {}
    for record in _wandb_records(next(folder.glob("*.wandb"))):
        if record.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            rows.setdefault(record.history.step.num, {}).update(items)
    assert sorted(rows) == [0, 1, 2, 3, 4]
    for row in history:
        logged = rows[row["iteration"]]
        for tag, value in history_scalars(row).items():
            assert logged[tag] == pytest.approx(value)
    for c in candidates:
        assert rows[c["iteration"]]["selection/mean"] == pytest.approx(c["mean"])
        assert rows[c["iteration"]]["images/_type"] == "image-file"
        assert (folder / "files" / rows[c["iteration"]]["images/path"]).is_file()
    assert "selection/mean" not in rows[1]


@pytest.mark.parametrize("value, code, message", [
    ("neptune", 2, "error: --track: unknown sink 'neptune'; choose tensorboard or wandb"),
    ("wandb", 1, 'error: --track wandb: the wandb package is not installed; pip install "ddkit[wandb]"'),
])
def test_a_sink_it_cannot_use_is_one_error_line_before_any_work(tmp_path, monkeypatch, value, code, message):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    done = CliRunner().invoke(app, ["distill", "cifar100", "--experts", str(tmp_path / "e"), "--out",
                                    str(tmp_path / "run"), "--data-root", str(tmp_path / "none"), "--track", value])
    assert done.exit_code == code and done.stderr == message + "\n"
    assert not (tmp_path / "run").exists()


def test_a_history_row_becomes_scalars_named_by_field():
    assert history_scalars({"iteration": 3, "loss": 0.5, "terms": [1, 2], "skipped": False, "note": "x"}) == {
        "distill/loss": 0.5, "distill/terms/0": 1.0, "distill/terms/1": 2.0, "distill/skipped": 0.0}


def test_without_a_folder_the_event_files_go_inside_the_run_folder(tmp_path):
    pytest.importorskip("tensorboard")
    tracker = Tracker.open([Track("tensorboard")], tmp_path, SPEC, {})
    tracker.iteration({"iteration": 1, "loss": 0.5})
    tracker.close()
    assert list((tmp_path / TENSORBOARD_DIR).glob("events.out.tfevents.*"))
