"""DSA mode "S": every op against a plain reference written from docs/dsa.md, the sampled ranges,
exact replay, and gradients to the images."""

import math
import warnings
from collections import Counter

import kornia
import pytest
import torch
import torch.nn.functional as F

from challenge_kit.core import augment
from challenge_kit.core.augment import GROUPS, apply, crop_shift, cutout_side, dsa, sample

D = torch.float64


def images(n=2, c=3, h=6, w=6, seed=0, dtype=D):
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---- reference implementations: loops and explicit formulas, straight from docs/dsa.md ----

def ref_brightness(x, u):
    return torch.stack([x[n] + (float(u[n]) - 0.5) * 1.0 for n in range(len(x))])


def ref_saturation(x, u):
    out = torch.empty_like(x)
    for n in range(len(x)):
        m = x[n].mean(dim=0)  # per pixel, over the channel axis
        out[n] = (x[n] - m) * (2 * float(u[n])) + m
    return out


def ref_contrast(x, u):
    out = torch.empty_like(x)
    for n in range(len(x)):
        m = x[n].mean()  # over C, H, W of this image
        out[n] = (x[n] - m) * (float(u[n]) + 0.5) + m
    return out


def ref_crop(x, tx, ty):
    n_, c_, h, w = x.shape
    out = torch.zeros_like(x)
    for n in range(n_):
        for i in range(h):
            for j in range(w):
                si, sj = i + int(tx[n]), j + int(ty[n])
                if 0 <= si < h and 0 <= sj < w:
                    out[n, :, i, j] = x[n, :, si, sj]
    return out


def ref_cutout(x, ox, oy):
    n_, _, h, w = x.shape
    c = int(0.5 * h + 0.5)
    out = x.clone()
    for n in range(n_):
        r0, c0 = int(ox[n]) - c // 2, int(oy[n]) - c // 2
        for i in range(max(r0, 0), min(r0 + c - 1, h - 1) + 1):
            for j in range(max(c0, 0), min(c0 + c - 1, w - 1) + 1):
                out[n, :, i, j] = 0
    return out


def ref_flip(x, mask):
    out = x.clone()
    w = x.shape[-1]
    for n in range(len(x)):
        if mask[n]:
            for j in range(w):
                out[n, :, :, j] = x[n, :, :, w - 1 - j]
    return out


def ref_affine(x, theta):
    """Bilinear sampling, zero padding, align_corners=False, written out pixel by pixel."""
    n_, _, h, w = x.shape
    out = torch.zeros_like(x)
    for n in range(n_):
        t = theta[n]
        for i in range(h):
            for j in range(w):
                xn, yn = (2 * j + 1) / w - 1, (2 * i + 1) / h - 1  # output pixel centre, normalized
                xs = t[0][0] * xn + t[0][1] * yn + t[0][2]
                ys = t[1][0] * xn + t[1][1] * yn + t[1][2]
                px, py = ((xs + 1) * w - 1) / 2, ((ys + 1) * h - 1) / 2  # input pixel coordinates
                x0, y0 = math.floor(px), math.floor(py)
                for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
                    for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
                        if 0 <= yy < h and 0 <= xx < w:
                            out[n, :, i, j] += wy * wx * x[n, :, yy, xx]
    return out


def scale_theta(sx, sy):
    return [[[float(a), 0.0, 0.0], [0.0, float(b), 0.0]] for a, b in zip(sx, sy, strict=True)]


def rotate_theta(angle):
    return [[[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]] for a in angle.tolist()]


# ---- each op, exact with fixed parameters ----

def test_brightness_is_additive():
    x, u = images(), torch.tensor([0.1, 0.9], dtype=D)
    assert torch.allclose(augment.brightness(x, u), ref_brightness(x, u), atol=1e-12)


def test_saturation_uses_per_pixel_channel_mean():
    x, u = images(), torch.tensor([0.2, 0.85], dtype=D)
    assert torch.allclose(augment.saturation(x, u), ref_saturation(x, u), atol=1e-12)


