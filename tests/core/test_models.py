"""The challenge ConvNet: DC/MTT layout, exact parameter count, and the flat functional view."""

import itertools
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from challenge_kit.core.contract import CIFAR100, TINYIMAGENET
from challenge_kit.core.models import (
    ACTIVATIONS,
    NORMS,
    POOLINGS,
    ConvNet,
    FunctionalConvNet,
    ModelConfig,
    flatten_params,
    load_flat_,
    num_parameters,
    param_shapes,
    predict,
    unflatten_params,
)

# Parameter names and shapes of the DC/MTT/DATM ConvNet (width 128, depth 3, instance norm) at 32 px.
CIFAR_LAYOUT = [
    ("features.0.weight", (128, 3, 3, 3)),
    ("features.0.bias", (128,)),
    ("features.1.weight", (128,)),
    ("features.1.bias", (128,)),
    ("features.4.weight", (128, 128, 3, 3)),
    ("features.4.bias", (128,)),
    ("features.5.weight", (128,)),
    ("features.5.bias", (128,)),
    ("features.8.weight", (128, 128, 3, 3)),
    ("features.8.bias", (128,)),
    ("features.9.weight", (128,)),
    ("features.9.bias", (128,)),
    ("classifier.weight", (100, 2048)),
    ("classifier.bias", (100,)),
]

SMALL = ModelConfig(num_classes=5, image_size=8, width=8)


def test_cifar100_convnet_has_504420_parameters_in_dc_layout():
    net = ConvNet(ModelConfig.for_spec(CIFAR100))
    assert num_parameters(net) == 504_420
    assert [(k, tuple(v.shape)) for k, v in net.state_dict().items()] == CIFAR_LAYOUT
    assert [(k, tuple(s)) for k, s in param_shapes(net)] == CIFAR_LAYOUT  # parameters() order too


def test_cifar100_layers_are_the_scorer_blocks():
    net = ConvNet(ModelConfig.for_spec(CIFAR100))
    for i, cin in ((0, 3), (4, 128), (8, 128)):
        conv, norm, act, pool = net.features[i:i + 4]
        assert isinstance(conv, nn.Conv2d)
        assert (conv.in_channels, conv.out_channels) == (cin, 128)
        assert (conv.kernel_size, conv.padding, conv.stride) == ((3, 3), (1, 1), (1, 1))
        assert isinstance(norm, nn.GroupNorm)
        assert (norm.num_groups, norm.num_channels, norm.affine) == (128, 128, True)
        assert isinstance(act, nn.ReLU)
        assert isinstance(pool, nn.AvgPool2d) and (pool.kernel_size, pool.stride) == (2, 2)
    assert len(net.features) == 12
    assert (net.classifier.in_features, net.classifier.out_features) == (2048, 100)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 100)
    assert net.embed(torch.zeros(2, 3, 32, 32)).shape == (2, 2048)


def test_tinyimagenet_convnet_is_depth3_with_8192_features():
    cfg = ModelConfig.for_spec(TINYIMAGENET)
    assert (cfg.depth, cfg.width, cfg.num_classes, cfg.image_size) == (3, 128, 200, 64)
    net = ConvNet(cfg)
    assert isinstance(net.classifier, nn.Linear)
    assert (net.classifier.in_features, net.classifier.out_features) == (8192, 200)
    assert num_parameters(net) == 299_520 + 8192 * 200 + 200
    assert net(torch.zeros(1, 3, 64, 64)).shape == (1, 200)


def test_dc_mtt_state_dict_loads_strictly():
    g = torch.Generator().manual_seed(0)
    foreign = {k: torch.randn(s, generator=g) for k, s in CIFAR_LAYOUT}
    net = ConvNet(ModelConfig.for_spec(CIFAR100))
    net.load_state_dict(foreign, strict=True)
    assert torch.equal(net.features[4].weight, foreign["features.4.weight"])
    assert torch.equal(flatten_params(net), torch.cat([foreign[k].reshape(-1) for k, _ in CIFAR_LAYOUT]))


