"""The label-consistency checker: would the scorer read this file the way its author meant?

The scorer never sees labels: image ``i`` is class ``i // ipc``, pixels must be mean/std normalized, and
the file must be a bare tensor of one exact shape. Every way to get that wrong scores badly without an
error, so each is a check here: PASS, WARN (suspicious, exit code unaffected) or FAIL, with a one-line
reason. ``verify_tensor`` checks tensors in memory (the export step), ``verify_path`` checks a file.

What can be told from the pixels alone, and what cannot, is documented at each threshold below.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from challenge_kit.core.contract import LR as SCORER_LR
from challenge_kit.core.contract import SPECS, DatasetSpec, default_labels, get_spec, spec_for_shape
from challenge_kit.core.devices import resolve_device
from challenge_kit.core.errors import KitFileError
from challenge_kit.core.expert_file import infer_model_config, read_expert
from challenge_kit.core.models import ConvNet, load_flat_
from challenge_kit.core.storage import DistilledArtifact, load_rows, load_torch, load_torch_bytes
from challenge_kit.core.submission import manifest_spec, read_manifest, resolve_spec

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"

# Values are float32 (or fp16/bf16) images: decoding x * std + mean is exact to ~1e-3 even for bf16.
TOL = 3e-3
# Unmodified 8-bit images have saturated pixels: the set's de-normalized range reaches within EDGE of 0 and 1.
EDGE = 0.02
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
# Class-order analysis with a reference model: a class counts as moved when at least this share of its
# images is predicted as its new class (chance: ipc / K images) and more than twice as many as its own
# class (a moved class's images are of another class: its own label gets only confusions). A cycle of
# the best assignment counts when most of its classes qualify. Simulated with 200 classes x 10 images: a
# model agreeing 50% finds >90% of a random permutation and both of two swapped pairs, with no false
# mapping even when 30% of each class goes to one confusable class; false mappings need confusions as
# frequent as correct answers (then a swap and a confusion are indistinguishable).
MOVED_SHARE = 0.3
# Below this agreement (chance is 1/K), with or without the suspected mapping, the model is too weak to
# judge the class order, or the set is broken: a heuristic, so a WARN.
LOW_AGREEMENT = 0.25
SHOW = 8  # list entries shown in a one-line reason


@dataclass(frozen=True)
class Check:
    """One row of the report; ``details`` holds the numbers behind the reason (for --json)."""

    name: str
    status: str
    reason: str
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "reason": self.reason, "details": self.details}


@dataclass
class Report:
    checks: list[Check]
    spec: DatasetSpec | None
    spec_source: str | None = None
    path: str | None = None

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def to_dict(self) -> dict:
        return {"path": self.path, "ok": self.ok, "exit_code": self.exit_code,
                "spec": self.spec.to_dict() if self.spec else None, "spec_source": self.spec_source,
                "challenge": self.spec.challenge if self.spec else None,
                "checks": [c.to_dict() for c in self.checks]}


def _shape(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def _listing(items: list[str]) -> str:
    more = f", ... (+{len(items) - SHOW} more)" if len(items) > SHOW else ""
    return ", ".join(items[:SHOW]) + more


# ------------------------------------------------------------------------------------------ format


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


# ------------------------------------------------------------------------------------- normalization


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
    sample = flat[:: max(1, flat.numel() // 1_000_000)]
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


# ------------------------------------------------------------------------------------------- labels


def check_labels(labels: torch.Tensor, spec: DatasetSpec) -> Check:
    """The scorer labels image i as class i // ipc: artifact labels must say exactly that."""
    expected = default_labels(spec.num_classes, spec.ipc)
    n, k = spec.num_images, spec.num_classes
    labels = labels.detach().cpu()
    if labels.is_floating_point() and labels.dim() == 2:
        if tuple(labels.shape) != (n, k):
            return Check("labels", FAIL, f"soft labels of shape {_shape(labels.shape)}, expected {n}x{k}")
        wrong = labels.argmax(1) != expected
        per_class = torch.bincount(expected[wrong], minlength=k)
        counts = {int(c): int(per_class[c]) for c in per_class.nonzero().flatten()}
        where = (f"argmax disagrees with the default-order class for {int(wrong.sum())} images ("
                 + _listing([f"class {c}: {m}" for c, m in counts.items()]) + ")") if counts else \
            "argmax agrees with the default order, but the label distributions are lost"
        return Check("labels", FAIL, f"soft labels ({n}x{k}) are dropped: the scorer trains on default-order "
                                     f"hard labels; {where}", {"disagree_per_class": counts})
    if labels.dim() != 1 or labels.shape[0] != n:
        return Check("labels", FAIL, f"labels of shape {_shape(labels.shape)}: expected {n} class indices "
                                     f"or {n}x{k} soft labels")
    if labels.is_floating_point() and not torch.equal(labels, labels.round()):
        return Check("labels", FAIL, "hard labels hold non-integer values")
    labels = labels.long()
    if torch.equal(labels, expected):
        return Check("labels", PASS, "hard labels in default order (image i is class i // ipc)")
    differ = (labels != expected).nonzero().flatten()
    first = int(differ[0])
    balanced = labels.min() >= 0 and labels.max() < k and bool(
        (torch.bincount(labels.clamp(0, k - 1), minlength=k) == spec.ipc).all())
    fix = "; reorder the images by label (stable sort) to fix" if balanced else ""
    return Check("labels", FAIL, f"{len(differ)} of {n} hard labels differ from the default order (image "
                                 f"{first} is labelled {int(labels[first])}, the scorer calls it class "
                                 f"{int(expected[first])}){fix}", {"differ": len(differ)})