def test_contrast_uses_per_image_mean():
    x, u = images(), torch.tensor([0.0, 0.7], dtype=D)
    assert torch.allclose(augment.contrast(x, u), ref_contrast(x, u), atol=1e-12)


def test_color_group_is_brightness_then_saturation_then_contrast():
    x = images()
    v = {"brightness": torch.tensor([0.3, 0.6], dtype=D), "saturation": torch.tensor([0.1, 0.9], dtype=D),
         "contrast": torch.tensor([0.4, 0.05], dtype=D)}
    expected = ref_brightness(x, v["brightness"])
    expected = ref_contrast(ref_saturation(expected, v["saturation"]), v["contrast"])
    assert torch.allclose(apply(x, augment.DSAParams("color", v)), expected, atol=1e-12)


@pytest.mark.parametrize("tx,ty", [((0, 0), (0, 0)), ((1, -2), (-3, 2)), ((4, -4), (4, -4)),
                                   ((7, -9), (0, 6))])
def test_crop_shifts_rows_and_columns_with_zero_fill(tx, ty):
    x = images(h=6, w=7)
    tx, ty = torch.tensor(tx), torch.tensor(ty)
    assert torch.equal(augment.crop(x, tx, ty), ref_crop(x, tx, ty))


def test_crop_direction():
    x = torch.arange(16, dtype=D).view(1, 1, 4, 4)
    out = augment.crop(x, torch.tensor([1]), torch.tensor([0]))
    assert out[0, 0, 0].tolist() == [4, 5, 6, 7] and out[0, 0, 3].tolist() == [0, 0, 0, 0]
    out = augment.crop(x, torch.tensor([0]), torch.tensor([-1]))
    assert out[0, 0, :, 0].tolist() == [0, 0, 0, 0] and out[0, 0, :, 1].tolist() == [0, 4, 8, 12]


@pytest.mark.parametrize("size", [6, 7, 8])  # c = 3 (odd), 4, 4
def test_cutout_matches_reference_for_every_centre(size):
    c = cutout_side(size)
    hi = size + (1 - c % 2)
    centres = torch.arange(hi)
    x = images(n=hi, h=size, w=size)
    ox, oy = centres, centres.flip(0)
    assert torch.equal(augment.cutout(x, ox, oy), ref_cutout(x, ox, oy))


def test_cutout_square_at_challenge_sizes():
    for size, c in ((32, 16), (64, 32)):
        assert cutout_side(size) == c
        x = torch.ones(1, 3, size, size)
        o = torch.tensor([size // 2])
        out = augment.cutout(x, o, o)
        assert (out == 0).sum() == 3 * c * c
        zero = (out[0, 0] == 0).nonzero()
        assert zero.min().item() == size // 2 - c // 2 and zero.max().item() == size // 2 - c // 2 + c - 1


def test_crop_shift_is_4_at_32_and_8_at_64():
    assert crop_shift(32) == 4 and crop_shift(64) == 8


def test_flip_is_horizontal_and_per_image():
    x = images(n=3, h=4, w=5)
    mask = torch.tensor([True, False, True])
    out = augment.flip(x, mask)
    assert torch.equal(out, ref_flip(x, mask))
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1])


def test_scale_matches_explicit_bilinear_sampling():
    x = images(n=3, h=5, w=6)
    sx, sy = torch.tensor([1 / 1.2, 1.0, 1.2], dtype=D), torch.tensor([1.2, 0.9, 1.1], dtype=D)
    expected = ref_affine(x, scale_theta(sx, sy))
    assert torch.allclose(augment.scale(x, sx, sy), expected, atol=1e-10)


def test_rotate_matches_explicit_bilinear_sampling():
    x = images(n=3, h=5, w=6)
    angle = torch.tensor([-15.0, 4.0, 15.0], dtype=D) * math.pi / 180
    expected = ref_affine(x, rotate_theta(angle))
    assert torch.allclose(augment.rotate(x, angle), expected, atol=1e-10)


