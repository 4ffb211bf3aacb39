"""The fast scorer decides as the faithful one does: paired rounds on real images, the same ranking; and it is
only ever used where it is asked for and said."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from fakes import MINI, needs_mini
from typer.testing import CliRunner

from challenge_kit.cli import app
from challenge_kit.core.contract import TINYIMAGENET, default_labels
from challenge_kit.core.errors import KitError, KitValueError
from challenge_kit.core.models import ConvNet, ModelConfig
from challenge_kit.data import load_split
from challenge_kit.recipes import EvalConfig, load_recipe
from challenge_kit.recipes.identity import ADDED, run_identity
from challenge_kit.selection import Candidate, Rounds, Selector
from challenge_kit.stats import paired
from evaluator import scorer
from evaluator.fast import FAITHFUL, FAST, Arithmetic, arithmetic, can_compile, native_bfloat16, stacked
from evaluator.scorer import train_rounds

CPU = torch.device("cpu")
ROUNDS, EPOCHS, CLASSES, IPC = 12, 60, 10, 2


@pytest.fixture(autouse=True)
def compiled(monkeypatch):
    """The fast scorer as selection runs it here: compiled where a compiler is (conftest turns it off elsewhere)."""
    monkeypatch.delenv("DDKIT_NO_COMPILE", raising=False)


def test_the_modes_say_what_they_compute(monkeypatch):
    assert arithmetic(FAITHFUL, CPU) == Arithmetic() and Arithmetic().precision == "float32"
    fast = arithmetic(FAST, CPU)
    assert fast.mode == FAST and fast.precision == ("bfloat16" if native_bfloat16(CPU) else "float32")
    monkeypatch.setenv("DDKIT_NO_COMPILE", "1")
    assert not arithmetic(FAST, CPU).compiled
    monkeypatch.delenv("DDKIT_NO_COMPILE")
    assert arithmetic(FAST, CPU).compiled == can_compile(CPU)
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    assert not arithmetic(FAST, CPU).compiled
    with pytest.raises(KitError, match="scorer mode 'quick' is not one of faithful, fast"):
        arithmetic("quick", CPU)
    assert "not the leaderboard's" in fast.describe() and "bit-identical" in Arithmetic().describe()
    assert fast.stacked == 1  # stacking is asked for, never assumed
    monkeypatch.setenv("DDKIT_STACKED_ROUNDS", "3")
    assert arithmetic(FAST, CPU).stacked == 3 and arithmetic(FAITHFUL, CPU).stacked == 1
    assert "3 rounds at once" in arithmetic(FAST, CPU).describe()
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("DDKIT_STACKED_ROUNDS", bad)
        with pytest.raises(KitError, match=f"DDKIT_STACKED_ROUNDS: must be a whole number >= 1, got '{bad}'"):
            arithmetic(FAST, CPU)


@pytest.fixture(scope="module")
def real_sets(tmp_path_factory):
    """Two candidates of real Tiny ImageNet images (32 px, 10 classes x 2): the images, and the same images under
    heavy noise, which every honest scorer must rank lower; the classes' validation images to test on."""
    cache = tmp_path_factory.mktemp("cache")
    x, y, _ = load_split("tinyimagenet", MINI, "train", cache_dir=cache)
    xt, yt, _ = load_split("tinyimagenet", MINI, "test", cache_dir=cache)
    pick = torch.cat([torch.nonzero(y == c).flatten()[:IPC] for c in range(CLASSES)])
    keep = yt < CLASSES
    clean = F.avg_pool2d(x[pick], 2)
    noisy = clean + 1.5 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    return {"clean": clean, "noisy": noisy}, (F.avg_pool2d(xt[keep], 2), yt[keep])


def rounds(images: torch.Tensor, test, mode: str) -> list[float]:
    nets = train_rounds(images, default_labels(CLASSES, IPC), [1000 * 7 + r for r in range(ROUNDS)],
                        num_classes=CLASSES, epochs=EPOCHS, device="cpu", how=arithmetic(mode, CPU))
    return [scorer.test_accuracy(net, *test) for net in nets]


