"""The challenge ConvNet: DC/MTT layout, exact parameter count, and the flat functional view."""

import itertools

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
