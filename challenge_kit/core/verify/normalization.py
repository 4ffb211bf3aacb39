"""Are the pixels mean/std normalized the challenge's way? Raw pixels, another normalization and ZCA told apart.

What can be told from the pixels alone, and what cannot, is documented at each threshold.
"""

from __future__ import annotations

import math

import torch

from challenge_kit.core.contract import SPECS, DatasetSpec
from challenge_kit.core.verify.report import FAIL, PASS, WARN, Check

# Values are float32 (or fp16/bf16) images: decoding x * std + mean is exact to ~1e-3 even for bf16.
TOL = 3e-3
# Unmodified 8-bit images have saturated pixels: the set's de-normalized range reaches within EDGE of 0 and 1.
EDGE = 0.02
# The raw-pixel and far-out rules read every value of a set up to this many, every k-th of a larger one.
SAMPLE_VALUES = 1_000_000
# Mean/std normalized images are about half negative (every pixel darker than the dataset mean);
# raw pixels have none.
RAW_NEGATIVE_FRACTION = 0.01
# |x| beyond this many times the largest magnitude a normalized pixel can have is not a normalized image.
FAR_OUT_FACTOR = 10.0
# Power spectrum P(f) ~ f^-alpha: natural images alpha ~ 2 (measured 1.7-2.5 on real and 1/f images,
# still >= 1.2 after adding gradient noise of twice the image's power); white noise 0; ZCA whitening
# (eps 0.1, as KIP/MTT) leaves 0.3-0.6, and at most 1.0 even with that much gradient noise. Midpoint:
WHITE_EXPONENT = 1.0
SPECTRUM_MIN_SIZE = 16  # rings 1..H/4: fewer than 4 rings give no usable slope
SPECTRUM_IMAGES = 256
# Regularized ZCA (eps 0.1) keeps channel correlation 0.45-0.6 on natural images (>= 0.13 after gradient
# noise of equal power); i.i.d. noise, or a noise init optimized by gradients, stays within +-0.02.
ZCA_CHANNEL_CORR = 0.1


