"""Tiny ImageNet in the ``tiny-imagenet-200`` layout, classes in sorted wnid order (ImageFolder on ``train/``).

A ``wnids.txt`` with fewer than 200 classes gives a subset spec (never a challenge spec); the test split is
``val/``, labelled by ``val/val_annotations.txt``.
"""

from __future__ import annotations

from pathlib import Path

from challenge_kit.core.contract import DatasetSpec, get_spec
from challenge_kit.core.errors import KitFileError, KitValueError
from challenge_kit.data.folder import image_files, subdirs

TINY_LAYOUT = "ROOT/{wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, val/val_annotations.txt}"
ANNOTATIONS = "val/val_annotations.txt"


def read_text(path: Path) -> str:
    """A listing's text: UTF-8, a leading byte-order mark dropped (an editor's, invisible in a class name)."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise KitFileError(path, f"is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})") from None


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
    wnids = sorted(set(read_text(listing).split())) if listing.is_file() else subdirs(train)
    if not wnids:
        raise KitFileError(listing if listing.is_file() else train, "lists no classes")
    for wnid in wnids:
        if not (train / wnid / "images").is_dir():
            raise KitFileError(train / wnid / "images", f"not found (a listed class); expected {TINY_LAYOUT}")
    return wnids


def tiny_words(root: Path, wnids: list[str]) -> list[str]:
    """Each wnid's name in words from ``words.txt`` (its first synonym: ``goldfish`` for ``goldfish, Carassius
    auratus``); a wnid it does not name, or a tree without the file, keeps the wnid."""
    path, words = root / "words.txt", {}
    if path.is_file():
        for line in read_text(path).splitlines():
            wnid, _, names = line.partition("\t")
            words[wnid.strip()] = names.split(",")[0].strip()
    return [words.get(w) or w for w in wnids]


def tiny_spec(wnids: list[str]) -> DatasetSpec:
    base = get_spec("tinyimagenet")
    if len(wnids) > base.num_classes:
        raise KitValueError(f"Tiny ImageNet lists {len(wnids)} classes, more than {base.num_classes}")
    if len(wnids) == base.num_classes:
        return base
    return base.subset(len(wnids), class_names=tuple(wnids))


def tiny_train_files(root: Path, wnid: str) -> list[Path]:
    """``train/<wnid>/images/*``, sorted by name."""
    found = image_files(root / "train" / wnid / "images")
    if not found:
        raise KitFileError(root / "train" / wnid / "images", "holds no images")
    return found


def val_annotations(root: Path) -> list[tuple[str, str, str]]:
    """``val/val_annotations.txt`` as (file name, wnid, the line as written), in file order."""
    path = root / ANNOTATIONS
    if not path.is_file():
        raise KitFileError(path, f"not found; expected {TINY_LAYOUT}")
    rows = []
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise KitFileError(path, f"line {n} is not 'file<TAB>wnid<TAB>bbox...'")
        rows.append((fields[0], fields[1], line))
    return rows


def tiny_files(root: Path, split: str, wnids: list[str]) -> tuple[list[Path], list[int]]:
    """Train: ``train/<wnid>/images/*``; test: ``val/images/*`` labelled by ``val/val_annotations.txt``."""
    index = {w: i for i, w in enumerate(wnids)}
    if split == "train":
        files, labels = [], []
        for wnid in wnids:
            found = tiny_train_files(root, wnid)
            files += found
            labels += [index[wnid]] * len(found)
        return files, labels
    # classes outside wnids.txt are not part of this (subset) dataset
    pairs = sorted((name, index[wnid]) for name, wnid, _ in val_annotations(root) if wnid in index)
    files = [root / "val" / "images" / name for name, _ in pairs]
    for f in files:
        if not f.is_file():
            raise KitFileError(f, f"listed in {ANNOTATIONS} but not found")
    if not files:
        raise KitFileError(root / ANNOTATIONS, "annotates no image of the listed classes")
    return files, [label for _, label in pairs]
