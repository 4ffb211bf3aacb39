"""Coreset baselines: each pick against its paper's rule written plainly here, the proxy networks against the
scorer's recipe run by hand, and ``ddkit baseline --method`` exports that verify."""

import json
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fakes import write_tiny
from helpers import _real
from rich.progress import Progress
from typer.testing import CliRunner

from challenge_kit import coresets as coresets_mod
from challenge_kit.cli import app
from challenge_kit.core.contract import CIFAR100, default_labels
from challenge_kit.core.models import ConvNet, ModelConfig, load_flat_, predict
from challenge_kit.core.reading import load_torch
from challenge_kit.core.seeds import round_seeds, stream_seeds
from challenge_kit.coresets import METHODS, proxy, select
from challenge_kit.data import load_split
from challenge_kit.experts.store import ExpertStore
from challenge_kit.experts.training import train_experts
from challenge_kit.parts import coresets
from challenge_kit.recipes import ExpertConfig
from evaluator.scorer import train

SPEC = replace(CIFAR100.subset(3, ipc=2), image_size=16)


def test_herding_adds_the_point_that_brings_the_running_mean_closest_to_the_mean():
    points = torch.randn(30, 5, generator=torch.Generator().manual_seed(0)).double()
    mean, chosen = points.mean(0), []
    for t in range(1, 8):
        gaps = {i: float(((points[chosen].sum(0) + points[i]) / t - mean).norm()) for i in range(30) if i not in chosen}
        chosen.append(min(gaps, key=gaps.get))
    assert coresets.herding(points, 7).tolist() == chosen


def test_kcenter_starts_at_a_seeded_point_then_takes_the_farthest_from_the_chosen():
    points = torch.randn(40, 4, generator=torch.Generator().manual_seed(1)).double()
    chosen = [int(torch.randint(40, (1,), generator=torch.Generator().manual_seed(3)))]
    while len(chosen) < 6:
        nearest = {i: min(float((points[i] - points[j]).norm()) for j in chosen) for i in range(40)}
        chosen.append(max(nearest, key=nearest.get))
    assert coresets.kcenter(points, 6, torch.Generator().manual_seed(3)).tolist() == chosen
    twins = torch.zeros(5, 2)  # every point a duplicate: still distinct indices
    assert sorted(coresets.kcenter(twins, 5, torch.Generator().manual_seed(0)).tolist()) == [0, 1, 2, 3, 4]


def test_forgetting_counts_correct_to_wrong_transitions_and_never_learned_as_most():
    looks = [[1, 0, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 0, 1, 0], [0, 0, 0, 0, 0], [0, 0, 1, 1, 1]]
    counts = []
    for seq in looks:
        counts.append(sum(a == 1 and b == 0 for a, b in pairwise(seq)) if any(seq) else len(seq))
    assert counts == [2, 0, 2, 5, 0]
    assert coresets.forgetting_counts(torch.tensor(looks).T.bool()).tolist() == counts


def test_difficulty_picks_take_the_easiest_the_hardest_and_the_band_past_the_easiest():
    scores = torch.randperm(50, generator=torch.Generator().manual_seed(0)).float()  # rank r is score r
    g = torch.Generator().manual_seed(0)
    ranks = {pick: sorted(scores[coresets.ranked(scores, 5, pick, g)].int().tolist()) for pick in coresets.PICKS}
    assert ranks == {"easy": [0, 1, 2, 3, 4], "hard": [45, 46, 47, 48, 49], "band": [5, 6, 7, 8, 9]}
    assert sorted(scores[coresets.ranked(scores, 20, "band", g, band_skip=2.0)].int().tolist()) == list(range(30, 50))
    ties = torch.zeros(50)  # equal scores: a seeded order, the same for one seed, another for another
    picks = [coresets.ranked(ties, 5, "easy", torch.Generator().manual_seed(s)).tolist() for s in (0, 0, 1)]
    assert picks[0] == picks[1] != picks[2]


def test_a_class_with_too_few_images_gives_them_all_then_repeats_and_classes_come_in_default_order():
    labels = torch.tensor([0, 0, 0, 1, 2, 2, 2, 2])
    got = coresets.per_class(labels, 3, 2, torch.Generator().manual_seed(0), lambda pool: torch.tensor([1, 0]))
    assert got.tolist()[:2] == [1, 0] and got.tolist()[2:4] == [3, 3] and got.tolist()[4:] == [5, 4]


