"""Reading what the scorer reads, safely, and deciding which dataset spec a file is scored under.

Submissions and references come from strangers, so everything is loaded with ``weights_only`` (or as
safetensors) and checked the way the official script would fail on it: a bare tensor, the four shape
asserts, a reference dict with ``images_val`` and ``labels_val``. Each problem is one line naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from challenge_kit.core.artifact import DistilledArtifact
from challenge_kit.core.contract import (
    RECORD_ROOM,
    REFERENCE,
    SPECS,
    SUBMISSION,
    DatasetSpec,
    get_spec,
    spec_for_shape,
)
from challenge_kit.core.errors import KitFileError, KitValueError
from challenge_kit.core.reading import file_size, load_torch, within

REFERENCE_KEYS = ("images_val", "labels_val")
MANIFEST = "manifest.json"


def check_shape(images: torch.Tensor, spec: DatasetSpec, path: str | Path) -> None:
    """The official scorer's four shape asserts (count, channels, height, width)."""
    shape = tuple(images.shape)
    if shape != spec.shape:
        raise KitFileError(path, f"shape {shape} fails the scorer's shape asserts: {spec.name} expects "
                                 f"{spec.shape} (images, channels, height, width)")


def submission_tensor(obj, name: str | Path) -> torch.Tensor:
    """What a challenge ``.pt`` must hold: a bare tensor (anything else crashes the scorer).

    Kept as stored, so ``verify`` still sees its dtype; the scorer casts it like the official ``.float()``.
    """
    if not isinstance(obj, torch.Tensor):
        raise KitFileError(name, f"holds a {type(obj).__name__}, not a bare tensor (the scorer would crash); "
                                 "save the image tensor itself with torch.save")
    if obj.numel() == 0:
        raise KitFileError(name, f"holds an empty tensor ({'x'.join(map(str, obj.shape))}): no images to score")
    return obj.detach()


def load_submission_tensor(path: str | Path) -> torch.Tensor:
    return submission_tensor(load_torch(path, SUBMISSION), path)


def load_submission(path: str | Path, spec: DatasetSpec) -> torch.Tensor:
    images = load_submission_tensor(path)
    check_shape(images, spec, path)
    return images


