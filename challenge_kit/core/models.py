"""The challenge ConvNet (DC/MTT layout), a functional view of it on one flat parameter vector, and the other
networks a set is scored on across architectures.

The layout (``features.0`` conv, ``features.1`` norm, ..., ``classifier``) matches the DC/MTT/DATM code,
so their checkpoints and replay buffers load unchanged. Trajectory matching runs the same network on a
flat vector of parameters, which is what experts store and what the matching loss compares. The
cross-architecture networks (``build_network``) live here because the scorer trains them (docs/scorer.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils import parameters_to_vector

from challenge_kit.core.contract import ARCHITECTURES, CONVNET_VARIANTS, DatasetSpec

NORMS = ("instancenorm", "batchnorm", "layernorm", "groupnorm", "none")
ACTIVATIONS = ("relu", "leakyrelu", "sigmoid")
POOLINGS = ("avgpooling", "maxpooling", "none")


@dataclass(frozen=True)
class ModelConfig:
    """ConvNet hyperparameters; the defaults are the scorer's network."""

    num_classes: int = 100
    image_size: int = 32
    channels: int = 3
    width: int = 128
    depth: int = 3
    norm: str = "instancenorm"
    activation: str = "relu"
    pooling: str = "avgpooling"

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"norm {self.norm!r} not in {NORMS}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} not in {ACTIVATIONS}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling {self.pooling!r} not in {POOLINGS}")

    @classmethod
    def for_spec(cls, spec: DatasetSpec, **overrides) -> ModelConfig:
        """The challenge network (width 128, depth 3 for both datasets) sized for ``spec``."""
        return cls(num_classes=spec.num_classes, image_size=spec.image_size, channels=spec.channels,
                   **overrides)

    def to_dict(self) -> dict:
        return asdict(self)


def _norm(kind: str, width: int, size: int) -> nn.Module:
    if kind == "instancenorm":
        return nn.GroupNorm(width, width, affine=True)
    if kind == "batchnorm":
        return nn.BatchNorm2d(width)
    if kind == "layernorm":
        return nn.LayerNorm([width, size, size], elementwise_affine=True)
    if kind == "groupnorm":
        return nn.GroupNorm(4, width, affine=True)
    raise ValueError(kind)


def _activation(kind: str) -> nn.Module:
    return {"relu": nn.ReLU, "leakyrelu": lambda: nn.LeakyReLU(0.01), "sigmoid": nn.Sigmoid}[kind]()


class ConvNet(nn.Module):
    """Conv(3x3) -> norm -> activation -> pool, ``depth`` times, then one linear classifier."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        channels, size = config.channels, config.image_size
        for _ in range(config.depth):
            layers.append(nn.Conv2d(channels, config.width, kernel_size=3, padding=1))
            if config.norm != "none":
                layers.append(_norm(config.norm, config.width, size))
            layers.append(_activation(config.activation))
            channels = config.width
            if config.pooling != "none":
                layers.append(nn.AvgPool2d(2, 2) if config.pooling == "avgpooling" else nn.MaxPool2d(2, 2))
                size //= 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels * size * size, config.num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (flattened conv output)."""
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


def num_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def flatten_params(net: nn.Module) -> torch.Tensor:
    """All parameters in ``net.parameters()`` order as one detached flat vector."""
    return parameters_to_vector(net.parameters()).detach()


def param_shapes(net: nn.Module) -> list[tuple[str, torch.Size]]:
    return [(name, p.shape) for name, p in net.named_parameters()]


def unflatten_params(flat: torch.Tensor, shapes: list[tuple[str, torch.Size]]) -> dict[str, torch.Tensor]:
    """Views of ``flat`` named and shaped like the network's parameters (gradients flow through)."""
    total = sum(s.numel() for _, s in shapes)
    if flat.numel() != total:
        raise ValueError(f"flat vector has {flat.numel()} values, the network has {total} parameters")
    out, offset = {}, 0
    for name, shape in shapes:
        n = shape.numel()
        out[name] = flat[offset:offset + n].view(shape)
        offset += n
    return out