def test_the_proxy_is_the_scorers_recipe_looked_at_after_every_epoch():
    x, y = _real(6)
    got = proxy(x, y, 3, seed=4, epochs=3, models=2)
    el2n, forgetting, features = torch.zeros(len(y)), torch.zeros(len(y), dtype=torch.long), None
    for seed in round_seeds(4, 2):  # each network: the scorer's round of that seed, trained by hand
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stream_seeds(seed)[0])
            net = ConvNet(ModelConfig(num_classes=3, image_size=16))
        _, on_device, on_cpu = stream_seeds(seed)
        looks = []
        train(net, x, y, epochs=3, generator=torch.Generator().manual_seed(on_device),
              group_generator=torch.Generator().manual_seed(on_cpu),
              progress=lambda *_, net=net, looks=looks: looks.append(predict(net, net, x).argmax(1) == y))
        probs = F.softmax(predict(net, net, x), 1)
        el2n += (probs - F.one_hot(y, 3)).norm(dim=1) / 2
        forgetting += torch.tensor([sum(a and not b for a, b in pairwise(s)) if any(s) else 3
                                    for s in torch.stack(looks).T.tolist()])
        features = predict(net, net.embed, x) if features is None else features
    assert torch.allclose(got.el2n, el2n, atol=1e-6) and torch.equal(got.forgetting, forgetting)
    assert torch.equal(got.features, features) and (got.epochs, got.models) == (3, 2)


def test_the_proxy_shows_every_epoch_of_every_network_on_its_bar(monkeypatch):
    seen = []

    class Recording(Progress):
        def update(self, task_id, **kwargs):
            super().update(task_id, **kwargs)
            seen.append((self.tasks[0].description, self.tasks[0].completed, self.tasks[0].total, kwargs["status"]))

    monkeypatch.setattr("challenge_kit.coresets.make_progress", lambda disable=False: Recording(disable=True))
    x, y = _real(6)
    proxy(x, y, 3, seed=0, epochs=2, models=2)
    assert [(d, c, t) for d, c, t, _ in seen] == [("proxy networks", k, 4) for k in range(1, 5)]
    assert [s.rsplit(" loss", 1)[0] for *_, s in seen] == [f"network {m}/2 epoch {e}/2" for m in (1, 2) for e in (1, 2)]


def test_proxy_scores_are_kept_in_the_cache_and_read_back_only_for_the_same_pool_seed_and_budget(
        tmp_path, monkeypatch, caplog):
    x, y = _real(6)
    trained = proxy(x, y, 3, seed=1, epochs=2, models=1, cache_dir=tmp_path)
    [entry] = list(tmp_path.iterdir())
    real_training = coresets_mod._train_proxy
    monkeypatch.setattr(coresets_mod, "_train_proxy", lambda *a, **k: pytest.fail("trained again"))
    again = proxy(x, y, 3, seed=1, epochs=2, models=1, cache_dir=tmp_path)
    assert torch.equal(again.features, trained.features) and torch.equal(again.el2n, trained.el2n)
    assert torch.equal(again.forgetting, trained.forgetting) and again.seconds == pytest.approx(trained.seconds)
    assert (again.epochs, again.models, again.kept, trained.kept) == (2, 1, str(entry), None)
    calls = []
    monkeypatch.setattr(coresets_mod, "_train_proxy", lambda *a, **k: calls.append(a[3:6]) or real_training(*a, **k))
    for changed in ({"seed": 2}, {"epochs": 1}, {"models": 2}):
        proxy(x, y, 3, **{"seed": 1, "epochs": 2, "models": 1, **changed}, cache_dir=tmp_path)
    other = x.clone()
    other[0, 0, 0, 0] += 1.0
    proxy(other, y, 3, seed=1, epochs=2, models=1, cache_dir=tmp_path)
    assert calls == [(2, 2, 1), (1, 1, 1), (1, 2, 2), (1, 2, 1)]  # (seed, epochs, models): each trained anew
    entry.write_bytes(b"not safetensors")
    assert proxy(x, y, 3, seed=1, epochs=2, models=1, cache_dir=tmp_path).kept is None and len(calls) == 5
    assert proxy(x, y, 3, seed=1, epochs=2, models=1, cache_dir=tmp_path).kept == str(entry)  # written anew
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would be")
    with caplog.at_level("WARNING"):
        kept = proxy(x, y, 3, seed=1, epochs=2, models=1, cache_dir=blocked)
    assert torch.equal(kept.features, trained.features)
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"][0].startswith("proxy scores not kept: ")


def test_every_method_picks_ipc_images_of_each_class_in_default_order_the_same_for_one_seed():
    x, y = _real(6)
    scores = proxy(x, y, 3, seed=0, epochs=2, models=1)
    for method in METHODS:
        first = select(method, x, y, SPEC, seed=0, scores=scores)
        again = select(method, x, y, SPEC, seed=0, scores=scores)
        assert torch.equal(first.images, again.images), method
        rows = [int(((x - image).abs().flatten(1).sum(1) == 0).nonzero()[0]) for image in first.images]
        assert y[rows].tolist() == default_labels(3, 2).tolist() and len(set(rows)) == 6, method
    herded = select("herding", x, y, SPEC, seed=0, scores=scores).images
    assert torch.equal(herded[:2], x[coresets.herding(scores.features[:6], 2)])  # class 0 is the first 6 rows


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    write_tiny(root / "data", per_class=12)
    return root


