"""The distillation run around the matching math: schedule, skipping (and a run that stops when it skips all),
live history, paired model selection that can prefer the initialization, checkpoint and exact resume, research
labels, experts whose snapshots do not move."""

import json
from dataclasses import replace

import helpers
import pytest
import torch
from fakes import cpu_buffer, write_tiny
from helpers import SMALL as SMALL_ARGS
from helpers import SPEC, _real, _recipe, _run
from references import official_scores
from safetensors.torch import load_file, save_file

from challenge_kit import distill as distill_mod
from challenge_kit import parts
from challenge_kit.context import RunContext
from challenge_kit.core.artifact import DistilledArtifact
from challenge_kit.core.contract import default_labels
from challenge_kit.core.errors import KitFileError, NothingDistilled
from challenge_kit.core.models import ModelConfig
from challenge_kit.core.reading import load_torch, read_metadata
from challenge_kit.core.storage import save_torch
from challenge_kit.distill import distill
from challenge_kit.experts.buffers import import_buffers
from challenge_kit.experts.store import ExpertStore, expert_files
from challenge_kit.experts.training import train_experts
from challenge_kit.recipes import EvalConfig, ExpertConfig
from challenge_kit.runs import BEST, CHECKPOINT, HISTORY, SUMMARY, read_checkpoint, read_history
from challenge_kit.selection import Candidate, Rounds, Selector
from evaluator.fast import native_bfloat16


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("experts")
    x, y = _real()
    tx, ty = _real(4, seed=1)
    train_experts(x, y, tx, ty, SPEC, ExpertConfig(num_experts=2, epochs=3, batch_size=16), root)
    return root


REAL = parts.choose("init", "real")  # random real images of each class, whatever the experts make of them


# _recipe(iterations=8) as the kit at 8f602a5 saved it in a checkpoint (``asdict``, printed by that version): every
# part's parameters flat in its section, chosen or not (tests/kit/recipes/test_identity.py).
FLAT_RECIPE = {
    "dataset": "cifar100", "profile": "test", "method": "M-DATM", "description": "",
    "experts": {"num_experts": 2, "epochs": 3, "lr": 0.01, "momentum": 0.0, "weight_decay": 0.0, "batch_size": 256,
                "lr_decay_epoch": 0, "lr_decay": 0.5, "objective": "gsam", "rho": 0.01, "alpha": 0.3,
                "adaptive": True, "clip_start": 0.5, "clip_epochs": 5, "gp_weight": 1.0, "gp_target": 1.0,
                "schedule": "full", "initial_ratio": 0.75, "add_end_epoch": 20, "drop_easy": 0.1, "score_models": 2,
                "score_epochs": 2, "seed": 0},
    "distill": {"iterations": 8, "syn_steps": 3, "expert_epochs": 1, "min_start_epoch": 0,
                "current_max_start_epoch": 0, "max_start_epoch": 2, "interval": 2, "batch_syn": 6, "lr_img": 100.0,
                "lr_lr": 1e-05, "lr_init": 0.01, "momentum": 0.5, "threshold": 10.0, "grad": "exact",
                "init": "real_correct", "labels": "hard", "lr_labels": 10.0, "labels_momentum": 0.9, "label_epoch": -1,
                "label_experts": 0, "mask": "all", "discard_ratio": 0.25, "weights": "uniform", "balance_offset": 8.0,
                "terms": "final", "perturb": "none", "perturb_scale": 0.1, "seed": 0, "checkpoint_every": 2},
    "eval": {"every": 3, "epochs": 3, "rounds": 2, "final_rounds": 2, "split": "holdout", "holdout_per_class": 10,
             "seed": 0, "scorer": "fast"}}


def test_run_updates_images_schedules_T_and_records_every_iteration(store, tmp_path):
    state = _run(_recipe(), store, tmp_path / "run")
    assert state.iteration == 6 and state.skipped == 0
    assert state.upper == 2  # T grows by one every `interval` (2) iterations, capped at T+ = 2
    assert [c["iteration"] for c in state.candidates] == [0, 3, 6]  # the initialization is candidate 0
    history = read_history(tmp_path / "run")
    assert [h["iteration"] for h in history] == list(range(1, 7))
    assert {"loss", "terms", "lr", "image_change", "grad_norm", "start_epoch", "expert", "skipped"} <= set(history[0])
    assert all(h["image_change"] > 0 and h["grad_norm"] > 0 and not h["skipped"] for h in history)
    assert max(h["start_epoch"] for h in history) <= 2
    art = DistilledArtifact.load(tmp_path / "run" / BEST)
    assert art.images.shape == SPEC.shape and torch.equal(art.labels, default_labels(3, 4))
    assert art.extra["iteration"] == state.decision["export"]
    summary = json.loads((tmp_path / "run" / SUMMARY).read_text())
    assert summary["selection"]["split"] == "holdout" and summary["selection"]["reason"]
    assert summary["parts"]["labels"] == "hard"


