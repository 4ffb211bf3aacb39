"""What an expert store and a checkpoint are compared on (``recipes.identity``, docs/parts.md): each chosen part as
its name and its own parameters, nothing of the parts not chosen; and the files the kit wrote before parts owned
their parameters (every part's parameters flat in the section, chosen or not) read the same, nothing retrained.

The flat dicts below are what the kit at 8f602a5 wrote (``asdict(ExpertConfig(...))``, printed by that version):
they are the pinned description of its files. The checkpoint of that version is resumed in
``test_distill.test_interrupted_run_resumes_to_the_same_result``.
"""

from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from challenge_kit.ablate import expert_dir
from challenge_kit.core.contract import CIFAR100
from challenge_kit.core.errors import KitFileError
from challenge_kit.core.models import ModelConfig
from challenge_kit.core.reading import read_metadata
from challenge_kit.core.storage import save_tensors
from challenge_kit.experts.store import expert_files, expert_path
from challenge_kit.experts.training import train_experts
from challenge_kit.parts import Choice, GsamParams, choose
from challenge_kit.recipes import ExpertConfig, Recipe
from challenge_kit.recipes.configs import section_dict
from challenge_kit.recipes.identity import expert_settings, resume_differences

SPEC = replace(CIFAR100.subset(3, ipc=2), image_size=8)
MODEL = ModelConfig.for_spec(SPEC, width=4, depth=1)

# ExpertConfig(num_experts=1, epochs=2, batch_size=8, lr=0.05, seed=3, objective="sgd", rho=0.05) as 8f602a5 saved
# it: plain SGD, with GSAM's rho (and every other part's parameters) recorded beside it.
FLAT_SGD = {"num_experts": 1, "epochs": 2, "lr": 0.05, "momentum": 0.0, "weight_decay": 0.0, "batch_size": 8,
            "lr_decay_epoch": 0, "lr_decay": 0.5, "objective": "sgd", "rho": 0.05, "alpha": 0.3, "adaptive": True,
            "clip_start": 0.5, "clip_epochs": 5, "gp_weight": 1.0, "gp_target": 1.0, "schedule": "full",
            "initial_ratio": 0.75, "add_end_epoch": 20, "drop_easy": 0.1, "score_models": 2, "score_epochs": 2,
            "seed": 3}
# The same with objective="smooth", clip_epochs=1.
FLAT_SMOOTH = {**FLAT_SGD, "objective": "smooth", "rho": 0.01, "clip_epochs": 1}
# DistillConfig() as 8f602a5 saved it in a checkpoint's recipe.
FLAT_DISTILL = {"iterations": 10000, "syn_steps": 40, "expert_epochs": 2, "min_start_epoch": 0,
                "current_max_start_epoch": 15, "max_start_epoch": 20, "interval": 100, "batch_syn": 1000,
                "lr_img": 1000.0, "lr_lr": 1e-05, "lr_init": 0.01, "momentum": 0.5, "threshold": 1.0, "grad": "exact",
                "init": "real_correct", "labels": "hard", "lr_labels": 10.0, "labels_momentum": 0.9, "label_epoch": -1,
                "label_experts": 0, "mask": "all", "discard_ratio": 0.25, "weights": "uniform", "balance_offset": 8.0,
                "terms": "final", "perturb": "none", "perturb_scale": 0.1, "seed": 0, "checkpoint_every": 100}
SGD = ExpertConfig(num_experts=1, epochs=2, batch_size=8, lr=0.05, seed=3, objective=Choice("sgd"))


def test_a_part_is_its_name_and_its_own_parameters_whichever_version_wrote_it():
    settings = {"lr": 0.05, "momentum": 0.0, "weight_decay": 0.0, "batch_size": 8, "lr_decay_epoch": 0,
                "lr_decay": 0.5, "objective": {"name": "sgd"}, "schedule": {"name": "full"}, "seed": 3,
                "arithmetic": "float32"}  # written before the setting: float32, the only arithmetic there was
    assert expert_settings(FLAT_SGD) == expert_settings(section_dict(SGD)) == settings
    smooth = replace(SGD, objective=choose("objective", "smooth", clip_epochs=1))
    assert expert_settings(FLAT_SMOOTH) == expert_settings(section_dict(smooth)) == {
        **settings, "objective": {"name": "smooth", "clip_start": 0.5, "clip_epochs": 1, "gp_weight": 1.0,
                                  "gp_target": 1.0}}
    assert section_dict(smooth)["objective"] == {"name": "smooth", "clip_start": 0.5, "clip_epochs": 1,
                                                 "gp_weight": 1.0, "gp_target": 1.0}  # the recipe file's look
    gsam = expert_settings({**FLAT_SGD, "objective": "gsam"})["objective"]
    assert gsam == {"name": "gsam", "rho": 0.05, "alpha": 0.3, "adaptive": True}  # its own, as written