def load_reference(path: str | Path, spec: DatasetSpec | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``{name}_test.pt``: a dict with ``images_val`` (N, C, H, W) and integer ``labels_val`` (N,)."""
    obj = load_torch(path, REFERENCE)
    if not isinstance(obj, dict):
        raise KitFileError(path, f"holds a {type(obj).__name__}, "
                                 "not a dict with 'images_val' and 'labels_val'")
    missing = [k for k in REFERENCE_KEYS if k not in obj]
    if missing:
        raise KitFileError(path, f"reference dict has no {' or '.join(map(repr, missing))} "
                                 f"(keys: {', '.join(map(str, obj)) or 'none'})")
    images, labels = obj["images_val"], obj["labels_val"]
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise KitFileError(path, "'images_val' is not a 4-D image tensor (N, C, H, W)")
    try:
        labels = torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError):
        raise KitFileError(path, "'labels_val' is not a tensor or list of class indices") from None
    if labels.dim() != 1 or labels.shape[0] != images.shape[0] or labels.shape[0] == 0:
        raise KitFileError(path, f"'labels_val' has shape {tuple(labels.shape)}, "
                                 f"expected ({images.shape[0]},) to match 'images_val'")
    if labels.is_floating_point() and not torch.equal(labels, labels.round()):
        raise KitFileError(path, "'labels_val' holds non-integer values")
    labels = labels.long()
    if spec is not None:
        check_reference(images, labels, spec, path)
    return images.detach().float(), labels


def check_reference(images: torch.Tensor, labels: torch.Tensor, spec: DatasetSpec, path: str | Path) -> None:
    expected = (spec.channels, spec.image_size, spec.image_size)
    if tuple(images.shape[1:]) != expected:
        raise KitFileError(path, f"'images_val' are {tuple(images.shape[1:])}, "
                                 f"{spec.name} images are {expected}")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= spec.num_classes:
        raise KitFileError(path, f"'labels_val' spans {low}..{high} but the set has "
                                 f"{spec.num_classes} classes; use a reference made for this set")


def read_manifest(path: str | Path) -> dict | None:
    """The ``manifest.json`` beside ``path`` when there is one holding a JSON object (of a manifest's size)."""
    manifest = Path(path).parent / MANIFEST
    if not manifest.is_file():
        return None
    size = file_size(manifest)
    if size > RECORD_ROOM:
        raise KitFileError(manifest, f"is {size:,} bytes; a manifest is a few KB: refused unread")
    try:
        data = json.loads(manifest.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise KitFileError(manifest, f"not readable JSON ({e})") from None
    return data if isinstance(data, dict) else None


def manifest_spec(path: str | Path) -> DatasetSpec | None:
    """The spec recorded in a ``manifest.json`` beside ``path`` (key ``spec``), if there is one."""
    data = read_manifest(path)
    if data is None or "spec" not in data:
        return None
    try:
        return DatasetSpec.from_dict(data["spec"])
    except (KeyError, TypeError, ValueError, AttributeError, KitValueError) as e:
        raise KitFileError(Path(path).parent / MANIFEST, f"'spec' is not a dataset spec ({e!r})") from None


def declared_problem(spec: DatasetSpec) -> str | None:
    """Why a spec a file declares (its manifest, its metadata) cannot be the one it is judged by, if it cannot.

    A subset may have fewer classes, another ipc or smaller images, but the normalization is the dataset's: a file
    that declares its own would choose the verdict on its pixels.
    """
    base = SPECS.get(spec.name)
    if base is None:
        return f"names no challenge dataset ({spec.name!r}; {', '.join(SPECS)})"
    if (spec.mean, spec.std) != (base.mean, base.std):
        return f"normalizes with mean {spec.mean}, std {spec.std}, not {base.name}'s mean/std"
    if spec.num_classes > base.num_classes:
        return f"has {spec.num_classes} classes, more than {base.name}'s {base.num_classes}"
    return None


def spec_from_reference(shape: tuple[int, ...], labels: torch.Tensor | None,
                        dataset: str | None = None) -> DatasetSpec | None:
    """A subset spec from the image size and the reference's class count (``max label + 1``)."""
    if labels is None or len(shape) != 4 or labels.numel() == 0:
        return None
    if dataset is not None:
        base = get_spec(dataset)
    else:
        fits = [s for s in SPECS.values() if (s.channels, s.image_size, s.image_size) == shape[1:]]
        base = fits[0] if fits else None
    classes = int(labels.max()) + 1
    if base is None or classes > base.num_classes or shape[0] % classes:
        return None
    return base.subset(classes, ipc=shape[0] // classes)


def resolve_spec(shape: tuple[int, ...], *, dataset: str | None = None,
                 declared: tuple[DatasetSpec | None, ...] = (),
                 reference_labels: torch.Tensor | None = None) -> tuple[DatasetSpec, str]:
    """Which spec a tensor of ``shape`` is scored under, and where it came from.

    In order: the declared specs (a manifest beside the file, an artifact's metadata), the challenge spec
    with exactly this shape, a subset made from the image size and the reference's class count. Only specs
    that fit the shape (and ``dataset`` when given) count; when none fits, the one the user named or the
    file declared is returned so the shape asserts report what was expected.
    """
    shape = tuple(shape)
    declared = tuple(None if s is None or declared_problem(s) else s for s in declared)
    options = [(s, why) for s, why in zip(declared, ("manifest.json", "artifact metadata"), strict=False)]
    options += [(spec_for_shape(shape), "shape"),
                (spec_from_reference(shape, reference_labels, dataset), "reference labels")]
    for spec, why in options:
        if spec is not None and spec.shape == shape and dataset in (None, spec.name):
            return spec, why
    for spec, why in options[:len(declared)]:
        if spec is not None and dataset in (None, spec.name):
            return spec, why
    if dataset is not None:
        return get_spec(dataset), "--dataset"
    raise KitValueError(f"cannot tell which dataset a {shape} tensor is for; pass --dataset "
                     f"({', '.join(SPECS)}) or put a manifest.json with its spec beside it")


@dataclass
class ScoringInput:
    """Everything one ``evaluate`` call needs, validated; ``images`` as stored (the scorer casts them)."""

    images: torch.Tensor
    spec: DatasetSpec
    spec_source: str
    test_images: torch.Tensor
    test_labels: torch.Tensor
    labels: torch.Tensor | None = None  # an artifact's own labels and learned lr: the scorer ignores both
    lr: float | None = None


def load_inputs(path: str | Path, reference: str | Path, dataset: str | None = None) -> ScoringInput:
    """Load a challenge ``.pt`` or a kit artifact (``.safetensors``) and its reference; resolve the spec."""
    path = Path(path)
    if dataset is not None:
        get_spec(dataset)
    test_images, test_labels = load_reference(reference)
    labels = lr = None
    if path.suffix == ".safetensors":
        within(path, SUBMISSION)
        artifact = DistilledArtifact.load(path)
        images, declared = submission_tensor(artifact.images, path), (manifest_spec(path), artifact.spec)
        labels, lr = artifact.labels, artifact.lr
    else:
        images, declared = load_submission_tensor(path), (manifest_spec(path),)
    try:
        spec, source = resolve_spec(tuple(images.shape), dataset=dataset, declared=declared,
                                    reference_labels=test_labels)
    except KitValueError as e:
        raise KitFileError(path, str(e)) from None
    check_shape(images, spec, path)
    check_reference(test_images, test_labels, spec, reference)
    return ScoringInput(images, spec, source, test_images, test_labels, labels, lr)
