"""The bundled scorer loop against a plain copy of the official recipe, written from SPEC sections 1 and 3.

Both trainings start from the same weights and draw from one random stream (same seed, same order of
draws), so any difference is in the computation: the weights must be bit-identical, across the lr drop.
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn

from challenge_kit.core.contract import default_labels
from challenge_kit.core.models import ConvNet, ModelConfig
from evaluator import scorer

GROUPS = ("color", "crop", "cutout", "flip", "scale", "rotate")


def official_dsa(x, g, used):
    """DiffAugment, strategy color_crop_cutout_flip_scale_rotate, mode "S": one group per batch, per-image
    parameters, and a contiguous result (the reference ends with ``x.contiguous()``)."""
    p = GROUPS[int(torch.randint(0, len(GROUPS), (1,), generator=g))]
    used.add(p)
    n, _, h, w = x.shape

    def rand(*shape):
        return torch.rand(*shape, generator=g)

    if p == "color":
        x = x + (rand(n, 1, 1, 1) - 0.5) * 1.0
        m = x.mean(dim=1, keepdim=True)
        x = (x - m) * (rand(n, 1, 1, 1) * 2.0) + m
        m = x.mean(dim=[1, 2, 3], keepdim=True)
        x = (x - m) * (rand(n, 1, 1, 1) + 0.5) + m
    elif p == "crop":
        s = int(h * 0.125 + 0.5)
        tx = torch.randint(-s, s + 1, (n, 1, 1), generator=g)
        ty = torch.randint(-s, s + 1, (n, 1, 1), generator=g)
        b, i, j = torch.meshgrid(torch.arange(n), torch.arange(h), torch.arange(w), indexing="ij")
        i, j = torch.clamp(i + tx + 1, 0, h + 1), torch.clamp(j + ty + 1, 0, w + 1)
        x = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1).contiguous()[b, i, j].permute(0, 3, 1, 2)
    elif p == "cutout":
        c = int(h * 0.5 + 0.5)
        ox = torch.randint(0, h + (1 - c % 2), (n, 1, 1), generator=g)
        oy = torch.randint(0, w + (1 - c % 2), (n, 1, 1), generator=g)
        b, i, j = torch.meshgrid(torch.arange(n), torch.arange(c), torch.arange(c), indexing="ij")
        i, j = torch.clamp(i + ox - c // 2, 0, h - 1), torch.clamp(j + oy - c // 2, 0, w - 1)
        mask = torch.ones(n, h, w)
        mask[b, i, j] = 0
        x = x * mask.unsqueeze(1)
    elif p == "flip":
        x = torch.where(rand(n, 1, 1, 1) < 0.5, x.flip(3), x)
    else:
        z = torch.zeros(n)
        if p == "scale":
            sx, sy = rand(n) * (1.2 - 1 / 1.2) + 1 / 1.2, rand(n) * (1.2 - 1 / 1.2) + 1 / 1.2
            theta = torch.stack([torch.stack([sx, z, z], 1), torch.stack([z, sy, z], 1)], 1)
        else:
            a = (rand(n) - 0.5) * 2 * 15.0 / 180 * 3.141592653589793
            theta = torch.stack([torch.stack([a.cos(), -a.sin(), z], 1), torch.stack([a.sin(), a.cos(), z], 1)], 1)
        x = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)
    return x.contiguous()


def official_convnet(classes, size):
    """Three blocks of Conv(3x3, 128) -> GroupNorm(128, 128) -> ReLU -> AvgPool(2), flatten, Linear."""
    layers, channels = [], 3
    for _ in range(3):
        layers += [nn.Conv2d(channels, 128, 3, padding=1), nn.GroupNorm(128, 128, affine=True), nn.ReLU(),
                   nn.AvgPool2d(2, 2)]
        channels, size = 128, size // 2
    net = nn.Module()
    net.features, net.classifier = nn.Sequential(*layers), nn.Linear(128 * size * size, classes)
    net.forward = lambda x: net.classifier(net.features(x).flatten(1))
    return net


def official_train(net, images, labels, epochs, g, used):
    """SGD(0.01, momentum 0.9, wd 5e-4), batches of 256 shuffled, DSA per batch; after epoch index
    Epoch // 2 + 1 (Epoch = epochs - 1) the lr drops tenfold with a fresh optimizer."""
    lr, last = 0.01, epochs - 1
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=0.0005)
    for ep in range(last + 1):
        net.train()
        perm = torch.randperm(len(images), generator=g)
        for i in range(0, len(images), 256):
            idx = perm[i:i + 256]
            loss = nn.CrossEntropyLoss()(net(official_dsa(images[idx], g, used)), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if ep == last // 2 + 1:
            lr *= 0.1
            optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=0.0005)


def test_bundled_loop_is_bit_identical_to_the_official_recipe():
    size, classes, per_class, epochs = 16, 10, 30, 4  # 2 batches per epoch; the lr drops after epoch index 2
    images = torch.randn(classes * per_class, 3, size, size, generator=torch.Generator().manual_seed(0))
    labels = default_labels(classes, per_class)
    torch.manual_seed(1)
    bundled = ConvNet(ModelConfig(num_classes=classes, image_size=size))
    official = official_convnet(classes, size)
    official.load_state_dict(copy.deepcopy(bundled.state_dict()))

    stream = torch.Generator().manual_seed(0)  # shuffles, groups and parameters, in the reference's order
    scorer.train(bundled, images, labels, epochs=epochs, generator=stream, group_generator=stream)
    used = set()
    official_train(official, images, labels, epochs, torch.Generator().manual_seed(0), used)

    assert used == set(GROUPS)  # every augmentation group took part
    reference = official.state_dict()
    for name, value in bundled.state_dict().items():
        assert torch.equal(value, reference[name]), name
