"""Plain references the tests hold the kit to, written from the published facts (the challenge's scoring script and
DiffAugment as docs/scorer.md and docs/dsa.md state them, the MTT and DATM papers), never from the kit's code: the
recipe's constants (once, here), the official network built layer by layer, DiffAugment's DSA written out, the
official training loop, a kit round's seeding, and MTT's unrolled matching loss on a list of parameter tensors."""

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

# ---- the official scorer's recipe (its evaluate.py) and the challenge contract, as facts
LR = 0.01
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
BATCH = 256
EPOCHS = 1001  # epoch indices 0..1000
DROP_EPOCH = 501  # after this epoch index: Epoch // 2 + 1 with Epoch = EPOCHS - 1
LR_DECAY = 0.1
ROUNDS = 3
WIDTH, DEPTH = 128, 3  # for both datasets
DATASETS = {  # classes, image size, ipc, mean, std
    "cifar100": (100, 32, 10, (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tinyimagenet": (200, 64, 10, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
SUBMISSION_SHAPES = {"cifar100": (1000, 3, 32, 32), "tinyimagenet": (2000, 3, 64, 64)}
CIFAR100_PARAMETERS = 504_420  # the ConvNet at 32 px with 100 classes

# ---- DSA, mode "S"
GROUPS = ("color", "crop", "cutout", "flip", "scale", "rotate")
BRIGHTNESS = 1.0  # x + (u - 0.5) * 1.0
SATURATION = 2.0  # factor 2u
CONTRAST = 0.5  # factor u + 0.5
CROP_RATIO = 0.125  # shifts in [-s, s], s = int(0.125 * H + 0.5)
CUTOUT_RATIO = 0.5  # side int(0.5 * H + 0.5)
SCALE = 1.2  # factors in [1 / 1.2, 1.2]
ROTATE_DEGREES = 15.0


def default_label(i: int, ipc: int) -> int:
    """The scorer's labelling: image i is class i // ipc."""
    return i // ipc


def official_convnet(classes: int, size: int, width: int = WIDTH, depth: int = DEPTH,
                     dtype: torch.dtype = torch.float32) -> nn.Module:
    """``depth`` blocks of Conv(3x3, width, pad 1) -> GroupNorm(width, width) (instance norm) -> ReLU -> AvgPool(2),
    flatten, Linear, in the DC/MTT layout (``features.0`` ..., ``classifier``), with PyTorch's default init."""
    layers, channels = [], 3
    for _ in range(depth):
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.GroupNorm(width, width, affine=True), nn.ReLU(),
                   nn.AvgPool2d(2, 2)]
        channels, size = width, size // 2
    net = nn.Module()
    net.features, net.classifier = nn.Sequential(*layers), nn.Linear(width * size * size, classes)
    net.forward = lambda x: net.classifier(net.features(x).flatten(1))
    return net.to(dtype)


def official_dsa(x, g, used=None, group_g=None):
    """DiffAugment, strategy color_crop_cutout_flip_scale_rotate, mode "S": one group per batch, per-image
    parameters, and a contiguous result (the reference ends with ``x.contiguous()``). The group is drawn from
    ``group_g`` (default ``g``), the parameters from ``g``, on ``g``'s device."""
    group_g = g if group_g is None else group_g
    p = GROUPS[int(torch.randint(0, len(GROUPS), (1,), generator=group_g, device=group_g.device))]
    if used is not None:
        used.add(p)
    n, _, h, w = x.shape

    def rand(*shape):
        return torch.rand(*shape, generator=g, device=g.device).to(x.device)

    def randint(lo, hi, shape):
        return torch.randint(lo, hi, shape, generator=g, device=g.device).to(x.device)

    if p == "color":
        x = x + (rand(n, 1, 1, 1) - 0.5) * BRIGHTNESS
        m = x.mean(dim=1, keepdim=True)
        x = (x - m) * (rand(n, 1, 1, 1) * SATURATION) + m
        m = x.mean(dim=[1, 2, 3], keepdim=True)
        x = (x - m) * (rand(n, 1, 1, 1) + CONTRAST) + m
    elif p == "crop":
        s = int(h * CROP_RATIO + 0.5)
        tx, ty = randint(-s, s + 1, (n, 1, 1)), randint(-s, s + 1, (n, 1, 1))
        b, i, j = torch.meshgrid(torch.arange(n), torch.arange(h), torch.arange(w), indexing="ij")
        i, j = torch.clamp(i + tx + 1, 0, h + 1), torch.clamp(j + ty + 1, 0, w + 1)
        x = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1).contiguous()[b, i, j].permute(0, 3, 1, 2)
    elif p == "cutout":
        c = int(h * CUTOUT_RATIO + 0.5)
        ox, oy = randint(0, h + (1 - c % 2), (n, 1, 1)), randint(0, w + (1 - c % 2), (n, 1, 1))
        b, i, j = torch.meshgrid(torch.arange(n), torch.arange(c), torch.arange(c), indexing="ij")
        i, j = torch.clamp(i + ox - c // 2, 0, h - 1), torch.clamp(j + oy - c // 2, 0, w - 1)
        mask = torch.ones(n, h, w, dtype=x.dtype)
        mask[b, i, j] = 0
        x = x * mask.unsqueeze(1)
    elif p == "flip":
        x = torch.where(rand(n, 1, 1, 1) < 0.5, x.flip(3), x)
    else:
        z = torch.zeros(n)
        if p == "scale":
            sx, sy = (rand(n) * (SCALE - 1 / SCALE) + 1 / SCALE, rand(n) * (SCALE - 1 / SCALE) + 1 / SCALE)
            theta = torch.stack([torch.stack([sx, z, z], 1), torch.stack([z, sy, z], 1)], 1)
        else:
            a = (rand(n) - 0.5) * 2 * ROTATE_DEGREES / 180 * math.pi
            theta = torch.stack([torch.stack([a.cos(), -a.sin(), z], 1), torch.stack([a.sin(), a.cos(), z], 1)], 1)
        x = F.grid_sample(x, F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False),
                          align_corners=False)
    return x.contiguous()


def official_train(net, images, labels, epochs, shuffle_g, augment_batch, lr=LR, batch=BATCH, record=None,
                   autocast=None):
    """SGD(lr, MOMENTUM, WEIGHT_DECAY), cross-entropy, batches of ``batch`` from a ``randperm`` of ``shuffle_g`` each
    epoch, each augmented by ``augment_batch``; after epoch index Epoch // 2 + 1 (Epoch = epochs - 1) the lr drops
    by LR_DECAY with a fresh optimizer (momentum restarts). The recipe's lr and batch unless told otherwise.
    Soft labels (N, K) are class probabilities, counted as correct on their largest entry.
    ``record`` gets each epoch's (index, mean loss over its images, accuracy on its augmented batches); ``autocast``
    (a dtype) runs the forward under torch's autocast, the loss in float32 (the fast scorer's arithmetic)."""
    last = epochs - 1
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    for ep in range(last + 1):
        net.train()
        perm = torch.randperm(len(images), generator=shuffle_g, device=shuffle_g.device).to(images.device)
        loss_sum = correct = 0.0
        for i in range(0, len(images), batch):
            idx = perm[i:i + batch]
            x = augment_batch(images[idx])
            with torch.autocast(images.device.type, dtype=autocast, enabled=autocast is not None):
                out = net(x)
            loss = nn.CrossEntropyLoss()(out.float(), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(idx)
            correct += (out.argmax(1) == (labels[idx].argmax(1) if labels.dim() == 2 else labels[idx])).sum().item()
        if record is not None:
            record.append((ep, loss_sum / len(images), correct / len(images)))
        if ep == last // 2 + 1:
            lr *= LR_DECAY
            optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


@torch.no_grad()
def official_test(net, images, labels) -> float:
    """Accuracy (a fraction) in eval mode, no augmentation, batches of BATCH."""
    net.eval()
    correct = sum(int((net(images[i:i + BATCH]).argmax(1) == labels[i:i + BATCH]).sum())
                  for i in range(0, len(images), BATCH))
    return correct / len(images)


def round_seed(seed: int, r: int) -> int:
    """A kit run seeded ``seed`` seeds its round r with seed * 1000 + r."""
    return seed * 1000 + r


def round_streams(seed: int) -> tuple[int, int, int]:
    """A kit round's three seeds from its round seed, by numpy's SeedSequence: the init (the global
    ``torch.manual_seed`` before the network is built), the device generator (each epoch's shuffle, then the DSA
    parameters of every batch) and a CPU generator (each batch's DSA group)."""
    return tuple(int(s) for s in np.random.SeedSequence(seed).generate_state(3))


def official_round(images, labels, classes, seed, epochs, device="cpu", lr=LR, batch=BATCH, record=None,
                   autocast=None):
    """One kit-seeded round of the official recipe on the CPU: (the initial state dict, the trained network).
    The device generator lives on ``device``, as the kit's does, so the draws are those of a round there."""
    init, on_device, on_cpu = round_streams(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init)
        net = official_convnet(classes, images.shape[-1])
    initial = copy.deepcopy(net.state_dict())
    draws = torch.Generator(device=device).manual_seed(on_device)
    groups = torch.Generator().manual_seed(on_cpu)
    official_train(net, images, labels, epochs, draws, lambda x: official_dsa(x, draws, group_g=groups), lr, batch,
                   record, autocast)
    return initial, net


def official_scores(images, labels, classes, test_images, test_labels, seeds, epochs):
    """The test accuracy of each round seed's official round."""
    return [official_test(official_round(images, labels, classes, s, epochs)[1], test_images, test_labels)
            for s in seeds]


def split_like(flat: torch.Tensor, module: nn.Module) -> list[torch.Tensor]:
    """A flat vector cut into ``module``'s parameter shapes, in ``parameters()`` order."""
    sizes = [p.numel() for p in module.parameters()]
    return [part.view_as(p) for part, p in zip(flat.split(sizes), module.parameters(), strict=True)]


def mtt_match(module, images, labels, lr, start, target, steps, augment_batch):
    """MTT's matching loss on a list of parameter tensors and its gradients w.r.t. the images and the lr: from theta
    = ``start``, for each (indices, params) of ``steps`` theta <- theta - lr * grad of the mean cross-entropy of the
    augmented batch, then ||theta_N - target||^2 / ||start - target||^2. Returns (loss, d/dimages, d/dlr)."""
    done = trajectory_match(module, images, labels, lr, start, start, [(len(steps), target)], steps, augment_batch)
    return done.loss, done.grad_images, done.grad_lr


@dataclass
class Matched:
    loss: torch.Tensor
    terms: list[torch.Tensor]  # each target's normalized distance, in the order the student reaches them
    grad_images: torch.Tensor
    grad_lr: torch.Tensor
    grad_labels: torch.Tensor | None  # None unless the labels require grad (DATM's learned soft labels)


def trajectory_match(module, images, labels, lr, start, anchor, targets, steps, augment_batch, weights=None,
                     mask=None, autocast=None):
    """The trajectory-matching objective with what the later papers add: from theta = ``start``, step k of
    ``steps`` (indices, params) does theta <- theta - lr * weights[k] * grad of the batch's mean cross-entropy (hard
    labels; float labels are logits whose softmax is the target, DATM's soft cross-entropy); the loss sums
    ||theta_n - snapshot||^2 / ||anchor - snapshot||^2 over the (n, snapshot) ``targets`` (n = 0: the start), over
    the parameter entries a flat boolean ``mask`` keeps (PAD's), or all. ``autocast`` (a dtype): each forward under
    torch's autocast, its logits back in the parameters' dtype for the loss. Gradients by autograd through the loop,
    zero where the loss does not reach."""
    x = images.detach().requires_grad_(True)
    alpha = lr.detach().requires_grad_(True)
    learned = labels.requires_grad
    y = labels.detach().requires_grad_(learned)
    names = [name for name, _ in module.named_parameters()]
    begins = split_like(anchor, module)
    keep = split_like(torch.ones_like(anchor, dtype=torch.bool) if mask is None else mask, module)

    def distance(theta, snapshot):
        ends = split_like(snapshot, module)
        return sum((t - e)[m].pow(2).sum() for t, e, m in zip(theta, ends, keep, strict=True)) / sum(
            (b - e)[m].pow(2).sum() for b, e, m in zip(begins, ends, keep, strict=True))

    theta = [t.detach().requires_grad_(True) for t in split_like(start, module)]
    terms = [distance(theta, snapshot) for n, snapshot in targets if n == 0]
    for k, (indices, params) in enumerate(steps):
        with torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
            out = functional_call(module, dict(zip(names, theta, strict=True)), (augment_batch(x[indices], params),))
        out = out.to(theta[0].dtype)
        if y.is_floating_point():
            loss = -(F.log_softmax(out, 1) * F.softmax(y[indices], 1)).sum(1).mean()
        else:
            loss = F.cross_entropy(out, y[indices])
        grads = torch.autograd.grad((1.0 if weights is None else weights[k]) * loss, theta, create_graph=True)
        theta = [t - alpha * g for t, g in zip(theta, grads, strict=True)]
        terms += [distance(theta, snapshot) for n, snapshot in targets if n == k + 1]
    loss = sum(terms)
    grads = torch.autograd.grad(loss, [x, alpha, *([y] if learned else [])], allow_unused=True,
                                materialize_grads=True)
    return Matched(loss.detach(), [t.detach() for t in terms], grads[0], grads[1], grads[2] if learned else None)
