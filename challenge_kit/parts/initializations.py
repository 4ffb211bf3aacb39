"""Initializations: the IPC real (or noise) images per class, in default order, that distillation starts from.

The coreset ones (herding, k-center, EL2N and forgetting picks) read features and scores off the experts; the
same rules pick ``ddkit baseline``'s sets from networks trained the scorer's way (``parts.coresets``).
"""

from __future__ import annotations

import torch

from challenge_kit.core.errors import KitValueError
from challenge_kit.core.models import ConvNet, load_flat_, predict
from challenge_kit.parts import coresets
from challenge_kit.parts.expert_parts import el2n
from challenge_kit.parts.kinds import InitContext

KMEANS_ITERATIONS = 50
CORRECT_EXPERTS = 3  # experts asked in turn for correctly classified images before falling back to any
SCORE_EXPERTS = 3  # experts whose early snapshots' EL2N is averaged (Paul et al. average over several inits)


@torch.no_grad()
def expert_model(ctx: InitContext, expert: int = 0, epoch: int | None = None) -> ConvNet:
    """An expert's snapshot (its last by default) as an eval-mode ConvNet on the run's device."""
    flat = ctx.experts.last(expert) if epoch is None else ctx.experts.snapshot(expert, epoch)
    return load_flat_(ConvNet(ctx.model).to(ctx.device), flat).eval()


def _pools(ctx: InitContext) -> list[torch.Tensor]:
    """Each class's pool indices in a seeded random order."""
    pools = []
    for c in range(ctx.spec.num_classes):
        pool = torch.nonzero(ctx.labels == c).flatten()
        if len(pool) == 0:
            raise KitValueError(f"class {c} has no real images to initialize from")
        pools.append(pool[torch.randperm(len(pool), generator=ctx.generator)])
    return pools


def _take(pool: torch.Tensor, ipc: int, generator: torch.Generator) -> torch.Tensor:
    """The first ``ipc`` of ``pool``, drawing with replacement when the class has fewer images."""
    return pool[:ipc] if len(pool) >= ipc else pool[torch.randint(len(pool), (ipc,), generator=generator)]


def real(ctx: InitContext) -> torch.Tensor:
    return ctx.images[torch.cat([_take(p, ctx.spec.ipc, ctx.generator) for p in _pools(ctx)])].clone()


def real_correct(ctx: InitContext) -> torch.Tensor:
    pools = _pools(ctx)
    models = [expert_model(ctx, e) for e in range(min(CORRECT_EXPERTS, ctx.experts.count))]
    chosen = []
    for c, pool in enumerate(pools):
        ranked, left = [], pool
        for model in models:
            if len(ranked) >= ctx.spec.ipc or len(left) == 0:
                break
            right = predict(model, model, ctx.images[left], ctx.device).argmax(1) == c
            ranked.append(left[right])
            left = left[~right]
        chosen.append(_take(torch.cat([*ranked, left]), ctx.spec.ipc, ctx.generator))
    return ctx.images[torch.cat(chosen)].clone()


def noise(ctx: InitContext) -> torch.Tensor:
    return torch.randn(ctx.spec.shape, generator=ctx.generator)


def kmeans(points: torch.Tensor, k: int, generator: torch.Generator,
           iterations: int = KMEANS_ITERATIONS) -> torch.Tensor:
    """Lloyd's K-means with k-means++ seeding; returns the (k, d) centroids."""
    points = points.double()
    first = int(torch.randint(len(points), (1,), generator=generator))
    centroids = points[first:first + 1]
    while len(centroids) < k:
        d2 = torch.cdist(points, centroids).min(1).values.pow(2)
        weights = d2 if d2.sum() > 0 else torch.ones_like(d2)
        centroids = torch.cat([centroids, points[torch.multinomial(weights, 1, generator=generator)]])
    for _ in range(iterations):
        assign = torch.cdist(points, centroids).argmin(1)
        moved = torch.stack([points[assign == j].mean(0) if (assign == j).any() else centroids[j]
                             for j in range(k)])
        if torch.equal(moved, centroids):
            break
        centroids = moved
    return centroids