def test_identity_matrices_reproduce_the_image():
    x = images(h=8, w=8)
    one, zero = torch.ones(2, dtype=D), torch.zeros(2, dtype=D)
    assert torch.allclose(augment.scale(x, one, one), x, atol=1e-12)
    assert torch.allclose(augment.rotate(x, zero), x, atol=1e-12)


def test_scale_above_one_zooms_out_and_below_one_zooms_in():
    x = torch.ones(1, 1, 32, 32, dtype=D)
    out = augment.scale(x, torch.tensor([1.2], dtype=D), torch.tensor([1.2], dtype=D))
    assert out[0, 0, 16, 16] == 1 and out[0, 0, 0, 0] < 0.5 and out.sum() < x.sum()  # borders fall outside
    out = augment.scale(x, torch.tensor([1 / 1.2], dtype=D), torch.tensor([1 / 1.2], dtype=D))
    assert torch.allclose(out, x)  # every sample falls inside
    # a bright square of side 8 shrinks when s > 1
    x = torch.zeros(1, 1, 32, 32, dtype=D)
    x[..., 12:20, 12:20] = 1
    small = augment.scale(x, torch.tensor([1.2], dtype=D), torch.tensor([1.2], dtype=D))
    assert (small > 0.5).sum() < 64


# ---- kornia-backed ops compute the documented function ----

def test_kornia_brightness_is_the_spec_formula_on_unclipped_normalized_data():
    x = images() * 3  # normalized data lies well outside [0, 1]
    u = torch.tensor([0.05, 0.95], dtype=D)
    factor = u - 0.5
    direct = kornia.enhance.adjust_brightness(x, factor, clip_output=False)
    assert torch.equal(direct, x + factor.view(-1, 1, 1, 1))
    assert torch.equal(augment.brightness(x, u), x + (u - 0.5).view(-1, 1, 1, 1))


def test_kornia_hflip_is_the_spec_flip():
    x = images(n=2, h=4, w=5)
    assert torch.equal(kornia.geometry.transform.hflip(x), ref_flip(x, torch.tensor([True, True])))
    assert torch.equal(augment.flip(x, torch.tensor([True, True])), x.flip(3))


# ---- sampled distributions (probed through the ops themselves where the op defines the factor) ----

N = 20000


def test_brightness_offsets_uniform_in_half_interval():
    u = sample(N, 32, group="color", generator=torch.Generator().manual_seed(0)).values["brightness"]
    offset = augment.brightness(torch.zeros(N, 1, 1, 1), u).flatten()
    assert offset.min() >= -0.5 and offset.max() <= 0.5
    assert abs(offset.mean()) < 0.01 and offset.min() < -0.49 and offset.max() > 0.49


def test_saturation_factor_in_0_2_and_contrast_factor_in_half_to_three_halves():
    v = sample(N, 32, group="color", generator=torch.Generator().manual_seed(1)).values
    probe = torch.zeros(N, 3, 1, 1)
    probe[:, 0] = 1.0  # channel mean 1/3 at the pixel, deviation 2/3 in channel 0
    sat = (augment.saturation(probe, v["saturation"])[:, 0, 0, 0] - 1 / 3) / (2 / 3)
    assert sat.min() >= 0 and sat.max() <= 2 and abs(sat.mean() - 1) < 0.02
    assert sat.min() < 0.01 and sat.max() > 1.99
    probe = torch.zeros(N, 1, 1, 2)
    probe[..., 0] = 1.0  # image mean 1/2
    con = (augment.contrast(probe, v["contrast"])[:, 0, 0, 0] - 0.5) / 0.5
    assert con.min() >= 0.5 and con.max() <= 1.5 and abs(con.mean() - 1) < 0.01
    assert con.min() < 0.51 and con.max() > 1.49
    # the three colour draws are independent
    assert not torch.equal(v["brightness"], v["saturation"])
    assert not torch.equal(v["saturation"], v["contrast"])