def spectral_exponent(images: torch.Tensor) -> float:
    """Slope ``alpha`` of the radially averaged power spectrum ``P(f) ~ f^-alpha`` over rings 1..H/4.

    Natural images have alpha ~ 2 and distilled ones keep their low-frequency content; whitening
    flattens the spectrum (alpha ~ 0). NaN when the images have no variation to measure.
    """
    x = images.double()
    x = x - x.mean((-2, -1), keepdim=True)
    h, w = x.shape[-2:]
    power = torch.fft.fft2(x).abs().pow(2).mean(tuple(range(x.dim() - 2)))
    fy, fx = torch.fft.fftfreq(h, 1 / h).view(-1, 1), torch.fft.fftfreq(w, 1 / w).view(1, -1)
    radius = (fy ** 2 + fx ** 2).sqrt().round()
    rings = torch.arange(1, min(h, w) // 4 + 1, dtype=torch.float64)
    ring_power = torch.stack([power[radius == r].mean() for r in rings])
    if len(rings) < 2 or not bool((ring_power > 0).all()):
        return math.nan
    lr, lp = rings.log(), ring_power.log()
    slope = ((lr - lr.mean()) * (lp - lp.mean())).sum() / (lr - lr.mean()).pow(2).sum()
    return -float(slope)


def channel_correlation(images: torch.Tensor) -> float:
    """Mean correlation between colour channels of each image (after removing each image's channel means)."""
    x = images.double()
    x = x - x.mean((-2, -1), keepdim=True)
    pairs = [(i, j) for i in range(x.shape[1]) for j in range(i + 1, x.shape[1])]
    corr = [(x[:, i] * x[:, j]).sum() / ((x[:, i] ** 2).sum() * (x[:, j] ** 2).sum()).sqrt().clamp_min(1e-30)
            for i, j in pairs]
    return float(torch.stack(corr).mean()) if corr else math.nan


def _hypotheses(spec: DatasetSpec) -> list[tuple[str, tuple, tuple]]:
    """Affine normalizations someone may have used: the spec's, the other dataset's, and [-1, 1]."""
    out = [(f"{spec.name}'s mean/std", spec.mean, spec.std)]
    out += [(f"{o.name}'s mean/std", o.mean, o.std) for o in SPECS.values()
            if (o.mean, o.std) != (spec.mean, spec.std) and len(o.mean) == spec.channels]
    half = (0.5,) * spec.channels
    return out + [("(x - 0.5) / 0.5, i.e. pixels in [-1, 1]", half, half)]


def _decoded_range(lo: torch.Tensor, hi: torch.Tensor, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    m, s = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
    return lo * s + m, hi * s + m


def check_normalization(images: torch.Tensor, spec: DatasetSpec) -> Check:
    """Are these challenge-normalized images? Raw pixels, another normalization and ZCA are told apart.

    Exact evidence (FAIL): raw pixels have no negative values; unmodified images decode into [0, 1]
    touching both ends under exactly the normalization that was used; ZCA-whitened images have a flat
    power spectrum yet correlated channels. Statistical hints (WARN): a flat, channel-uncorrelated spectrum
    (noise), and channel means that sit where the other dataset's normalization would put them.
    """
    x = torch.nan_to_num(images.detach().to("cpu", torch.float32), nan=0.0, posinf=0.0, neginf=0.0)
    flat = x.flatten()
    sample = flat[:: max(1, flat.numel() // SAMPLE_VALUES)]
    negative = float((sample < -TOL).float().mean())
    top = float(sample.abs().quantile(0.999))
    mean, std = torch.tensor(spec.mean), torch.tensor(spec.std)
    bound = float(torch.maximum(mean / std, (1 - mean) / std).max())  # largest |normalized pixel|
    values = f"(min {float(flat.min()):.3g}, max {float(flat.max()):.3g}, mean {float(flat.mean()):.3g})"
    if negative < RAW_NEGATIVE_FRACTION:
        if top <= 1 + 0.05:
            return Check("normalization", FAIL, f"raw [0, 1] pixels {values}: no negative values, not "
                                                f"normalized with {spec.name}'s mean/std")
        what = "raw [0, 255] pixels" if top > FAR_OUT_FACTOR * bound else "not mean/std normalized"
        return Check("normalization", FAIL, f"{what} {values}: no negative values, but mean/std normalized "
                                            "images are about half negative")
    if top > FAR_OUT_FACTOR * bound:
        return Check("normalization", FAIL, f"|values| reach {top:.3g} (99.9th percentile) {values}; "
                                            f"normalized {spec.name} pixels stay within +-{bound:.2f}: "
                                            "[0, 255] data or a diverged set")

    lo, hi = x.transpose(0, 1).flatten(1).aminmax(dim=1)
    lo, hi = lo.double(), hi.double()
    ranges = {}
    for i, (name, m, s) in enumerate(_hypotheses(spec)):
        dlo, dhi = _decoded_range(lo, hi, m, s)
        low, high = float(dlo.min()), float(dhi.max())
        ranges[name] = (low, high)
        if not (-TOL <= low <= EDGE and 1 - EDGE <= high <= 1 + TOL):
            continue
        if i == 0:
            return Check("normalization", PASS, f"de-normalized with {name} the pixels fill [0, 1] exactly, "
                                                "like unmodified images", {"decoded_range": ranges})
        own_lo, own_hi = ranges[next(iter(ranges))]
        return Check("normalization", FAIL, f"normalized with {name}: de-normalizing with it puts every value "
                                            "in [0, 1] touching both ends (as unmodified images do); with "
                                            f"{spec.name}'s they span [{own_lo:.3f}, {own_hi:.3f}]",
                     {"decoded_range": ranges})

    stats = {"channel_mean": x.mean((0, 2, 3)).tolist(), "channel_std": x.std((0, 2, 3)).tolist()}
    summary = (f"channel means ({', '.join(f'{v:+.2f}' for v in stats['channel_mean'])}), "
               f"stds ({', '.join(f'{v:.2f}' for v in stats['channel_std'])})")
    if min(x.shape[-2:]) >= SPECTRUM_MIN_SIZE:
        few = x[:: max(1, x.shape[0] // SPECTRUM_IMAGES)]
        alpha, rho = spectral_exponent(few), channel_correlation(few)
        stats.update(spectral_exponent=alpha, channel_correlation=rho)
        flat_spectrum = f"flat power spectrum (exponent {alpha:.2f}; natural and distilled images ~2, white 0)"
        if alpha < WHITE_EXPONENT and rho >= ZCA_CHANNEL_CORR:
            return Check("normalization", FAIL, f"ZCA-whitened: {flat_spectrum} but channel correlation "
                                                f"{rho:.2f} (i.i.d. noise has 0); the test set is only "
                                                "mean/std normalized", stats)
        if alpha < WHITE_EXPONENT:
            return Check("normalization", WARN, f"looks like uncorrelated noise: {flat_spectrum}, channel "
                                                f"correlation {rho:.2f}. Fine if a noise-initialized set "
                                                "stayed noisy; an unoptimized noise init scores near chance",
                                                stats)
        summary += f", spectrum exponent {alpha:.2f}"
    hint = _other_normalization_hint(x, spec)
    if hint:
        return Check("normalization", WARN, f"{summary}: {hint}", stats)
    return Check("normalization", PASS, f"consistent with {spec.name}'s mean/std: {summary}", stats)


def _other_normalization_hint(x: torch.Tensor, spec: DatasetSpec) -> str | None:
    """Channel means near where the other dataset's normalization would put this dataset's images.

    Optimized pixels hide the exact evidence, but the ConvNet's instance norm makes the loss blind to a
    per-image colour offset, so distillation leaves a set's channel means near those of its real init.
    Only a full challenge set has a known mean colour (the dataset's), so only those get the hint.
    """
    if not spec.challenge:
        return None
    per_image = x.double().mean((2, 3))
    mu = per_image.mean(0)
    se = per_image.std(0) / math.sqrt(per_image.shape[0])
    for o in SPECS.values():
        if (o.mean, o.std) == (spec.mean, spec.std):
            continue
        e = (torch.tensor(spec.mean, dtype=torch.float64) - torch.tensor(o.mean)) / torch.tensor(o.std)
        t = float(mu @ e / (e @ e))  # 0: this spec's normalization, 1: the other's
        se_t = float((e.pow(2) * se.pow(2)).sum().sqrt() / (e @ e))
        if 0.5 < t < 2 and t > 3 * se_t:
            return (f"the means sit near ({', '.join(f'{v:+.2f}' for v in e.tolist())}), where {spec.name} "
                    f"images normalized with {o.name}'s mean/std would be, not near 0: check the normalization")
    return None