def check_lr(lr: float) -> Check:
    return Check("lr", WARN, f"learned lr {lr:.4g} is stored, but the scorer ignores it and trains with "
                             f"lr {SCORER_LR}", {"lr": lr})


# ------------------------------------------------------------------------------ reference model


def best_assignment(score: np.ndarray) -> np.ndarray:
    """Row ``i`` -> column ``result[i]``, a permutation maximizing the total score (Hungarian, O(n^3))."""
    score = np.asarray(score, dtype=np.float64)
    n = score.shape[0]
    cost = score.max() - score
    u, v = np.zeros(n + 1), np.zeros(n + 1)
    match = np.zeros(n + 1, dtype=np.int64)  # match[j]: row (1-based) assigned to column j; 0 = none
    way = np.zeros(n + 1, dtype=np.int64)
    for i in range(1, n + 1):
        match[0], j0 = i, 0
        minv = np.full(n + 1, np.inf)
        used = np.zeros(n + 1, dtype=bool)
        while match[j0] != 0:
            used[j0] = True
            i0 = match[j0]
            free = ~used[1:]
            reduced = cost[i0 - 1] - u[i0] - v[1:]
            better = free & (reduced < minv[1:])
            minv[1:][better], way[1:][better] = reduced[better], j0
            candidates = np.where(free, minv[1:], np.inf)
            j1 = int(np.argmin(candidates)) + 1
            delta = candidates[j1 - 1]
            u[match[used]] += delta
            v[used] -= delta
            minv[~used] -= delta
            j0 = j1
        while j0:
            j1 = way[j0]
            match[j0] = match[j1]
            j0 = j1
    result = np.empty(n, dtype=np.int64)
    result[match[1:] - 1] = np.arange(n)
    return result


def suspected_mapping(confusion: np.ndarray, ipc: int) -> dict[int, int]:
    """Classes whose images look like another class: the well-supported part of the best class assignment.

    ``confusion[k, j]`` counts images in class ``k``'s rows predicted as ``j``. The best assignment
    (Hungarian) is split into cycles; a cycle is kept when most of its classes moved clearly (see
    ``MOVED_SHARE``), and only those classes are reported. A class a weak model confuses one way, which
    the assignment can route through a cycle, does not qualify on its own.
    """
    perm = best_assignment(confusion)
    need = max(2, math.ceil(MOVED_SHARE * ipc))
    mapping, seen = {}, set()
    for start in range(len(perm)):
        if start in seen or perm[start] == start:
            continue
        cycle, k = [], start
        while k not in seen:
            seen.add(k)
            cycle.append(k)
            k = int(perm[k])
        moved = [c for c in cycle if confusion[c, perm[c]] >= need and confusion[c, perm[c]] > 2 * confusion[c, c]]
        if 2 * len(moved) > len(cycle):
            mapping.update({c: int(perm[c]) for c in moved})
    return dict(sorted(mapping.items()))