def test_flatten_unflatten_round_trip_in_parameters_order():
    net = ConvNet(SMALL)
    flat = flatten_params(net)
    assert flat.shape == (num_parameters(net),) and not flat.requires_grad
    assert torch.equal(flat, torch.cat([p.detach().reshape(-1) for p in net.parameters()]))
    views = unflatten_params(flat, param_shapes(net))
    assert list(views) == [n for n, _ in net.named_parameters()]
    for name, p in net.named_parameters():
        assert torch.equal(views[name], p)
    flat.zero_()  # views, not copies
    assert all((v == 0).all() for v in views.values())
    flat = flatten_params(net)
    other = ConvNet(SMALL)
    load_flat_(other, flat)
    assert torch.equal(flatten_params(other), flat)
    with pytest.raises(ValueError, match="has 3 values"):
        unflatten_params(torch.zeros(3), param_shapes(net))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_functional_forward_equals_module_forward(dtype):
    f = FunctionalConvNet(SMALL, dtype=dtype)
    flat = f.init_flat(seed=1)
    assert flat.dtype == dtype and flat.shape == (f.num_params,)
    net = load_flat_(ConvNet(SMALL).to(dtype), flat)
    x = torch.randn(4, 3, 8, 8, dtype=dtype)
    assert torch.allclose(f(flat, x), net(x), atol=1e-6, rtol=1e-6)


def test_gradient_wrt_flat_vector_equals_module_parameter_gradients():
    f = FunctionalConvNet(SMALL, dtype=torch.float64)
    flat = f.init_flat(seed=2).requires_grad_(True)
    x, y = torch.randn(6, 3, 8, 8, dtype=torch.float64), torch.randint(5, (6,))
    F.cross_entropy(f(flat, x), y).backward()
    net = load_flat_(ConvNet(SMALL).double(), flat.detach())
    F.cross_entropy(net(x), y).backward()
    expected = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
    assert torch.allclose(flat.grad, expected, atol=1e-12, rtol=1e-9)
    assert flat.grad.abs().sum() > 0


@pytest.mark.parametrize("norm,activation,pooling",
                         [(n, "relu", "avgpooling") for n in NORMS]
                         + [("instancenorm", a, p) for a, p in itertools.product(ACTIVATIONS, POOLINGS)])
def test_other_options_build_and_run(norm, activation, pooling):
    cfg = ModelConfig(num_classes=4, image_size=8, width=8, depth=2, norm=norm, activation=activation,
                      pooling=pooling)
    net = ConvNet(cfg)
    x = torch.randn(3, 3, 8, 8)
    out = net(x)
    assert out.shape == (3, 4) and torch.isfinite(out).all()
    f = FunctionalConvNet(cfg)
    flat = flatten_params(net)
    assert torch.allclose(f(flat, x), out, atol=1e-5)
    kinds = {type(m) for m in net.features}
    expected_norm = {"instancenorm": nn.GroupNorm, "batchnorm": nn.BatchNorm2d, "layernorm": nn.LayerNorm,
                     "groupnorm": nn.GroupNorm, "none": None}[norm]
    if expected_norm is not None:
        assert expected_norm in kinds
    else:
        assert not kinds & {nn.GroupNorm, nn.BatchNorm2d, nn.LayerNorm}
    side = 8 // 4 if pooling != "none" else 8
    assert net.classifier.in_features == 8 * side * side


def test_bad_config_values_are_refused():
    for bad in ({"norm": "instance"}, {"activation": "gelu"}, {"pooling": "avg"}):
        with pytest.raises(ValueError, match=repr(next(iter(bad.values())))):
            ModelConfig(**bad)


def test_init_flat_is_reproducible_and_leaves_global_rng_alone():
    f = FunctionalConvNet(SMALL)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, b = f.init_flat(seed=7), f.init_flat(seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, f.init_flat(seed=8))
    torch.manual_seed(7)
    assert torch.equal(a, flatten_params(ConvNet(SMALL)))  # PyTorch's default init, seeded


def test_unseeded_init_flat_draws_fresh_weights():
    f = FunctionalConvNet(SMALL)
    assert not torch.equal(f.init_flat(), f.init_flat())


# The DC/MTT ConvNet's other options, as their code builds them (``get_network``'s norm, activation and pooling).
DC_NORMS = {"instancenorm": lambda width, size: nn.GroupNorm(width, width, affine=True),
            "batchnorm": lambda width, size: nn.BatchNorm2d(width),
            "layernorm": lambda width, size: nn.LayerNorm([width, size, size], elementwise_affine=True),
            "groupnorm": lambda width, size: nn.GroupNorm(4, width, affine=True), "none": None}
DC_ACTIVATIONS = {"relu": lambda: nn.ReLU(inplace=True), "leakyrelu": lambda: nn.LeakyReLU(negative_slope=0.01),
                  "sigmoid": nn.Sigmoid}
DC_POOLINGS = {"avgpooling": lambda: nn.AvgPool2d(kernel_size=2, stride=2),
               "maxpooling": lambda: nn.MaxPool2d(kernel_size=2, stride=2), "none": None}


