"""Model selection on its own: a candidate's score is the official recipe's rounds on the selection split (their
mean and standard error written out here), and the decision follows the paired rule docs/selection.md states, with
the fresh rounds seeded ``eval.seed + 1`` (docs/robustness.md) and the margin counted significant beyond 2
standard errors. Small sets and few epochs: each case trains in well under a second."""

import math
import statistics
from dataclasses import replace

import pytest
import torch
from references import official_round, official_scores, official_test, round_seed

from challenge_kit import selection
from challenge_kit.core.contract import CIFAR100, default_labels
from challenge_kit.recipes import EvalConfig
from challenge_kit.selection import Candidate, Rounds, Selector
from evaluator import fast
from evaluator.scorer import evaluate_images

SPEC = replace(CIFAR100.subset(3, ipc=2), image_size=16)
EPOCHS = 2
SEED = 4


def _set(shift: float, seed: int, per_class: int = SPEC.ipc) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-coloured images in default order; ``shift`` moves them all (a worse or better candidate)."""
    g = torch.Generator().manual_seed(seed)
    labels = default_labels(SPEC.num_classes, per_class)
    centres = torch.tensor([[1.5, -1, -1], [-1, 1.5, -1], [-1, -1, 1.5]]).view(3, 3, 1, 1)
    return centres[labels] + shift + 0.7 * torch.randn(len(labels), 3, 16, 16, generator=g), labels


@pytest.fixture(scope="module")
def split():
    return _set(0.0, 1, per_class=8)  # the selection split: 24 images the candidates never train on


def _selector(split, **config) -> Selector:
    return Selector(EvalConfig(epochs=EPOCHS, seed=SEED, scorer="faithful", **config), SPEC, *split,
                    torch.device("cpu"))


def _candidate(iteration: int, mean: float, rounds: list[float] = ()) -> Candidate:
    """A candidate as the decision reads it: its iteration, its mean and, where the margin is paired, its rounds."""
    return Candidate(iteration, Rounds(mean, 0.0, list(rounds), []))


def _official(images, split, seed: int, rounds: int) -> list[float]:
    seeds = [round_seed(seed, r) for r in range(rounds)]
    return official_scores(images, default_labels(SPEC.num_classes, SPEC.ipc), SPEC.num_classes, *split, seeds,
                           EPOCHS)


def test_a_score_is_the_official_rounds_with_their_mean_and_standard_error(split, monkeypatch):
    """Run where the default device would be a GPU (``torch.cuda.is_available`` says so): the selector's device
    (the CPU here) is the one used."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    images, _ = _set(0.0, 2)
    rounds = _official(images, split, 9, 3)
    got = _selector(split).score(images, 3, 9)
    assert got.to_dict() == {"mean": pytest.approx(sum(rounds) / 3, abs=1e-15), "rounds": rounds,
                   "se": pytest.approx(statistics.stdev(rounds) / math.sqrt(3), abs=1e-15),
                   "seeds": [9000, 9001, 9002]}
    candidate = _selector(split, rounds=2).candidate(7, images).to_dict()  # as a run's checkpoint holds it
    assert list(candidate) == ["iteration", "mean", "se", "rounds", "seeds", "per_class"]
    assert candidate["iteration"] == 7 and candidate["seeds"] == [round_seed(SEED, r) for r in range(2)]
    assert candidate["rounds"] == _official(images, split, SEED, 2) and len(candidate["per_class"]) == SPEC.num_classes