@pytest.mark.parametrize("size,s", [(32, 4), (64, 8)])
def test_crop_shifts_are_uniform_integers(size, s):
    v = sample(N, size, group="crop", generator=torch.Generator().manual_seed(2)).values
    for key in ("tx", "ty"):
        counts = Counter(v[key].tolist())
        assert set(counts) == set(range(-s, s + 1))
        expected = N / (2 * s + 1)
        assert all(abs(c - expected) < 0.15 * expected for c in counts.values())
    assert not torch.equal(v["tx"], v["ty"])


@pytest.mark.parametrize("size", [32, 64, 6])
def test_cutout_centres_are_uniform_over_the_spec_range(size):
    c = cutout_side(size)
    hi = size + (1 - c % 2)
    v = sample(N, size, group="cutout", generator=torch.Generator().manual_seed(3)).values
    for key in ("ox", "oy"):
        counts = Counter(v[key].tolist())
        assert set(counts) == set(range(hi))
        assert all(abs(n - N / hi) < 0.25 * N / hi for n in counts.values())


def test_flip_probability_is_half():
    mask = sample(N, 32, group="flip", generator=torch.Generator().manual_seed(4)).values["flip"]
    assert mask.dtype == torch.bool and abs(mask.float().mean() - 0.5) < 0.015


def test_scale_factors_uniform_in_range():
    v = sample(N, 32, group="scale", generator=torch.Generator().manual_seed(5)).values
    lo, hi = 1 / 1.2, 1.2
    for key in ("sx", "sy"):
        s = v[key]
        assert s.min() >= lo and s.max() <= hi
        assert s.min() < lo + 0.005 and s.max() > hi - 0.005
        assert abs(s.mean() - (lo + hi) / 2) < 0.005
        assert abs((s < (lo + hi) / 2).float().mean() - 0.5) < 0.015
    assert not torch.equal(v["sx"], v["sy"])


def test_rotation_within_15_degrees():
    angle = sample(N, 32, group="rotate", generator=torch.Generator().manual_seed(6)).values["angle"]
    deg = angle * 180 / math.pi
    assert deg.min() >= -15 - 1e-4 and deg.max() <= 15 + 1e-4
    assert deg.min() < -14.95 and deg.max() > 14.95 and abs(deg.mean()) < 0.2


def test_group_choice_is_uniform_over_six_groups():
    assert GROUPS == ("color", "crop", "cutout", "flip", "scale", "rotate")
    g = torch.Generator().manual_seed(7)
    counts = Counter(sample(1, 32, group_generator=g).group for _ in range(6000))
    assert set(counts) == set(GROUPS)
    assert all(abs(c - 1000) < 120 for c in counts.values())


def test_unknown_group_is_refused():
    with pytest.raises(ValueError, match="unknown DSA group 'noise'"):
        sample(2, 32, group="noise")
    with pytest.raises(ValueError, match="unknown DSA group"):
        apply(images(), augment.DSAParams("noise", {}))


@pytest.mark.parametrize("group", GROUPS)
def test_parameters_are_per_image(group):
    n = 64
    p = sample(n, 32, group=group, generator=torch.Generator().manual_seed(8))
    for value in p.values.values():
        assert value.shape == (n,)
        assert value.unique().numel() > 1
    x = images(n=1, h=32, w=32, dtype=torch.float32).expand(n, -1, -1, -1)
    out = apply(x, p)
    assert not all(torch.equal(out[0], out[i]) for i in range(1, n))


def test_seeded_sampling_is_reproducible():
    def draw():
        return sample(16, 32, generator=torch.Generator().manual_seed(9),
                      group_generator=torch.Generator().manual_seed(10))
    a, b = draw(), draw()
    assert a.group == b.group and all(torch.equal(a.values[k], b.values[k]) for k in a.values)


