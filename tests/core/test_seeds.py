"""Scorer round seeds: every (user seed, round) pair a command accepts gets a round of its own, and the seeds that
replayed before round seeds stopped wrapping at 31 bits replay unchanged."""

import numpy as np
import torch

from challenge_kit.core import seeds
from challenge_kit.core.contract import DatasetSpec, default_labels
from evaluator.scorer import evaluate_images, train_rounds

LARGEST_SEED = 2**32 - 1  # what --seed and a recipe's seed take (0 to 2**32 - 1), as the README says
MOST_ROUNDS = 1000  # what --rounds takes at most


def wrapped(seed: int, r: int) -> int:
    """Round r's seed as it was derived before: seed * 1000 + r cut to 31 bits."""
    return (seed * 1000 + r) & 0x7FFFFFFF


def test_the_bounds_are_the_ones_the_options_take():
    assert seeds.MAX_SEED == LARGEST_SEED and seeds.ROUNDS_PER_SEED == MOST_ROUNDS
    assert seeds.seed_problem(LARGEST_SEED) is None and seeds.seed_problem(LARGEST_SEED + 1) is not None
    assert seeds.rounds_problem(MOST_ROUNDS) is None and seeds.rounds_problem(MOST_ROUNDS + 1) is not None


def test_small_seeds_replay_the_rounds_they_always_had():
    assert seeds.round_seeds(7, 3) == [7000, 7001, 7002]
    rng = np.random.default_rng(0)
    for seed in [0, 1, 2_147_482, *rng.integers(0, 2_147_483, 200).tolist()]:
        assert seeds.round_seeds(seed, MOST_ROUNDS) == [wrapped(seed, r) for r in range(MOST_ROUNDS)], seed


def test_distinct_seed_and_round_pairs_give_distinct_rounds_over_the_whole_range():
    rng = np.random.default_rng(1)
    user = [0, 1, 7, 7 + 2**28, 2**31 - 1, 2**31, 2**32 - 2, LARGEST_SEED, *rng.integers(0, 2**32, 3000).tolist()]
    pairs = {(s, r) for s in user for r in [0, 1, 2, 500, 999, *rng.integers(0, MOST_ROUNDS, 5).tolist()]}
    derived = {}
    for s in sorted({s for s, _ in pairs}):
        for r, round_seed in enumerate(seeds.round_seeds(s, MOST_ROUNDS)):
            if (s, r) in pairs:
                derived[(s, r)] = round_seed
    assert len(set(derived.values())) == len(pairs)
    # and so do the streams a round draws from (network init, device draws, augmentation group)
    streams = [seeds.stream_seeds(v) for v in list(derived.values())[:2000]]
    for k in range(3):
        assert len({s[k] for s in streams}) == len(streams)


def test_seeds_7_and_7_plus_2_to_the_28_score_different_rounds():
    """Both are accepted seeds; cut to 31 bits their rounds were the very same (2**28 * 1000 = 125 * 2**31)."""
    far = 7 + 2**28
    assert [wrapped(7, r) for r in range(3)] == [wrapped(far, r) for r in range(3)]  # the collision that was
    assert seeds.round_seeds(7, 3) != seeds.round_seeds(far, 3)
    spec = DatasetSpec("toy", num_classes=2, image_size=8, ipc=3, mean=(0.5,) * 3, std=(0.25,) * 3, challenge=False)
    images = torch.randn(spec.shape, generator=torch.Generator().manual_seed(0))
    test_images = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    test_labels = torch.arange(2).repeat(4)
    near_score, far_score = (evaluate_images(images, spec, test_images, test_labels, rounds=2, epochs=2, seed=s,
                                             show_progress=False) for s in (7, far))
    assert near_score.seeds == [7000, 7001] and far_score.seeds == [far * 1000, far * 1000 + 1]
    labels = default_labels(2, 3)
    near, distant = (train_rounds(images, labels, r.seeds, num_classes=2, epochs=2) for r in (near_score, far_score))
    for a, b in zip(near, distant, strict=True):
        assert not torch.equal(a.classifier.weight, b.classifier.weight)
