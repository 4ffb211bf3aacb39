"""Reading files that may come from strangers: safetensors and restricted ``torch.load``.

Nothing is ever unpickled without ``weights_only=True``: submissions and buffers come from strangers.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open

from challenge_kit.core.errors import ESCAPES, KitFileError, first_line


def _readable(path: str | Path) -> None:
    """Unreadable is not corrupt (and safetensors reports a permission error as a missing file): say which."""
    try:
        open(path, "rb").close()
    except OSError as e:
        raise KitFileError(path, f"cannot be read ({e.strerror or e})") from None


def read_metadata(path: str | Path) -> dict:
    _readable(path)
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
    _readable(path)
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
    _readable(path)
    return _load_torch(path, path)


def load_torch_bytes(data: bytes, name: str):
    """``load_torch`` of a file already in memory (a zip member): nothing is written to disk."""
    return _load_torch(io.BytesIO(data), name)


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
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