def test_candidates_are_scored_with_the_same_seeds_as_the_official_recipe_scores_them(store, tmp_path):
    recipe = _recipe()
    state = _run(replace(recipe, eval=replace(recipe.eval, scorer="faithful")), store, tmp_path / "run")
    seeds = [c["seeds"] for c in state.candidates]
    assert all(s == seeds[0] for s in seeds) and len(seeds[0]) == 2
    assert all(c["se"] >= 0 for c in state.candidates) and state.candidates[-1]["iteration"] == state.iteration
    select = _real(4, seed=2)  # what _run hands the selection
    for c, images in ((state.candidates[0], state.init["images"]), (state.candidates[-1], state.images)):
        rounds = official_scores(images, default_labels(3, 4), 3, *select, c["seeds"], recipe.eval.epochs)
        assert c["rounds"] == rounds and c["mean"] == pytest.approx(sum(rounds) / len(rounds)), (c, rounds)


def test_skipped_iterations_are_counted_in_the_summary(store, tmp_path):
    """DATM's threshold: a match whose loss is above it changes nothing (iteration 1's is 1.34 here)."""
    state = _run(_recipe(threshold=1.0, iterations=4, every=0), store, tmp_path / "run")
    history = read_history(tmp_path / "run")
    assert history[0]["skipped"] and history[0]["loss"] > 1.0 and history[0]["image_change"] == 0
    assert 0 < state.skipped < 4 and state.skipped == sum(h["skipped"] for h in history)
    assert state.skipped == sum(h["loss"] > 1.0 for h in history)
    assert json.loads((tmp_path / "run" / SUMMARY).read_text())["skipped"] == state.skipped