def test_a_checkpoint_resumes_unless_a_setting_that_changes_the_result_differs():
    now = Recipe(dataset="cifar100", experts=SGD).to_dict()
    flat = {**now, "experts": FLAT_SGD, "distill": FLAT_DISTILL}
    assert resume_differences(flat, now, 100) == []  # the flat form, and GSAM's rho beside plain SGD
    labels = {**now, "profile": "quick", "method": "renamed", "description": "x",
              "distill": {**now["distill"], "checkpoint_every": 7}}
    assert resume_differences(labels, now, 100) == []
    longer = {**now, "distill": {**now["distill"], "iterations": 20000}}
    assert resume_differences(longer, now, 9999) == []  # short of both counts: the same run so far
    assert resume_differences(longer, now, 10000) == [("distill.iterations", 20000, 10000)]
    assert resume_differences(now, longer, 10000) == [("distill.iterations", 10000, 20000)]  # decided already
    rho = {**now, "experts": {**now["experts"], "objective": {"name": "gsam", "rho": 0.05, "alpha": 0.3,
                                                              "adaptive": True}}}
    gsam = Recipe(dataset="cifar100", experts=replace(SGD, objective=Choice("gsam", GsamParams()))).to_dict()
    assert resume_differences(rho, gsam, 1) == [("experts.objective.rho", 0.05, 0.01)]
    unscored = {**now, "eval": {k: v for k, v in now["eval"].items() if k != "scorer"}}  # before eval.scorer
    assert resume_differences(unscored, now, 1) == [("eval.scorer", "faithful", "fast")]
    fast = {**now, "distill": {**now["distill"], "arithmetic": "fast"}}
    before = {**now, "distill": {k: v for k, v in now["distill"].items() if k != "arithmetic"}}  # before it
    assert resume_differences(before, now, 1) == []  # a run saved before the setting was a float32 one
    assert resume_differences(before, fast, 1) == [("distill.arithmetic", "float32", "fast")]


def _data():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat_interleave(4)
    x = torch.randn(len(y), 3, 8, 8, generator=g) + y.view(-1, 1, 1, 1)
    return x, y, x[:3], y[:3]


def _as_written_before(path, config: dict) -> None:
    """The expert file as 8f602a5 left it: its settings flat (the kit's own writer, everything else as is)."""
    save_tensors(load_file(str(path)), path, {**read_metadata(path), "config": config})


def test_an_expert_store_written_before_parts_owned_their_parameters_is_reused_and_nothing_retrained(tmp_path):
    store = tmp_path / "store"
    train_experts(*_data(), SPEC, SGD, store, model=MODEL)
    path = expert_path(store, 0)
    _as_written_before(path, FLAT_SGD)
    before = path.read_bytes()
    events = []
    train_experts(*_data(), SPEC, SGD, store, model=MODEL, progress=events.append)
    assert path.read_bytes() == before  # no epoch ran, nothing rewritten
    assert [e["kind"] for e in events] == ["plan", "skip"] and events[0]["total"] == 0
    assert expert_dir(store, SGD) == store  # ablate's shared store is the same one

    # one keyed by ablate before: found by its experts' settings, whatever key named it
    keyed = store / "by-settings" / "smooth-full-0123456789"
    keyed.mkdir(parents=True)
    (keyed / path.name).write_bytes(before)
    _as_written_before(keyed / path.name, FLAT_SMOOTH)
    assert expert_dir(store, replace(SGD, objective=choose("objective", "smooth", clip_epochs=1))) == keyed

    with pytest.raises(KitFileError, match=r"was trained with other settings \(experts\.lr 0\.05 -> 0\.02\)"):
        train_experts(*_data(), SPEC, replace(SGD, lr=0.02), store, model=MODEL)
    with pytest.raises(KitFileError, match=r'other settings \(experts\.arithmetic "float32" -> "fast"\)'):
        train_experts(*_data(), SPEC, replace(SGD, arithmetic="fast"), store, model=MODEL)  # it was float32
    train_experts(*_data(), SPEC, replace(SGD, epochs=3), store, model=MODEL)  # continued, not retrained
    assert torch.equal(load_file(str(path))["snapshots"][:3], load_file(str(keyed / path.name))["snapshots"])
    assert read_metadata(path)["config"]["objective"] == {"name": "sgd"} and len(expert_files(store)) == 1
