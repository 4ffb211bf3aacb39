"""Real training and test data as challenge-normalized tensors, decoded once and cached.

Three sources, one entry point (``load_split``), each reader in its own module:
- ``cifar``: CIFAR-100 in torchvision's ``cifar-100-python`` pickle format (a restricted unpickler);
- ``tiny``: Tiny ImageNet in the ``tiny-imagenet-200`` layout;
- ``folder``: any ImageFolder (``folder/<class>/*.png``), resized to the spec's image size (``--image-folder``).
A listing with fewer classes than the challenge's (``ddkit subset`` writes such folders, ``subset``) gives a
subset spec, never a challenge spec. Decoded pixels go through ``cache``.

The entry lives here, so what it calls (``read_cifar100``, ``decode_images``) is looked up in this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from challenge_kit.core import seeds
from challenge_kit.core.contract import DatasetSpec, get_spec, normalize
from challenge_kit.core.errors import KitFileError, KitValueError
from challenge_kit.core.folders import output_file
from challenge_kit.core.storage import save_torch
from challenge_kit.data.cache import (
    cache_key,
    cache_path,
    cached,
    default_cache_dir,
    fingerprint_files,
    hash_contents,
    store,
)
from challenge_kit.data.cifar import (
    CIFAR_DIR,
    CIFAR_LAYOUT,
    cifar_classes,
    cifar_files,
    cifar_spec,
    download_cifar100,
    read_cifar100,
    read_cifar100_labels,
    read_cifar_pickle,
)
from challenge_kit.data.folder import (
    IMAGE_EXTENSIONS,
    decode_images,
    image_folder_files,
    image_folder_root,
    image_folder_spec,
)
from challenge_kit.data.tiny import (
    ANNOTATIONS,
    TINY_LAYOUT,
    tiny_classes,
    tiny_files,
    tiny_root,
    tiny_spec,
    tiny_words,
)

SPLITS = ("train", "test")


def to_normalized(pixels: torch.Tensor, spec: DatasetSpec, chunk: int = 4096) -> torch.Tensor:
    """uint8 N x 3 x H x W -> challenge-normalized float32 (chunked: full Tiny ImageNet is 5 GB as float)."""
    out = torch.empty(pixels.shape, dtype=torch.float32)
    for i in range(0, pixels.shape[0], chunk):
        out[i:i + chunk] = normalize(pixels[i:i + chunk].float() / 255, spec)
    return out


def _source(dataset: str, root: Path, split: str, image_folder: bool):
    """(spec, cache key material, decode function) for one split of one source, without decoding."""
    base = get_spec(dataset)
    if image_folder:
        folder = image_folder_root(root, split)
        files, labels, classes = image_folder_files(folder)
        spec = image_folder_spec(base, classes)
        return spec, ["folder", str(folder), fingerprint_files(files)], \
            lambda: (decode_images(files, spec.image_size), torch.tensor(labels, dtype=torch.int64))
    if dataset == "cifar100":
        material = ["cifar100", hash_contents(list(cifar_files(root, split)))]  # the split's file is read first
        spec = cifar_spec(cifar_classes(root))
        return spec, material, lambda: read_cifar100(root, split, spec)
    if dataset == "tinyimagenet":
        wnids = tiny_classes(root)
        spec = tiny_spec(wnids)
        files, labels = tiny_files(root, split, wnids)
        extra = [root / ANNOTATIONS] if split == "test" else []
        return spec, ["tinyimagenet", fingerprint_files(files + extra)], \
            lambda: (decode_images(files, spec.image_size), torch.tensor(labels, dtype=torch.int64))
    raise ValueError(f"no loader for dataset {dataset!r}")


def detect_dataset(root: str | Path) -> str:
    """Which dataset a data root holds: ``cifar-100-python/`` or a ``tiny-imagenet-200`` tree."""
    root = Path(root)
    if (root / CIFAR_DIR).is_dir():
        return "cifar100"
    if (tiny_root(root) / "train").is_dir():
        return "tinyimagenet"
    raise KitFileError(root, f"holds neither {CIFAR_LAYOUT} nor {TINY_LAYOUT}; pass --dataset")


def dataset_spec(dataset: str, root: str | Path, *, image_folder: bool = False) -> DatasetSpec:
    """The spec ``load_split`` will return (subset detection), reading only the class listing."""
    root = Path(root)
    if image_folder:
        return image_folder_spec(get_spec(dataset), image_folder_files(image_folder_root(root, "train"))[2])
    if dataset == "tinyimagenet":
        return tiny_spec(tiny_classes(tiny_root(root)))
    if dataset == "cifar100":
        return cifar_spec(cifar_classes(root))
    return get_spec(dataset)


@dataclass
class Layout:
    """What a data root holds, read from its listings and labels without decoding an image: the plan counts the
    images a run will train on from it, and ``ddkit doctor`` shows it."""

    dataset: str
    root: str  # the folder read (Tiny ImageNet's tiny-imagenet-200 when given its parent)
    layout: str  # cifar-100-python, tiny-imagenet-200 or image folder
    spec: DatasetSpec
    train_images: int

    def describe(self) -> str:
        return f"{self.layout} at {self.root}: {self.spec.describe()}, {self.train_images:,} training images"


def data_layout(dataset: str, root: str | Path, *, image_folder: bool = False) -> Layout:
    """The layout ``load_split`` would read in ``root`` and its training images, counted (a file listing, or
    CIFAR-100's label list)."""
    get_spec(dataset)
    root = Path(root)
    if not image_folder and dataset == "tinyimagenet":
        root = tiny_root(root)
    if not root.is_dir():
        raise KitFileError(root, "data root not found")
    if image_folder:
        _, labels, classes = image_folder_files(image_folder_root(root, "train"))
        return Layout(dataset, str(root), "image folder", image_folder_spec(get_spec(dataset), classes), len(labels))
    if dataset == "tinyimagenet":
        wnids = tiny_classes(root)
        return Layout(dataset, str(root), "tiny-imagenet-200", tiny_spec(wnids),
                      len(tiny_files(root, "train", wnids)[1]))
    labels = read_cifar100_labels(root, "train")  # the split's file first, as the loader reads it
    return Layout(dataset, str(root), CIFAR_DIR, cifar_spec(cifar_classes(root)), len(labels))


def class_words(dataset: str, root: str | Path, *, image_folder: bool = False) -> list[str]:
    """The classes of ``root`` in label order, in the dataset's words: Tiny ImageNet's ``words.txt``, CIFAR-100's
    ``meta`` names, an image folder's class folders (for figures a person reads)."""
    root = Path(root)
    if image_folder:
        return list(image_folder_files(image_folder_root(root, "train"))[2])
    if dataset == "tinyimagenet":
        root = tiny_root(root)
        return tiny_words(root, tiny_classes(root))
    return cifar_classes(root)


def fetch(dataset: str, root: str | Path) -> None:
    """``--download``: put the dataset into ``root`` (CIFAR-100 only; Tiny ImageNet is unpacked by hand)."""
    if dataset != "cifar100":
        raise KitValueError(f"{dataset} cannot be downloaded by ddkit; unpack it as {TINY_LAYOUT}")
    download_cifar100(Path(root))


def load_split(dataset: str, root: str | Path, split: str, *, download: bool = False,
               cache_dir: str | Path | None = None, image_folder: bool = False,
               ) -> tuple[torch.Tensor, torch.Tensor, DatasetSpec]:
    """One split as (float32 N x 3 x H x W challenge-normalized images, int64 labels, spec).

    ``dataset`` names the spec (cifar100, tinyimagenet); with ``image_folder`` the images come from
    ``root`` as an ImageFolder (``root/<split>/<class>/*`` or a flat ``root/<class>/*`` for train) at that
    spec's size and statistics. ``split`` is ``train`` or ``test`` (Tiny ImageNet's ``val/``).
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    get_spec(dataset)
    root = Path(root)
    if not image_folder and dataset == "tinyimagenet":
        root = tiny_root(root)
    if download and not image_folder:
        fetch(dataset, root)
    if not root.is_dir():
        raise KitFileError(root, "data root not found")
    spec, material, decode = _source(dataset, root, split, image_folder)
    key = cache_key(split, spec, material)
    path = cache_path(Path(cache_dir) if cache_dir else default_cache_dir(), dataset, split, root, key)
    hit = cached(path, key)
    if hit is None:
        pixels, labels = decode()
        store(path, key, pixels, labels, spec)
    else:
        pixels, labels = hit
    return to_normalized(pixels, spec), labels, spec


def split_holdout(labels: torch.Tensor, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held-out) indices: ``per_class`` images of every class held out, chosen by a seeded draw.

    The held-out images are the selection split: neither experts nor distillation ever see them.
    """
    gen = seeds.generator(seed)
    kept, held = [], []
    for c in torch.unique(labels).tolist():
        pool = torch.nonzero(labels == c).flatten()
        if len(pool) <= per_class:
            raise KitValueError(f"class {c} has {len(pool)} training images: cannot hold out {per_class} of them "
                             "for selection and keep any (lower eval.holdout_per_class)")
        pool = pool[torch.randperm(len(pool), generator=gen)]
        held.append(pool[:per_class])
        kept.append(pool[per_class:])
    return torch.cat(kept).sort().values, torch.cat(held).sort().values


def build_reference(dataset: str, root: str | Path, out: str | Path, *, download: bool = False,
                    cache_dir: str | Path | None = None, image_folder: bool = False,
                    overwrite: bool = False) -> DatasetSpec:
    """The scorer's reference file ``{images_val, labels_val}`` from the real test split (atomic write); ``out``
    is checked writable before the data is read, and an existing file is replaced only with ``overwrite``."""
    output_file(out, overwrite=overwrite)
    images, labels, spec = load_split(dataset, root, "test", download=download, cache_dir=cache_dir,
                                      image_folder=image_folder)
    save_torch({"images_val": images, "labels_val": labels}, out)
    return spec


__all__ = ["load_split", "dataset_spec", "build_reference", "fetch", "detect_dataset", "split_holdout",
           "to_normalized", "default_cache_dir", "read_cifar_pickle", "read_cifar100", "decode_images",
           "tiny_classes", "tiny_files", "IMAGE_EXTENSIONS", "Layout", "data_layout", "class_words"]
