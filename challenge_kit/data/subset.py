"""``ddkit subset``: a few classes of a dataset, written in the dataset's own on-disk layout.

So every loader, the subset spec and the cache apply to it as to the original: a 20-class Tiny ImageNet subset
is a ``tiny-imagenet-200``-layout folder with 20 wnids, a CIFAR-100 subset a ``cifar-100-python`` folder whose
``meta`` names the chosen classes and whose labels run 0..K-1. The choice is deterministic: K classes spread
evenly over the dataset's sorted class list (or the named ones), the first N images of each in the loader's
order. Images are copied, never linked; the data root is never written.

The subset is built in ``OUT/.ddkit-subset-partial`` and moved into place, then ``ddkit-subset.json`` (the request,
the classes, the counts, the source listing's sha256) is written last: a folder without it is unfinished, and a
rerun of the same request clears what an interrupted one left. ``--overwrite`` replaces another subset (a
folder with that manifest), never other files.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path

import numpy as np

from challenge_kit.core.contract import get_spec
from challenge_kit.core.errors import KitFileError, KitValueError
from challenge_kit.core.folders import LOCK_FILE, run_lock
from challenge_kit.core.reading import sha256
from challenge_kit.core.storage import (
    atomic_write,
    make_folders,
    replace_synced,
    save_bytes,
    save_json,
    save_text,
    sync_folder,
    temp_stream,
)
from challenge_kit.data.cifar import CIFAR_DIR, cifar_classes, cifar_files, cifar_spec, read_cifar100, read_cifar_pickle
from challenge_kit.data.folder import image_folder_files, image_folder_root
from challenge_kit.data.tiny import ANNOTATIONS, read_text, tiny_classes, tiny_root, tiny_train_files, val_annotations

MANIFEST = "ddkit-subset.json"
PARTIAL = ".ddkit-subset-partial"
REQUEST = "request.json"
FORMAT = "ddkit-subset"
# what a subset puts in OUT besides its manifest (one layout each)
LAYOUT = ("wnids.txt", "words.txt", "train", "val", "test", CIFAR_DIR)


def spread(available: list[str], count: int) -> list[str]:
    """``count`` of the classes at even steps from the first: positions floor(i * n / count)."""
    return [available[i * len(available) // count] for i in range(count)]


def choose_classes(available: list[str], count: int | None, names: list[str] | None, root: Path) -> list[str]:
    """The named classes, or ``count`` spread evenly; in the dataset's class order either way."""
    if names is not None:
        known, wanted = set(available), set(names)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise KitValueError(f"--class {unknown[0]}: not a class of {root} (it has {len(available)}, e.g. "
                                f"{', '.join(available[:3])})")
        return [c for c in available if c in wanted]
    if count is None or not 0 < count <= len(available):
        raise KitValueError(f"--classes {count}: {root} has {len(available)} classes; give 1..{len(available)}")
    return spread(available, count)


def first(files: list, count: int | None, where: Path, name: str, option: str) -> list:
    """The first ``count`` of class ``name``'s images (all of them when ``count`` is None; never none)."""
    if not files:
        raise KitFileError(where, f"holds no image of class {name}")
    if count is None:
        return files
    if len(files) < count:
        raise KitFileError(where, f"holds {len(files)} images of class {name}, fewer than {option} {count}")
    return files[:count]


def place(source: Path, target: Path) -> None:
    """A copy of ``source``'s bytes: never a symlink, nor a hardlink (editing the subset must not edit the source,
    and linking changes the source's inode, which a read-only or shared data folder should not see)."""

    def copy(tmp: Path) -> None:
        with open(source, "rb") as f, temp_stream(tmp) as out:
            shutil.copyfileobj(f, out)

    atomic_write(target, copy)


def sha256_names(names: list[str]) -> str:
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


# -------------------------------------------------------------------------------------------- the writers