def test_the_fresh_rounds_decide_and_are_seeded_one_past_the_selections(split):
    """Two sets, each the other's initialization: the official fresh rounds (seed + 1) say which way it goes."""
    a, b = _set(0.0, 2)[0], _set(0.6, 3)[0]
    fresh = {"a": _official(a, split, SEED + 1, 3), "b": _official(b, split, SEED + 1, 3)}
    assert fresh["a"] != fresh["b"], "the sets must score apart for the decision to mean anything"
    for best, init, (leader, other) in ((a, b, ("a", "b")), (b, a, ("b", "a"))):
        candidates = [_candidate(0, 0.1), _candidate(30, 0.9)]
        decision = _selector(split, final_rounds=3).decide(candidates, init, best).to_dict()
        assert decision["final"]["leader"]["rounds"] == fresh[leader]
        assert decision["final"]["init"]["rounds"] == fresh[other]
        assert decision["final"]["leader"]["seeds"] == [round_seed(SEED + 1, r) for r in range(3)]
        diffs = [x - y for x, y in zip(fresh[leader], fresh[other], strict=True)]
        mean, se = sum(diffs) / 3, statistics.stdev(diffs) / math.sqrt(3)
        assert decision["final"]["difference"] == {"mean": pytest.approx(mean, abs=1e-15),
                                                   "se": pytest.approx(se, abs=1e-15), "rounds": 3}
        margin = f"{mean:+.4f} +- {se:.4f} over 3 fresh paired rounds"
        assert (decision["leader"], decision["split"]) == (30, "holdout")
        assert decision["candidates"] == [c.to_dict() for c in candidates]
        if mean > 0:
            weak = " (within 2 standard errors: not a significant gain)" if mean <= 2 * se else ""
            assert (decision["export"], decision["reason"]) == (30, f"iteration 30 beat the initialization by "
                                                                    f"{margin}{weak}")
        else:
            assert (decision["export"], decision["reason"]) == (0, f"iteration 30 led the selection rounds but not "
                                                                   f"the fresh ones ({margin}): exporting the "
                                                                   "initialization")
        assert set(decision["final"]["leader"]) == set(decision["final"]["init"]) == {
            "mean", "se", "rounds", "seeds", "per_class"}


def test_one_fresh_round_decides_and_a_tie_on_it_keeps_the_initialization(split):
    a = _set(0.0, 2)[0]
    candidates = [_candidate(0, 0.1), _candidate(30, 0.9)]
    decision = _selector(split, final_rounds=1).decide(candidates, a, a).to_dict()  # one set both ways: equal rounds
    assert decision["final"]["difference"] == {"mean": 0.0, "se": 0.0, "rounds": 1}
    assert decision["export"] == 0


def test_candidates_are_scored_every_so_many_iterations_and_at_the_last(split):
    assert _selector(split, every=1).enabled and not _selector(split, every=0).enabled
    assert [i for i in range(26) if _selector(split, every=10).due(i, 25)] == [0, 10, 20, 25]
    assert not any(_selector(split, every=0).due(i, 25) for i in range(26))


def test_when_the_initialization_leads_it_is_exported_without_fresh_rounds(split):
    selector = _selector(split)
    unscorable = torch.full((1,), float("nan"))  # never trained on: there are no fresh rounds in this case
    alone = selector.decide([_candidate(0, 0.4)], unscorable, unscorable).to_dict()
    assert (alone["export"], alone["leader"], alone["final"]) == (0, 0, None)
    assert alone["reason"] == "no candidate beat the initialization"
    tied = [_candidate(0, 0.4), _candidate(10, 0.3), _candidate(20, 0.4)]
    decision = selector.decide(tied, unscorable, unscorable).to_dict()  # a tie keeps the initialization
    assert (decision["export"], decision["leader"], decision["final"]) == (0, 0, None)
    assert decision["reason"] == ("no candidate beat the initialization; the best iteration, 20, scored 0.4000 "
                                  "against its 0.4000")
    assert decision["scorer"] == {"mode": "faithful", "precision": "float32", "compiled": False, "stacked": 1}
    behind = selector.decide([_candidate(0, 0.4), _candidate(10, 0.3)], unscorable, unscorable).to_dict()
    assert behind["reason"] == ("no candidate beat the initialization; the best iteration, 10, scored 0.3000 "
                                "against its 0.4000")


