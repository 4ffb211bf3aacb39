"""What the scorer needs before it looks at a pixel: a bare tensor, of the spec's shape, float32, finite."""

from __future__ import annotations

import numpy as np
import torch

from challenge_kit.core.contract import SPECS, DatasetSpec, spec_for_shape
from challenge_kit.core.verify.report import FAIL, PASS, WARN, Check, _listing, _shape


def check_type(obj) -> Check:
    if isinstance(obj, torch.Tensor):
        return Check("type", PASS, "a bare torch.Tensor")
    if isinstance(obj, dict):
        keys = [str(k) for k in obj]
        images = [k for k, v in obj.items() if isinstance(v, torch.Tensor) and v.dim() == 4]
        hint = f"; save the tensor itself, e.g. torch.save(obj[{images[0]!r}], path)" if images else ""
        return Check("type", FAIL, f"a dict with keys {_listing(keys)}, not a bare tensor: the scorer "
                                   f"crashes on it{hint}")
    if isinstance(obj, np.ndarray):
        return Check("type", FAIL, f"a numpy array ({obj.dtype}, {_shape(obj.shape)}), not a torch.Tensor: "
                                   "the scorer crashes on it; save torch.from_numpy(array)")
    if isinstance(obj, list | tuple):
        return Check("type", FAIL, f"a {type(obj).__name__} of {len(obj)} items, not a bare tensor: "
                                   "the scorer crashes on it")
    return Check("type", FAIL, f"a {type(obj).__name__}, not a bare torch.Tensor")


def check_spec(spec: DatasetSpec, source: str | None) -> Check:
    where = f" (spec from {source})" if source else ""
    if spec.challenge:
        return Check("spec", PASS, f"{spec.describe()}{where}")
    base = SPECS.get(spec.name)
    full = f"; the scorer only accepts {_shape(base.shape)}" if base else ""
    return Check("spec", WARN, f"{spec.describe()}{where}{full}")


def check_shape(images: torch.Tensor, spec: DatasetSpec | None) -> Check:
    shape = tuple(images.shape)
    if spec is None:
        expected = ", ".join(f"{s.name} {_shape(s.shape)}" for s in SPECS.values())
        return Check("shape", FAIL, f"{_shape(shape)} matches no challenge dataset (expected {expected})")
    if shape != spec.shape:
        other = spec_for_shape(shape)
        hint = f" ({other.name}'s shape: wrong dataset?)" if other and other.name != spec.name else ""
        if shape[1:] == spec.shape[1:] and shape[0] < spec.num_images and shape[0] % spec.ipc == 0:
            hint = f" (a subset export of {shape[0] // spec.ipc} classes? the scorer needs all {spec.num_classes})"
        return Check("shape", FAIL, f"{_shape(shape)} is not the {_shape(spec.shape)} that {spec.name} "
                                    f"needs{hint}")
    return Check("shape", PASS, f"{_shape(shape)} = {spec.num_classes} classes x {spec.ipc} per class")


def check_dtype(images: torch.Tensor) -> Check:
    dtype = str(images.dtype).replace("torch.", "")
    if not images.is_floating_point():
        return Check("dtype", FAIL, f"{dtype}: integer images; the scorer casts with .float() and trains on "
                                    "the raw values (normalize to float32 first)")
    grad = "; saved with requires_grad=True (detach before saving)" if images.requires_grad else ""
    if images.dtype in (torch.float16, torch.bfloat16):
        return Check("dtype", WARN, f"{dtype}: precision loss (relative step {torch.finfo(images.dtype).eps:.0e})"
                                    f"; the scorer casts to float32{grad}")
    if images.dtype != torch.float32:
        return Check("dtype", WARN, f"{dtype}: the scorer casts to float32; save float32{grad}")
    return Check("dtype", WARN if grad else PASS, f"float32{grad}")


def check_finite(images: torch.Tensor) -> Check:
    if not images.is_floating_point():
        return Check("finite", PASS, "integer values")
    nan, inf = int(torch.isnan(images).sum()), int(torch.isinf(images).sum())
    if nan or inf:
        return Check("finite", FAIL, f"{nan} NaN and {inf} inf values (of {images.numel():,})",
                     {"nan": nan, "inf": inf})
    return Check("finite", PASS, "no NaN or inf")

