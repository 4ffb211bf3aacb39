"""Small datasets in the real on-disk formats, written by the tests (never real data in the repo), and where the one
real shared set is."""

import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from challenge_kit.core.artifact import DistilledArtifact
from challenge_kit.core.contract import CIFAR100, DatasetSpec, default_labels, normalize
from challenge_kit.core.models import ConvNet, ModelConfig
from challenge_kit.runs import BEST

# the read-only shared data: $DDKIT_SHARED_DATA, else ../shared/data beside the checkout (this machine's layout)
SHARED_DATA = Path(os.environ.get("DDKIT_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
MINI = SHARED_DATA / "tiny-imagenet-mini"
# not a platform skip: under CI (skip_policy.py) a test marked so fails when the mini set is missing
needs_mini = pytest.mark.skipif(not (MINI / "wnids.txt").is_file(),
                                reason=f"{MINI} is not here (DDKIT_SHARED_DATA names the folder that holds it)")


def color(label: int) -> tuple[int, int, int]:
    return (40 + 60 * label, 200 - 50 * label, 90 + 30 * (label % 3))


def smooth_pixels(labels: list[int], rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """Natural-looking uint8 images (low-frequency noise around a per-class colour), N x 3*size*size."""
    n = len(labels)
    coarse = rng.normal(0, 40, (n, 3, size // 8, size // 8))
    field = coarse.repeat(8, axis=2).repeat(8, axis=3)
    kernel = np.ones(5) / 5  # blur the blocks into smooth blobs
    for axis in (2, 3):
        field = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="same"), axis, field)
    base = np.array([color(c % 5) for c in labels], dtype=float)[:, :, None, None]
    return np.clip(base + field, 0, 255).astype(np.uint8).reshape(n, -1)


def py2_pickle(obj) -> bytes:
    """``obj`` pickled the way Python 2's cPickle (protocol 2) pickled the real ``cifar-100-python`` files: a str as
    a byte string (SHORT_BINSTRING, or BINSTRING past 255 bytes), lists and dicts filled in batches of 1000
    (APPENDS, SETITEMS), and a uint8 array as numpy reduced it on Python 2: GLOBAL ``numpy.core.multiarray
    _reconstruct`` applied to (``numpy.ndarray``, (0,), 'b'), then BUILD with (1, shape, dtype, False, its bytes as a
    byte string), the dtype itself ``numpy.dtype('u1', 0, 1)`` BUILD (3, '|', None, None, None, -1, -1, 0). The
    memo's PUT opcodes are left out: they change nothing a reader builds. ``pickletools.dis`` reads the result."""
    return b"\x80\x02" + _py2(obj) + b"."


def _py2(obj) -> bytes:
    if obj is None:
        return b"N"
    if isinstance(obj, bool):
        return b"\x88" if obj else b"\x89"  # NEWTRUE, NEWFALSE
    if isinstance(obj, int):
        if 0 <= obj < 1 << 8:
            return b"K" + struct.pack("<B", obj)  # BININT1
        if 0 <= obj < 1 << 16:
            return b"M" + struct.pack("<H", obj)  # BININT2
        return b"J" + struct.pack("<i", obj)  # BININT
    if isinstance(obj, str):
        return _py2(obj.encode("latin1"))
    if isinstance(obj, bytes):  # Python 2's str
        return (b"U" + struct.pack("<B", len(obj)) if len(obj) < 256 else b"T" + struct.pack("<i", len(obj))) + obj
    if isinstance(obj, tuple):
        items = b"".join(_py2(v) for v in obj)
        return {0: b")", 1: items + b"\x85", 2: items + b"\x86", 3: items + b"\x87"}.get(len(obj), b"(" + items + b"t")
    if isinstance(obj, list):
        return b"]" + b"".join(b"(" + b"".join(_py2(v) for v in obj[i:i + 1000]) + b"e"
                               for i in range(0, len(obj), 1000))
    if isinstance(obj, dict):
        pairs = list(obj.items())
        return b"}" + b"".join(b"(" + b"".join(_py2(k) + _py2(v) for k, v in pairs[i:i + 1000]) + b"u"
                               for i in range(0, len(pairs), 1000))
    if isinstance(obj, np.ndarray) and obj.dtype == np.uint8 and obj.flags.c_contiguous:
        dtype = b"cnumpy\ndtype\n" + _py2(("u1", 0, 1)) + b"R" + _py2((3, "|", None, None, None, -1, -1, 0)) + b"b"
        return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _py2((0,)) + _py2("b") + b"\x87R"
                + b"(" + _py2(1) + _py2(obj.shape) + dtype + _py2(False) + _py2(obj.tobytes()) + b"tb")
    raise TypeError(f"no Python 2 pickle for {type(obj).__name__} here")


def write_cifar(root: Path, n_train: int = 30, n_test: int = 20, seed: int = 0, per_class: bool = False,
                smooth: bool = False) -> dict:
    """A small ``cifar-100-python`` set as the download holds it: Python 2 pickles (``py2_pickle``) with the real
    keys. Returns what it wrote (str keys, as the reader decodes them).

    ``per_class``: n_train / n_test images of *each* of the 100 classes (class-major) instead of in all.
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        fine = np.repeat(np.arange(100), n).tolist() if per_class else rng.integers(0, 100, n).tolist()
        pixels = smooth_pixels(fine, rng) if smooth else rng.integers(0, 256, (len(fine), 3072), dtype=np.uint8)
        d = {"filenames": [f"img_{i}.png" for i in range(len(fine))], "batch_label": f"{split}ing batch 1 of 1",
             "fine_labels": fine, "coarse_labels": [f // 5 for f in fine], "data": pixels}
        (folder / split).write_bytes(py2_pickle(d))
        out[split] = d
    names = [f"class_{i:03d}" for i in range(100)]
    meta = {"fine_label_names": names, "coarse_label_names": [f"super_{i}" for i in range(20)]}
    (folder / "meta").write_bytes(py2_pickle(meta))
    out["meta"] = meta
    return out


def write_tiny(root: Path, wnids=("n03000000", "n01000000", "n02000000"), per_class: int = 3) -> dict:
    """A ``tiny-imagenet-200``-layout tree: each class a solid colour (by sorted position); one grayscale image.

    wnids.txt is written in the given (unsorted) order; val annotations are shuffled.
    """
    order = sorted(wnids)
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for wnid in wnids:
        folder = root / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for k in range(per_class):
            Image.new("RGB", (64, 64), color(order.index(wnid))).save(folder / f"{wnid}_{k}.JPEG", quality=95)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    Image.new("L", (64, 64), 77).save(root / "train" / wnids[0] / "images" / f"{wnids[0]}_gray.JPEG")
    lines, truth = [], {}
    for i in range(2 * len(wnids)):
        wnid = wnids[(i * 2) % len(wnids)]
        name = f"val_{i}.JPEG"
        Image.new("RGB", (64, 64), color(order.index(wnid))).save(root / "val" / "images" / name, quality=95)
        lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
        truth[name] = order.index(wnid)
    lines.reverse()
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return truth


def distilled_images(spec: DatasetSpec, seed: int = 0) -> torch.Tensor:
    """A natural-looking normalized set in default order, as a distillation run would leave (verify passes)."""
    labels = default_labels(spec.num_classes, spec.ipc).tolist()
    pixels = smooth_pixels(labels, np.random.default_rng(seed), spec.image_size)
    return normalize(torch.from_numpy(pixels).view(-1, 3, spec.image_size, spec.image_size).float() / 255, spec)


def write_run(run: Path, spec: DatasetSpec, labels=None, images=None) -> Path:
    """A ``ddkit distill`` run folder holding what export reads: ``best.safetensors``."""
    images = distilled_images(spec) if images is None else images
    labels = default_labels(spec.num_classes, spec.ipc) if labels is None else labels
    DistilledArtifact(images, labels, spec, lr=0.012, extra={"iteration": 7, "accuracy": 0.5}).save(run / BEST)
    return run


def cpu_buffer(model: ModelConfig, images: torch.Tensor, labels: torch.Tensor, epochs: int, copy: bool) -> list:
    """A DATM/MTT ``replay_buffer_0.pt`` of one trajectory, made as their ``buffer.py`` makes it on a machine
    without a GPU: a ConvNet trained by torch's SGD (lr 0.01, batches of 8), snapshotted before training and
    after each epoch as ``[p.detach().cpu() for p in net.parameters()]``, where ``.cpu()`` of a CPU tensor is that
    tensor; ``copy`` adds the ``.clone()`` that makes each snapshot its own."""
    torch.manual_seed(0)
    net = ConvNet(model)
    sgd = torch.optim.SGD(net.parameters(), lr=0.01)
    snapshot = lambda: [p.detach().cpu().clone() if copy else p.detach().cpu() for p in net.parameters()]  # noqa: E731
    trajectory = [snapshot()]
    for _ in range(epochs):
        for batch in torch.randperm(len(labels)).split(8):
            sgd.zero_grad()
            F.cross_entropy(net(images[batch]), labels[batch]).backward()
            sgd.step()
        trajectory.append(snapshot())
    return [trajectory]


TINY = CIFAR100.subset(5, ipc=2)  # still named cifar100, so the folder scorer finds cifar100.pt
COLORS = torch.tensor([[2, -2, -2], [-2, 2, -2], [-2, -2, 2], [2, 2, -2], [-2, 2, 2]], dtype=torch.float32)


def coloured(per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable task: each class is a flat colour plus noise, in default (class-major) order."""
    g = torch.Generator().manual_seed(seed)
    labels = default_labels(5, per_class)
    return COLORS[labels].view(-1, 3, 1, 1) + 0.3 * torch.randn(len(labels), 3, 32, 32, generator=g), labels


def write_folder(root: Path, images, test_images, test_labels) -> None:
    (root / "res").mkdir(parents=True)
    (root / "ref").mkdir(parents=True)
    torch.save(images, root / "res" / "cifar100.pt")
    torch.save({"images_val": test_images, "labels_val": test_labels}, root / "ref" / "cifar100_test.pt")


# natural-like images and what distillation or whitening makes of them (the verify tests')


def natural(n: int, size: int, spec=CIFAR100, seed: int = 0) -> torch.Tensor:
    """[0, 1] 8-bit pixels with a natural 1/f^2 power spectrum, correlated colours and the dataset's mean colour."""
    g = torch.Generator().manual_seed(seed)
    f = torch.fft.fftfreq(size)
    amp = 1 / (f.view(-1, 1) ** 2 + f.view(1, -1) ** 2).sqrt().clamp_min(1 / size)

    def field(c):
        x = torch.fft.ifft2(torch.randn(n, c, size, size, generator=g, dtype=torch.complex64) * amp).real
        return x / x.flatten(1).std(1).view(n, 1, 1, 1)

    x = field(1) + 0.3 * field(3)
    contrast = 0.11 + 0.22 * torch.rand(n, 1, 1, 1, generator=g)
    x = contrast * x + 0.15 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5)
    x = x - x.mean((0, 2, 3), keepdim=True) + torch.tensor(spec.mean).view(1, -1, 1, 1)
    return (x.clamp(0, 1) * 255).round() / 255


def gradient_noise(images: torch.Tensor, scale: float, seed: int = 0) -> torch.Tensor:
    """What distillation adds: input gradients of random ConvNets, ``scale`` x each image's std."""
    config = ModelConfig(num_classes=10, image_size=images.shape[-1], width=16)
    total = torch.zeros_like(images)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(2):
            x = images.clone().requires_grad_(True)
            F.cross_entropy(ConvNet(config)(x), torch.randint(0, 10, (len(x),))).backward()
            total += x.grad / x.grad.flatten(1).std(1).view(-1, 1, 1, 1)
    std = lambda t: t.flatten(1).std(1).view(-1, 1, 1, 1)  # noqa: E731
    return images + scale * std(images) * total / std(total)


def zca(images: torch.Tensor, fit: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    """ZCA whitening as KIP/MTT (kornia ZCAWhitening, eps 0.1): eigenvectors of the pixel covariance."""
    X = fit.flatten(1).double()
    mu = X.mean(0)
    lam, U = torch.linalg.eigh((X - mu).T @ (X - mu) / (len(X) - 1))
    W = U @ torch.diag((lam.clamp_min(0) + eps).rsqrt()) @ U.T
    return ((images.flatten(1).double() - mu) @ W).float().view_as(images)
