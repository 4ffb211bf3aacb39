"""Differentiable Siamese Augmentation, mode "S", as the scorer and the DATM pipeline run it.

Each call picks one group for the whole batch (color, crop, cutout, flip, scale or rotate) and draws
per-image parameters. Sampling and applying are separate so a batch can be augmented again with the
very same parameters: the constant-memory matching gradient recomputes each inner step and must see
exactly the augmentation the forward pass saw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import kornia
import torch
import torch.nn.functional as F

GROUPS = ("color", "crop", "cutout", "flip", "scale", "rotate")
BRIGHTNESS = 1.0
SATURATION = 2.0
CONTRAST = 0.5
CROP_RATIO = 0.125
CUTOUT_RATIO = 0.5
SCALE = 1.2
ROTATE_DEGREES = 15.0


@dataclass
class DSAParams:
    """One sampled augmentation: the group and its per-image parameters (all on the images' device)."""

    group: str
    values: dict[str, torch.Tensor]

    def to(self, device: torch.device | str) -> DSAParams:
        return DSAParams(self.group, {k: v.to(device) for k, v in self.values.items()})

    def take(self, rows: slice) -> DSAParams:
        """The parameters of some of the images (a shard of the batch), as drawn for the whole batch."""
        return DSAParams(self.group, {k: v[rows] for k, v in self.values.items()})


def _uniform(n: int, device, generator, dtype=torch.float32) -> torch.Tensor:
    return torch.rand(n, device=device, generator=generator, dtype=dtype)


def crop_shift(size: int) -> int:
    return int(size * CROP_RATIO + 0.5)


def cutout_side(size: int) -> int:
    return int(size * CUTOUT_RATIO + 0.5)


def sample(n: int, size: int, device: torch.device | str = "cpu", group: str | None = None,
           generator: torch.Generator | None = None, group_generator: torch.Generator | None = None,
           dtype: torch.dtype = torch.float32) -> DSAParams:
    """Draw one group (uniformly, from a CPU RNG, so no device sync) and its per-image parameters.

    ``generator`` must live on ``device``; ``None`` uses the global RNGs.
    """
    if group is None:
        group = GROUPS[int(torch.randint(len(GROUPS), (1,), generator=group_generator))]
    u = lambda: _uniform(n, device, generator, dtype)  # noqa: E731
    if group == "color":
        values = {"brightness": u(), "saturation": u(), "contrast": u()}
    elif group == "crop":
        s = crop_shift(size)
        values = {"tx": torch.randint(-s, s + 1, (n,), device=device, generator=generator),
                  "ty": torch.randint(-s, s + 1, (n,), device=device, generator=generator)}
    elif group == "cutout":
        c = cutout_side(size)
        hi = size + (1 - c % 2)
        values = {"ox": torch.randint(0, hi, (n,), device=device, generator=generator),
                  "oy": torch.randint(0, hi, (n,), device=device, generator=generator)}
    elif group == "flip":
        values = {"flip": u() < 0.5}
    elif group == "scale":
        lo = 1.0 / SCALE
        values = {"sx": u() * (SCALE - lo) + lo, "sy": u() * (SCALE - lo) + lo}
    elif group == "rotate":
        values = {"angle": (u() - 0.5) * 2 * ROTATE_DEGREES / 180 * math.pi}
    else:
        raise ValueError(f"unknown DSA group {group!r}; expected one of {GROUPS}")
    return DSAParams(group, values)


def brightness(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    # kornia's additive brightness is exactly x + factor when not clipped (normalized data is not in [0, 1]).
    return kornia.enhance.adjust_brightness(x, (u - 0.5).to(x.dtype) * BRIGHTNESS, clip_output=False)


def saturation(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    m = x.mean(dim=1, keepdim=True)
    return (x - m) * (u.to(x.dtype) * SATURATION).view(-1, 1, 1, 1) + m


def contrast(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - m) * (u.to(x.dtype) + CONTRAST).view(-1, 1, 1, 1) + m


def crop(x: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    """Integer translation with zero fill: out[i, j] = in[i + tx, j + ty].

    Contiguous like the reference's result: a channels-last view makes the convolutions round differently.
    """
    n, _, h, w = x.shape
    rows = (torch.arange(h, device=x.device).view(1, h, 1) + tx.view(n, 1, 1) + 1).clamp(0, h + 1)
    cols = (torch.arange(w, device=x.device).view(1, 1, w) + ty.view(n, 1, 1) + 1).clamp(0, w + 1)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    padded = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)
    return padded[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def cutout_mask(n: int, h: int, w: int, ox: torch.Tensor, oy: torch.Tensor, dtype, device) -> torch.Tensor:
    ch, cw = cutout_side(h), cutout_side(w)
    r = torch.arange(h, device=device).view(1, h, 1)
    c = torch.arange(w, device=device).view(1, 1, w)
    r0 = (ox - ch // 2).view(n, 1, 1)
    c0 = (oy - cw // 2).view(n, 1, 1)
    inside = (r >= r0) & (r < r0 + ch) & (c >= c0) & (c < c0 + cw)
    return (~inside).to(dtype).unsqueeze(1)


def cutout(x: torch.Tensor, ox: torch.Tensor, oy: torch.Tensor) -> torch.Tensor:
    n, _, h, w = x.shape
    return x * cutout_mask(n, h, w, ox, oy, x.dtype, x.device)


def flip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, 1, 1, 1), kornia.geometry.transform.hflip(x), x)


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)


def scale(x: torch.Tensor, sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    zero = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, zero, zero], 1), torch.stack([zero, sy, zero], 1)], 1)
    return _affine(x, theta)


def rotate(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    cos, sin, zero = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    return _affine(x, theta)


def apply(x: torch.Tensor, params: DSAParams) -> torch.Tensor:
    """Apply sampled parameters; differentiable w.r.t. ``x``, and identical every time it is replayed."""
    v = params.values
    if params.group == "color":
        return contrast(saturation(brightness(x, v["brightness"]), v["saturation"]), v["contrast"])
    if params.group == "crop":
        return crop(x, v["tx"], v["ty"])
    if params.group == "cutout":
        return cutout(x, v["ox"], v["oy"])
    if params.group == "flip":
        return flip(x, v["flip"])
    if params.group == "scale":
        return scale(x, v["sx"], v["sy"])
    if params.group == "rotate":
        return rotate(x, v["angle"])
    raise ValueError(f"unknown DSA group {params.group!r}")


def dsa(x: torch.Tensor, generator: torch.Generator | None = None,
        group_generator: torch.Generator | None = None) -> tuple[torch.Tensor, DSAParams]:
    """Augment a batch with fresh random parameters; returns the images and the parameters used."""
    params = sample(x.shape[0], x.shape[-1], x.device, generator=generator,
                    group_generator=group_generator, dtype=x.dtype)
    return apply(x, params), params
