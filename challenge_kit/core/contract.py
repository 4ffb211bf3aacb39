"""The challenge contract as data: the one place every constant of Track 1 lives.

A submission is a bare float32 tensor of ``classes * ipc`` images, class-major in default order,
pre-normalized with the dataset's mean/std (no ZCA). The scorer makes the labels itself, so the
order of the images *is* the labelling.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

from challenge_kit.core.errors import KitValueError

if TYPE_CHECKING:  # torch is imported where tensors are made, so that reading a recipe stays well under a second
    import torch


@dataclass(frozen=True)
class DatasetSpec:
    """What a distilled set for one dataset must look like."""

    name: str
    num_classes: int
    image_size: int
    ipc: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channels: int = 3
    challenge: bool = True
    class_names: tuple[str, ...] | None = None

    @property
    def submission_file(self) -> str:
        return f"{self.name}.pt"

    @property
    def reference_file(self) -> str:
        return f"{self.name}_test.pt"

    @property
    def num_images(self) -> int:
        return self.num_classes * self.ipc

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """Exact tensor shape the scorer asserts."""
        return (self.num_images, self.channels, self.image_size, self.image_size)

    def subset(self, num_classes: int, class_names: tuple[str, ...] | None = None,
               ipc: int | None = None) -> DatasetSpec:
        """A spec for the first ``num_classes`` classes (tests, mini sets): never a challenge spec."""
        if not 0 < num_classes <= self.num_classes:
            raise KitValueError(f"subset of {num_classes} classes is not within 1..{self.num_classes}")
        if ipc is not None and ipc < 1:
            raise KitValueError(f"subset ipc must be at least 1, got {ipc}")
        if num_classes == self.num_classes and class_names is None and ipc in (None, self.ipc):
            return self
        return replace(self, num_classes=num_classes, challenge=False, class_names=class_names,
                       ipc=self.ipc if ipc is None else ipc)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if self.class_names is not None:
            d["class_names"] = list(self.class_names)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DatasetSpec:
        """Inverse of ``to_dict``; specs come from files, so a wrong one is refused (KitValueError)."""
        names = d.get("class_names")
        spec = cls(name=str(d["name"]), num_classes=int(d["num_classes"]), image_size=int(d["image_size"]),
                   ipc=int(d["ipc"]), mean=tuple(float(m) for m in d["mean"]),
                   std=tuple(float(s) for s in d["std"]), channels=int(d.get("channels", 3)),
                   challenge=bool(d.get("challenge", False)),
                   class_names=tuple(str(n) for n in names) if names is not None else None)
        if min(spec.num_classes, spec.image_size, spec.ipc, spec.channels) < 1 \
                or len(spec.mean) != spec.channels or len(spec.std) != spec.channels or min(spec.std) <= 0 \
                or (spec.class_names is not None and len(spec.class_names) != spec.num_classes):
            raise KitValueError(f"not a valid dataset spec: {d!r}")
        if spec.challenge and SPECS.get(spec.name) != spec:
            raise KitValueError(f"spec claims to be the {spec.name!r} challenge spec but differs from it: {d!r}")
        return spec

    def describe(self) -> str:
        kind = "challenge" if self.challenge else "subset (not a challenge submission)"
        return (f"{self.name}: {self.num_classes} classes x {self.ipc} IPC, "
                f"{self.channels}x{self.image_size}x{self.image_size}, {kind}")


CIFAR100 = DatasetSpec(
    name="cifar100", num_classes=100, image_size=32, ipc=10,
    mean=(0.5071, 0.4866, 0.4409), std=(0.2673, 0.2564, 0.2762),
)
TINYIMAGENET = DatasetSpec(
    name="tinyimagenet", num_classes=200, image_size=64, ipc=10,
    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
)
SPECS: dict[str, DatasetSpec] = {s.name: s for s in (CIFAR100, TINYIMAGENET)}

# The largest files a challenge hands the kit: anything larger is refused before it is read. Every value at 8 bytes
# (float64: verify warns, the scorer accepts; float32 takes half), plus room for torch's own records and the pickle.
# A submission holds the largest set's images; a reference, a test set (CIFAR-100 test and Tiny ImageNet val hold
# TEST_IMAGES each) and its labels.
TEST_IMAGES = 10_000
RECORD_ROOM = 1 << 20
_LARGEST = max(SPECS.values(), key=lambda s: s.num_images * s.channels * s.image_size ** 2)
MAX_SUBMISSION_VALUES = _LARGEST.num_images * _LARGEST.channels * _LARGEST.image_size ** 2
MAX_SUBMISSION_BYTES = 8 * MAX_SUBMISSION_VALUES + RECORD_ROOM
MAX_REFERENCE_VALUES = TEST_IMAGES * (1 + _LARGEST.channels * _LARGEST.image_size ** 2)
MAX_REFERENCE_BYTES = 8 * MAX_REFERENCE_VALUES + RECORD_ROOM


@dataclass(frozen=True)
class Bounds:
    """The most a file of one kind can be, refused before it is read: its bytes, its values in all, its zip records
    (a tensor or a dict of a few, with torch's own five) and its pickle (a few hundred bytes for a tensor; the
    objects it builds can take 25 times its size)."""

    what: str  # "a challenge submission"
    largest: str  # what the most values are, e.g. "tinyimagenet's 2000x3x64x64 images"
    max_bytes: int
    max_values: int
    max_records: int = 64
    max_pickle: int = RECORD_ROOM


SUBMISSION = Bounds("a challenge submission", f"{_LARGEST.name}'s {'x'.join(map(str, _LARGEST.shape))} images",
                    MAX_SUBMISSION_BYTES, MAX_SUBMISSION_VALUES)
REFERENCE = Bounds("a reference file", f"{TEST_IMAGES:,} test images of {_LARGEST.channels}x{_LARGEST.image_size}x"
                                       f"{_LARGEST.image_size} and their labels", MAX_REFERENCE_BYTES,
                   MAX_REFERENCE_VALUES)

# The scorer's training recipe (the official evaluate.py): every constant of it lives here and only here.
EPOCHS = 1001  # epoch indices 0..1000
ROUNDS = 3
LR = 0.01
LR_DECAY = 0.1  # after epoch index EPOCHS // 2 + 1, with a fresh optimizer (momentum restarts)
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
BATCH_SIZE = 256
# How that recipe is computed: "faithful" is the official arithmetic (float32, bit-identical); "fast" is the kit's
# cheaper one for its own decisions (evaluator/fast.py). Named here so that recipes name them before torch loads.
FAITHFUL, FAST = "faithful", "fast"
SCORER_MODES = (FAITHFUL, FAST)
# The networks a set can be trained on with that recipe (core/models.py builds them): the challenge ConvNet, whose
# score alone is official, its variants, and ResNet-18 and VGG-11 as DD papers adapt them. Named here for the CLI.
CHALLENGE_NET = "convnet"
CONVNET_VARIANTS = {CHALLENGE_NET: {}, "convnet-w64": {"width": 64}, "convnet-d4": {"depth": 4},
                    "convnet-bn": {"norm": "batchnorm"}, "convnet-ln": {"norm": "layernorm"},
                    "convnet-nonorm": {"norm": "none"}}
ARCHITECTURES = (*CONVNET_VARIANTS, "resnet18", "vgg11")

# Training images per class in the real downloads (CIFAR-100's train split, Tiny ImageNet's train folders).
TRAIN_PER_CLASS = {"cifar100": 500, "tinyimagenet": 500}


def get_spec(name: str) -> DatasetSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise KitValueError(f"unknown dataset {name!r}; expected one of {', '.join(SPECS)}") from None


def spec_for_shape(shape: tuple[int, ...]) -> DatasetSpec | None:
    """The challenge spec whose exact submission shape this is, if any."""
    for spec in SPECS.values():
        if tuple(shape) == spec.shape:
            return spec
    return None


def default_labels(num_classes: int, ipc: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Labels the scorer assumes: image ``i`` is class ``i // ipc``."""
    import torch

    return torch.arange(num_classes, device=device).repeat_interleave(ipc)


def _stats(spec: DatasetSpec, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    if not like.is_floating_point():
        # integer statistics would truncate to 0: convert uint8 pixels with x.float() / 255 first
        raise ValueError(f"expected floating-point images, got {like.dtype}")
    shape = (1, -1, 1, 1) if like.dim() == 4 else (-1, 1, 1)
    mean = torch.tensor(spec.mean, dtype=like.dtype, device=like.device).view(shape)
    std = torch.tensor(spec.std, dtype=like.dtype, device=like.device).view(shape)
    return mean, std


def normalize(images: torch.Tensor, spec: DatasetSpec) -> torch.Tensor:
    """``[0, 1]`` pixels -> challenge-normalized values (plain per-channel mean/std)."""
    mean, std = _stats(spec, images)
    return (images - mean) / std


def denormalize(images: torch.Tensor, spec: DatasetSpec) -> torch.Tensor:
    """Challenge-normalized values -> ``[0, 1]`` pixels (unclamped)."""
    mean, std = _stats(spec, images)
    return images * std + mean
