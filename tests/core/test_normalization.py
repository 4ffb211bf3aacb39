"""The normalization row word for word: each verdict's line and the numbers behind it, computed here from the pixels
(the decoded range under each normalization, per-channel means and stds), and the edges of its rules."""

from dataclasses import replace

import pytest
import torch
from fakes import gradient_noise, natural, zca

from challenge_kit.core.contract import CIFAR100, TINYIMAGENET, normalize
from challenge_kit.core.verify import FAIL, PASS, WARN, Check, channel_correlation, spectral_exponent, verify_tensor
from challenge_kit.core.verify.normalization import TOL, _other_normalization_hint

SMALL = CIFAR100.subset(10)  # 100 images of 3x32x32
HALF = (0.5, 0.5, 0.5)
NAMES = {"cifar100": "cifar100's mean/std", "tinyimagenet": "tinyimagenet's mean/std",
         "half": "(x - 0.5) / 0.5, i.e. pixels in [-1, 1]"}

pytestmark = pytest.mark.usefixtures("one_thread")


def row(images: torch.Tensor, spec=SMALL) -> Check:
    return verify_tensor(images, spec).check("normalization")


def decoded(images: torch.Tensor, mean, std) -> tuple[float, float]:
    """The lowest and highest value of ``images * std + mean`` over every channel, in float64."""
    x = images.double() * torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
    x = x + torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
    return float(x.min()), float(x.max())


def values(x: torch.Tensor) -> str:
    return f"(min {float(x.min()):.3g}, max {float(x.max()):.3g}, mean {float(x.mean()):.3g})"


def statistics(images: torch.Tensor, every: int = 1) -> tuple[dict, str]:
    """The numbers a statistical verdict carries and the summary it opens with: per-channel mean and std of all
    the images; the spectrum and channel correlation of every ``every``-th image."""
    mean, std = images.mean((0, 2, 3)), images.std((0, 2, 3))
    few = images[::every]
    stats = {"channel_mean": mean.tolist(), "channel_std": std.tolist(),
             "spectral_exponent": spectral_exponent(few), "channel_correlation": channel_correlation(few)}
    summary = (f"channel means ({', '.join(f'{v:+.2f}' for v in stats['channel_mean'])}), "
               f"stds ({', '.join(f'{v:.2f}' for v in stats['channel_std'])})")
    return stats, summary


def test_unmodified_images_decode_into_exactly_0_to_1_under_their_own_normalization():
    images = normalize(natural(100, 32), SMALL)
    assert row(images) == Check("normalization", PASS, "de-normalized with cifar100's mean/std the pixels fill [0, 1] "
                                "exactly, like unmodified images",
                                {"decoded_range": {NAMES["cifar100"]: decoded(images, CIFAR100.mean, CIFAR100.std)}})


