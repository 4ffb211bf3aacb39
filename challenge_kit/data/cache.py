"""The decoded-pixel cache: uint8 safetensors (4x smaller than float32) keyed by the source files, split and spec.

A changed source or spec is never served stale. The cache lives in the user's cache folder, never in the data
folder (often shared or read-only); an entry that cannot be read or written only costs time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch

from challenge_kit.core.contract import DatasetSpec
from challenge_kit.core.errors import KitFileError
from challenge_kit.core.reading import load_tensors
from challenge_kit.core.storage import save_tensors

CACHE_FORMAT = "ddkit-data-cache"
CACHE_VERSION = 1

log = logging.getLogger(__name__)


def fingerprint_files(files: list[Path]) -> str:
    """A digest of the files' paths, sizes and modification times (decoding thousands of JPEGs costs more)."""
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def hash_contents(files: list[Path]) -> str:
    """One digest of the files' bytes in order (the same as hashing their concatenation)."""
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            hashlib.file_digest(fh, lambda: h)
    return h.hexdigest()


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/ddkit`` or ``~/.cache/ddkit``: the user's, so shared or read-only data stays untouched."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ddkit"


def cache_key(split: str, spec: DatasetSpec, material: list[str]) -> str:
    return hashlib.sha256(json.dumps(
        {"version": CACHE_VERSION, "split": split, "spec": spec.to_dict(), "source": material},
        sort_keys=True).encode()).hexdigest()


def cache_path(cache_dir: Path, name: str, split: str, root: Path, key: str) -> Path:
    where = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]
    return cache_dir / f"{name}-{split}-{where}-{key[:16]}.safetensors"


def cached(path: Path, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
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


def store(path: Path, key: str, pixels: torch.Tensor, labels: torch.Tensor, spec: DatasetSpec) -> None:
    try:
        for old in path.parent.glob(path.name.rsplit("-", 1)[0] + "-*.safetensors"):
            old.unlink(missing_ok=True)  # stale entries of this source and split
        save_tensors({"pixels": pixels, "labels": labels}, path,
                     {"format": CACHE_FORMAT, "version": CACHE_VERSION, "key": key, "spec": spec.to_dict()})
    except (OSError, KitFileError) as e:  # a cache that cannot be written only costs time
        log.warning(f"decoded data not cached: {e}")
