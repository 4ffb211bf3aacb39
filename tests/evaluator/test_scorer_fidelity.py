"""The bundled scorer loop against a plain copy of the official recipe (``references.py``).

Both trainings start from the same weights and draw from one random stream (same seed, same order of
draws), so any difference is in the computation: the weights must be bit-identical, across the lr drop.
"""

import copy

import torch
from references import GROUPS, official_convnet, official_dsa, official_train

from challenge_kit.core.contract import default_labels
from challenge_kit.core.models import ConvNet, ModelConfig
from evaluator import scorer


def test_bundled_loop_is_bit_identical_to_the_official_recipe():
    size, classes, per_class, epochs = 8, 10, 30, 4  # 2 batches per epoch; the lr drops after epoch index 2
    images = torch.randn(classes * per_class, 3, size, size, generator=torch.Generator().manual_seed(0))
    labels = default_labels(classes, per_class)
    torch.manual_seed(1)
    bundled = ConvNet(ModelConfig(num_classes=classes, image_size=size))
    official = official_convnet(classes, size)
    official.load_state_dict(copy.deepcopy(bundled.state_dict()))

    stream = torch.Generator().manual_seed(0)  # shuffles, groups and parameters, in the reference's order
    scorer.train(bundled, images, labels, epochs=epochs, generator=stream, group_generator=stream)
    used = set()
    g = torch.Generator().manual_seed(0)
    official_train(official, images, labels, epochs, g, lambda x: official_dsa(x, g, used))

    assert used == set(GROUPS)  # every augmentation group took part
    reference = official.state_dict()
    for name, value in bundled.state_dict().items():
        assert torch.equal(value, reference[name]), name
