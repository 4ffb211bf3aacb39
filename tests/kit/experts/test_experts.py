"""Expert trajectories: GSAM math, determinism, the store format, resume after a kill, torchrun, DATM buffers."""

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fakes import cpu_buffer, write_cifar
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from challenge_kit import parts
from challenge_kit.cli import app
from challenge_kit.core.contract import CIFAR100
from challenge_kit.core.errors import KitFileError
from challenge_kit.core.expert_file import _num_params, read_expert
from challenge_kit.core.models import ConvNet, FunctionalConvNet, ModelConfig, load_flat_
from challenge_kit.core.reading import load_torch, read_metadata
from challenge_kit.core.seeds import expert_generator
from challenge_kit.experts import training
from challenge_kit.experts.buffers import export_buffers, import_buffers
from challenge_kit.experts.store import ExpertStore, expert_files, expert_path
from challenge_kit.parts import expert_parts
from challenge_kit.recipes import ExpertConfig
from evaluator.fast import native_bfloat16

SPEC = CIFAR100.subset(4)
MODEL = ModelConfig.for_spec(SPEC, width=8)
CONFIG = ExpertConfig(num_experts=2, epochs=2, batch_size=16, seed=3)
REPO = Path(__file__).resolve().parents[3]


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_data(n: int = 48, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.arange(n) % 4
    x += y.view(-1, 1, 1, 1) * 0.5  # learnable
    return x, y, x[:16], y[:16]


def train(out, config=CONFIG, indices=None, **kw):
    return training.train_experts(*tiny_data(), SPEC, config, out, indices=indices, model=MODEL, **kw)


def snapshots(out) -> list[torch.Tensor]:
    return [load_file(str(p))["snapshots"] for p in expert_files(out)]


# ------------------------------------------------------------------------------------------ the math

def test_gsam_flat_matches_a_per_parameter_implementation():
    """docs/experts.md: e = rho g p^2 / || |p| g ||; final = g_p - alpha (g - (g.g_p / ||g_p||^2) g_p), on lists."""
    g0 = torch.Generator().manual_seed(0)
    ps = [torch.randn(3, 4, generator=g0), torch.randn(5, generator=g0)]
    gs = [torch.randn_like(p) for p in ps]
    gps = [torch.randn_like(p) for p in ps]
    rho, alpha = 0.01, 0.3
    norm = torch.sqrt(sum(((p.abs() * g) ** 2).sum() for p, g in zip(ps, gs, strict=True)))
    e_ref = [rho * g * p**2 / (norm + 1e-12) for p, g in zip(ps, gs, strict=True)]
    dot = sum((g * gp).sum() for g, gp in zip(gs, gps, strict=True))
    gp2 = sum((gp * gp).sum() for gp in gps)
    final_ref = [gp - alpha * (g - dot / gp2 * gp) for g, gp in zip(gs, gps, strict=True)]
    flat = lambda ts: torch.cat([t.reshape(-1) for t in ts])  # noqa: E731
    p, g, gp = flat(ps), flat(gs), flat(gps)
    assert torch.allclose(expert_parts.gsam_perturbation(p, g, rho), flat(e_ref), atol=1e-9)
    final = expert_parts.gsam_gradient(g, gp, alpha)
    assert torch.allclose(final, flat(final_ref), atol=1e-6)
    assert abs(float((final - gp) @ gp)) < 1e-4  # only the part orthogonal to g_p is removed
    assert torch.equal(expert_parts.gsam_gradient(g, gp, 0.0), gp)
    assert abs(float((expert_parts.gsam_perturbation(p, g, rho) / p.abs()).norm()) - rho) < 1e-6  # ||e / |p| || = rho
    assert abs(float(expert_parts.gsam_perturbation(p, g, rho, adaptive=False).norm()) - rho) < 1e-6


def test_expert_gradient_equals_the_optimizer_style_two_pass_gsam():
    """The flat functional step equals perturb-the-module-in-place, backward again, combine, un-perturb."""
    x, y, _, _ = tiny_data(16)
    f = FunctionalConvNet(MODEL)
    p = f.init_flat(0)
    loss, grad = parts.build("objective", CONFIG)(f, p, x, y, 0)
    net = load_flat_(ConvNet(MODEL), p)
    F.cross_entropy(net(x), y).backward()
    g = [q.grad.clone() for q in net.parameters()]
    norm = torch.sqrt(sum(((q.abs() * gq) ** 2).sum() for q, gq in zip(net.parameters(), g, strict=True)))
    with torch.no_grad():
        rho = CONFIG.objective.params.rho
        es = [rho * gq * q**2 / (norm + 1e-12) for q, gq in zip(net.parameters(), g, strict=True)]
        for q, e in zip(net.parameters(), es, strict=True):
            q.add_(e)
    net.zero_grad()
    F.cross_entropy(net(x), y).backward()
    gp = torch.cat([q.grad.reshape(-1) for q in net.parameters()])
    gf = torch.cat([t.reshape(-1) for t in g])
    expected = gp - CONFIG.objective.params.alpha * (gf - (gf @ gp) / (gp @ gp) * gp)
    assert torch.allclose(grad, expected, atol=1e-6, rtol=1e-4)
    with torch.no_grad():
        assert abs(float(loss) - float(F.cross_entropy(load_flat_(ConvNet(MODEL), p)(x), y))) < 1e-6


# ------------------------------------------------------------------------------------------ store and determinism

def test_experts_are_deterministic_independent_and_well_formed(tmp_path):
    paths = train(tmp_path / "a")
    train(tmp_path / "b", indices=[1])
    a = snapshots(tmp_path / "a")
    assert a[0].shape == (3, _num_params(MODEL)) and not torch.equal(a[0], a[1])
    assert torch.equal(a[1], snapshots(tmp_path / "b")[0])  # expert 1 does not depend on expert 0 being trained
    train(tmp_path / "c", replace(CONFIG, seed=4), indices=[1])
    assert not torch.equal(a[1], snapshots(tmp_path / "c")[0])
    e = read_expert(paths[0])
    assert e.complete and e.epochs == e.completed_epochs == 2 and e.model_config == MODEL and e.spec == SPEC
    assert e.meta["format"] == "ddkit-expert" and e.meta["version"] == 1 and e.meta["seed"] == 3
    assert e.meta["config"]["objective"]["name"] == "gsam" and len(e.train_loss) == len(e.test_acc) == 2
    assert all(0 <= acc <= 1 for acc in e.test_acc)
    lazy = read_expert(paths[0], snapshots=False)
    assert lazy.snapshots is None and torch.equal(lazy.snapshot(2), e.snapshots[2])
    assert [x.path for x in ExpertStore(tmp_path / "a").complete()] == paths
    assert ExpertStore(tmp_path / "a").next_index() == 2
    # snapshot 0 is the init: what FunctionalConvNet.init_flat gives for the derived seed
    gen = expert_generator(3, 0)
    init = FunctionalConvNet(MODEL).init_flat(int(torch.randint(2**62, (1,), generator=gen)))
    assert torch.equal(e.snapshots[0], init)


def test_fast_experts_record_their_arithmetic_and_keep_near_the_float32_trajectory(tmp_path):
    """The same seed in both arithmetics: the same init and draws; bfloat16's rounding of each step's gradient
    moves the trajectory a little, not its direction (2 epochs here: the moves' cosine 0.998, their difference
    5.5% of the move). Tests run without a compiler (conftest), so the fast steps here are autocast only."""
    train(tmp_path / "float32", indices=[0])
    train(tmp_path / "fast", replace(CONFIG, arithmetic="fast"), indices=[0])
    native = native_bfloat16(torch.device("cpu"))
    assert read_metadata(expert_path(tmp_path / "float32", 0))["arithmetic"] == {
        "arithmetic": "float32", "precision": "float32", "compiled": False}
    assert read_metadata(expert_path(tmp_path / "fast", 0))["arithmetic"] == {
        "arithmetic": "fast", "precision": "bfloat16" if native else "float32", "compiled": False}
    (plain,), (fast,) = snapshots(tmp_path / "float32"), snapshots(tmp_path / "fast")
    assert torch.equal(plain[0], fast[0])
    if not native:
        assert torch.equal(plain, fast)
        return
    assert not torch.equal(plain[-1], fast[-1])
    assert F.cosine_similarity(plain[-1] - plain[0], fast[-1] - fast[0], 0) > 0.99


def test_training_reduces_the_loss():
    x, y, xt, yt = tiny_data(64)
    f = FunctionalConvNet(MODEL)
    p = f.init_flat(0)
    gen = torch.Generator().manual_seed(0)
    config = replace(CONFIG, lr=0.05)
    losses = []
    for _ in range(6):
        p, _, loss = training.train_epoch(f, p, None, x, y, config, gen)
        losses.append(loss)
    assert losses[-1] < losses[0] - 0.1 and training.accuracy(f, p, xt, yt) > 0.4


def _corrupt(path: Path, how: str) -> None:
    tensors, meta = load_file(str(path)), read_metadata(path)
    meta = {k: v for k, v in meta.items()}
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
        return
    if how == "nan":
        tensors["snapshots"][1, 5] = float("nan")
    elif how == "count":
        tensors["snapshots"] = tensors["snapshots"][:2]
    import json

    save_file(tensors, str(path), {k: json.dumps(v) for k, v in meta.items()})


@pytest.mark.parametrize("how", ["truncated", "nan", "count"])
def test_corrupt_files_are_detected_and_retrained(tmp_path, how, caplog):
    train(tmp_path / "ref")
    train(tmp_path / "s")
    _corrupt(expert_path(tmp_path / "s", 0), how)
    assert ExpertStore(tmp_path / "s").status()[0].status == "corrupt"
    train(tmp_path / "s")
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert re.search("expert_0000.safetensors: .*retraining it", caplog.messages[0]), caplog.messages
    for a, b in zip(snapshots(tmp_path / "s"), snapshots(tmp_path / "ref"), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("config, data_seed, named", [
    (replace(CONFIG, seed=4), 0, r"experts\.seed 3 -> 4"),
    (replace(CONFIG, lr=0.02), 0, r"experts\.lr 0\.01 -> 0\.02"),
    (replace(CONFIG, arithmetic="fast"), 0, r'experts\.arithmetic "float32" -> "fast"'),
    (CONFIG, 1, r'train_sha256 "[0-9a-f]{36}\.\.\. -> "[0-9a-f]{36}\.\.\.'),  # same size, other images
])
def test_an_expert_trained_otherwise_is_refused_before_anything_is_trained(tmp_path, config, data_seed, named,
                                                                           caplog):
    train(tmp_path / "s", indices=[1])  # expert 1 is there, expert 0 is not yet
    before = expert_path(tmp_path / "s", 1).read_bytes()
    data = tiny_data(seed=data_seed)
    with pytest.raises(KitFileError, match=rf"expert_0001\.safetensors: was trained with other settings \({named}\); "
                                           "pass --replace-experts"):
        training.train_experts(*data, SPEC, config, tmp_path / "s", model=MODEL)
    assert [p.name for p in expert_files(tmp_path / "s")] == ["expert_0001.safetensors"]
    assert expert_path(tmp_path / "s", 1).read_bytes() == before
    training.train_experts(*data, SPEC, config, tmp_path / "s", model=MODEL, replace=True)
    assert re.search("expert_0001.safetensors: trained with other settings .*retraining it", caplog.messages[-1])
    training.train_experts(*data, SPEC, config, tmp_path / "fresh", model=MODEL)
    for a, b in zip(snapshots(tmp_path / "s"), snapshots(tmp_path / "fresh"), strict=True):
        assert torch.equal(a, b)


def test_more_epochs_extend_a_complete_expert_exactly(tmp_path):
    train(tmp_path / "short")
    events = []
    train(tmp_path / "short", replace(CONFIG, epochs=3), progress=events.append)
    assert [e["epoch"] for e in events if e["kind"] == "epoch"] == [3, 3]  # only the new epoch was trained
    train(tmp_path / "long", replace(CONFIG, epochs=3))
    for a, b in zip(snapshots(tmp_path / "short"), snapshots(tmp_path / "long"), strict=True):
        assert torch.equal(a, b)
    skipped = []
    train(tmp_path / "long", replace(CONFIG, epochs=3), progress=skipped.append)
    assert [e["kind"] for e in skipped] == ["plan", "skip", "skip"]


KILL_SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path[:0] = {tests!r}  # this file's folder, and the tests' for fakes.py
    torch.set_num_threads(1)
    from dataclasses import replace
    import test_experts as t
    cfg = replace(t.CONFIG, num_experts=3, epochs=3)
    t.training.train_experts(*t.tiny_data(128), t.SPEC, cfg, {out!r}, model=t.MODEL)
""")


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    out = tmp_path / "killed"
    script = KILL_SCRIPT.format(tests=[str(Path(__file__).parent), str(Path(__file__).parents[2])], out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    first = expert_path(out, 0)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            try:
                if read_metadata(first).get("completed_epochs", 0) >= 1:
                    break
            except KitFileError:
                pass
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    status = [s.status for s in ExpertStore(out).status()]
    assert status[0] == "partial" and len(status) == 1, status  # killed mid-expert, not after the end
    config = replace(CONFIG, num_experts=3, epochs=3)
    events = []
    training.train_experts(*tiny_data(128), SPEC, config, out, model=MODEL, progress=events.append)
    trained = [(e["expert"], e["epoch"]) for e in events if e["kind"] == "epoch"]
    # expert 0 continues after its saved epochs; nothing saved is trained again
    assert trained[0][0] == 0 and trained[0][1] > 1 and len(trained) == 9 - (trained[0][1] - 1)
    assert all(s.status == "complete" for s in ExpertStore(out).status()) and len(expert_files(out)) == 3
    training.train_experts(*tiny_data(128), SPEC, config, tmp_path / "clean", model=MODEL)
    for a, b in zip(expert_files(out), expert_files(tmp_path / "clean"), strict=True):
        assert torch.equal(load_file(str(a))["snapshots"], load_file(str(b))["snapshots"])
        ma, mb = read_metadata(a), read_metadata(b)
        assert ma["train_loss"] == mb["train_loss"] and ma["test_acc"] == mb["test_acc"]


# ------------------------------------------------------------------------------------------ CLI and torchrun

def test_torchrun_two_gloo_ranks_match_a_single_process_run(tmp_path):
    write_cifar(tmp_path / "data", n_train=24, n_test=8)
    # torchrun's own parser takes `--num` as an abbreviation of --numa-binding: the long form passes through
    args = ["experts", "cifar100", "--data-root", str(tmp_path / "data"), "--num-experts", "3", "--epochs", "1",
            "--set", "experts.batch_size=12", "--set", "eval.every=0", "--set", "eval.holdout_per_class=0",
            "--device", "cpu", "--profile", "quick", "--cache-dir", str(tmp_path / "cache"),
            "--set", "distill.max_start_epoch=0",
            "--set", "distill.current_max_start_epoch=0",
            "--set", "distill.expert_epochs=1"]  # the recipe's matching range must fit in 1-epoch experts
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "challenge_kit", *args, "--out", str(tmp_path / "dist")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    single = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "single")])
    assert single.exit_code == 0, single.output
    dist, one = expert_files(tmp_path / "dist"), expert_files(tmp_path / "single")
    assert [p.name for p in dist] == [p.name for p in one] == [f"expert_{i:04d}.safetensors" for i in range(3)]
    for a, b in zip(dist, one, strict=True):
        assert torch.equal(load_file(str(a))["snapshots"], load_file(str(b))["snapshots"])
    assert read_expert(one[0]).model_config == ModelConfig.for_spec(CIFAR100)  # the challenge network


def test_info_lists_complete_partial_and_corrupt(tmp_path):
    train(tmp_path)
    train(tmp_path, replace(CONFIG, num_experts=3, epochs=3), indices=[2])
    meta = read_metadata(expert_path(tmp_path, 2))
    tensors = load_file(str(expert_path(tmp_path, 2)))
    import json

    meta.update(epochs=5)
    save_file(tensors, str(expert_path(tmp_path, 2)), {k: json.dumps(v) for k, v in meta.items()})
    expert_path(tmp_path, 3).write_bytes(b"garbage")
    result = CliRunner().invoke(app, ["info", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.stdout)
    assert listing["store"] == str(tmp_path)  # one object, the store named
    rows = listing["experts"]
    assert [r["status"] for r in rows] == ["complete", "complete", "partial", "corrupt"]
    assert rows[2]["completed_epochs"] == 3 and rows[2]["epochs"] == 5
    assert rows[0]["last_acc"] == read_expert(expert_path(tmp_path, 0)).test_acc[-1]
    assert "not a readable safetensors file" in rows[3]["problem"]
    table = CliRunner().invoke(app, ["info", str(tmp_path)])
    assert table.exit_code == 0 and "expert_0003" in table.output and "corrupt" in table.output


# ------------------------------------------------------------------------------------------ DATM/MTT buffers

def datm_buffer(model: ModelConfig, trajectories: int, snaps: int, seed: int = 0) -> list:
    torch.manual_seed(seed)
    out = []
    for _ in range(trajectories):
        net = ConvNet(model)
        traj = []
        for _ in range(snaps):
            traj.append([p.detach().clone() for p in net.parameters()])
            with torch.no_grad():
                for p in net.parameters():
                    p.add_(torch.randn_like(p) * 0.01)
        out.append(traj)
    return out


def test_datm_buffer_round_trips_through_the_store(tmp_path):
    model = ModelConfig.for_spec(SPEC, width=8, depth=4)
    buffers = [datm_buffer(model, 2, 3, seed=0), datm_buffer(model, 1, 3, seed=1)]
    files = []
    for n, buf in enumerate(buffers):
        files.append(tmp_path / f"replay_buffer_{n}.pt")
        torch.save(buf, files[-1])
    written = import_buffers(files, tmp_path / "store", SPEC)
    assert [p.name for p in written] == [f"expert_{i:04d}.safetensors" for i in range(3)]
    e = read_expert(written[2])
    assert e.complete and e.model_config.depth == 4 and e.completed_epochs == 2 and e.meta["source"]
    assert torch.equal(e.snapshot(1), torch.cat([t.reshape(-1) for t in buffers[1][0][1]]))
    out = export_buffers(tmp_path / "store", tmp_path / "back", per_file=2)
    assert [p.name for p in out] == ["replay_buffer_0.pt", "replay_buffer_1.pt"]
    original = [t for buf in buffers for t in buf]
    exported = [t for p in out for t in load_torch(p)]
    assert len(exported) == 3
    for t_orig, t_back in zip(original, exported, strict=True):
        for s_orig, s_back in zip(t_orig, t_back, strict=True):
            assert len(s_orig) == len(s_back)
            assert all(torch.equal(a, b) for a, b in zip(s_orig, s_back, strict=True))
    with pytest.raises(KitFileError, match="holds an imported expert"):
        train(tmp_path / "store")  # never overwritten by training


def test_import_rejects_shapes_that_do_not_fit_the_model(tmp_path):
    wrong = datm_buffer(ModelConfig.for_spec(CIFAR100.subset(5), width=8), 1, 2)
    torch.save(wrong, tmp_path / "replay_buffer_0.pt")
    with pytest.raises(KitFileError, match="trajectory 0 snapshot 0: parameter shapes"):
        import_buffers([tmp_path / "replay_buffer_0.pt"], tmp_path / "store", SPEC)
    torch.save([[["not a tensor"]]], tmp_path / "bad.pt")
    with pytest.raises(KitFileError, match="bad.pt"):
        import_buffers([tmp_path / "bad.pt"], tmp_path / "store", SPEC)


def test_import_and_export_commands(tmp_path):
    model = ModelConfig.for_spec(CIFAR100, width=8)
    torch.save(datm_buffer(model, 3, 2), tmp_path / "replay_buffer_0.pt")
    r = CliRunner().invoke(app, ["experts-import", str(tmp_path / "replay_buffer_0.pt"), "--dataset", "cifar100",
                                 "--out", str(tmp_path / "store")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["experts-export", str(tmp_path / "store"), "--out", str(tmp_path / "back")])
    assert r.exit_code == 0, r.output
    assert [len(t) for t in load_torch(tmp_path / "back" / "replay_buffer_0.pt")] == [2, 2, 2]
    r = CliRunner().invoke(app, ["experts-import", str(tmp_path / "nope.pt"), "--dataset", "cifar100",
                                 "--out", str(tmp_path / "store")])
    assert r.exit_code == 1 and "nope.pt" in r.output


def test_a_buffer_snapshotted_on_a_cpu_without_copies_is_refused_naming_the_trajectory(tmp_path):
    """Its snapshots are all the final weights: refused in one line that says why; made with copies, imported."""
    x, y, *_ = tiny_data(16)
    model = ModelConfig.for_spec(CIFAR100, width=8)
    for name, copy in (("aliased", False), ("copied", True)):
        (tmp_path / name).mkdir()
        torch.save(cpu_buffer(model, x, y, epochs=3, copy=copy), tmp_path / name / "replay_buffer_0.pt")

    def ddkit_import(name):
        return CliRunner().invoke(app, ["experts-import", str(tmp_path / name / "replay_buffer_0.pt"), "--dataset",
                                        "cifar100", "--out", str(tmp_path / "store")])

    r = ddkit_import("aliased")
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1, r.output
    assert lines[0].startswith(f"error: {tmp_path / 'aliased' / 'replay_buffer_0.pt'}: trajectory 0: all 4 snapshots "
                               "(epochs 0..3) are identical: weights that do not change teach nothing"), lines[0]
    assert "written on a CPU by a script that snapshots with `p.detach().cpu()`" in lines[0]
    assert "`p.detach().cpu().clone()`" in lines[0] and expert_files(tmp_path / "store") == []
    r = ddkit_import("copied")
    assert r.exit_code == 0, r.output
    (path,) = expert_files(tmp_path / "store")
    trajectory = load_torch(tmp_path / "copied" / "replay_buffer_0.pt")[0]
    assert torch.equal(read_expert(path).snapshots, torch.stack([torch.cat([p.reshape(-1) for p in s])
                                                                 for s in trajectory]))