def test_a_short_run_that_skipped_every_iteration_stops_keeps_its_checkpoint_and_exports_nothing(store, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(NothingDistilled) as info:
        _run(_recipe(threshold=1e-9, iterations=3, every=0, syn_steps=1, batch_syn=1), store, run)
    assert str(info.value).startswith(f"{run}: distillation stopped at iteration 3: its last 3 iterations were all "
                                      "skipped, nothing distilled; loss ")
    assert "above the threshold 1e-09 at best" in str(info.value) and str(info.value).endswith(
        "the checkpoint is kept, nothing exported")
    assert not (run / BEST).exists() and not (run / SUMMARY).exists()
    state = read_checkpoint(run / CHECKPOINT)[2]
    assert state.iteration == 3 and state.skipped == 3 and len(state.streak) == 3 and len(read_history(run)) == 3
    with pytest.raises(NothingDistilled, match="stopped at iteration 3"):  # resumed: nothing left to run, nor export
        _run(_recipe(threshold=1e-9, iterations=3, every=0, syn_steps=1, batch_syn=1), store, run, resume=True)
    assert not (run / BEST).exists()


def test_a_run_stops_once_its_last_ten_iterations_were_all_skipped(store, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(NothingDistilled, match="stopped at iteration 10: its last 10 iterations were all skipped"):
        _run(_recipe(threshold=1e-9, iterations=40, every=0, syn_steps=1, batch_syn=1), store, run)
    assert read_checkpoint(run / CHECKPOINT)[2].iteration == 10 and not (run / BEST).exists()


def test_the_command_that_distilled_nothing_says_why_in_one_line_and_exits_1(tmp_path):
    """``ddkit distill`` (``make-submission`` runs the same loop before its export): the checkpoint kept, no set."""
    write_tiny(tmp_path / "data", per_class=10)
    common = ["--data-root", tmp_path / "data", "--cache-dir", tmp_path / "cache", *SMALL_ARGS]

    def ddkit(*args, then=()):
        return helpers.ddkit(*args, *common, *then)

    assert ddkit("experts", "tinyimagenet", "--out", tmp_path / "store").exit_code == 0
    run = tmp_path / "run"
    result = ddkit("distill", "tinyimagenet", "--experts", tmp_path / "store", "--out", run,
                   then=["--set", "distill.threshold=1e-9"])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and len(errors) == 1 and "Traceback" not in result.output, result.output
    assert errors[0].startswith(f"error: {run}: distillation stopped at iteration 4: its last 4 iterations were all "
                                "skipped, nothing distilled; loss "), errors[0]
    assert (run / CHECKPOINT).is_file() and not (run / BEST).exists() and not (run / SUMMARY).exists()


def test_experts_whose_snapshots_are_too_close_to_divide_by_stop_the_run_naming_the_cause(store, tmp_path):
    """Snapshots 1e-30 apart in one weight: a distance that squares to 0 in float32, every loss infinite."""
    close = tmp_path / "close"
    close.mkdir()
    for path in expert_files(store):
        tensors, meta = load_file(str(path)), read_metadata(path)
        rows = tensors["snapshots"][:1].repeat(len(tensors["snapshots"]), 1)
        rows[:, 0] = torch.arange(len(rows)) * 1e-30
        tensors["snapshots"] = rows
        save_file(tensors, str(close / path.name), {k: json.dumps(v) for k, v in meta.items()})
    with pytest.raises(NothingDistilled, match="every loss was infinite or NaN: an expert's start and target "
                                               "snapshots are the same or nearly"):
        _run(_recipe(init=REAL, every=0, iterations=3, syn_steps=1, batch_syn=1), close, tmp_path / "run")


def test_a_buffer_made_with_copies_is_distilled_from_one_made_on_a_cpu_without_them_is_refused(tmp_path):
    """The DATM/MTT buffer a machine without a GPU writes: its snapshots, all one tensor, are refused at import,
    and where such a trajectory is in a store by other means, where matching reads it; with copies, it distils."""
    x, y = _real()
    for name, copy in (("aliased.pt", False), ("copied.pt", True)):
        torch.save(cpu_buffer(ModelConfig.for_spec(SPEC), x, y, epochs=3, copy=copy), tmp_path / name)
    store = tmp_path / "store"
    with pytest.raises(KitFileError, match="aliased.pt: trajectory 0: all 4 snapshots .epochs 0..3. are identical"):
        import_buffers([tmp_path / "aliased.pt"], store, SPEC)
    (path,) = import_buffers([tmp_path / "copied.pt"], store, SPEC)
    state = _run(_recipe(init=REAL, every=0, iterations=2, syn_steps=1, batch_syn=1), store, tmp_path / "run")
    assert state.skipped == 0 and not torch.equal(DistilledArtifact.load(tmp_path / "run" / BEST).images,
                                                  state.init["images"])

    tensors, meta = load_file(str(path)), read_metadata(path)
    tensors["snapshots"][:] = tensors["snapshots"][-1]  # the aliased trajectory, written straight into the store
    save_file(tensors, str(path), {k: json.dumps(v) for k, v in meta.items()})
    with pytest.raises(KitFileError, match=r"expert_0000.safetensors: snapshots \d and \d are identical: weights "
                                           "that do not change teach nothing"):
        _run(_recipe(init=REAL, every=0, iterations=2, syn_steps=1, batch_syn=1), store, tmp_path / "again")
    assert [s.status for s in ExpertStore(store).status()] == ["corrupt"]


def test_a_run_that_makes_the_set_worse_exports_its_initialization_and_says_so(store, tmp_path):
    """An absurd image lr wrecks the images; selection on held-out data keeps the initialization."""
    state = _run(_recipe(lr_img=1e7, iterations=4, every=2), store, tmp_path / "run")
    init, wrecked = state.candidates[0], state.candidates[1:]
    assert all(c["mean"] < init["mean"] for c in wrecked), state.candidates
    assert state.decision["export"] == 0 and "initialization" in state.decision["reason"]
    art = DistilledArtifact.load(tmp_path / "run" / BEST)
    assert art.extra["iteration"] == 0 and torch.equal(art.images, state.init["images"])
    assert not torch.equal(state.images, state.init["images"])  # the run itself did move


def test_without_selection_the_last_iteration_is_exported(store, tmp_path):
    state = _run(_recipe(every=0, iterations=2), store, tmp_path / "run")
    assert state.candidates == [] and state.decision["export"] == 2 and "selection off" in state.decision["reason"]
    assert torch.equal(DistilledArtifact.load(tmp_path / "run" / BEST).images, state.images)


def test_the_recipes_arithmetic_reaches_the_inner_steps(store, tmp_path):
    """``distill.arithmetic = "fast"`` computes the inner steps in bfloat16 where the CPU has it natively (the same
    draws, a slightly different gradient), and is float32, bit for bit, where it has not."""
    plain = _run(_recipe(every=0, iterations=1), store, tmp_path / "float32")
    fast = _run(_recipe(every=0, iterations=1, arithmetic="fast"), store, tmp_path / "fast")
    if not native_bfloat16(torch.device("cpu")):
        assert torch.equal(fast.images, plain.images)
        return
    (was,), (now,) = read_history(tmp_path / "float32"), read_history(tmp_path / "fast")
    assert (now["expert"], now["start_epoch"]) == (was["expert"], was["start_epoch"])
    assert now["grad_norm"] != was["grad_norm"] and now["grad_norm"] == pytest.approx(was["grad_norm"], rel=0.02)
    assert not torch.equal(fast.images, plain.images)


def test_refuses_to_overwrite_an_existing_run(store, tmp_path):
    _run(_recipe(iterations=2), store, tmp_path / "run")
    with pytest.raises(KitFileError, match="--resume"):
        _run(_recipe(iterations=2), store, tmp_path / "run")


def test_experts_too_short_for_the_matching_range_are_rejected(store, tmp_path):
    with pytest.raises(KitFileError, match="epochs"):
        _run(_recipe(max_start_epoch=5), store, tmp_path / "run")


def test_a_corrupt_snapshot_read_during_matching_is_an_error_not_a_skipped_iteration(store, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for path in expert_files(store):
        tensors, meta = load_file(str(path)), read_metadata(path)
        tensors["snapshots"][:, :10] = float("nan")
        save_file(tensors, str(bad / path.name), {k: json.dumps(v) for k, v in meta.items()})
    with pytest.raises(KitFileError, match="non-finite"):
        _run(_recipe(init=REAL, every=0), bad, tmp_path / "run")


def test_interrupted_run_resumes_to_the_same_result(store, tmp_path, monkeypatch):
    """Also when the checkpoint's recipe is in the flat form of the kit before parts owned their parameters."""
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
        _run(_recipe(iterations=8), store, tmp_path / "cut")  # a longer run, cut short
    monkeypatch.setattr(distill_mod, "match", real_match)
    assert (tmp_path / "cut" / CHECKPOINT).exists() and not (tmp_path / "cut" / BEST).exists()
    assert len(read_history(tmp_path / "cut")) == 5  # iterations 1-5 ran; the checkpoint holds 4
    saved = load_torch(tmp_path / "cut" / CHECKPOINT)
    save_torch({**saved, "recipe": FLAT_RECIPE}, tmp_path / "cut" / CHECKPOINT)  # as the kit before parts wrote it

    # resumed as a 6-iteration run (the checkpoint is short of both counts), checkpointed more often, under
    # another name: none of it changes the result
    resumed = _run(replace(_recipe(checkpoint_every=1), method="renamed", profile="other"), store, tmp_path / "cut",
                   resume=True)
    assert torch.equal(resumed.images, full.images) and torch.equal(resumed.lr, full.lr)
    assert resumed.candidates == full.candidates and resumed.decision == full.decision
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(read_history(tmp_path / "cut")) == strip(read_history(tmp_path / "full"))
    assert (tmp_path / "cut" / HISTORY).read_text().count("\n") == 6

    with pytest.raises(KitFileError, match=r"different recipe .* \(distill\.lr_img: 100\.0 there, 5\.0 here\)"):
        _run(_recipe(lr_img=5.0), store, tmp_path / "cut", resume=True)
    with pytest.raises(KitFileError, match=r"\(distill\.iterations: 6 there, 8 here\)"):  # a finished run decided
        _run(_recipe(iterations=8), store, tmp_path / "full", resume=True)


def test_learned_soft_labels_are_trained_and_recorded_as_a_research_artifact(store, tmp_path):
    soft = parts.choose("labels", "learned_soft", lr_labels=50.0)
    state = _run(_recipe(labels=soft, every=0, iterations=3), store, tmp_path / "run")
    assert state.labels.shape == (12, 3) and state.labels.is_floating_point()
    assert state.momentum.keys() == {"images", "lr", "labels"}
    art = DistilledArtifact.load(tmp_path / "run" / BEST)
    assert art.soft and torch.equal(art.labels, state.labels) and art.extra["labels_part"] == "learned_soft"
    assert art.extra["challenge_labels"] is False
    initial = _run(_recipe(labels=parts.choose("labels", "learned_soft"), every=0, iterations=0), store,
                   tmp_path / "init").labels
    assert not torch.equal(initial, state.labels)
    # the initial soft labels are expert logits: their argmax is mostly the default-order class
    assert (initial.argmax(1) == default_labels(3, 4)).float().mean() > 0.5


def test_assigned_soft_labels_follow_the_target_snapshot(store, tmp_path):
    state = _run(_recipe(labels=parts.choose("labels", "assigned_soft"), every=0, iterations=2), store,
                 tmp_path / "run")
    assert torch.equal(state.labels, default_labels(3, 4))  # nothing is learned
    art = DistilledArtifact.load(tmp_path / "run" / BEST)
    assert art.soft and art.labels.shape == (12, 3)


def test_experts_trained_on_other_data_than_the_runs_training_split_are_refused(store, tmp_path):
    """E.g. experts trained on the whole training split, then a run that holds some of it out for selection."""
    x, y = _real(seed=5)
    with pytest.raises(KitFileError, match="trained on other data than this run's training split"):
        distill(_recipe(), SPEC, store, tmp_path / "run", real_images=x, real_labels=y, select_images=x[:6],
                select_labels=y[:6], ctx=RunContext(progress=False))


def test_a_run_records_the_settings_that_trained_its_experts_and_warns_where_the_recipe_says_otherwise(
        store, tmp_path, caplog):
    """The store was trained with batches of 16, the recipe's experts section says 256: the experts are matched
    as they are, and the summary says what they are."""
    _run(_recipe(iterations=2, every=0), store, tmp_path / "run")
    trained = json.loads((tmp_path / "run" / SUMMARY).read_text())["expert_settings"]
    assert len(trained) == 1 and trained[0]["batch_size"] == 16 and trained[0]["lr"] == 0.01
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "other settings" in r.message]
    assert len(warned) == 1 and "batch_size 16 (recipe 256)" in warned[0] and str(store) in warned[0]
    caplog.clear()
    recipe = _recipe(iterations=2, every=0)
    _run(replace(recipe, experts=replace(recipe.experts, batch_size=16)), store, tmp_path / "again")
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_selection_on_the_test_split_is_recorded_as_such(store, tmp_path):
    state = _run(replace(_recipe(iterations=2, every=2), eval=EvalConfig(every=2, epochs=2, rounds=1, final_rounds=1,
                                                                      split="test")), store, tmp_path / "run")
    assert state.decision["split"] == "test"
    assert json.loads((tmp_path / "run" / SUMMARY).read_text())["selection"]["split"] == "test"


@pytest.mark.parametrize("leader_rounds, significant", [([0.21, 0.20, 0.24], False), ([0.23, 0.24, 0.25], True)])
def test_the_reason_says_whether_the_winning_margin_is_significant(monkeypatch, leader_rounds, significant):
    """Fresh rounds that favour the leader by less than 2 standard errors still export it, saying so."""
    selector = Selector(EvalConfig(final_rounds=3), SPEC, torch.zeros(1), torch.zeros(1), torch.device("cpu"))
    init, best = torch.zeros(2), torch.ones(2)
    fresh = {0.0: [0.20, 0.21, 0.22], 2.0: leader_rounds}
    monkeypatch.setattr(selector, "score", lambda images, rounds, seed, per_class=False:
                        Rounds(sum(fresh[float(images.sum())]) / 3, 0.0, fresh[float(images.sum())], []))
    candidates = [Candidate(0, Rounds(0.20, 0.0, [], [])), Candidate(5, Rounds(0.22, 0.0, [], []))]
    decision = selector.decide(candidates, init, best).to_dict()
    assert decision["export"] == 5 and decision["reason"].startswith("iteration 5 beat the initialization by +")
    assert ("not a significant gain" in decision["reason"]) is not significant


@pytest.mark.parametrize("leader_rounds, margin, significant", [
    ([0.19, 0.195, 0.2125], "+0.0075 +- 0.0088", False),  # differences -0.0025, 0, 0.025: their mean and s.e.
    ([0.22, 0.23, 0.235], "+0.0367 +- 0.0058", True),  # 0.0275, 0.035, 0.0475
])
def test_without_final_rounds_the_reason_gives_the_paired_margin_of_the_selection_rounds(leader_rounds, margin,
                                                                                         significant):
    """With ``final_rounds = 0`` the leader is exported on its selection rounds, paired with the initialization's:
    the margin is the mean of the per-seed differences and its standard error (stdev / sqrt(3))."""
    selector = Selector(EvalConfig(final_rounds=0), SPEC, torch.zeros(1), torch.zeros(1), torch.device("cpu"))
    init_rounds = [0.1925, 0.195, 0.1875]
    candidates = [Candidate(0, Rounds(sum(init_rounds) / 3, 0.0, init_rounds, [])),
                  Candidate(60, Rounds(sum(leader_rounds) / 3, 0.0, leader_rounds, []))]
    decision = selector.decide(candidates, torch.zeros(2), torch.ones(2)).to_dict()
    assert decision["export"] == 60 and decision["final"] is None
    assert f"{margin} over 3 paired selection rounds" in decision["reason"], decision["reason"]
    assert ("not a significant gain" in decision["reason"]) is not significant