def dc_features(channels: int, width: int, depth: int, size: int, norm: str, activation: str, pooling: str):
    """DC's feature stack written out: conv, then norm (at the current size), activation, pooling, per block."""
    layers = []
    for _ in range(depth):
        layers.append(nn.Conv2d(channels, width, kernel_size=3, padding=1))
        if DC_NORMS[norm] is not None:
            layers.append(DC_NORMS[norm](width, size))
        layers.append(DC_ACTIVATIONS[activation]())
        channels = width
        if DC_POOLINGS[pooling] is not None:
            layers.append(DC_POOLINGS[pooling]())
            size //= 2
    return nn.Sequential(*layers), channels * size * size


@pytest.mark.parametrize("norm,activation,pooling",
                         [(n, "relu", "avgpooling") for n in NORMS]
                         + [("instancenorm", a, p) for a, p in itertools.product(ACTIVATIONS, POOLINGS)])
def test_every_option_is_the_dc_layer_and_computes_like_it(norm, activation, pooling):
    cfg = ModelConfig(num_classes=4, image_size=8, channels=2, width=8, depth=2, norm=norm, activation=activation,
                      pooling=pooling)
    net = ConvNet(cfg)
    assert net.config == cfg
    features, flat = dc_features(2, 8, 2, 8, norm, activation, pooling)
    reference = nn.Sequential(features, nn.Flatten(), nn.Linear(flat, 4))
    for kit_layer, dc_layer in zip([*net.features, net.classifier], [*features, reference[2]], strict=True):
        assert type(kit_layer) is type(dc_layer)
        assert repr(kit_layer).replace("inplace=True", "") == repr(dc_layer).replace("inplace=True", "")
    assert [p.shape for p in net.parameters()] == [p.shape for p in reference.parameters()]
    reference.load_state_dict(dict(zip(reference.state_dict(), net.state_dict().values(), strict=True)))
    x = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(0)) * 3  # negatives for LeakyReLU to scale
    torch.testing.assert_close(net(x), reference(x))


def test_config_for_a_spec_takes_its_sizes_and_the_overrides():
    mono = replace(CIFAR100.subset(7), channels=1, image_size=16)
    cfg = ModelConfig.for_spec(mono, width=16, norm="batchnorm")
    assert (cfg.num_classes, cfg.image_size, cfg.channels, cfg.width, cfg.depth, cfg.norm) == (
        7, 16, 1, 16, 3, "batchnorm")
    assert cfg.to_dict() == {"num_classes": 7, "image_size": 16, "channels": 1, "width": 16, "depth": 3,
                             "norm": "batchnorm", "activation": "relu", "pooling": "avgpooling"}
    assert ConvNet(cfg)(torch.zeros(2, 1, 16, 16)).shape == (2, 7)


def test_predict_is_the_plain_forward_in_eval_mode_in_batches_and_restores_the_mode():
    net = ConvNet(replace(SMALL, norm="batchnorm")).double()  # batch statistics: train and eval mode differ
    images = torch.randn(7, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    seen = []

    def forward(x):
        seen.append(len(x))
        return net(x)

    with torch.no_grad():
        expected = net.eval()(images)
    for training in (True, False):
        net.train(training)
        seen.clear()
        out = predict(net, forward, images, batch_size=3)
        assert net.training is training and seen == [3, 3, 1]
        assert out.dtype == torch.float64 and not out.requires_grad
        torch.testing.assert_close(out, expected)
    # with a device, each batch goes there as float32 (a float32 network scoring float64 images)
    single = ConvNet(replace(SMALL, norm="batchnorm"))
    single.load_state_dict(net.float().state_dict())
    out = predict(single, single, images, device=torch.device("cpu"), batch_size=4)
    with torch.no_grad():
        torch.testing.assert_close(out, single.eval()(images.float()))
    assert out.dtype == torch.float32 and single.training is False  # it was in eval mode before


def test_the_functional_network_lives_on_its_device_and_inits_there():
    """``meta`` stands in for a second device here (the CPU is the only real one): the module, and each fresh
    initialization, are on the device asked for, in the dtype asked for."""
    f = FunctionalConvNet(SMALL, device="meta", dtype=torch.float64)
    assert {(p.device.type, p.dtype) for p in f.module.parameters()} == {("meta", torch.float64)}
    flat = f.init_flat(seed=3)
    assert (flat.device.type, flat.dtype, flat.shape) == ("meta", torch.float64, (f.num_params,))