def load_reference_model(path: str | Path, spec: DatasetSpec) -> nn.Module:
    """An expert file (its last snapshot) or a DC/MTT ConvNet state dict ``.pt``, checked against ``spec``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        expert = read_expert(path, snapshots=False)
        net = load_flat_(ConvNet(expert.model_config), load_rows(path, "snapshots", [expert.completed_epochs])[0])
    else:
        state = load_torch(path)
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise KitFileError(path, f"holds a {type(state).__name__}, not a ConvNet state dict of tensors")
        state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DataParallel
        try:
            net = ConvNet(infer_model_config([tuple(v.shape) for v in state.values()], spec))
            net.load_state_dict(state)
        except ValueError:
            raise KitFileError(path, "not a ConvNet state dict (DC/MTT layout: features.0.weight ... "
                                     "classifier.bias)") from None
        except RuntimeError as e:
            raise KitFileError(path, f"does not fit a ConvNet for {spec.describe()} "
                                     f"({str(e).strip().splitlines()[-1].strip()})") from None
    config = net.config
    if (config.num_classes, config.image_size, config.channels) != (spec.num_classes, spec.image_size,
                                                                     spec.channels):
        raise KitFileError(path, f"is a model for {config.num_classes} classes of {config.channels}x"
                                 f"{config.image_size}x{config.image_size} images, not {spec.describe()}")
    return net


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    device = next(model.parameters()).device
    model.eval()
    return torch.cat([model(images[i:i + batch_size].to(device, torch.float32)).float().cpu()
                      for i in range(0, images.shape[0], batch_size)])


def check_reference(images: torch.Tensor, spec: DatasetSpec, model: nn.Module | str | Path) -> Check:
    """Do the images of class k's rows look like class k to a model trained on real data?"""
    if not isinstance(model, nn.Module):  # a model passed in stays on its device
        model = load_reference_model(model, spec).to(resolve_device())
    x = torch.nan_to_num(images.detach().float())
    logits = predict_logits(model, x)
    k, ipc = spec.num_classes, spec.ipc
    if logits.shape[1] != k:
        raise ValueError(f"the reference model predicts {logits.shape[1]} classes, {spec.describe()} has {k}")
    truth = default_labels(k, ipc).numpy()
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (truth, logits.argmax(1).numpy()), 1)
    agreement = float(np.trace(confusion)) / len(truth)
    per_class = np.diag(confusion)
    mapping = suspected_mapping(confusion, ipc)
    details = {"agreement": agreement, "per_class_agreement": (per_class / ipc).tolist(),
               "mapping": mapping}
    chance = f"chance {1 / k:.0%}"
    mapped = np.trace(confusion) + sum(confusion[c, m] - confusion[c, c] for c, m in mapping.items())
    details["agreement_with_mapping"] = float(mapped) / len(truth)
    weak = max(agreement, details["agreement_with_mapping"]) < LOW_AGREEMENT
    if mapping and not weak:
        moves = _listing([f"class {c} -> {m}" for c, m in mapping.items()])
        return Check("reference", FAIL, f"class order looks permuted (e.g. wnids.txt order instead of sorted): "
                                        f"the images of {len(mapping)} classes look like another class ({moves});"
                                        f" agreement with the default order {agreement:.0%}, with this mapping "
                                        f"{details['agreement_with_mapping']:.0%}", details)
    worst = np.argsort(per_class, kind="stable")[:3]
    lows = ", ".join(f"class {c} {per_class[c]}/{ipc}" for c in worst)
    zero = int((per_class == 0).sum())
    reason = (f"reference model agrees with the default-order labels for {agreement:.0%} of images "
              f"({chance}); {zero} classes with no agreeing image; lowest: {lows}")
    if mapping:
        return Check("reference", WARN, f"{reason}; too weak to judge the class order (a possible permutation "
                                        f"moves {len(mapping)} classes, agreement with it "
                                        f"{details['agreement_with_mapping']:.0%})", details)
    if agreement < LOW_AGREEMENT:
        return Check("reference", WARN, f"{reason}; no consistent class permutation", details)
    return Check("reference", PASS, reason, details)


# ------------------------------------------------------------------------------------------ entry points


def verify_tensor(images, spec: DatasetSpec | None = None, labels: torch.Tensor | None = None,
                  lr: float | None = None, reference_model: nn.Module | str | Path | None = None, *,
                  spec_source: str | None = None, path: str | Path | None = None) -> Report:
    """Check a candidate submission in memory; ``spec`` defaults to the challenge spec of its shape."""
    if spec is None and isinstance(images, torch.Tensor):
        spec = spec_for_shape(tuple(images.shape))
        spec_source = "shape" if spec else None
    elif spec is not None and spec_source is None:
        spec_source = "caller"
    report = Report([check_type(images)], spec, spec_source, None if path is None else str(path))
    if not isinstance(images, torch.Tensor):
        return report
    checks = report.checks
    if spec is not None:
        checks.append(check_spec(spec, spec_source))
    checks += [check_shape(images, spec), check_dtype(images), check_finite(images)]
    shaped = spec is not None and tuple(images.shape) == spec.shape
    if spec is not None and images.dim() == 4 and images.shape[1] == spec.channels and images.numel():
        checks.append(check_normalization(images.float(), spec))
    if labels is not None and spec is not None:
        checks.append(check_labels(labels, spec))
    if lr is not None:
        checks.append(check_lr(lr))
    if reference_model is not None:
        if shaped:
            checks.append(check_reference(images, spec, reference_model))
        else:
            checks.append(Check("reference", WARN, "skipped: the images do not have the spec's shape"))
    return report


