"""Glimpse-size geometry (src/dlp/model/glimpse.py) against the official full-image formulations.

The reference functions below are written from dlp-v1-model.md (§1.8 `create_masks_fast`, §1.9 `ObjectEncoder`,
§1.12 `translate_patches`, §1.13 `stitch_objects`): whole-canvas masks and translations with `affine_grid` +
`grid_sample`, sequential exclusion loops. Our implementation works on glimpse-sized windows and closed forms; the two
must agree in values and gradients.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dlp.models.dlp_v1.glimpse import composite, exclusive_coverage, extract_glimpses, paste_glimpses, square_masks

# (canvas N, glimpse/square side P): N - P must be even; includes the masked model's 2-cell heat-map glimpses.
GEOMETRIES = [(16, 2), (16, 4), (16, 8), (32, 8), (32, 16), (64, 16), (64, 32)]


# ----------------------------------------------------------------------------------------------------------------
# Reference implementations (official formulations)
def _translate(canvas: torch.Tensor, ty: torch.Tensor, tx: torch.Tensor, mode: str) -> torch.Tensor:
    """grid_sample of [M, C, N, N] with theta [[1, 0, tx], [0, 1, ty]], zeros padding, align_corners=False."""
    m = canvas.shape[0]
    theta = torch.zeros(m, 2, 3, dtype=canvas.dtype)
    theta[:, 0, 0] = 1
    theta[:, 1, 1] = 1
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, list(canvas.shape), align_corners=False)
    return F.grid_sample(canvas, grid, mode=mode, padding_mode="zeros", align_corners=False)


def ref_create_masks_fast(center: torch.Tensor, side: int, n: int) -> torch.Tensor:
    """§1.8: a side x side square of ones, zero-padded to n x n, shifted by -center with nearest sampling."""
    b, k, _ = center.shape
    pad = (n - side) // 2
    square = F.pad(torch.ones(b * k, 1, side, side, dtype=center.dtype), [pad] * 4)
    delta = (0.0 - center).reshape(-1, 2)
    out = _translate(square, delta[:, 0], delta[:, 1], "nearest")
    return out.view(b, k, 1, n, n)


def ref_sequential_exclusion(masks: torch.Tensor) -> torch.Tensor:
    """m_0 = a_0; m_i = min(1 - stopgrad(cur), a_i); cur += m_i (particle 0 on top)."""
    cur = masks[:, 0]
    out = [cur]
    for i in range(1, masks.shape[1]):
        m = torch.min(1 - cur.detach(), masks[:, i])
        cur = cur + m
        out.append(m)
    return torch.stack(out, dim=1)


def ref_object_encoder_crops(img, kp, side, exclusive=False, obj_on=None):
    """§1.9 steps 1-5: masks, (exclusive) masking, centre_objects (bilinear, +kp), central crop."""
    b, c, n, _ = img.shape
    k = kp.shape[1]
    masks = ref_create_masks_fast(kp, side, n)
    if exclusive:
        if obj_on is not None:
            masks = obj_on[:, :, None, None, None] * masks
        masks = ref_sequential_exclusion(masks.clamp(0, 1))
    padded = masks * img[:, None]  # [B, K, C, N, N]
    flat_kp = kp.reshape(-1, 2)
    centred = _translate(padded.reshape(b * k, c, n, n), flat_kp[:, 0], flat_kp[:, 1], "bilinear")
    start, end = n // 2 - side // 2, n // 2 + side // 2
    return centred.view(b, k, c, n, n)[..., start:end, start:end]


def ref_translate_patches(kp, patches, size):
    """§1.12: zero-pad each patch to the canvas, translate with theta [[1, 0, -x], [0, 1, -y]] (bilinear)."""
    b, k, c, p, _ = patches.shape
    pad = (size - p) // 2
    padded = F.pad(patches.reshape(b * k, c, p, p), [pad] * 4)
    flat_kp = kp.reshape(-1, 2)
    return _translate(padded, -flat_kp[:, 0], -flat_kp[:, 1], "bilinear").view(b, k, c, size, size)


def ref_stitch_objects(a, rgb, obj_on, bg):
    """§1.13, method 'c'."""
    m = ref_sequential_exclusion(obj_on[:, :, None, None, None] * a)
    dec_objects = (m * rgb).sum(dim=1)
    rec = (1 - m.sum(dim=1).clamp(0, 1)) * bg + dec_objects
    return rec, dec_objects


# ----------------------------------------------------------------------------------------------------------------
# Inputs
def random_keypoints(b: int, k: int, n: int, seed: int, margin: float = 2e-3, smooth: bool = False) -> torch.Tensor:
    """Keypoints in [-1, 1], a third of them within 0.1 of a border (clipped squares), a few exactly at +-1 and 0.

    Nearest sampling rounds `r - kp * n / 2` half to even: every coordinate whose shift `kp * n / 2` lies within
    `margin` pixels of a half-integer is resampled, since two float32 formulations may round it differently there.
    With `smooth`, shifts within `margin` of an integer are resampled as well (and no exact +-1 / 0 is planted):
    bilinear sampling has a kink at whole-pixel shifts, where the gradient w.r.t. the position is one-sided.
    """
    gen = torch.Generator().manual_seed(seed)
    kp = torch.rand(b, k, 2, generator=gen) * 2 - 1
    near_border = torch.rand(b, k, 2, generator=gen) < 1 / 3
    edge = torch.sign(kp) * (1 - 0.1 * torch.rand(b, k, 2, generator=gen))
    kp = torch.where(near_border, edge, kp)
    if not smooth:
        kp[0, 0] = torch.tensor([1.0, -1.0])
        if k > 1:
            kp[-1, 1] = torch.tensor([0.0, 1.0])
    for _ in range(100):
        frac = kp * (n / 2) - torch.floor(kp * (n / 2))
        bad = (frac - 0.5).abs() < margin
        if smooth:
            bad |= (frac < margin) | (frac > 1 - margin)
        if not bad.any():
            return kp
        kp = torch.where(bad, torch.rand(b, k, 2, generator=gen) * 2 - 1, kp)
    raise AssertionError("could not draw keypoints away from the rounding boundaries")


def test_random_keypoints_cover_borders_and_clipping():
    kp = random_keypoints(3, 8, 16, seed=1)
    assert kp.abs().max() <= 1
    assert (kp.abs() > 0.9).float().mean() > 0.2  # enough squares hanging over the canvas edge
    masks = square_masks(kp, 16, 4)
    assert (masks.sum(dim=(-1, -2)) < 16).any()  # some squares clipped


# ----------------------------------------------------------------------------------------------------------------
# square_masks == create_masks_fast
@pytest.mark.parametrize("n,side", GEOMETRIES)
def test_square_masks_equal_create_masks_fast(n, side):
    kp = random_keypoints(3, 8, n, seed=n + side)
    ours = square_masks(kp, n, side)
    ref = ref_create_masks_fast(kp, side, n)
    assert ours.shape == (3, 8, 1, n, n)
    assert ours.dtype == kp.dtype
    assert torch.equal(ours, ref)


def test_square_masks_documented_examples():
    """dlp-v1-model.md §1.8: N=16, p=4."""
    kp = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [0.5, -0.5]]])
    m = square_masks(kp, 16, 4)[0, :, 0]
    rows = lambda mask: mask.any(1).nonzero().flatten().tolist()  # noqa: E731
    cols = lambda mask: mask.any(0).nonzero().flatten().tolist()  # noqa: E731
    assert rows(m[0]) == cols(m[0]) == [6, 7, 8, 9]
    assert rows(m[1]) == cols(m[1]) == [14, 15]
    assert rows(m[2]) == [10, 11, 12, 13] and cols(m[2]) == [2, 3, 4, 5]


def test_square_masks_round_half_to_even():
    """At exact half-pixel shifts the closed form rounds half to even (as grid_sample's nearest mode does)."""
    kp = torch.tensor([[[1 / 16, 3 / 16]]])  # shifts of 0.5 and 1.5 pixels on N=16
    m = square_masks(kp, 16, 4)[0, 0, 0]
    assert m.any(1).nonzero().flatten().tolist() == [6, 7, 8, 9]  # r - 0.5: 5.5 -> 6 in, 9.5 -> 10 out
    assert m.any(0).nonzero().flatten().tolist() == [7, 8, 9, 10]  # c - 1.5: 5.5 -> 6 in, 4.5 -> 4 out
    assert torch.equal(square_masks(kp, 16, 4), ref_create_masks_fast(kp, 4, 16))


# ----------------------------------------------------------------------------------------------------------------
# extract_glimpses == ObjectEncoder masking + center_objects + crop
@pytest.mark.parametrize("n,side", GEOMETRIES)
@pytest.mark.parametrize("exclusive,with_obj_on", [(False, False), (True, False), (True, True)])
def test_extract_glimpses_equal_object_encoder(n, side, exclusive, with_obj_on):
    k = 8 if n < 64 else 5
    channels = k if side == 2 else 3  # the masked model crops the K-channel heat-map
    kp = random_keypoints(2, k, n, seed=10 * n + side)
    gen = torch.Generator().manual_seed(side)
    img = torch.rand(2, channels, n, n, generator=gen)
    obj_on = torch.rand(2, k, generator=gen) if with_obj_on else None
    ours = extract_glimpses(img, kp, side, exclusive=exclusive, obj_on=obj_on)
    ref = ref_object_encoder_crops(img, kp, side, exclusive=exclusive, obj_on=obj_on)
    assert ours.shape == (2, k, channels, side, side)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_extract_glimpses_exclusive_hides_overlapped_pixels():
    """Two coincident particles: the second glimpse is empty (particle 0 owns the square), unless obj_on frees it."""
    img = torch.rand(1, 3, 32, 32)
    kp = torch.tensor([[[0.1, -0.2], [0.1, -0.2]]])
    plain = extract_glimpses(img, kp, 8)
    excl = extract_glimpses(img, kp, 8, exclusive=True)
    torch.testing.assert_close(excl[:, 0], plain[:, 0])
    assert excl[:, 1].abs().max() == 0
    half = extract_glimpses(img, kp, 8, exclusive=True, obj_on=torch.tensor([[0.25, 1.0]]))
    torch.testing.assert_close(half[:, 0], 0.25 * plain[:, 0])
    torch.testing.assert_close(half[:, 1], 0.75 * plain[:, 1])


@pytest.mark.parametrize("n,side", [(16, 4), (32, 8), (64, 16)])
def test_extract_glimpses_gradients(n, side):
    """Gradients w.r.t. the image and obj_on (the locations are detached by every caller)."""
    k = 6
    kp = random_keypoints(2, k, n, seed=3 * n)
    gen = torch.Generator().manual_seed(n)
    img = torch.rand(2, 3, n, n, generator=gen)
    obj_on = torch.rand(2, k, generator=gen)
    weight = torch.randn(2, k, 3, side, side, generator=gen)
    grads = []
    for fn in (extract_glimpses, ref_object_encoder_crops):
        x, o = img.clone().requires_grad_(), obj_on.clone().requires_grad_()
        (fn(x, kp, side, exclusive=True, obj_on=o) * weight).sum().backward()
        grads.append((x.grad, o.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-4, rtol=1e-4)
    assert grads[0][1].abs().sum() > 0


# ----------------------------------------------------------------------------------------------------------------
# paste_glimpses == translate_patches
@pytest.mark.parametrize("n,side", [(16, 4), (32, 16), (64, 32)])
def test_paste_glimpses_values_at_borders(n, side):
    """Values including exact +-1 / 0 keypoints (glimpses half outside the canvas)."""
    kp = random_keypoints(2, 8, n, seed=n - side)
    patches = torch.rand(2, 8, 4, side, side)
    ours = paste_glimpses(patches, kp, n)
    torch.testing.assert_close(ours, ref_translate_patches(kp, patches, n), atol=5e-5, rtol=1e-5)
    # kp = (1, -1) puts the glimpse centre on the bottom-left corner: a quarter of it stays on the canvas
    torch.testing.assert_close(ours[0, 0, :, n - side // 2 :, : side // 2], patches[0, 0, :, : side // 2, side // 2 :])
    assert ours[0, 0, :, : n - side // 2].abs().max() == 0


@pytest.mark.parametrize("n,side", [(16, 4), (16, 8), (32, 16), (64, 16), (64, 32)])
def test_paste_glimpses_values_and_gradients(n, side):
    b, k, c = 2, 8 if n < 64 else 4, 4
    kp = random_keypoints(b, k, n, seed=7 * n + side, smooth=True)
    gen = torch.Generator().manual_seed(n * side)
    patches = torch.rand(b, k, c, side, side, generator=gen)
    weight = torch.randn(b, k, c, n, n, generator=gen)
    results = []
    for fn in (lambda kp_, p_: paste_glimpses(p_, kp_, n), lambda kp_, p_: ref_translate_patches(kp_, p_, n)):
        kp_, p_ = kp.clone().requires_grad_(), patches.clone().requires_grad_()
        out = fn(kp_, p_)
        (out * weight).sum().backward()
        results.append((out.detach(), kp_.grad, p_.grad))
    (ours, g_kp, g_p), (ref, ref_g_kp, ref_g_p) = results
    assert ours.shape == (b, k, c, n, n)
    torch.testing.assert_close(ours, ref, atol=5e-5, rtol=1e-5)  # positions carry ~N/2 ulp of rounding
    torch.testing.assert_close(g_p, ref_g_p, atol=5e-5, rtol=1e-4)
    scale = ref_g_kp.abs().max()
    assert scale > 0
    torch.testing.assert_close(g_kp, ref_g_kp, atol=1e-4 * scale, rtol=1e-3)


def test_paste_then_extract_round_trip():
    """A glimpse pasted at kp and cut out again at kp comes back (interior of the canvas, same convention)."""
    n, side = 32, 8
    patches = torch.rand(1, 3, 3, side, side)
    kp = torch.tensor([[[0.0, 0.0], [0.25, -0.5], [-0.5, 0.375]]])  # integer-pixel shifts: exact
    pasted = paste_glimpses(patches, kp, n)
    for i in range(3):
        back = extract_glimpses(pasted[:, i], kp[:, i : i + 1], side)
        torch.testing.assert_close(back[:, 0], patches[:, i])


# ----------------------------------------------------------------------------------------------------------------
# composite / exclusive_coverage == stitch_objects
def noisy_alphas(b, k, hw, gen, clamped: bool):
    """Alphas like the decoder's: each object covers ~1.5/K of the pixels; clamped to [0, 1] (many exact 0 and 1),
    or as in the noisy phase (+0.1 N(0, 1) where alpha > 0.1, so negative and > 1 values)."""
    a = torch.rand(b, k, 1, hw, hw, generator=gen) * 1.6 - 0.3
    a = a * (torch.rand(b, k, 1, hw, hw, generator=gen) < min(1.0, 1.5 / k))
    if clamped:
        return a.clamp(0, 1)
    return a + 0.1 * torch.randn(b, k, 1, hw, hw, generator=gen) * (a > 0.1)


@pytest.mark.parametrize("clamped", [False, True], ids=["noisy", "clamped"])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_composite_equals_stitch_objects(k, clamped):
    gen = torch.Generator().manual_seed(100 * k + clamped)
    b, hw = 2, 12
    alpha = noisy_alphas(b, k, hw, gen, clamped)
    rgb = torch.rand(b, k, 3, hw, hw, generator=gen)
    obj_on = torch.rand(b, k, generator=gen)
    bg = torch.randn(b, 3, hw, hw, generator=gen)
    w_rec, w_obj = torch.randn(b, 3, hw, hw, generator=gen), torch.randn(b, 3, hw, hw, generator=gen)
    results = []
    for fn in (composite, ref_stitch_objects):
        inputs = [t.clone().requires_grad_() for t in (alpha, rgb, obj_on, bg)]
        rec, objects = fn(*inputs)
        ((rec * w_rec).sum() + (objects * w_obj).sum()).backward()
        results.append((rec.detach(), objects.detach(), [t.grad for t in inputs]))
    (rec, objects, grads), (ref_rec, ref_objects, ref_grads) = results
    torch.testing.assert_close(rec, ref_rec, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(objects, ref_objects, atol=1e-5, rtol=1e-5)
    # Where the objects cover a pixel completely, sum(m) is 1 in exact arithmetic and `clamp(sum(m), 0, 1)` sits on
    # its kink: whether the background term passes gradient to alpha/obj_on depends on the last ulp of the sum
    # (the official loop lands on 1 + ulp at some pixels too). Compare those gradients away from saturation only.
    total = ref_sequential_exclusion(obj_on[:, :, None, None, None] * alpha).sum(1)  # [B, 1, H, W]
    smooth = ((total - 1).abs() > 1e-5)[:, None].expand(b, k, 1, hw, hw)
    assert smooth.float().mean() > 0.1
    g_alpha, ref_g_alpha = grads[0], ref_grads[0]
    torch.testing.assert_close(g_alpha[smooth], ref_g_alpha[smooth], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grads[1], ref_grads[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grads[3], ref_grads[3], atol=1e-5, rtol=1e-4)
    # obj_on's gradient sums over pixels: compare it on a composition that never saturates (alphas scaled down)
    obj_on_grads = []
    for fn in (composite, ref_stitch_objects):
        o = obj_on.clone().requires_grad_()
        rec, objects = fn(alpha.clamp(-1, 1) / (k + 1), rgb, o, bg)
        ((rec * w_rec).sum() + (objects * w_obj).sum()).backward()
        obj_on_grads.append(o.grad)
    assert obj_on_grads[0].abs().min() > 0
    torch.testing.assert_close(obj_on_grads[0], obj_on_grads[1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("k", [1, 2, 5, 8])
def test_exclusive_coverage_equals_sequential_loop(k):
    gen = torch.Generator().manual_seed(k)
    w = torch.rand(3, k, 1, 6, 6, generator=gen) * 2.4 - 0.7  # negative and > 1 weights
    upstream = torch.randn(3, k, 1, 6, 6, generator=gen)
    grads = []
    values = []
    for fn in (exclusive_coverage, ref_sequential_exclusion):
        w_ = w.clone().requires_grad_()
        out = fn(w_)
        (out * upstream).sum().backward()
        values.append(out.detach())
        grads.append(w_.grad)
    torch.testing.assert_close(values[0], values[1], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grads[0], grads[1])


def test_exclusive_coverage_caps_total_at_one_and_respects_order():
    w = torch.tensor([0.7, 0.6, 0.5]).view(1, 3, 1)
    m = exclusive_coverage(w)
    torch.testing.assert_close(m.flatten(), torch.tensor([0.7, 0.3, 0.0]))
    # a weight above 1 on top still takes everything it asks for, and nothing is left below
    m = exclusive_coverage(torch.tensor([1.3, 0.4]).view(1, 2, 1))
    torch.testing.assert_close(m.flatten(), torch.tensor([1.3, -0.3]))