def nearest_distinct(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """For each centroid in turn, the nearest point not already taken."""
    dist = torch.cdist(centroids.double(), points.double())
    taken: list[int] = []
    for row in dist:
        row = row.clone()
        row[taken] = float("inf")
        taken.append(int(row.argmin()))
    return torch.tensor(taken)


def representative(ctx: InitContext) -> torch.Tensor:
    model = expert_model(ctx)
    chosen = []
    for pool in _pools(ctx):
        if len(pool) <= ctx.spec.ipc:
            chosen.append(_take(pool, ctx.spec.ipc, ctx.generator))
            continue
        features = predict(model, model.embed, ctx.images[pool], ctx.device)
        centroids = kmeans(features, ctx.spec.ipc, ctx.generator)
        chosen.append(pool[nearest_distinct(features, centroids)])
    return ctx.images[torch.cat(chosen)].clone()


def _features(ctx: InitContext) -> torch.Tensor:
    model = expert_model(ctx)
    return predict(model, model.embed, ctx.images, ctx.device)


def herding(ctx: InitContext) -> torch.Tensor:
    features = _features(ctx)
    return ctx.images[coresets.per_class(ctx.labels, ctx.spec.num_classes, ctx.spec.ipc, ctx.generator,
                                         lambda pool: coresets.herding(features[pool], ctx.spec.ipc))].clone()


def kcenter(ctx: InitContext) -> torch.Tensor:
    features = _features(ctx)
    return ctx.images[coresets.per_class(ctx.labels, ctx.spec.num_classes, ctx.spec.ipc, ctx.generator,
                                         lambda pool: coresets.kcenter(features[pool], ctx.spec.ipc, ctx.generator)
                                         )].clone()


def expert_el2n(ctx: InitContext) -> torch.Tensor:
    """EL2N early in training: the experts' snapshots a tenth of the way through, averaged over experts."""
    epoch, experts = max(1, ctx.experts.epochs // 10), min(SCORE_EXPERTS, ctx.experts.count)
    labels = ctx.labels.to(ctx.device)
    return sum(el2n(predict(m, m, ctx.images, ctx.device).to(ctx.device), labels).cpu()
               for m in (expert_model(ctx, e, epoch) for e in range(experts))) / experts


def expert_forgetting(ctx: InitContext) -> torch.Tensor:
    """Forgetting events of the first expert, looking at its snapshot after every epoch."""
    looks = []
    for epoch in range(1, ctx.experts.epochs + 1):
        model = expert_model(ctx, 0, epoch)
        looks.append(predict(model, model, ctx.images, ctx.device).argmax(1).cpu() == ctx.labels.cpu())
    return coresets.forgetting_counts(torch.stack(looks))


def _by_difficulty(ctx: InitContext, scores: torch.Tensor, pick: str) -> torch.Tensor:
    return ctx.images[coresets.per_class(ctx.labels, ctx.spec.num_classes, ctx.spec.ipc, ctx.generator,
                                         lambda pool: coresets.ranked(scores[pool], ctx.spec.ipc, pick,
                                                                      ctx.generator))].clone()


def _difficulty_part(score: str, pick: str):
    """The init part that keeps each class's ``pick`` images by ``score`` (``el2n`` or ``forgetting``)."""
    scores = expert_el2n if score == "el2n" else expert_forgetting

    def part(ctx: InitContext) -> torch.Tensor:
        return _by_difficulty(ctx, scores(ctx), pick)

    part.__name__ = part.__qualname__ = f"{score}_{pick}"
    return part


el2n_easy, el2n_hard, el2n_band = (_difficulty_part("el2n", pick) for pick in coresets.PICKS)
forgetting_easy, forgetting_hard, forgetting_band = (_difficulty_part("forgetting", pick) for pick in coresets.PICKS)