def test_the_generators_alone_decide_the_draws():
    def draws(global_seed):
        torch.manual_seed(global_seed)
        g, gg = torch.Generator().manual_seed(13), torch.Generator().manual_seed(14)
        fixed = [sample(8, 16, group=group, generator=g) for group in GROUPS]
        chosen = [sample(8, 16, generator=g, group_generator=gg) for _ in range(20)]
        x = images(n=8, h=16, w=16, dtype=torch.float32)
        return fixed + chosen + [dsa(x, generator=g, group_generator=gg)[1] for _ in range(20)]

    for a, b in zip(draws(0), draws(1), strict=True):
        assert a.group == b.group and all(torch.equal(a.values[k], b.values[k]) for k in a.values)


def test_dsa_draws_for_the_images_size():
    groups = set()
    for seed in range(30):
        x = images(n=64, h=16, w=16, seed=seed, dtype=torch.float32)
        g = torch.Generator().manual_seed(seed)
        _, p = dsa(x, generator=g, group_generator=torch.Generator().manual_seed(seed))
        groups.add(p.group)
        if p.group == "crop":  # shifts of up to 2 pixels at 16 px
            assert p.values["tx"].abs().max() == 2 and p.values["ty"].abs().max() == 2
        if p.group == "cutout":  # centres anywhere in 0..16
            assert p.values["ox"].max() > 12 and p.values["oy"].max() > 12
    assert {"crop", "cutout"} <= groups


def test_take_gives_each_parameters_rows():
    for group in GROUPS:
        p = sample(6, 16, group=group, generator=torch.Generator().manual_seed(15))
        part = p.take(slice(2, 5))
        assert part.group == group and part.values.keys() == p.values.keys()
        assert all(torch.equal(part.values[k], p.values[k][2:5]) for k in p.values)


@pytest.mark.parametrize("group", GROUPS)
def test_everything_stays_on_the_images_device(group):
    """The meta device stands in for a GPU: a tensor made on the CPU instead cannot meet the images."""
    meta = torch.device("meta")
    x = torch.empty(4, 3, 16, 16, device=meta)
    p = sample(4, 16, meta, group=group)
    moved = sample(4, 16, group=group).to(meta)
    assert all(v.device == meta for q in (p, moved) for v in q.values.values())
    assert apply(x, p).device == meta and apply(x, p).shape == x.shape
    out, drawn = dsa(x)
    assert out.device == meta and all(v.device == meta for v in drawn.values.values())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_parameters_are_drawn_in_the_asked_dtype(dtype):
    for group in GROUPS:
        p = sample(4, 16, group=group, dtype=dtype)
        assert all(v.dtype == dtype for v in p.values.values() if v.is_floating_point())
    drawn = [dsa(images(n=4, h=16, w=16, dtype=dtype), group_generator=torch.Generator().manual_seed(s))[1]
             for s in range(12)]
    floats = [v for p in drawn for v in p.values.values() if v.is_floating_point()]
    assert floats and all(v.dtype == dtype for v in floats)  # colour, scale or rotate among the twelve groups


@pytest.mark.parametrize("group", GROUPS)
def test_float32_parameters_augment_half_and_double_images_in_their_dtype(group):
    p = sample(4, 16, group=group, generator=torch.Generator().manual_seed(16))
    x = images(n=4, h=16, w=16, dtype=torch.float32)
    expected = apply(x, p)
    for dtype, atol in ((torch.float16, 5e-2), (torch.float64, 1e-5)):
        out = apply(x.to(dtype), p)
        assert out.dtype == dtype and torch.allclose(out.float(), expected, atol=atol)


@pytest.mark.parametrize("group", GROUPS)
def test_augmenting_warns_nothing(group):
    x = images(n=4, h=16, w=16, dtype=torch.float32)
    p = sample(4, 16, group=group, generator=torch.Generator().manual_seed(17))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply(x, p)


# ---- replay, dtypes, gradients ----

