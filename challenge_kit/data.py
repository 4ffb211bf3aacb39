"""Real training and test data as challenge-normalized tensors, decoded once and cached.

Three sources, one entry point (``load_split``):
- CIFAR-100 in torchvision's ``cifar-100-python`` pickle format. The pickles are read here with a restricted
  unpickler that only admits what the format holds (dicts, lists, strings, ints, numpy uint8 arrays), so a
  tampered file cannot run code; torchvision is used only to download (``download=True``), which checks the
  archive's md5. Our reader checks keys, shapes and label ranges instead, which is also what lets tests use
  small files in the real format.
- Tiny ImageNet in the ``tiny-imagenet-200`` layout, classes in sorted wnid order (ImageFolder on ``train/``);
  a ``wnids.txt`` with fewer than 200 classes gives a subset spec (never a challenge spec).
- Any ImageFolder (``folder/<class>/*.png``), resized to the spec's image size, classes sorted.

Decoded pixels are cached as uint8 safetensors (4x smaller than float32; normalizing on load takes a moment)
under a key that covers the source files, the split and the spec, so a changed source or spec is never
served stale. The cache lives in the user's cache folder, never in the data folder (often shared or read-only).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from challenge_kit.core import seeds
from challenge_kit.core.contract import DatasetSpec, get_spec, normalize
from challenge_kit.core.errors import KitFileError, KitValueError
from challenge_kit.core.reading import load_tensors
from challenge_kit.core.storage import save_tensors, save_torch

SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CACHE_FORMAT = "ddkit-data-cache"
CACHE_VERSION = 1
CIFAR_DIR = "cifar-100-python"
CIFAR_LAYOUT = "ROOT/cifar-100-python/{train,test,meta} (torchvision's CIFAR-100 python format)"
TINY_LAYOUT = "ROOT/{wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, val/val_annotations.txt}"
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"


# ---------------------------------------------------------------------------------------------- CIFAR-100

class _CifarUnpickler(pickle.Unpickler):
    """Admits only the globals a CIFAR pickle needs to rebuild its numpy arrays."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR file")
        return super().find_class(module, name)