@pytest.mark.slow
@needs_mini
def test_fast_scores_are_the_faithful_ones_within_two_standard_errors_and_rank_alike(real_sets):
    sets, test = real_sets
    scores = {(name, mode): rounds(images, test, mode) for name, images in sets.items() for mode in (FAITHFUL, FAST)}
    for name in sets:
        d = paired(scores[name, FAST], scores[name, FAITHFUL])
        print(f"{name}: fast - faithful {d['mean']:+.4f} +- {d['se']:.4f} over {d['rounds']} paired rounds")
        assert abs(d["mean"]) <= 2 * d["se"] + 1e-9, (name, d, scores[name, FAST], scores[name, FAITHFUL])
    for mode in (FAITHFUL, FAST):  # both rank the clean images first, beyond 2 s.e. of their paired difference
        d = paired(scores["clean", mode], scores["noisy", mode])
        print(f"{mode}: clean - noisy {d['mean']:+.4f} +- {d['se']:.4f}")
        assert d["mean"] > 2 * d["se"], (mode, d)
    (net,) = train_rounds(sets["clean"], default_labels(CLASSES, IPC), [7000], num_classes=CLASSES, epochs=EPOCHS,
                          device="cpu", how=arithmetic(FAST, CPU))
    assert scorer.test_accuracy(net, *test) == scores["clean", FAST][0]  # same seed, same threads: the same score


def test_ddkit_evaluate_fast_says_so_and_a_zip_stays_faithful(tmp_path):
    images = torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.save(images, tmp_path / "set.pt")
    torch.save({"images_val": images, "labels_val": default_labels(5, 2)}, tmp_path / "ref.pt")
    res = CliRunner().invoke(app, ["evaluate", str(tmp_path / "set.pt"), "--reference", str(tmp_path / "ref.pt"),
                                   "--epochs", "2", "--rounds", "1", "--seed", "0", "--device", "cpu", "--fast",
                                   "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["scorer"]["mode"] == FAST and out["official"] is False
    assert "fast scorer (" in res.stderr
    res = CliRunner().invoke(app, ["evaluate", str(tmp_path / "sub.zip"), "--reference-dir", str(tmp_path),
                                   "--fast"])
    assert res.exit_code == 1
    assert res.stderr == f"error: {tmp_path / 'sub.zip'}: --fast is for one set; a submission .zip is scored as " \
                         "the challenge does\n"


def test_selection_runs_fast_by_default_and_an_older_checkpoint_reads_as_faithful():
    recipe = load_recipe("tinyimagenet", "mini")
    assert recipe.eval.scorer == FAST
    assert load_recipe("tinyimagenet", "mini", ["eval.scorer=faithful"]).eval.scorer == FAITHFUL
    with pytest.raises(KitValueError, match="eval.scorer must be one of faithful, fast, got 'fastest'"):
        load_recipe("tinyimagenet", "mini", ["eval.scorer=fastest"])
    before = recipe.to_dict()
    del before["eval"]["scorer"]  # what a checkpoint of the code before the fast scorer holds
    assert run_identity(before)["eval"]["scorer"] == ADDED["eval"]["scorer"] == FAITHFUL
    assert run_identity(before) == run_identity(load_recipe("tinyimagenet", "mini", ["eval.scorer=faithful"]).to_dict())


def test_the_selection_record_names_the_arithmetic_it_was_decided_in():
    candidates = [Candidate(0, Rounds(0.2, 0.0, [0.2], [])), Candidate(10, Rounds(0.1, 0.0, [0.1], []))]
    for mode in (FAST, FAITHFUL):
        selector = Selector(EvalConfig(scorer=mode), TINYIMAGENET, torch.zeros(1), torch.zeros(1), CPU)
        decision = selector.decide(candidates, torch.zeros(1), torch.zeros(1)).to_dict()
        assert decision["scorer"] == arithmetic(mode, CPU).to_dict() and decision["export"] == 0


def test_stacking_refuses_a_network_with_buffers():
    nets = [ConvNet(ModelConfig(num_classes=3, image_size=8, norm="batchnorm")) for _ in range(2)]
    with pytest.raises(ValueError, match="stacked rounds need a network without buffers"):
        stacked(nets, Arithmetic(FAST, stacked=2))