@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_apply_replays_bitwise_and_keeps_dtype(group, dtype):
    x = images(n=8, h=16, w=16, dtype=dtype)
    p = sample(8, 16, group=group, dtype=dtype, generator=torch.Generator().manual_seed(11))
    out = apply(x, p)
    assert out.dtype == dtype and out.shape == x.shape
    assert torch.equal(out, apply(x, p))
    assert torch.equal(out, apply(x, p.to("cpu")))


def test_dsa_returns_the_parameters_it_used():
    for seed in range(12):
        x = images(n=4, h=16, w=16, seed=seed, dtype=torch.float64)
        out, p = dsa(x, generator=torch.Generator().manual_seed(seed),
                     group_generator=torch.Generator().manual_seed(seed))
        assert out.dtype == torch.float64 and torch.equal(out, apply(x, p))


@pytest.mark.parametrize("op,args", [
    (augment.brightness, (torch.tensor([0.2, 0.7], dtype=D),)),
    (augment.saturation, (torch.tensor([0.2, 0.7], dtype=D),)),
    (augment.contrast, (torch.tensor([0.2, 0.7], dtype=D),)),
    (augment.scale, (torch.tensor([0.9, 1.15], dtype=D), torch.tensor([1.1, 0.85], dtype=D))),
    (augment.rotate, (torch.tensor([0.1, -0.2], dtype=D),)),
])
def test_smooth_ops_pass_gradcheck(op, args):
    x = images(n=2, c=3, h=4, w=4).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: op(t, *args), (x,))


def _grad(op, x, weight, *args):
    x = x.clone().requires_grad_(True)
    (op(x, *args) * weight).sum().backward()
    return x.grad


def test_crop_gradient_is_the_shift_transposed():
    x, w = images(n=2, h=6, w=6), images(n=2, h=6, w=6, seed=1)
    tx, ty = torch.tensor([2, -1]), torch.tensor([-3, 1])
    expected = torch.zeros_like(x)
    for n in range(2):
        for i in range(6):
            for j in range(6):
                si, sj = i + int(tx[n]), j + int(ty[n])
                if 0 <= si < 6 and 0 <= sj < 6:
                    expected[n, :, si, sj] += w[n, :, i, j]
    assert torch.equal(_grad(augment.crop, x, w, tx, ty), expected)


def test_cutout_gradient_is_the_mask():
    x, w = images(n=2, h=8, w=8), images(n=2, h=8, w=8, seed=1)
    ox, oy = torch.tensor([0, 5]), torch.tensor([3, 8])
    mask = ref_cutout(torch.ones_like(x), ox, oy)
    assert torch.equal(_grad(augment.cutout, x, w, ox, oy), w * mask)


def test_flip_gradient_is_the_permutation():
    x, w = images(n=2, h=4, w=5), images(n=2, h=4, w=5, seed=1)
    mask = torch.tensor([True, False])
    assert torch.equal(_grad(augment.flip, x, w, mask), ref_flip(w, mask))


@pytest.mark.parametrize("group", GROUPS)
def test_gradient_reaches_the_images_through_every_group(group):
    x = images(n=4, h=16, w=16).requires_grad_(True)
    p = sample(4, 16, group=group, dtype=D, generator=torch.Generator().manual_seed(12))
    (apply(x, p) ** 2).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_align_corners_does_not_matter_for_square_images():
    """Centre-fixed scale/rotate sample the same pixel coordinates either way when H == W, so DSA copies
    that pass align_corners=True compute what the scorer computes at 32 and 64 px."""
    x = images(n=3, h=8, w=8)
    for theta in (scale_theta([0.9, 1.2, 1.1], [1.15, 0.85, 1.0]),
                  rotate_theta(torch.tensor([-0.25, 0.1, 0.26], dtype=D))):
        theta = torch.tensor(theta, dtype=D)
        out = [F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=a), align_corners=a)
               for a in (True, False)]
        assert torch.allclose(out[0], out[1], atol=1e-12)