def read_cifar_pickle(path: Path) -> dict:
    """One ``cifar-100-python`` file as a dict with str keys (the originals are Python 2 pickles)."""
    if not path.is_file():
        raise KitFileError(path, f"not found; expected {CIFAR_LAYOUT}")
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as e:
        raise KitFileError(path, f"not a CIFAR-100 python pickle ({e})") from None
    if not isinstance(obj, dict):
        raise KitFileError(path, f"not a CIFAR-100 python pickle (holds a {type(obj).__name__}, not a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_files(root: Path, split: str) -> tuple[Path, Path]:
    folder = root / CIFAR_DIR
    return folder / ("train" if split == "train" else "test"), folder / "meta"


def read_cifar100(root: Path, split: str, spec: DatasetSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 pixels N x 3 x 32 x 32 and int64 fine labels (torchvision order)."""
    path, meta_path = _cifar_files(root, split)
    meta = read_cifar_pickle(meta_path)
    names = meta.get("fine_label_names")
    if not isinstance(names, list) or len(names) != spec.num_classes:
        raise KitFileError(meta_path, f"expected 'fine_label_names' with {spec.num_classes} names")
    d = read_cifar_pickle(path)
    data, labels = d.get("data"), d.get("fine_labels")
    size = spec.image_size
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * size * size:
        raise KitFileError(path, f"'data' must be a uint8 array N x {3 * size * size}")
    if not isinstance(labels, list) or len(labels) != data.shape[0]:
        raise KitFileError(path, f"'fine_labels' must be a list of {data.shape[0]} ints (one per image)")
    labels = torch.tensor(labels, dtype=torch.int64)
    if data.shape[0] == 0 or labels.min() < 0 or labels.max() >= spec.num_classes:
        raise KitFileError(path, f"no images, or labels outside 0..{spec.num_classes - 1}")
    return torch.from_numpy(data.reshape(-1, 3, size, size).copy()), labels


def download_cifar100(root: Path) -> None:
    """Fetch and unpack CIFAR-100 with torchvision (checks the archive's md5); needs the internet.

    A failure (offline, a proxy, a bad archive) is one line saying how to place the files by hand."""
    from torchvision.datasets import CIFAR100 as TorchvisionCIFAR100

    try:
        for train in (True, False):
            TorchvisionCIFAR100(str(root), train=train, download=True)
    except (OSError, RuntimeError) as e:
        reason = str(getattr(e, "reason", None) or e).strip().splitlines()[0]
        raise KitFileError(root, f"downloading CIFAR-100 failed ({reason}); to place the files by hand, unpack "
                                 f"{CIFAR_URL} into ROOT so that it holds {CIFAR_LAYOUT}, and run without "
                                 "--download") from None


# ------------------------------------------------------------------------------------------ image folders

def _read_image(path: Path, size: int) -> np.ndarray:
    """H x W x 3 uint8; grayscale and palette images become RGB, other sizes are resized (bilinear)."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise KitFileError(path, f"cannot be read as an image ({e})") from None


def decode_images(paths: list[Path], size: int) -> torch.Tensor:
    """Decode image files (in parallel threads; PIL releases the GIL) into N x 3 x size x size uint8."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        arrays = list(pool.map(lambda p: _read_image(p, size), paths))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _subdirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_folder_files(folder: Path) -> tuple[list[Path], list[int], tuple[str, ...]]:
    """``folder/<class>/*.<image>``: files, labels and classes, sorted as torchvision's ImageFolder sorts."""
    if not folder.is_dir():
        raise KitFileError(folder, "not found; expected an image folder FOLDER/<class>/*.{jpg,png,...}")
    from torchvision.datasets.folder import find_classes, make_dataset

    try:
        classes, class_to_idx = find_classes(str(folder))
    except FileNotFoundError:
        raise KitFileError(folder, "has no class folders; expected FOLDER/<class>/*.{jpg,png,...}") from None
    samples = make_dataset(str(folder), class_to_idx, extensions=IMAGE_EXTENSIONS, allow_empty=True)
    counts = torch.bincount(torch.tensor([label for _, label in samples], dtype=torch.long), minlength=len(classes))
    if (counts == 0).any():
        raise KitFileError(folder / classes[int(torch.nonzero(counts == 0)[0])], "class folder holds no images")
    return [Path(path) for path, _ in samples], [label for _, label in samples], tuple(classes)


def image_folder_root(root: Path, split: str) -> Path:
    """``ROOT/train``, ``ROOT/test`` (or ``ROOT/val``); a flat ``ROOT/<class>`` is train only."""
    candidates = [root / "train"] if split == "train" else [root / "test", root / "val"]
    for folder in candidates:
        if folder.is_dir():
            return folder
    if split == "train" and root.is_dir():
        return root
    raise KitFileError(candidates[0], f"not found; expected ROOT/{split}/<class>/*.{{jpg,png,...}}")


def image_folder_spec(base: DatasetSpec, classes: tuple[str, ...]) -> DatasetSpec:
    """The base spec's image size and statistics with the folder's classes: never a challenge spec."""
    return replace(base, num_classes=len(classes), challenge=False, class_names=classes)


# ------------------------------------------------------------------------------------------ Tiny ImageNet

def tiny_root(root: Path) -> Path:
    """Accept the dataset folder itself or its parent holding ``tiny-imagenet-200``."""
    if not (root / "train").is_dir() and (root / "tiny-imagenet-200").is_dir():
        return root / "tiny-imagenet-200"
    return root


def tiny_classes(root: Path) -> list[str]:
    """Sorted wnids from ``wnids.txt`` (or the ``train/`` folders when it is absent), each checked on disk."""
    train = root / "train"
    if not train.is_dir():
        raise KitFileError(train, f"not found; expected {TINY_LAYOUT}")
    listing = root / "wnids.txt"
    wnids = sorted({w.strip() for w in listing.read_text().split() if w.strip()}) if listing.is_file() \
        else _subdirs(train)
    if not wnids:
        raise KitFileError(listing if listing.is_file() else train, "lists no classes")
    for wnid in wnids:
        if not (train / wnid / "images").is_dir():
            raise KitFileError(train / wnid / "images", f"not found (a listed class); expected {TINY_LAYOUT}")
    return wnids


def tiny_spec(wnids: list[str]) -> DatasetSpec:
    base = get_spec("tinyimagenet")
    if len(wnids) > base.num_classes:
        raise KitValueError(f"Tiny ImageNet lists {len(wnids)} classes, more than {base.num_classes}")
    if len(wnids) == base.num_classes:
        return base
    return base.subset(len(wnids), class_names=tuple(wnids))


def tiny_files(root: Path, split: str, wnids: list[str]) -> tuple[list[Path], list[int]]:
    """Train: ``train/<wnid>/images/*``; test: ``val/images/*`` labelled by ``val/val_annotations.txt``."""
    index = {w: i for i, w in enumerate(wnids)}
    if split == "train":
        files, labels = [], []
        for wnid in wnids:
            found = _image_files(root / "train" / wnid / "images")
            if not found:
                raise KitFileError(root / "train" / wnid / "images", "holds no images")
            files += found
            labels += [index[wnid]] * len(found)
        return files, labels
    annotations = root / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise KitFileError(annotations, f"not found; expected {TINY_LAYOUT}")
    pairs = []
    for n, line in enumerate(annotations.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise KitFileError(annotations, f"line {n} is not 'file<TAB>wnid<TAB>bbox...'")
        if fields[1] in index:  # classes outside wnids.txt are not part of this (subset) dataset
            pairs.append((fields[0], index[fields[1]]))
    pairs.sort()
    files = [root / "val" / "images" / name for name, _ in pairs]
    for f in files:
        if not f.is_file():
            raise KitFileError(f, "listed in val/val_annotations.txt but not found")
    if not files:
        raise KitFileError(annotations, "annotates no image of the listed classes")
    return files, [label for _, label in pairs]


# ------------------------------------------------------------------------------------------------ caching

def _fingerprint_files(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _hash_contents(files: list[Path]) -> str:
    """One digest of the files' bytes in order (the same as hashing their concatenation)."""
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            hashlib.file_digest(fh, lambda: h)
    return h.hexdigest()


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/ddkit`` or ``~/.cache/ddkit``: the user's, so shared or read-only data stays untouched."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ddkit"


def _cache_path(cache_dir: Path, name: str, split: str, root: Path, key: str) -> Path:
    where = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]
    return cache_dir / f"{name}-{split}-{where}-{key[:16]}.safetensors"


def _cached(path: Path, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The entry at ``path`` when it is valid for ``key``; missing, unreadable or stale only means decoding."""
    try:
        tensors, meta = load_tensors(path)
    except KitFileError:
        return None
    pixels, labels = tensors.get("pixels"), tensors.get("labels")
    if meta.get("format") != CACHE_FORMAT or meta.get("key") != key or pixels is None or labels is None \
            or pixels.dtype != torch.uint8 or pixels.dim() != 4 or labels.shape != (pixels.shape[0],):
        return None
    return pixels, labels


def _store(path: Path, key: str, pixels: torch.Tensor, labels: torch.Tensor, spec: DatasetSpec) -> None:
    try:
        for old in path.parent.glob(path.name.rsplit("-", 1)[0] + "-*.safetensors"):
            old.unlink(missing_ok=True)  # stale entries of this source and split
        save_tensors({"pixels": pixels, "labels": labels}, path,
                     {"format": CACHE_FORMAT, "version": CACHE_VERSION, "key": key, "spec": spec.to_dict()})
    except OSError:
        pass  # a cache that cannot be written only costs time


# ---------------------------------------------------------------------------------------------- the API

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
        return spec, ["folder", str(folder), _fingerprint_files(files)], \
            lambda: (decode_images(files, spec.image_size), torch.tensor(labels, dtype=torch.int64))
    if dataset == "cifar100":
        files = _cifar_files(root, split)
        for f in files:
            if not f.is_file():
                raise KitFileError(f, f"not found; expected {CIFAR_LAYOUT}")
        return base, ["cifar100", _hash_contents(list(files))], lambda: read_cifar100(root, split, base)
    if dataset == "tinyimagenet":
        wnids = tiny_classes(root)
        spec = tiny_spec(wnids)
        files, labels = tiny_files(root, split, wnids)
        extra = [root / "val" / "val_annotations.txt"] if split == "test" else []
        return spec, ["tinyimagenet", _fingerprint_files(files + extra)], \
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
    return get_spec(dataset)


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
        if dataset != "cifar100":
            raise KitValueError(f"{dataset} cannot be downloaded by ddkit; unpack it as {TINY_LAYOUT}")
        download_cifar100(root)
    if not root.is_dir():
        raise KitFileError(root, "data root not found")
    spec, material, decode = _source(dataset, root, split, image_folder)
    key = hashlib.sha256(json.dumps(
        {"version": CACHE_VERSION, "split": split, "spec": spec.to_dict(), "source": material},
        sort_keys=True).encode()).hexdigest()
    path = _cache_path(Path(cache_dir) if cache_dir else default_cache_dir(), dataset, split, root, key)
    hit = _cached(path, key)
    if hit is None:
        pixels, labels = decode()
        _store(path, key, pixels, labels, spec)
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
                    cache_dir: str | Path | None = None, image_folder: bool = False) -> DatasetSpec:
    """The scorer's reference file ``{images_val, labels_val}`` from the real test split (atomic write)."""
    images, labels, spec = load_split(dataset, root, "test", download=download, cache_dir=cache_dir,
                                      image_folder=image_folder)
    save_torch({"images_val": images, "labels_val": labels}, out)
    return spec


__all__ = ["load_split", "dataset_spec", "build_reference", "read_cifar_pickle", "decode_images",
           "to_normalized", "default_cache_dir", "split_holdout", "detect_dataset"]