@pytest.mark.parametrize("leader_rounds, weak", [
    ([0.125, 0.125, 0.125, 0.625], True),  # differences 1/8, 1/8, 1/8, 5/8: mean 1/4, exactly 2 standard errors
    ([0.25, 0.25, 0.25, 1.0], False),  # mean 7/16, standard error 3/16: 2.33 standard errors
])
def test_a_margin_counts_only_beyond_two_standard_errors(split, leader_rounds, weak):
    selector = _selector(split, final_rounds=0)
    candidates = [_candidate(0, 0.0, [0.0] * 4), _candidate(8, sum(leader_rounds) / 4, leader_rounds)]
    decision = selector.decide(candidates, torch.zeros(1), torch.zeros(1)).to_dict()
    diffs = leader_rounds
    mean, se = sum(diffs) / 4, statistics.stdev(diffs) / 2
    assert (mean == 2 * se) is weak
    assert decision["export"] == 8 and decision["final"] is None
    assert decision["reason"] == (f"iteration 8 scored best ({mean:.4f} against the initialization's 0.0000: "
                                  f"{mean:+.4f} +- {se:.4f} over 4 paired selection rounds"
                                  f"{', within 2 standard errors: not a significant gain' if weak else ''}; "
                                  "no final rounds)")


def test_the_per_class_record_is_each_classs_share_over_the_official_rounds(split):
    images, labels = _set(0.0, 2)
    test_images, test_labels = split
    shares = []
    for r in range(2):
        _, net = official_round(images, labels, SPEC.num_classes, round_seed(SEED, r), EPOCHS)
        with torch.no_grad():
            predicted = net.eval()(test_images).argmax(1)
        shares.append([float((predicted[test_labels == c] == c).double().mean()) for c in range(SPEC.num_classes)])
        assert official_test(net, test_images, test_labels) == pytest.approx(sum(shares[-1]) / SPEC.num_classes)
    got = _selector(split, rounds=2).score(images, 2, SEED, per_class=True)
    assert got.per_class == pytest.approx([(s + t) / 2 for s, t in zip(*shares, strict=True)], abs=1e-6)


def test_a_candidate_reads_back_as_a_checkpoint_holds_it():
    held = {"iteration": 40, "mean": 0.21, "se": 0.003, "rounds": [0.2, 0.22], "seeds": [5, 6], "per_class": [0.1, 0.3]}
    candidate = Candidate.from_dict(held)
    assert candidate == Candidate(40, Rounds(0.21, 0.003, [0.2, 0.22], [5, 6], [0.1, 0.3]))
    assert candidate.to_dict() == held
    assert Candidate.from_dict({k: v for k, v in held.items() if k != "per_class"}).score.per_class is None


def test_a_score_in_the_fast_arithmetic_is_the_scorers_and_draws_no_bar(split, monkeypatch, capfd):
    """``scorer = "fast"`` (bfloat16, uncompiled here) is the arithmetic the rounds are trained in, and selection
    scores quietly: the scorer is called with it, and its rounds are the selection's."""
    monkeypatch.setenv("DDKIT_NO_COMPILE", "1")
    monkeypatch.setattr(fast, "native_bfloat16", lambda device: True)
    calls = []

    def scored(*args, **kwargs):
        calls.append(kwargs)
        return evaluate_images(*args, **kwargs)

    monkeypatch.setattr(selection, "evaluate_images", scored)
    images, _ = _set(0.0, 2)
    selector = Selector(EvalConfig(epochs=EPOCHS, seed=SEED, scorer="fast"), SPEC, *split, torch.device("cpu"))
    got = selector.score(images, 2, 9)
    (kwargs,) = calls
    assert kwargs["how"] == fast.Arithmetic(fast.FAST, "bfloat16", False, 1) and kwargs["show_progress"] is False
    assert got.rounds == evaluate_images(images, SPEC, *split, rounds=2, epochs=EPOCHS, seed=9, device="cpu",
                                         show_progress=False, how=kwargs["how"]).rounds
    assert capfd.readouterr().err == ""