@pytest.mark.parametrize("method", ["random", "kcenter", "forgetting_band"])
def test_ddkit_baseline_writes_each_method_as_a_verified_export_with_its_record(tiny, method):
    out = tiny / method
    done = CliRunner().invoke(app, ["baseline", "tinyimagenet", "--data-root", str(tiny / "data"), "--out", str(out),
                                    "--method", method, "--seed", "2", "--score-epochs", "1", "--score-models", "1",
                                    "--device", "cpu", "--json"])
    assert done.exit_code == 0, done.output
    manifest = json.loads(done.stdout)
    assert manifest["verify"]["ok"] and manifest["versions"]["torch"] == torch.__version__
    record = manifest["baseline"]
    assert (record["method"], record["seed"]) == (method, 2) and record["selection_seconds"] >= 0
    assert ("score_epochs" in record["parameters"]) == (method != "random")
    images, labels, spec = load_split("tinyimagenet", tiny / "data", "train")
    chosen = load_torch(out / "tinyimagenet.pt")
    for i, image in enumerate(chosen):  # image i is a training image of class i // ipc
        assert any(torch.equal(image, images[j]) for j in (labels == i // spec.ipc).nonzero().flatten())


def test_the_next_method_reads_the_proxy_the_first_one_trained(tiny):
    common = ["--data-root", str(tiny / "data"), "--seed", "3", "--score-epochs", "1", "--score-models", "1",
              "--device", "cpu", "--cache-dir", str(tiny / "cache"), "--json"]
    runs = [CliRunner().invoke(app, ["baseline", "tinyimagenet", "--out", str(tiny / f"cached-{m}"), "--method", m,
                                     *common]) for m in ("herding", "el2n_easy")]
    assert all(r.exit_code == 0 for r in runs), [r.output for r in runs]
    first, second = (json.loads(r.stdout)["baseline"]["parameters"] for r in runs)
    assert "proxy_read_from" not in first and second["proxy_seconds"] == first["proxy_seconds"]
    assert Path(second["proxy_read_from"]).parent == tiny / "cache"


def test_an_unknown_method_or_an_empty_proxy_is_one_error_line_before_any_work(tiny):
    unknown = CliRunner().invoke(app, ["baseline", "tinyimagenet", "--data-root", str(tiny / "data"), "--out",
                                       str(tiny / "x"), "--method", "best"])
    assert unknown.exit_code == 2 and unknown.stderr.startswith("error: --method: unknown method 'best'; choose random")
    empty = CliRunner().invoke(app, ["baseline", "tinyimagenet", "--data-root", str(tiny / "nowhere"), "--out",
                                     str(tiny / "y"), "--method", "herding", "--score-epochs", "0"])
    assert empty.exit_code == 1 and empty.stderr == "error: --score-epochs and --score-models must be at least 1\n"


def test_with_an_expert_store_the_coresets_read_its_experts_as_the_init_parts_do(tiny):
    images, labels, spec = load_split("tinyimagenet", tiny / "data", "train")
    model = ModelConfig.for_spec(spec, width=8, depth=1)
    train_experts(images, labels, images, labels, spec, ExpertConfig(num_experts=1, epochs=2, batch_size=12, lr=0.05),
                  tiny / "experts", model=model)
    done = CliRunner().invoke(app, ["baseline", "tinyimagenet", "--data-root", str(tiny / "data"), "--out",
                                    str(tiny / "from-experts"), "--method", "herding", "--experts",
                                    str(tiny / "experts"), "--device", "cpu", "--json"])
    assert done.exit_code == 0, done.output
    net = load_flat_(ConvNet(model), ExpertStore(tiny / "experts").trajectories(spec, model, 1).last(0)).eval()
    with torch.no_grad():
        features = net.embed(images)
    rows = torch.cat([torch.nonzero(labels == c).flatten()[coresets.herding(features[labels == c], spec.ipc)]
                      if (labels == c).sum() > spec.ipc else None for c in range(spec.num_classes)])
    assert torch.equal(load_torch(tiny / "from-experts" / "tinyimagenet.pt"), images[rows])
    assert json.loads(done.stdout)["baseline"]["parameters"]["experts"] == str(tiny / "experts")
    missing = CliRunner().invoke(app, ["baseline", "tinyimagenet", "--data-root", str(tiny / "data"), "--out",
                                       str(tiny / "none"), "--method", "herding", "--experts", str(tiny / "nowhere")])
    assert missing.exit_code == 1 and missing.stderr.startswith(f"error: {tiny / 'nowhere'}: no expert store here")
