"""Coreset selections: which IPC real images of each class to keep, from features or difficulty scores.

Pure functions of tensors, shared by the initialization parts (features and scores from the experts) and
``ddkit baseline`` (from networks trained the scorer's way, ``challenge_kit.coresets``), so a baseline and a
distillation's start are picked by the same rule. Every pick is deterministic given its generator.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from challenge_kit.core.errors import KitValueError

PICKS = ("easy", "hard", "band")  # what a difficulty ranking keeps: the easiest, the hardest, a band past the easiest
BAND_SKIP = 1.0  # the band starts past this many budgets' worth of the easiest images


def herding(features: torch.Tensor, k: int) -> torch.Tensor:
    """Herding (Welling 2009, as iCaRL picks exemplars): add, one at a time, the point that brings the mean of the
    chosen points closest to the mean of all; ``k`` distinct indices in the order chosen."""
    x = features.double()
    target, total, squares = x.mean(0), torch.zeros_like(x[0]), (x * x).sum(1)
    chosen: list[int] = []
    for t in range(1, k + 1):  # |(total + x) / t - target|^2 less the term all points share: one product a step
        gaps = squares / t ** 2 + 2 / t * (x @ (total / t - target))
        gaps[chosen] = float("inf")
        chosen.append(int(gaps.argmin()))
        total += x[chosen[-1]]
    return torch.tensor(chosen, dtype=torch.long)


def kcenter(features: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-center greedy (Sener & Savarese 2018): a seeded random first center, then always the point farthest from
    its nearest chosen center; ``k`` distinct indices in the order chosen."""
    x = features.double()
    chosen = [int(torch.randint(len(x), (1,), generator=generator))]
    nearest = (x - x[chosen[0]]).norm(dim=1)
    while len(chosen) < k:
        nearest[chosen] = -1.0  # never again, even where every point left is a duplicate of a center
        chosen.append(int(nearest.argmax()))
        nearest = torch.minimum(nearest, (x - x[chosen[-1]]).norm(dim=1))
    return torch.tensor(chosen, dtype=torch.long)


def forgetting_counts(correct: torch.Tensor) -> torch.Tensor:
    """Forgetting events (Toneva et al. 2019) from ``correct``, (epochs, N) booleans: how often an image went from
    classified correctly to wrongly between consecutive looks. An image never classified correctly counts as
    forgotten at every look (``epochs``), ranking it above every learned one, as the paper ranks them."""
    correct = correct.bool()
    events = (correct[:-1] & ~correct[1:]).sum(0)
    return torch.where(correct.any(0), events, torch.full_like(events, correct.shape[0]))


def ranked(scores: torch.Tensor, k: int, pick: str, generator: torch.Generator, band_skip: float = BAND_SKIP
           ) -> torch.Tensor:
    """``k`` indices by difficulty (larger score is harder), ties broken in a seeded random order: ``easy`` the k
    lowest, ``hard`` the k highest, ``band`` the k after the ``band_skip * k`` easiest (the band moves towards
    harder images as the budget grows, as Sorscher et al. 2022 advise; clipped to the pool)."""
    if pick not in PICKS:
        raise KitValueError(f"difficulty pick {pick!r}: choose {', '.join(PICKS)}")
    shuffled = torch.randperm(len(scores), generator=generator)
    order = shuffled[torch.sort(scores[shuffled].double(), stable=True).indices]
    start = {"easy": 0, "hard": len(order) - k, "band": min(round(band_skip * k), len(order) - k)}[pick]
    return order[start:start + k]


def per_class(labels: torch.Tensor, num_classes: int, ipc: int, generator: torch.Generator,
              choose: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Pool indices of IPC images per class in default order: ``choose(pool)`` gives positions in each class's pool
    (in pool order); a class with at most IPC images gives them all, drawn with replacement up to IPC."""
    chosen = []
    for c in range(num_classes):
        pool = torch.nonzero(labels == c).flatten()
        if len(pool) == 0:
            raise KitValueError(f"class {c} has no real images to select from")
        if len(pool) <= ipc:
            extra = torch.randint(len(pool), (ipc - len(pool),), generator=generator)
            chosen.append(torch.cat([pool, pool[extra]]))
        else:
            chosen.append(pool[choose(pool)])
    return torch.cat(chosen)
