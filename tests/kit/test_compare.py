"""``ddkit compare``: paired rounds of every set, a verdict at 2 s.e., baselines, and a resume that scores only the
(set, round) pairs it lacks."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from fakes import distilled_images, write_tiny
from typer.testing import CliRunner

from challenge_kit import compare as compare_mod
from challenge_kit import coresets as coresets_mod
from challenge_kit.baseline import make_baseline
from challenge_kit.cli import app
from challenge_kit.cli.compare import table
from challenge_kit.compare import CHART, RESULT, ROUNDS_FILE, Entry, baseline_entries, compare
from challenge_kit.core.artifact import DistilledArtifact
from challenge_kit.core.contract import CIFAR100, default_labels
from challenge_kit.core.reading import load_torch
from challenge_kit.core.seeds import round_seeds
from challenge_kit.core.storage import save_torch
from challenge_kit.data import dataset_spec
from challenge_kit.export import export_images
from challenge_kit.stats import BETTER, UNDECIDED, WORSE, judged, rounds_to_tell, verdict
from evaluator.fast import Arithmetic

SPEC = CIFAR100.subset(5, ipc=2)  # the fake scorer never trains: any small spec
TEST = (torch.zeros(4, 3, 32, 32), torch.arange(4))


class FakeScorer:
    """Stands in for ``round_accuracies``: an accuracy from the set and the seed, every round counted;
    raises KeyboardInterrupt (a Ctrl-C) on round number ``stop``."""

    def __init__(self, stop: int | None = None) -> None:
        self.calls: list[tuple[float, int]] = []
        self.modes: set[str] = set()
        self.groups: list[int] = []  # rounds per call
        self.archs: list[str] = []  # the network of each call
        self.stop = stop

    def __call__(self, images, labels, test_images, test_labels, *, num_classes, seeds, epochs, device, progress,
                 how, arch="convnet"):
        self.modes.add(how.mode)
        self.archs.append(arch)
        self.groups.append(len(seeds))
        assert images.dtype == torch.float32 and torch.equal(labels, default_labels(num_classes, len(images) //
                                                                                    num_classes))
        accuracies = []
        for seed in seeds:
            if len(self.calls) == self.stop:
                raise KeyboardInterrupt
            self.calls.append((round(float(images.sum()), 3), seed))
            accuracies.append(0.3 + 0.05 * float(images.mean()) + 0.01 * ((seed * 7919) % 13) / 13 + 0.002 * (seed % 3)
                              - 0.1 * (arch != "convnet"))
        return accuracies


def _entries():
    g = torch.Generator().manual_seed(0)
    sets = [torch.randn(SPEC.shape, generator=g) + shift for shift in (0.2, 0.0, -0.3)]
    return [Entry("new", sets[0], "new.pt"), Entry("old", sets[1], "old.pt"),
            Entry("random real images", sets[2], "train", baseline=True)]


def _compare(out, rounds=4, **kw):
    return compare(_entries(), SPEC, TEST, out, rounds=rounds, epochs=3, seed=7, device="cpu", show_progress=False,
                   **kw)


def test_the_verdict_is_at_two_standard_errors_and_one_round_tells_nothing():
    assert verdict({"mean": 0.03, "se": 0.01, "rounds": 5}) == BETTER
    assert verdict({"mean": -0.03, "se": 0.01, "rounds": 5}) == WORSE
    assert verdict({"mean": 0.015, "se": 0.01, "rounds": 5}) == UNDECIDED
    assert verdict({"mean": 0.5, "se": 0.0, "rounds": 1}) == UNDECIDED  # one round: no spread known


def test_rounds_to_tell_is_the_fewest_n_with_2_sd_over_root_n_below_the_difference():
    diff = {"mean": 0.01, "se": 0.01, "rounds": 4}  # sd 0.02: 2 * 0.02 / sqrt(n) < 0.01 from n = 17 on
    n = rounds_to_tell(diff)
    assert n == 17 and 2 * 0.02 / n ** 0.5 < 0.01 <= 2 * 0.02 / (n - 1) ** 0.5
    assert rounds_to_tell({"mean": 0.0, "se": 0.01, "rounds": 4}) is None
    assert rounds_to_tell({"mean": 0.01, "se": 0.0, "rounds": 3}) == 2  # no spread: any two rounds tell
    d = judged([0.5, 0.6, 0.7], [0.4, 0.45, 0.5])
    assert d["mean"] == pytest.approx(0.15) and d["z"] == pytest.approx(d["mean"] / d["se"])
    assert d["verdict"] == BETTER and d["rounds_to_tell"] <= 3


def test_every_set_is_scored_on_the_same_seeds_and_judged_against_the_first(tmp_path, monkeypatch):
    scorer = FakeScorer()
    monkeypatch.setattr(compare_mod, "round_accuracies", scorer)
    result = _compare(tmp_path / "out")
    assert sorted(s for _, s in scorer.calls) == sorted(round_seeds(7, 4) * 3) and result["seeds"] == round_seeds(7, 4)
    assert set(scorer.archs) == {"convnet"} and result["arch"] == "convnet" and result["architectures"] == []
    new, old, rand = result["sets"]
    assert new["difference"] is None and old["difference"]["mean"] == pytest.approx(old["mean"] - new["mean"])
    assert old["difference"]["verdict"] == WORSE and rand["baseline"]
    assert new["gains"]["random real images"]["verdict"] == BETTER  # set over the baseline: the IOR-style gain
    assert old["gains"]["random real images"]["mean"] == pytest.approx(old["mean"] - rand["mean"])
    assert rand["gains"] == {}
    assert json.loads((tmp_path / "out" / RESULT).read_text()) == result
    assert (tmp_path / "out" / CHART).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_interrupted_compare_resumes_scoring_only_the_missing_rounds_to_the_same_table(tmp_path, monkeypatch,
                                                                                            capsys):
    whole = FakeScorer()
    monkeypatch.setattr(compare_mod, "round_accuracies", whole)
    uninterrupted = _compare(tmp_path / "whole")

    cut = FakeScorer(stop=5)
    monkeypatch.setattr(compare_mod, "round_accuracies", cut)
    with pytest.raises(KeyboardInterrupt):
        _compare(tmp_path / "cut")
    kept = json.loads((tmp_path / "cut" / ROUNDS_FILE).read_text())
    assert sum(len(rounds) for rounds in kept.values()) == 5  # each round was kept as it came
    rest = FakeScorer()
    monkeypatch.setattr(compare_mod, "round_accuracies", rest)
    resumed = _compare(tmp_path / "cut")
    assert len(rest.calls) == 12 - 5 and sorted(cut.calls + rest.calls) == sorted(whole.calls)
    assert resumed == uninterrupted
    assert (tmp_path / "cut" / RESULT).read_bytes() == (tmp_path / "whole" / RESULT).read_bytes()
    assert (tmp_path / "cut" / CHART).read_bytes() == (tmp_path / "whole" / CHART).read_bytes()
    capsys.readouterr()
    table(resumed)
    shown = capsys.readouterr().out
    table(uninterrupted)
    assert shown == capsys.readouterr().out and "worse" in shown

    more = FakeScorer()
    monkeypatch.setattr(compare_mod, "round_accuracies", more)
    extended = _compare(tmp_path / "cut", rounds=6)
    assert sorted(s for _, s in more.calls) == sorted(round_seeds(7, 6)[4:] * 3)  # only the two new rounds
    assert [r["rounds"][:4] for r in extended["sets"]] == [r["rounds"] for r in uninterrupted["sets"]]


def test_identical_sets_are_trained_once_and_other_conditions_are_not_reused(tmp_path, monkeypatch):
    scorer = FakeScorer()
    monkeypatch.setattr(compare_mod, "round_accuracies", scorer)
    images = distilled_images(SPEC)
    compare([Entry("a", images, "a.pt"), Entry("a copy", images.clone(), "b.pt")], SPEC, TEST, tmp_path, rounds=3,
            epochs=3, seed=7, device="cpu", show_progress=False)
    assert len(scorer.calls) == 3
    compare([Entry("a", images, "a.pt")], SPEC, TEST, tmp_path, rounds=3, epochs=4, seed=7, device="cpu",
            show_progress=False)
    assert len(scorer.calls) == 6  # other epochs: scored again
    compare([Entry("a", images, "a.pt")], SPEC, (TEST[0] + 1, TEST[1]), tmp_path, rounds=3, epochs=3, seed=7,
            device="cpu", show_progress=False)
    assert len(scorer.calls) == 9  # another test split: scored again
    result = compare([Entry("a", images, "a.pt")], SPEC, TEST, tmp_path, rounds=3, epochs=3, seed=7, device="cpu",
                     show_progress=False, mode="fast")
    assert len(scorer.calls) == 12 and scorer.modes == {"faithful", "fast"}  # the fast scorer: its own rounds
    assert result["scorer"]["mode"] == "fast"


def test_stacked_rounds_are_scored_in_blocks_round_major_and_kept_apart(tmp_path, monkeypatch):
    """Where the fast scorer stacks rounds (a GPU), a set's rounds go to it in blocks; the blocks stay round-major
    across sets, so an interruption leaves the sets paired; a stacked round is not a one-at-a-time round."""
    one_at_a_time = FakeScorer()
    monkeypatch.setattr(compare_mod, "round_accuracies", one_at_a_time)
    alone = _compare(tmp_path / "alone", rounds=4, mode="fast")
    stacked = FakeScorer()
    monkeypatch.setattr(compare_mod, "round_accuracies", stacked)
    monkeypatch.setattr(compare_mod, "arithmetic", lambda mode, device: Arithmetic(mode, stacked=3))
    together = _compare(tmp_path / "together", rounds=4, mode="fast")
    assert one_at_a_time.groups == [1] * 12 and stacked.groups == [3, 3, 3, 1, 1, 1]
    assert [s for _, s in stacked.calls[:9]] == round_seeds(7, 4)[:3] * 3  # block 1 of every set first
    assert [r["rounds"] for r in together["sets"]] == [r["rounds"] for r in alone["sets"]]
    assert all(key.endswith("stacked 3") for key in json.loads((tmp_path / "together" / ROUNDS_FILE).read_text()))


@pytest.fixture
def world(tmp_path):
    """A 3-class Tiny ImageNet tree, its reference, a make-submission folder (export and checkpoint), a bare
    .pt and a research set with soft labels."""
    data = tmp_path / "data"
    write_tiny(data)
    spec = dataset_spec("tinyimagenet", data)
    ref = tmp_path / "ref.pt"
    assert CliRunner().invoke(app, ["reference", "tinyimagenet", "--data-root", str(data), "--out-file", str(ref)]
                              ).exit_code == 0
    run = tmp_path / "run"
    export_images(distilled_images(spec), spec, run, source="test")
    save_torch({"state": {"init": {"images": distilled_images(spec, seed=1)}}},
               run / "work" / "distill" / "checkpoint.pt")
    save_torch(distilled_images(spec, seed=2), tmp_path / "other" / "tinyimagenet.pt")
    soft = torch.nn.functional.one_hot(default_labels(spec.num_classes, spec.ipc), spec.num_classes) * 0.7 + 0.1
    DistilledArtifact(distilled_images(spec, seed=3), soft, spec, lr=0.01).save(tmp_path / "research.safetensors")
    return tmp_path, data, ref, run


def test_the_command_compares_exports_research_sets_and_both_baselines(world, monkeypatch):
    root, data, ref, run = world
    scorer = FakeScorer()  # the scorer's own tests train; a 64x64 round here would cost seconds
    monkeypatch.setattr(compare_mod, "round_accuracies", scorer)
    args = ["compare", str(run), str(root / "other" / "tinyimagenet.pt"), str(root / "research.safetensors"),
            "--reference", str(ref), "--out", str(root / "cmp"), "--baseline", "init", "--baseline", "random",
            "--data-root", str(data), "--epochs", "1", "--rounds", "2", "--device", "cpu"]
    done = CliRunner().invoke(app, [*args, "--json"])
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    names = [r["name"] for r in result["sets"]]
    assert names[:3] == [str(Path(a).relative_to(root)) for a in args[1:4]]  # what tells the paths apart
    assert names[3:] == ["initialization", "random real images"]
    assert [r["source"] for r in result["sets"][:3]] == args[1:4]
    assert [r["baseline"] for r in result["sets"]] == [False, False, False, True, True]
    assert "default-order hard labels" in result["sets"][2]["note"] and not result["sets"][1]["note"]
    assert all(len(r["rounds"]) == 2 for r in result["sets"]) and set(result["sets"][0]["gains"]) == set(names[3:])
    assert (root / "cmp" / CHART).is_file() and (root / "cmp" / ROUNDS_FILE).is_file() and len(scorer.calls) == 10
    again = CliRunner().invoke(app, args, env={"COLUMNS": "400"})  # the whole table on one line a row
    assert again.exit_code == 0, again.output
    assert len(scorer.calls) == 10  # a finished compare trains nothing again
    assert "gain over random real images" in again.stdout and "default-order hard labels" in again.stdout


def test_sets_are_named_by_what_tells_their_paths_apart_or_by_their_labels(world, monkeypatch):
    root, _, ref, run = world
    monkeypatch.setattr(compare_mod, "round_accuracies", FakeScorer())
    export = run / "tinyimagenet.pt"
    base = ["compare", str(export), str(root / "other" / "tinyimagenet.pt"), "--reference", str(ref), "--epochs",
            "1", "--rounds", "2", "--json"]
    named = CliRunner().invoke(app, [*base, "--out", str(root / "a")])
    assert [r["name"] for r in json.loads(named.stdout)["sets"]] == ["run", "other"]
    labelled = CliRunner().invoke(app, [*base, "--out", str(root / "b"), "--label", "mine", "--label", "theirs"])
    assert [r["name"] for r in json.loads(labelled.stdout)["sets"]] == ["mine", "theirs"]
    assert json.loads((root / "b" / "compare.json").read_text())["sets"][1]["difference"] is not None
    short = CliRunner().invoke(app, [*base, "--out", str(root / "c"), "--label", "mine"])
    assert short.exit_code == 1 and "--label: 1 given for 2 sets" in short.stderr


@pytest.mark.parametrize("extra, message", [
    (["--baseline", "random"], "error: --baseline random: needs --data-root"),
    (["--baseline", "init", "--baseline", "herding"], "error: --baseline herding: needs --data-root"),
    (["--baseline", "init"], "error: --baseline init: none of the sets is a make-submission folder"),
])
def test_a_baseline_it_cannot_build_is_one_error_line(world, extra, message):
    root, _, ref, _ = world
    done = CliRunner().invoke(app, ["compare", str(root / "other" / "tinyimagenet.pt"), "--reference", str(ref),
                                    "--out", str(root / "cmp"), "--epochs", "1", *extra])
    assert done.exit_code == 1 and done.stderr.startswith(message) and len(done.stderr.splitlines()) == 1
    unknown = CliRunner().invoke(app, ["compare", str(root / "other" / "tinyimagenet.pt"), "--reference", str(ref),
                                       "--out", str(root / "cmp"), "--baseline", "best"])
    assert unknown.exit_code == 2 and unknown.stderr.startswith("error: --baseline: unknown baseline 'best'; choose "
                                                                "random, init, herding, kcenter, el2n_easy")


def test_other_networks_get_their_own_rows_labelled_unofficial_with_gains_over_every_baseline(world, monkeypatch):
    root, data, ref, run = world
    scorer, proxies, train_proxy = FakeScorer(), [], coresets_mod._train_proxy
    monkeypatch.setattr(compare_mod, "round_accuracies", scorer)
    monkeypatch.setattr(coresets_mod, "_train_proxy", lambda *a, **k: proxies.append(a[3:6]) or train_proxy(*a, **k))
    args = ["compare", str(run), "--reference", str(ref), "--out", str(root / "cmp"), "--baseline", "random",
            "--baseline", "kcenter", "--data-root", str(data), "--score-epochs", "1", "--score-models", "1",
            "--arch", "resnet18", "--arch", "convnet-bn", "--epochs", "1", "--rounds", "2", "--device", "cpu"]
    done = CliRunner().invoke(app, [*args, "--json"])
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    assert scorer.archs == ["convnet"] * 6 + ["resnet18"] * 6 + ["convnet-bn"] * 6  # 3 sets x 2 rounds each
    assert result["arch"] == "convnet" and [r["name"] for r in result["sets"]] == ["run", "random real images",
                                                                                    "kcenter coreset"]
    others = result["architectures"]
    assert [(a["arch"], a["official"]) for a in others] == [("resnet18", False), ("convnet-bn", False)]
    assert all("not the official score" in a["label"] for a in others)
    for table_rows in (result["sets"], *(a["sets"] for a in others)):
        first = table_rows[0]
        assert set(first["gains"]) == {"random real images", "kcenter coreset"}
        for b in table_rows[1:]:  # paired: the mean of the round differences on that network
            gain = first["gains"][b["name"]]
            assert gain["mean"] == pytest.approx(sum(x - y for x, y in zip(first["rounds"], b["rounds"],
                                                                           strict=True)) / 2)
    assert others[0]["sets"][0]["mean"] == pytest.approx(result["sets"][0]["mean"] - 0.1)  # the fake's other net
    shown = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    assert shown.exit_code == 0 and len(scorer.archs) == 18  # every round was kept: nothing trained again
    assert proxies == [(0, 1, 1)]  # nor the proxy: (seed, epochs, models) read back from the user's cache
    assert shown.stdout.count("gain over kcenter coreset") == 3 and (root / "cmp" / CHART).is_file()
    assert "resnet18: not the challenge's network: not the official score" in shown.stdout
    unknown = CliRunner().invoke(app, [*args[:6], "--arch", "resnet50"])
    assert unknown.exit_code == 2 and unknown.stderr.startswith("error: --arch: unknown architecture 'resnet50'; "
                                                                "choose convnet, convnet-w64")


def test_the_random_baseline_is_the_set_ddkit_baseline_draws_with_that_seed(world):
    root, data, _, run = world
    spec = dataset_spec("tinyimagenet", data)
    make_baseline("tinyimagenet", data, root / "baseline", seed=3)
    (drawn,) = baseline_entries(["random"], [str(run)], spec, data_root=data, seed=3)
    assert drawn.baseline and torch.equal(drawn.images, load_torch(root / "baseline" / "tinyimagenet.pt"))
    (init,) = baseline_entries(["init"], [str(root / "other"), str(run)], spec, data_root=None, seed=0)
    assert torch.equal(init.images, distilled_images(spec, seed=1))  # the folder's checkpoint, iteration 0


def test_the_round_seed_and_the_baseline_seed_are_two_options(world, monkeypatch):
    """Both once shared the name --seed, and the later option swallowed the round seed the user gave."""
    root, data, ref, _ = world
    scorer = FakeScorer()
    monkeypatch.setattr(compare_mod, "round_accuracies", scorer)
    done = CliRunner().invoke(app, ["compare", str(root / "other" / "tinyimagenet.pt"), "--reference", str(ref),
                                    "--out", str(root / "cmp"), "--epochs", "1", "--rounds", "2", "--seed", "7",
                                    "--baseline", "random", "--data-root", str(data), "--baseline-seed", "3",
                                    "--json"])
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    assert result["seeds"] == [7 * 1000, 7 * 1000 + 1]  # round r's seed is SEED * 1000 + r, as --help says
    random_row = next(r for r in result["sets"] if r["baseline"])
    assert random_row["source"].endswith("per class, seed 3"), random_row["source"]


def test_init_adds_each_run_s_own_start_once_named_by_its_sets(world):
    root, data, _, run = world
    spec = dataset_spec("tinyimagenet", data)
    twin, other = root / "twin", root / "other-run"
    shutil.copytree(run, twin)  # a second run from the same start: one row
    export_images(distilled_images(spec, seed=4), spec, other, source="test")
    save_torch({"state": {"init": {"images": distilled_images(spec, seed=5)}}},
               other / "work" / "distill" / "checkpoint.pt")
    paths = [str(run), str(root / "other"), str(twin), str(other)]
    starts = baseline_entries(["init"], paths, spec, data_root=None, seed=0, names=["a", "b", "c", "d"])
    assert [e.name for e in starts] == ["initialization of a and c", "initialization of d"]
    assert torch.equal(starts[0].images, distilled_images(spec, seed=1))
    assert torch.equal(starts[1].images, distilled_images(spec, seed=5))
    assert all(e.baseline for e in starts) and str(twin) in starts[0].source
