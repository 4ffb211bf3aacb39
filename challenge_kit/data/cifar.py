"""CIFAR-100 in torchvision's ``cifar-100-python`` pickle format, read without running a pickle's code.

The pickles are read with a restricted unpickler that only admits what the format holds (dicts, lists, strings,
ints, numpy uint8 arrays), so a tampered file cannot run code; torchvision is used only to download, which checks
the archive's md5. The reader checks keys, shapes and label ranges instead, which is also what lets tests use small
files in the real format. A ``meta`` listing fewer than 100 fine classes (``ddkit subset``) gives a subset spec.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from challenge_kit.core.contract import DatasetSpec, get_spec
from challenge_kit.core.errors import KitFileError

CIFAR_DIR = "cifar-100-python"
CIFAR_LAYOUT = "ROOT/cifar-100-python/{train,test,meta} (torchvision's CIFAR-100 python format)"
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"


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


def cifar_files(root: Path, split: str) -> tuple[Path, Path]:
    """(the split's pickle, ``meta``), each checked on disk, the split's first."""
    folder = root / CIFAR_DIR
    files = folder / ("train" if split == "train" else "test"), folder / "meta"
    for f in files:
        if not f.is_file():
            raise KitFileError(f, f"not found; expected {CIFAR_LAYOUT}")
    return files


def cifar_classes(root: Path) -> list[str]:
    """The fine class names of ``meta``, in label order."""
    path = root / CIFAR_DIR / "meta"
    names = read_cifar_pickle(path).get("fine_label_names")
    limit = get_spec("cifar100").num_classes
    if not isinstance(names, list) or not 0 < len(names) <= limit or not all(isinstance(n, str) for n in names):
        raise KitFileError(path, f"expected 'fine_label_names': a list of 1..{limit} class names")
    return names


def cifar_spec(names: list[str]) -> DatasetSpec:
    """The challenge spec for all 100 classes, a subset spec naming them for fewer."""
    base = get_spec("cifar100")
    return base if len(names) == base.num_classes else base.subset(len(names), class_names=tuple(names))


def read_cifar100_labels(root: Path, split: str) -> list:
    """The split's fine labels as stored (checked against the images by ``read_cifar100``)."""
    path, _ = cifar_files(root, split)
    labels = read_cifar_pickle(path).get("fine_labels")
    if not isinstance(labels, list):
        raise KitFileError(path, "'fine_labels' must be a list of ints (one per image)")
    return labels


def read_cifar100(root: Path, split: str, spec: DatasetSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 pixels N x 3 x 32 x 32 and int64 fine labels (torchvision order)."""
    path, _ = cifar_files(root, split)
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
