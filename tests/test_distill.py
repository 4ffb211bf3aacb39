"""The M-DATM run around the matching math: init, schedule, skipping, model selection, resume."""

from dataclasses import replace

import pytest
import torch

from challenge_kit import distill as distill_mod
from challenge_kit.contract import CIFAR100, default_labels
from challenge_kit.distill import BEST, CHECKPOINT, distill, select_real
from challenge_kit.experts import train_experts
from challenge_kit.recipes import DistillConfig, EvalConfig, ExpertConfig, Recipe
from challenge_kit.storage import DistilledArtifact, KitFileError

SPEC = replace(CIFAR100.subset(3, ipc=4), image_size=16)  # small images keep the CPU test fast


def _real(n_per_class=12, seed=0):
    """Learnable class-coloured images with texture, challenge-normalized scale."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(SPEC.num_classes).repeat_interleave(n_per_class)
    images = torch.randn(len(labels), 3, 16, 16, generator=g) * 0.5
    for c in range(SPEC.num_classes):
        images[labels == c, c] += 1.5
    return images, labels


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("experts")
    x, y = _real()
    tx, ty = _real(4, seed=1)
    train_experts(x, y, tx, ty, SPEC, ExpertConfig(num_experts=2, epochs=3, batch_size=16), root)
    return root


def _recipe(**distill):
    base = DistillConfig(iterations=6, syn_steps=3, expert_epochs=1, min_start_epoch=0, current_max_start_epoch=0,
                         max_start_epoch=2, interval=2, batch_syn=6, lr_img=100.0, lr_lr=1e-5, checkpoint_every=2,
                         init="real_correct", threshold=10.0)
    return Recipe(dataset="cifar100", profile="test", experts=ExpertConfig(num_experts=2, epochs=3),
                  distill=replace(base, **distill), eval=EvalConfig(every=3, epochs=2, rounds=1))


def _run(recipe, store, run_dir, **kw):
    x, y = _real()
    tx, ty = _real(4, seed=1)
    return distill(recipe, SPEC, store, run_dir, real_images=x, real_labels=y, test_images=tx, test_labels=ty,
                   show_progress=False, **kw)


def test_select_real_takes_ipc_images_of_each_class_in_default_order():
    x, y = _real()
    picked = select_real(x, y, SPEC, "real", torch.Generator().manual_seed(0))
    assert picked.shape == SPEC.shape
    for i, c in enumerate(default_labels(SPEC.num_classes, SPEC.ipc).tolist()):
        assert any(torch.equal(picked[i], x[j]) for j in torch.nonzero(y == c).flatten())


def test_select_real_correct_prefers_images_the_classifier_gets_right():
    x, y = _real()
    colour = lambda imgs: imgs.mean(dim=(2, 3))  # noqa: E731  (predicts the brightest channel)
    class1 = torch.nonzero(y == 1).flatten()
    x[class1[5:], 1] -= 3.0  # only 5 of class 1's images are still classified right
    picked = select_real(x, y, SPEC, "real_correct", torch.Generator().manual_seed(0), colour)
    right = x[class1[:5]]
    for img in picked[SPEC.ipc:2 * SPEC.ipc]:
        assert any(torch.equal(img, r) for r in right)


def test_run_updates_images_schedules_T_and_selects_the_best(store, tmp_path):
    state = _run(_recipe(), store, tmp_path / "run")
    assert state.iteration == 6 and state.skipped == 0
    assert state.upper == 2  # T grows by one every `interval` (2) iterations, capped at T+ = 2
    assert [e["iteration"] for e in state.evals] == [3, 6]
    assert state.best_iteration in (3, 6)
    assert max(h["start_epoch"] for h in state.history) <= 2
    art = DistilledArtifact.load(tmp_path / "run" / BEST)
    assert art.images.shape == SPEC.shape and torch.equal(art.labels, default_labels(3, 4))
    assert not torch.equal(art.images, _run_init(store, tmp_path))


def _run_init(store, tmp_path):
    """The initialization alone: a run with zero iterations keeps the initial images."""
    state = _run(_recipe(iterations=0), store, tmp_path / "init")
    return state.best_images


def test_threshold_skips_updates_and_counts_them(store, tmp_path):
    state = _run(_recipe(threshold=1e-9, iterations=3), store, tmp_path / "run")
    assert state.skipped == 3
    assert torch.equal(state.best_images, _run_init(store, tmp_path))


def test_refuses_to_overwrite_an_existing_run(store, tmp_path):
    _run(_recipe(iterations=2), store, tmp_path / "run")
    with pytest.raises(KitFileError, match="--resume"):
        _run(_recipe(iterations=2), store, tmp_path / "run")


def test_experts_too_short_for_the_matching_range_are_rejected(store, tmp_path):
    with pytest.raises(KitFileError, match="epochs"):
        _run(_recipe(max_start_epoch=5), store, tmp_path / "run")


def test_interrupted_run_resumes_to_the_same_result(store, tmp_path, monkeypatch):
    full = _run(_recipe(), store, tmp_path / "full")

    calls = {"n": 0}
    real_match = distill_mod.match

    def dying_match(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real_match(*args, **kw)

    monkeypatch.setattr(distill_mod, "match", dying_match)
    with pytest.raises(KeyboardInterrupt):
        _run(_recipe(), store, tmp_path / "cut")
    monkeypatch.setattr(distill_mod, "match", real_match)
    assert (tmp_path / "cut" / CHECKPOINT).exists() and not (tmp_path / "cut" / BEST).exists()

    resumed = _run(_recipe(), store, tmp_path / "cut", resume=True)
    assert torch.equal(resumed.best_images, full.best_images)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    assert resumed.evals == full.evals

    with pytest.raises(KitFileError, match="different recipe"):
        _run(_recipe(lr_img=5.0), store, tmp_path / "cut", resume=True)