def _is_safetensors(path: Path) -> bool:
    """safetensors files start with an 8-byte header length and a JSON header; torch files do not."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


# What torch.save of a numpy array references; anything else outside torch's allowlist is refused.
NUMPY_GLOBALS = {"numpy.ndarray", "numpy.dtype", "numpy.core.multiarray._reconstruct",
                 "numpy._core.multiarray._reconstruct"}


def _refusal(source, name: str | Path, error: KitFileError) -> Check:
    """Why ``load_torch`` refused a file, read from the pickle's global names without running anything.

    A pickled numpy array is named as a FAIL (it is a submission, in the wrong type); anything else is
    re-raised, naming what the pickle would have called.
    """
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(source)
    except Exception:  # not a zip checkpoint (legacy pickle or garbage): keep load_torch's message
        raise error from None
    if unsafe and all(n in NUMPY_GLOBALS or n.startswith("numpy.dtypes.") for n in unsafe):
        return Check("type", FAIL, "a numpy array, not a torch.Tensor: the scorer crashes on it; "
                                   "save torch.from_numpy(array)")
    if unsafe:
        raise KitFileError(name, f"refused without loading: the pickle would call {', '.join(unsafe)}") from None
    raise error


def _report(obj, spec: DatasetSpec | None, source: str | None, path: str | Path, labels=None, lr=None,
            reference_model=None) -> Report:
    if isinstance(obj, Check):
        return Report([obj], spec, source, str(path))
    return verify_tensor(obj, spec, labels, lr, reference_model, spec_source=source, path=path)


def verify_path(path: str | Path, dataset: str = "auto", reference_model: nn.Module | str | Path | None = None,
                spec: DatasetSpec | None = None) -> Report:
    """Check a challenge ``.pt`` or a ddkit distilled artifact; KitFileError when it cannot be read.

    The spec: ``spec`` if given, else ``--dataset``, else a ``manifest.json`` beside the file or the
    artifact's metadata (when they fit the shape; as the evaluator resolves it), else the shape.
    """
    path = Path(path)
    if not path.is_file():
        raise KitFileError(path, "no such file")
    labels = lr = declared = None
    if _is_safetensors(path):
        artifact = DistilledArtifact.load(path)
        obj, labels, lr, declared = artifact.images, artifact.labels, artifact.lr, artifact.spec
    else:
        try:
            obj = load_torch(path)
        except KitFileError as e:
            obj = _refusal(path, path, e)
    source = None
    if spec is not None:
        source = "caller"
    elif dataset not in (None, "auto"):
        spec, source = get_spec(dataset), "--dataset"
    elif isinstance(obj, torch.Tensor):
        try:
            spec, source = resolve_spec(tuple(obj.shape), declared=(manifest_spec(path), declared))
        except ValueError:
            spec = None
    report = _report(obj, spec, source, path, labels, lr, reference_model)
    report.checks += provenance(path)
    return report


def provenance(path: Path) -> list[Check]:
    """A WARN when the manifest beside the file says it is a research set exported without its labels."""
    dropped = (read_manifest(path) or {}).get("labels_dropped")
    if not isinstance(dropped, dict):
        return []
    return [Check("provenance", WARN, str(dropped.get("note", "exported with its labels dropped")), dropped)]


def verify_bytes(data: bytes, name: str, spec: DatasetSpec) -> Report:
    """A challenge ``.pt`` held in memory (a zip member) checked against ``spec``; KitFileError when unreadable."""
    try:
        obj = load_torch_bytes(data, name)
    except KitFileError as e:
        obj = _refusal(io.BytesIO(data), name, e)
    return _report(obj, spec, "member name", name)


def findings(report: Report) -> list[str]:
    """The report's FAIL and WARN rows, one line each: what a scoring command prints before its score."""
    where = f"{report.path}: " if report.path else ""
    return [f"{where}{c.status} {c.name}: {c.reason}" for c in report.checks if c.status != PASS]


def report_table(report: Report):
    """The report as a rich table: one row per check, coloured by status."""
    from rich.markup import escape
    from rich.table import Table

    colour = {PASS: "green", WARN: "yellow", FAIL: "red"}
    where = f"{report.spec.name}{'' if report.spec.challenge else ' (subset)'}" if report.spec else "unknown"
    failed = sum(c.status == FAIL for c in report.checks)
    table = Table(title=escape(f"verify {report.path or 'tensor'} ({where})"),
                  caption=f"exit {report.exit_code}: " + (f"{failed} check(s) failed" if failed else "no check failed"))
    table.add_column("check")
    table.add_column("status")
    table.add_column("reason", overflow="fold")
    for c in report.checks:
        table.add_row(c.name, f"[{colour[c.status]}]{c.status}[/{colour[c.status]}]", escape(c.reason))
    return table