@pytest.mark.parametrize("other", ["tinyimagenet", "half"])
def test_another_normalization_is_named_with_every_range_tried_before_it(other):
    pixels = natural(100, 32)
    mean, std = (TINYIMAGENET.mean, TINYIMAGENET.std) if other == "tinyimagenet" else (HALF, HALF)
    images = (pixels - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    tried = {NAMES["cifar100"]: decoded(images, CIFAR100.mean, CIFAR100.std),
             NAMES["tinyimagenet"]: decoded(images, TINYIMAGENET.mean, TINYIMAGENET.std)}
    if other == "half":
        tried[NAMES["half"]] = decoded(images, HALF, HALF)
    own_lo, own_hi = tried[NAMES["cifar100"]]
    assert row(images) == Check(
        "normalization", FAIL, f"normalized with {NAMES[other]}: de-normalizing with it puts every value in [0, 1] "
        f"touching both ends (as unmodified images do); with cifar100's they span [{own_lo:.3f}, {own_hi:.3f}]",
        {"decoded_range": tried})


@pytest.mark.parametrize("n", [100, 1000])
def test_a_distilled_like_set_passes_on_its_statistics_with_its_numbers(n):
    """Gradient noise hides the exact range, so the verdict rests on the statistics; the spectrum is measured on
    every (n // 256)-th image: all of 100, every third of 1000."""
    spec = CIFAR100.subset(n // 10)
    images = gradient_noise(normalize(natural(n, 32), spec), 1.0)
    stats, summary = statistics(images, every=max(1, n // 256))
    check = row(images, spec)
    assert check == Check("normalization", PASS, f"consistent with cifar100's mean/std: {summary}, spectrum exponent "
                                                 f"{stats['spectral_exponent']:.2f}", check.details)
    assert check.details == pytest.approx(stats)


def test_noise_warns_and_a_whitened_set_fails_each_with_its_numbers():
    noise = torch.randn(100, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    stats, _ = statistics(noise)
    alpha, rho = stats["spectral_exponent"], stats["channel_correlation"]
    flat = f"flat power spectrum (exponent {alpha:.2f}; natural and distilled images ~2, white 0)"
    check = row(noise)
    assert check == Check("normalization", WARN, f"looks like uncorrelated noise: {flat}, channel correlation "
                                                 f"{rho:.2f}. Fine if a noise-initialized set stayed noisy; an "
                                                 "unoptimized noise init scores near chance", check.details)
    assert check.details == pytest.approx(stats)

    small16 = replace(SMALL, image_size=16)
    fit = normalize(natural(3000, 16, seed=2), small16)
    whitened = zca(fit[:100], fit)
    stats, _ = statistics(whitened)
    alpha, rho = stats["spectral_exponent"], stats["channel_correlation"]
    flat = f"flat power spectrum (exponent {alpha:.2f}; natural and distilled images ~2, white 0)"
    check = row(whitened, small16)
    assert check == Check("normalization", FAIL, f"ZCA-whitened: {flat} but channel correlation {rho:.2f} (i.i.d. "
                                                 "noise has 0); the test set is only mean/std normalized",
                          check.details)
    assert check.details == pytest.approx(stats)


def test_the_other_datasets_hint_follows_the_statistics_summary():
    pixels = natural(1000, 32)
    noise = 0.7 * torch.randn(pixels.shape, generator=torch.Generator().manual_seed(0))
    images = normalize(pixels, TINYIMAGENET) + noise
    stats, summary = statistics(images, every=1000 // 256)
    hint = _other_normalization_hint(images, CIFAR100)
    check = row(images, CIFAR100)
    assert hint and check == Check("normalization", WARN, f"{summary}, spectrum exponent "
                                                          f"{stats['spectral_exponent']:.2f}: {hint}", check.details)
    assert check.details == pytest.approx(stats)


def test_a_range_touching_one_end_or_running_past_one_is_not_an_unmodified_set():
    """Exact evidence needs both ends: a dark set (pixels in [0, 0.5]) touches only 0, an over-exposed one runs to
    1.5; both are judged on their statistics."""
    pixels = natural(100, 32)
    for images in (normalize(pixels / 2, SMALL), normalize(pixels * 1.5, SMALL)):
        assert not row(images).reason.startswith("de-normalized"), row(images).reason


def test_a_small_set_is_read_whole_whatever_its_layout():
    """Under a million values every value counts: half the values negative, all at odd positions, is not a raw set."""
    images = torch.full(SMALL.shape, 0.5)
    images.view(-1)[1::2] = -1.0
    assert "no negative values" not in row(images).reason


def test_raw_pixels_are_raw_down_to_the_tolerance_and_not_called_255_below_ten_times_the_bound():
    """A value down to -TOL (a rounding) still counts as not negative: [0, 1] pixels with some at -TOL are raw.
    Values with no negatives that reach 10 are not [0, 255] data: that name is for ten times the largest
    normalized pixel (20.2 for cifar100) and beyond."""
    pixels = natural(100, 32)
    rounded = pixels.clone()
    rounded.view(-1)[::20] = -TOL
    assert row(rounded) == Check("normalization", FAIL, f"raw [0, 1] pixels {values(rounded)}: no negative values, "
                                                        "not normalized with cifar100's mean/std")
    tenfold = pixels * 10
    assert row(tenfold) == Check("normalization", FAIL, f"not mean/std normalized {values(tenfold)}: no negative "
                                                        "values, but mean/std normalized images are about half "
                                                        "negative")