def _instance_norm(channels: int) -> nn.Module:
    """The DC/MTT networks' default norm: instance norm with affine parameters, written as GroupNorm(C, C)."""
    return nn.GroupNorm(channels, channels, affine=True)


def resnet18(config: ModelConfig) -> nn.Module:
    """torchvision's ResNet-18 as DD papers train it at 32/64 px: a 3x3 stride-1 stem, no max-pool, instance norm;
    its global average pool then a linear classifier on 512 features."""
    from torchvision.models import resnet18 as torchvision_resnet18

    net = torchvision_resnet18(num_classes=config.num_classes, norm_layer=_instance_norm)
    net.conv1 = nn.Conv2d(config.channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


def vgg11(config: ModelConfig) -> nn.Module:
    """torchvision's VGG-11 (configuration A) as DD papers train it: instance norm after every conv, global average
    pooling of the last 512 channels and one linear classifier instead of the 4096-wide head."""
    from torchvision.models import vgg11 as torchvision_vgg11
    from torchvision.models.vgg import cfgs, make_layers

    net = torchvision_vgg11(num_classes=config.num_classes)
    net.features = make_layers(cfgs["A"], batch_norm=True)
    for i, layer in enumerate(net.features):
        if isinstance(layer, nn.BatchNorm2d):
            net.features[i] = _instance_norm(layer.num_features)
    net.avgpool = nn.AdaptiveAvgPool2d(1)
    net.classifier = nn.Linear(512, config.num_classes)
    return net


def build_network(arch: str, config: ModelConfig) -> nn.Module:
    """The network ``arch`` names (``ARCHITECTURES``) for ``config``'s classes and image size, every layer with
    PyTorch's default initialization (the DC/MTT networks'); ``convnet`` is the scorer's ConvNet itself."""
    if arch in CONVNET_VARIANTS:
        return ConvNet(replace(config, **CONVNET_VARIANTS[arch]))
    if arch not in ARCHITECTURES:
        raise ValueError(f"architecture {arch!r} not in {ARCHITECTURES}")
    if config.channels != 3:
        raise ValueError(f"{arch} takes 3-channel images, not {config.channels}")
    net = resnet18(config) if arch == "resnet18" else vgg11(config)
    for module in net.modules():
        if module is not net and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return net


INFERENCE_BATCH = 512  # images per forward pass wherever the kit only predicts (eval mode, no gradient)


@torch.no_grad()
def predict(module: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
            device: torch.device | None = None, batch_size: int = INFERENCE_BATCH) -> torch.Tensor:
    """``forward`` over ``images`` in batches with ``module`` in eval mode (its mode is restored after).

    With ``device``, each batch is moved there as float32 and the outputs come back to the images' device, so a
    large CPU pool is never copied whole to a GPU.
    """
    was_training = module.training
    module.eval()
    try:
        if device is None:
            return torch.cat([forward(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
        return torch.cat([forward(images[i:i + batch_size].to(device, torch.float32)).to(images.device)
                          for i in range(0, len(images), batch_size)])
    finally:
        module.train(was_training)


def load_flat_(net: nn.Module, flat: torch.Tensor) -> nn.Module:
    """Copy a flat vector into the network's parameters in place."""
    params = unflatten_params(flat.to(next(net.parameters()).device), param_shapes(net))
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(params[name])
    return net


class FunctionalConvNet:
    """Runs a ConvNet as a pure function of a flat parameter vector (for the matching inner loop)."""

    def __init__(self, config: ModelConfig, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.config = config
        self.module = ConvNet(config).to(device=device, dtype=dtype)
        self.shapes = param_shapes(self.module)
        self.num_params = num_parameters(self.module)

    def __call__(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.module, unflatten_params(flat, self.shapes), (x,))

    def init_flat(self, seed: int | None = None) -> torch.Tensor:
        """A fresh random initialization (PyTorch defaults) as a flat vector.

        Seeded: reproducible and the global RNG is left untouched. Unseeded: drawn from (and advancing) the
        global RNG, so consecutive calls differ.
        """
        if seed is None:
            net = ConvNet(self.config)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                net = ConvNet(self.config)
        p = next(self.module.parameters())
        return flatten_params(net).to(device=p.device, dtype=p.dtype)