def tiny_subset(root: Path, dest: Path, names: list[str], train: int, test: int | None) -> dict[str, list[int]]:
    """wnids.txt, words.txt (as it is), train/<wnid>/{images, boxes} and val/ restricted to ``names``."""
    save_text("".join(f"{w}\n" for w in names), dest / "wnids.txt")
    if (root / "words.txt").is_file():
        place(root / "words.txt", dest / "words.txt")
    counts = {"train": [], "test": []}
    for wnid in names:
        chosen = first(tiny_train_files(root, wnid), train, root / "train" / wnid / "images", wnid,
                       "--train-per-class")
        for f in chosen:
            place(f, dest / "train" / wnid / "images" / f.name)
        boxes = root / "train" / wnid / f"{wnid}_boxes.txt"
        if boxes.is_file():
            listed = {f.name for f in chosen}
            lines = [ln for ln in read_text(boxes).splitlines() if ln.split("\t")[0] in listed]
            save_text("".join(f"{ln}\n" for ln in lines), dest / "train" / wnid / boxes.name)
        counts["train"].append(len(chosen))
    rows = val_annotations(root)
    kept = set()
    for wnid in names:
        chosen = first(sorted(name for name, w, _ in rows if w == wnid), test, root / ANNOTATIONS, wnid,
                       "--test-per-class")
        kept.update(chosen)
        counts["test"].append(len(chosen))
    make_folders(dest / "val" / "images")
    for name in sorted(kept):
        source = root / "val" / "images" / name
        if not source.is_file():
            raise KitFileError(source, f"listed in {ANNOTATIONS} but not found")
        place(source, dest / "val" / "images" / name)
    save_text("".join(f"{line}\n" for name, _, line in rows if name in kept), dest / ANNOTATIONS)
    return counts


def cifar_subset(root: Path, dest: Path, names: list[str], train: int, test: int | None) -> dict[str, list[int]]:
    """``cifar-100-python/{train,test,meta}`` with only ``names``: fine labels renumbered 0..K-1 in class order,
    every per-image list (file names, coarse labels) cut to the same images, in file order."""
    available = cifar_classes(root)
    old = [available.index(n) for n in names]
    new = {c: i for i, c in enumerate(old)}
    folder = dest / CIFAR_DIR
    make_folders(folder)
    counts = {}
    for split, count in (("train", train), ("test", test)):
        path, meta_path = cifar_files(root, split)
        labels = read_cifar100(root, split, cifar_spec(available))[1].tolist()  # checked shapes and labels
        option = f"--{split}-per-class"
        picked = [first([i for i, y in enumerate(labels) if y == c], count, path, available[c], option)
                  for c in old]
        keep = sorted(i for rows in picked for i in rows)
        content = read_cifar_pickle(path)
        out = {}
        for key, value in content.items():
            if key == "fine_labels":
                out[key] = [new[labels[i]] for i in keep]
            elif isinstance(value, np.ndarray) and value.ndim and len(value) == len(labels):
                out[key] = value[keep]
            elif isinstance(value, list) and len(value) == len(labels):
                out[key] = [value[i] for i in keep]
            else:
                out[key] = value
        save_bytes(pickle.dumps(out, protocol=2), folder / path.name)
        counts[split] = [len(rows) for rows in picked]
    meta = read_cifar_pickle(meta_path)
    save_bytes(pickle.dumps({**meta, "fine_label_names": names}, protocol=2), folder / "meta")
    return counts


def folder_subset(root: Path, dest: Path, names: list[str], train: int, test: int | None) -> dict[str, list[int]]:
    """``train/<class>/...`` and ``test/<class>/...`` with only ``names`` (files keep their paths in the class)."""
    counts = {}
    for split, count in (("train", train), ("test", test)):
        source = image_folder_root(root, split)
        files, labels, classes = image_folder_files(source)
        counts[split] = []
        for name in names:
            if name not in classes:
                raise KitFileError(source / name, "not found: a chosen class of the training split")
            index = classes.index(name)
            chosen = first([f for f, y in zip(files, labels, strict=True) if y == index], count, source / name,
                           name, f"--{split}-per-class")
            for f in chosen:
                place(f, dest / split / name / f.relative_to(source / name))
            counts[split].append(len(chosen))
    return counts


def _source(dataset: str, root: Path, image_folder: bool):
    """(the data root as read, the dataset's own folder, its classes in order, the listing's digest, the writer)."""
    if image_folder:
        classes = list(image_folder_files(image_folder_root(root, "train"))[2])
        return root, root, classes, sha256_names(classes), folder_subset
    if dataset == "cifar100":
        cifar_files(root, "train")
        return root, root / CIFAR_DIR, cifar_classes(root), sha256(root / CIFAR_DIR / "meta"), cifar_subset
    if dataset == "tinyimagenet":
        root = tiny_root(root)
        wnids = tiny_classes(root)
        listing = root / "wnids.txt"
        digest = sha256(listing) if listing.is_file() else sha256_names(wnids)
        return root, root, wnids, digest, tiny_subset
    raise ValueError(f"no subset writer for dataset {dataset!r}")


