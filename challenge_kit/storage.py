"""Files the kit writes and reads: atomic writes, safe loading, and the distilled-artifact format.

Every artifact goes to a temporary file in the same folder and is renamed into place, so an
interrupted run never leaves a half-written file. Nothing is ever unpickled without
``weights_only=True``: submissions and buffers come from strangers.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from challenge_kit.contract import DatasetSpec

ARTIFACT_FORMAT = "ddkit-distilled"
ARTIFACT_VERSION = 1


class KitFileError(Exception):
    """A file cannot be read or has the wrong content; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = str(path), problem


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_torch(obj, path: str | Path) -> Path:
    """``torch.save`` through an open handle: a path would name the archive's inner folder after the random
    temporary file, so identical content would not give identical bytes (and sha256) from run to run."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    return atomic_write(path, write)


def save_json(obj, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> Path:
    """safetensors with JSON-encoded metadata values (safetensors metadata is str -> str)."""
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def read_metadata(path: str | Path) -> dict:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise KitFileError(path, f"not a readable safetensors file ({e})") from None
    try:
        return {k: json.loads(v) for k, v in meta.items()}
    except json.JSONDecodeError:
        return dict(meta)


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise KitFileError(path, f"not a readable safetensors file ({e})") from None
    return tensors, read_metadata(path)


def load_rows(path: str | Path, name: str, rows: list[int]) -> torch.Tensor:
    """Only the requested rows of one tensor (memory-mapped), e.g. two snapshots of a long trajectory."""
    try:
        with safe_open(str(path), framework="pt") as f:
            view = f.get_slice(name)
            return torch.stack([view[r] for r in rows])
    except (SafetensorError, OSError, ValueError, IndexError) as e:
        raise KitFileError(path, f"cannot read rows {rows} of {name!r} ({e})") from None


def load_torch(path: str | Path):
    """``torch.load`` restricted to tensors and plain containers; anything else is refused unrun."""
    path = Path(path)
    if not path.is_file():
        raise KitFileError(path, "no such file")
    return _load_torch(path, path)


def load_torch_bytes(data: bytes, name: str):
    """``load_torch`` of a file already in memory (a zip member): nothing is written to disk."""
    return _load_torch(io.BytesIO(data), name)


ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def first_line(error: BaseException) -> str:
    """An exception's first message line, without terminal escape codes (messages may go to logs)."""
    text = ESCAPES.sub("", str(error)).strip()
    return text.splitlines()[0].strip() if text else type(error).__name__


def refusal_reason(error: pickle.UnpicklingError) -> str:
    """What the restricted unpickler refused, without torch's advice to reload with ``weights_only=False``."""
    text = ESCAPES.sub("", str(error))
    called = re.search(r"GLOBAL ([\w.]+)", text)
    if called:
        return f"the pickle would call {called.group(1)}"
    detail = re.search(r"WeightsUnpickler error: (.+?)(?:\.\s|\.?$)", text, re.MULTILINE)
    return detail.group(1) if detail else "unsafe content"


def _load_torch(source, name: str | Path):
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise KitFileError(name, f"refused: holds objects that are not plain tensors ({refusal_reason(e)})") from None
    except Exception as e:  # a corrupt file can make the unpickler raise anything (IndexError, KeyError...)
        raise KitFileError(name, f"cannot be read as a torch file, truncated or corrupt ({first_line(e)})") from None


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class DistilledArtifact:
    """The kit's own distilled set: images, labels (hard or soft), optional learned lr, and its spec."""

    images: torch.Tensor
    labels: torch.Tensor
    spec: DatasetSpec
    lr: float | None = None
    extra: dict | None = None

    @property
    def soft(self) -> bool:
        return self.labels.is_floating_point() and self.labels.dim() == 2

    def save(self, path: str | Path) -> Path:
        tensors = {"images": self.images.float(), "labels": self.labels}
        if self.lr is not None:
            tensors["lr"] = torch.tensor([float(self.lr)])
        meta = {"format": ARTIFACT_FORMAT, "version": ARTIFACT_VERSION, "spec": self.spec.to_dict(),
                "labels": "soft" if self.soft else "hard", **(self.extra or {})}
        return save_tensors(tensors, path, meta)

    @classmethod
    def load(cls, path: str | Path) -> DistilledArtifact:
        tensors, meta = load_tensors(path)
        if meta.get("format") != ARTIFACT_FORMAT:
            raise KitFileError(path, f"not a ddkit distilled artifact (format={meta.get('format')!r})")
        for key in ("images", "labels"):
            if key not in tensors:
                raise KitFileError(path, f"artifact has no {key!r} tensor")
        extra = {k: v for k, v in meta.items() if k not in ("format", "version", "spec", "labels")}
        try:
            spec = DatasetSpec.from_dict(meta["spec"])
        except (KeyError, TypeError, ValueError) as e:
            raise KitFileError(path, f"artifact metadata has no valid spec ({e!r})") from None
        lr = float(tensors["lr"].item()) if "lr" in tensors else None
        return cls(tensors["images"], tensors["labels"], spec, lr, extra)
