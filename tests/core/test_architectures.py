"""The cross-architecture networks: each one's output and parameter count at 32 and 64 px against the published
layout written out here (the DC/MTT ConvNet's, torchvision's ResNet-18 and VGG-11 as DD papers adapt them), and
the challenge ConvNet still the scorer's default."""

import pytest
import torch
from torch import nn
from torchvision.models import resnet18 as torchvision_resnet18

from challenge_kit.core.contract import ARCHITECTURES, CHALLENGE_NET
from challenge_kit.core.models import ConvNet, ModelConfig, build_network, num_parameters
from challenge_kit.core.seeds import stream_seeds
from evaluator.fast import Arithmetic
from evaluator.scorer import fresh_round, train_rounds

K = 7
VGG11 = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]  # torchvision's configuration "A"


def convnet_count(size: int, width: int = 128, depth: int = 3, norm: str = "instance") -> int:
    """Conv 3x3 + norm (+ activation, 2x2 pool) ``depth`` times, then a linear layer on the flattened features."""
    total, channels = 0, 3
    for _ in range(depth):
        total += 9 * channels * width + width
        total += {"instance": 2 * width, "batch": 2 * width, "layer": 2 * width * size * size, "none": 0}[norm]
        channels, size = width, size // 2
    return total + (width * size * size + 1) * K


def expected(arch: str, size: int) -> int:
    if arch == "resnet18":  # torchvision's, its 7x7 stem swapped for a 3x3 one (norms: 2 per channel either way)
        return num_parameters(torchvision_resnet18(num_classes=K)) - 64 * 3 * 7 * 7 + 64 * 3 * 3 * 3
    if arch == "vgg11":  # conv + instance norm per entry, then one linear layer on 512 pooled channels
        convs, channels = 0, 3
        for out in (v for v in VGG11 if v != "M"):
            convs, channels = convs + 9 * channels * out + out + 2 * out, out
        return convs + (512 + 1) * K
    settings = {"convnet": {}, "convnet-w64": {"width": 64}, "convnet-d4": {"depth": 4},
                "convnet-bn": {"norm": "batch"}, "convnet-ln": {"norm": "layer"}, "convnet-nonorm": {"norm": "none"}}
    return convnet_count(size, **settings[arch])


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_each_network_classifies_and_has_its_published_parameter_count(arch, size):
    net = build_network(arch, ModelConfig(num_classes=K, image_size=size))
    assert net(torch.randn(2, 3, size, size)).shape == (2, K)
    assert num_parameters(net) == expected(arch, size)


def test_resnet_and_vgg_are_adapted_the_dc_way_stride_one_stem_no_maxpool_instance_norm():
    resnet = build_network("resnet18", ModelConfig(num_classes=K, image_size=64))
    stem = resnet.conv1
    assert (stem.kernel_size, stem.stride, stem.padding, stem.bias) == ((3, 3), (1, 1), (1, 1), None)
    assert isinstance(resnet.maxpool, nn.Identity)
    vgg = build_network("vgg11", ModelConfig(num_classes=K, image_size=64))
    for net in (resnet, vgg):
        norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm | nn.BatchNorm2d)]
        assert norms and all(isinstance(m, nn.GroupNorm) and m.num_groups == m.num_channels for m in norms)
    assert sum(isinstance(m, nn.MaxPool2d) for m in vgg.features) == 5


def test_the_challenge_convnet_is_the_default_network_of_every_round():
    config = ModelConfig(num_classes=K, image_size=32)
    net, _ = fresh_round(config, 5, torch.device("cpu"))
    torch.manual_seed(stream_seeds(5)[0])
    reference = ConvNet(config)
    assert type(net) is ConvNet and net.config == config and CHALLENGE_NET == "convnet"
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), reference.state_dict().values(),
                                                strict=True))
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4) % K
    (trained,) = train_rounds(x, y, [5], num_classes=K, epochs=1, device="cpu")
    assert type(trained) is ConvNet


def test_a_network_with_buffers_trains_its_rounds_one_at_a_time_even_when_asked_to_stack():
    x, y = torch.randn(6, 3, 16, 16), torch.arange(6) % 3
    stacked = train_rounds(x, y, [1, 2], num_classes=3, epochs=2, device="cpu", arch="convnet-bn",
                           how=Arithmetic(stacked=2))
    alone = train_rounds(x, y, [2], num_classes=3, epochs=2, device="cpu", arch="convnet-bn")
    assert all(torch.equal(a, b) for a, b in zip(stacked[1].state_dict().values(), alone[0].state_dict().values(),
                                                strict=True))


def test_an_unknown_network_or_a_grey_image_is_refused_by_name():
    config = ModelConfig(num_classes=10, image_size=32)
    with pytest.raises(ValueError) as unknown:
        build_network("alexnet", config)
    assert str(unknown.value) == f"architecture 'alexnet' not in {ARCHITECTURES}"
    with pytest.raises(ValueError) as grey:
        build_network("vgg11", ModelConfig(num_classes=10, image_size=32, channels=1))
    assert str(grey.value) == "vgg11 takes 3-channel images, not 1"


@pytest.mark.parametrize("arch", ["resnet18", "vgg11"])
def test_resnet_and_vgg_start_from_pytorchs_default_initialization_not_torchvisions(arch):
    """PyTorch's default for a convolution or linear layer is kaiming_uniform_ with a = sqrt(5): weights (and
    biases) uniform in +-1 / sqrt(fan_in); norms start at weight 1, bias 0. torchvision's own init draws the
    convolutions from a normal with std sqrt(2 / fan_out), which overshoots that bound in the deep layers."""
    torch.manual_seed(0)
    net = build_network(arch, ModelConfig(num_classes=K, image_size=32))
    layers = [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert len(layers) == {"resnet18": 21, "vgg11": 9}[arch]
    for layer in layers:
        bound = 1 / layer.weight[0].numel() ** 0.5
        for values in (layer.weight, layer.bias) if layer.bias is not None else (layer.weight,):
            assert values.abs().max() <= bound and values.std() > 0
        assert layer.weight.abs().max() > 0.9 * bound  # a uniform draw reaches near its bound
    for norm in (m for m in net.modules() if isinstance(m, nn.GroupNorm)):
        assert bool((norm.weight == 1).all()) and bool((norm.bias == 0).all())