# ------------------------------------------------------------------------------------- the output folder

def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _clear(out: Path) -> None:
    """Remove what a subset puts in ``out`` and its unfinished work (called once ``out`` is known to be ours)."""
    for name in LAYOUT:
        target = out / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
    shutil.rmtree(out / PARTIAL, ignore_errors=True)


def _claim(out: Path, identity: dict, overwrite: bool) -> dict | None:
    """The manifest when ``out`` already holds this very subset; None when it is free to write (what an
    interrupted run of the same request left is cleared, and with ``overwrite`` another subset). Anything else
    in ``out`` is refused, named."""
    if (out / MANIFEST).exists():
        manifest = _read_json(out / MANIFEST)
        same = manifest is not None and {k: manifest.get(k) for k in identity} == identity
        if not same and not (overwrite and manifest is not None and manifest.get("format") == FORMAT):
            raise KitFileError(out / MANIFEST, "records another subset (other classes, counts or source); give "
                                               "another --out, or --overwrite to replace it")
        shutil.rmtree(out / PARTIAL, ignore_errors=True)
        if same:
            return manifest
        # this request takes the folder over first, so that a rerun of it recovers from a stop part-way
        save_json(identity, out / PARTIAL / REQUEST)
        (out / MANIFEST).unlink()
        sync_folder(out)  # the manifest stays gone after a power cut, never naming a subset being cleared
    ours = _read_json(out / PARTIAL / REQUEST) == identity
    for entry in sorted(out.iterdir()):
        if entry.name != LOCK_FILE and not (ours and entry.name in (PARTIAL, *LAYOUT)):
            raise KitFileError(entry, "is not part of a subset of this request; --out must be empty or hold one")
    _clear(out)  # an interrupted run of this request: start again
    return None


def write_subset(dataset: str, root: str | Path, out: str | Path, *, classes: int | None = None,
                 names: list[str] | None = None, train_per_class: int, test_per_class: int | None = None,
                 image_folder: bool = False, overwrite: bool = False) -> tuple[dict, bool]:
    """Write the subset into ``out`` (under its lock); returns (its manifest, whether it was written now).
    ``overwrite`` replaces another subset there (one with this kit's manifest; never anything else)."""
    get_spec(dataset)
    for option, value in (("--classes", classes), ("--train-per-class", train_per_class),
                          ("--test-per-class", test_per_class)):
        if value is not None and value < 1:
            raise KitValueError(f"{option}: must be at least 1, got {value}")
    if classes is None and names is None:
        raise KitValueError("--classes: give the number of classes (or name them: --class, --class-list)")
    if classes is not None and names is not None:
        raise KitValueError("--classes and --class/--class-list: give the number of classes or their names")
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise KitFileError(root, "data root not found")
    root, source, available, digest, writer = _source(dataset, root, image_folder)
    if out.resolve().is_relative_to(source.resolve()):
        raise KitFileError(out, f"is inside the dataset {source}, which ddkit never writes; give another --out")
    chosen = choose_classes(available, classes, names, root)
    request = {"dataset": dataset, "image_folder": image_folder, "classes": classes,
               "class_names": None if names is None else chosen, "train_per_class": train_per_class,
               "test_per_class": test_per_class}
    identity = {"format": FORMAT, "request": request, "source_sha256": digest}
    with run_lock(out):
        done = _claim(out, identity, overwrite)
        if done is not None:
            return done, False
        partial = out / PARTIAL
        try:
            save_json(identity, partial / REQUEST)
            counts = writer(root, partial, chosen, train_per_class, test_per_class)
            for entry in sorted(partial.iterdir()):
                if entry.name != REQUEST:
                    replace_synced(entry, out / entry.name)
        except BaseException:
            _clear(out)  # our own unfinished work: nothing half-written stays
            raise
        manifest = {**identity, "data_root": str(root), "classes": chosen, "train_images": sum(counts["train"]),
                    "test_images": sum(counts["test"]),
                    "counts": {c: [a, b] for c, a, b in zip(chosen, counts["train"], counts["test"], strict=True)}}
        save_json(manifest, out / MANIFEST)
        shutil.rmtree(partial)
    return manifest, True
