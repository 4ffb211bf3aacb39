"""Image files: decoding them (threads, PIL), and any ImageFolder (``folder/<class>/*.png``) as a dataset.

An ImageFolder is resized to the spec's image size, its classes sorted as torchvision sorts them, and it is
never a challenge spec.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from challenge_kit.core.contract import DatasetSpec
from challenge_kit.core.errors import KitFileError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


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


def image_files(folder: Path) -> list[Path]:
    """The images directly in ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def subdirs(folder: Path) -> list[str]:
    """The visible subfolders' names, sorted."""
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
