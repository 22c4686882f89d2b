"""Losses (src/dlp/losses.py): Chamfer-KL, Gaussian KL, reconstruction terms and the DLP objective."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from dlp.losses import chamfer_kl, gaussian_kl, glimpse_reconstruction, mse_reconstruction
from dlp.models.dlp_v1.extensions import alpha_spread
from dlp.models.dlp_v1.objective import dlp_loss

LOGVAR_PRIOR = math.log(0.1**2)


def brute_force_chamfer(mu, logvar, kp, logvar_prior):
    """Python loops over every (posterior i, prior j) pair, in float64."""
    out = []
    for b in range(mu.shape[0]):
        kl = [[0.0] * kp.shape[1] for _ in range(mu.shape[1])]
        for i in range(mu.shape[1]):
            for j in range(kp.shape[1]):
                total = 0.0
                for d in range(2):
                    lv = logvar[b, i, d].item()
                    diff = mu[b, i, d].item() - kp[b, j, d].item()
                    total += 1 + lv - logvar_prior - math.exp(lv) / math.exp(logvar_prior) - diff**2 / math.exp(
                        logvar_prior
                    )
                kl[i][j] = -0.5 * total
        prior_side = sum(min(kl[i][j] for i in range(mu.shape[1])) for j in range(kp.shape[1]))
        post_side = sum(min(kl[i][j] for j in range(kp.shape[1])) for i in range(mu.shape[1]))
        out.append(prior_side + post_side)
    return torch.tensor(out, dtype=torch.float64)


def random_sets(b=3, k=5, p=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mu = torch.rand(b, k, 2, generator=gen) * 2 - 1
    logvar = torch.randn(b, k, 2, generator=gen) - 4
    kp = torch.rand(b, p, 2, generator=gen) * 2 - 1
    return mu, logvar, kp


# ----------------------------------------------------------------------------------------------------------------
# Chamfer-KL
def test_chamfer_kl_zero_for_identical_sets_with_prior_variance():
    mu = torch.rand(2, 6, 2) * 2 - 1
    logvar = torch.full_like(mu, LOGVAR_PRIOR)
    out = chamfer_kl(mu, logvar, mu.clone(), LOGVAR_PRIOR)
    assert out.shape == (2,)
    torch.testing.assert_close(out, torch.zeros(2), atol=1e-6, rtol=0)


def test_chamfer_kl_positive_when_variances_differ_or_sets_differ():
    mu = torch.rand(2, 6, 2) * 2 - 1
    assert (chamfer_kl(mu, torch.full_like(mu, LOGVAR_PRIOR + 1), mu, LOGVAR_PRIOR) > 0.1).all()
    assert (chamfer_kl(mu, torch.full_like(mu, LOGVAR_PRIOR), mu + 0.05, LOGVAR_PRIOR) > 0.1).all()


def test_chamfer_kl_matches_brute_force_loop():
    mu, logvar, kp = random_sets()
    ours = chamfer_kl(mu, logvar, kp, LOGVAR_PRIOR)
    ref = brute_force_chamfer(mu.double(), logvar.double(), kp.double(), LOGVAR_PRIOR)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-4)


def test_chamfer_kl_accepts_tensor_prior_logvar():
    mu, logvar, kp = random_sets(seed=4)
    torch.testing.assert_close(
        chamfer_kl(mu, logvar, kp, torch.tensor(LOGVAR_PRIOR)), chamfer_kl(mu, logvar, kp, LOGVAR_PRIOR)
    )


def test_chamfer_kl_is_permutation_invariant_in_both_sets():
    mu, logvar, kp = random_sets(seed=1)
    base = chamfer_kl(mu, logvar, kp, LOGVAR_PRIOR)
    perm_post = torch.randperm(mu.shape[1])
    perm_prior = torch.randperm(kp.shape[1])
    permuted = chamfer_kl(mu[:, perm_post], logvar[:, perm_post], kp[:, perm_prior], LOGVAR_PRIOR)
    torch.testing.assert_close(permuted, base)


def test_chamfer_kl_is_per_image():
    mu, logvar, kp = random_sets(b=3, seed=2)
    full = chamfer_kl(mu, logvar, kp, LOGVAR_PRIOR)
    for b in range(3):
        one = chamfer_kl(mu[b : b + 1], logvar[b : b + 1], kp[b : b + 1], LOGVAR_PRIOR)
        torch.testing.assert_close(one, full[b : b + 1])


def test_chamfer_kl_gradient_reaches_posterior_and_prior():
    mu, logvar, kp = (t.requires_grad_() for t in random_sets(seed=3))
    chamfer_kl(mu, logvar, kp, LOGVAR_PRIOR).sum().backward()
    for t in (mu, logvar, kp):
        assert t.grad is not None and t.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------------------------
# Gaussian KL against N(0, I)
def test_gaussian_kl_zero_at_standard_normal():
    out = gaussian_kl(torch.zeros(2, 5, 4), torch.zeros(2, 5, 4))
    assert out.shape == (2, 5)
    assert torch.equal(out, torch.zeros(2, 5))


def test_gaussian_kl_matches_closed_form():
    mu = torch.randn(3, 4, 6)
    logvar = torch.randn(3, 4, 6)
    ref = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(gaussian_kl(mu, logvar), ref, rtol=1e-5, atol=1e-5)
    assert (gaussian_kl(mu, logvar) > 0).all()


# ----------------------------------------------------------------------------------------------------------------
# Reconstruction
def test_mse_reconstruction_is_per_image_sum():
    x = torch.rand(3, 3, 5, 4)
    rec = torch.rand(3, 3, 5, 4)
    out = mse_reconstruction(x, rec)
    assert out.shape == (3,)
    for b in range(3):
        torch.testing.assert_close(out[b], ((rec[b] - x[b]) ** 2).sum())
    assert mse_reconstruction(x, x).abs().max() == 0


def test_glimpse_reconstruction_mse_ignores_alpha_and_averages_glimpses():
    target = torch.rand(2, 3, 3, 8, 8)
    dec = torch.rand(2, 3, 4, 8, 8)
    out = glimpse_reconstruction(target, dec)
    assert out.dim() == 0
    ref = ((dec[:, :, 1:] - target) ** 2).sum(dim=(2, 3, 4)).mean()
    torch.testing.assert_close(out, ref)
    dec_other_alpha = dec.clone()
    dec_other_alpha[:, :, 0] = 0.0
    torch.testing.assert_close(glimpse_reconstruction(target, dec_other_alpha), out)


@pytest.mark.parametrize("side,expected", [(16, 32), (8, 32), (32, 32), (64, 64)])
def test_glimpse_reconstruction_custom_loss_gets_flat_glimpses_upsampled_to_32(side, expected):
    seen = []

    def rec_loss(a, b):
        seen.append((a.shape, b.shape))
        return ((a - b) ** 2).flatten(1).sum(-1) * 0 + torch.arange(a.shape[0], dtype=a.dtype)

    target = torch.rand(2, 3, 3, side, side)
    dec = torch.rand(2, 3, 4, side, side)
    out = glimpse_reconstruction(target, dec, rec_loss)
    assert seen == [((6, 3, expected, expected), (6, 3, expected, expected))]
    torch.testing.assert_close(out, torch.tensor(2.5))  # mean over the B*K = 6 glimpses


def test_glimpse_reconstruction_upsampling_is_bilinear_half_pixel():
    target = torch.rand(1, 1, 3, 16, 16)
    dec = torch.rand(1, 1, 4, 16, 16)
    captured = {}

    def rec_loss(a, b):
        captured["a"], captured["b"] = a, b
        return a.new_zeros(a.shape[0])

    glimpse_reconstruction(target, dec, rec_loss)
    up = torch.nn.functional.interpolate(target[0], size=32, mode="bilinear", align_corners=False)
    torch.testing.assert_close(captured["a"], up)


# ----------------------------------------------------------------------------------------------------------------
# The objective
def fake_output(b=2, k=4, p=5, d=3, seed=0, glimpses=True):
    gen = torch.Generator().manual_seed(seed)
    mu = torch.cat([torch.rand(b, k, 2, generator=gen) * 2 - 1, torch.zeros(b, 1, 2)], 1)
    logvar = torch.cat([torch.randn(b, k, 2, generator=gen) - 4, torch.full((b, 1, 2), LOGVAR_PRIOR)], 1)
    return SimpleNamespace(
        kp_prior=torch.rand(b, p, 2, generator=gen) * 2 - 1,
        mu=mu,
        logvar=logvar,
        mu_features=torch.randn(b, k + 1, d, generator=gen),
        logvar_features=torch.randn(b, k + 1, d, generator=gen),
        rec=torch.rand(b, 3, 8, 8, generator=gen),
        glimpses=torch.rand(b, k, 3, 4, 4, generator=gen) if glimpses else None,
        dec_glimpses=torch.rand(b, k, 4, 4, 4, generator=gen) if glimpses else None,
        obj_on=torch.rand(b, k, generator=gen) if glimpses else None,
    )


def test_dlp_loss_combination_formula():
    out = fake_output()
    x = torch.rand(2, 3, 8, 8)
    terms = dlp_loss(out, x, beta_rec=0.7, beta_kl=30.0, kl_balance=0.01, logvar_prior=LOGVAR_PRIOR)
    rec = mse_reconstruction(x, out.rec).mean()
    kl_kp = chamfer_kl(out.mu[:, :-1], out.logvar[:, :-1], out.kp_prior, LOGVAR_PRIOR).mean()
    kl_feat = gaussian_kl(out.mu_features, out.logvar_features).sum(-1).mean()
    for value in vars(terms).values():
        assert value.dim() == 0
    torch.testing.assert_close(terms.rec, rec)
    torch.testing.assert_close(terms.kl_kp, kl_kp)
    torch.testing.assert_close(terms.kl_feat, kl_feat)
    torch.testing.assert_close(terms.kl, kl_kp + 0.01 * kl_feat)
    torch.testing.assert_close(terms.loss, 0.7 * rec + 30.0 * (kl_kp + 0.01 * kl_feat))
    torch.testing.assert_close(terms.active, out.obj_on.sum(-1).mean())
    torch.testing.assert_close(terms.spread, alpha_spread(out.dec_glimpses).mean())
    assert set(terms.as_dict()) == {"loss", "rec", "kl", "kl_kp", "kl_feat", "active", "spread"}


def _loss_without_and_with(out, **extra_costs):
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    kw = dict(beta_rec=1.0, beta_kl=1.0, kl_balance=1e-3, logvar_prior=LOGVAR_PRIOR)
    return dlp_loss(out, x, **kw).loss, dlp_loss(out, x, **kw, **extra_costs).loss


def test_obj_on_sparsity_charges_each_switched_on_particle():
    out = fake_output()
    out.obj_on = out.obj_on.clone().requires_grad_()
    official, sparse = _loss_without_and_with(out, beta_obj_on=2.5)
    torch.testing.assert_close(sparse.detach(), official.detach() + 2.5 * out.obj_on.detach().sum(-1).mean())
    sparse.backward()
    torch.testing.assert_close(out.obj_on.grad, torch.full_like(out.obj_on, 2.5 / out.obj_on.shape[0]))


def test_alpha_spread_is_the_second_moment_of_alpha_about_the_glimpse_centre():
    dec = torch.zeros(1, 2, 4, 4, 4)
    dec[0, 0, 0, 0, 0] = 1.0  # corner pixel of a 4 px glimpse: centre at (-0.75, -0.75) half-widths
    dec[0, 1, 0, 1, 2] = 0.5  # (-0.25, 0.25)
    dec[0, 1, 1:] = 7.0  # colour channels do not count
    assert alpha_spread(dec).tolist() == [pytest.approx(2 * 0.75**2 + 0.5 * 2 * 0.25**2)]
    dec[0, 0, 0, 0, 0] = 3.0  # alpha is clamped to [0, 1], as it is when pasted
    assert alpha_spread(dec).tolist() == [pytest.approx(2 * 0.75**2 + 0.5 * 2 * 0.25**2)]
    full = torch.ones(1, 1, 4, 16, 16)
    # Mean squared pixel-centre coordinate over S pixels: (S^2 - 1) / (3 S^2); two coordinates, 256 pixels.
    assert alpha_spread(full).item() == pytest.approx(2 * 255 / 768 * 256)


def test_spread_cost_pulls_decoded_alpha_towards_the_particle():
    out = fake_output()
    out.dec_glimpses = out.dec_glimpses.clone().requires_grad_()
    official, centred = _loss_without_and_with(out, beta_spread=0.5)
    spread = alpha_spread(out.dec_glimpses.detach()).mean()
    torch.testing.assert_close(centred.detach(), official.detach() + 0.5 * spread)
    centred.backward()
    alpha_grad = out.dec_glimpses.grad[:, :, 0]
    assert (alpha_grad > 0).all() and (out.dec_glimpses.grad[:, :, 1:] == 0).all()
    # 4 px glimpse: the corners cost 9 times the central pixels.
    torch.testing.assert_close(alpha_grad[..., 0, 0], 9 * alpha_grad[..., 1, 1])


def test_masked_models_have_no_active_particles_and_ignore_the_object_costs():
    out = fake_output(glimpses=False)
    terms = dlp_loss(out, torch.rand(2, 3, 8, 8), beta_rec=1.0, beta_kl=1.0, kl_balance=1e-3, logvar_prior=LOGVAR_PRIOR)
    assert terms.active.item() == 0.0 and terms.spread.item() == 0.0
    official, with_costs = _loss_without_and_with(out, beta_obj_on=3.0, beta_spread=2.0)
    torch.testing.assert_close(with_costs, official)


def test_dlp_loss_background_excluded_from_chamfer_included_in_feature_kl():
    out = fake_output(seed=1)
    x = torch.rand(2, 3, 8, 8)
    kw = dict(beta_rec=1.0, beta_kl=1.0, kl_balance=1e-3, logvar_prior=LOGVAR_PRIOR)
    base = dlp_loss(out, x, **kw)
    moved = fake_output(seed=1)
    moved.mu[:, -1] = torch.tensor([0.9, -0.9])  # a background particle far from everything
    moved.logvar[:, -1] = 3.0
    moved.mu_features[:, -1] += 5.0
    terms = dlp_loss(moved, x, **kw)
    torch.testing.assert_close(terms.kl_kp, base.kl_kp)
    assert terms.kl_feat > base.kl_feat + 1.0
    # kl_feat covers the K+1 rows: the background row alone contributes its Gaussian KL (batch mean)
    bg_only = gaussian_kl(moved.mu_features[:, -1], moved.logvar_features[:, -1]).mean()
    fg_only = gaussian_kl(moved.mu_features[:, :-1], moved.logvar_features[:, :-1]).sum(-1).mean()
    torch.testing.assert_close(terms.kl_feat, bg_only + fg_only)


def test_dlp_loss_warmup_uses_glimpse_reconstruction_for_object_models():
    out = fake_output(seed=2)
    x = torch.rand(2, 3, 8, 8)
    kw = dict(beta_rec=1.0, beta_kl=0.5, kl_balance=1e-3, logvar_prior=LOGVAR_PRIOR)
    warm = dlp_loss(out, x, warmup=True, **kw)
    torch.testing.assert_close(warm.rec, glimpse_reconstruction(out.glimpses, out.dec_glimpses))
    normal = dlp_loss(out, x, **kw)
    torch.testing.assert_close(warm.kl, normal.kl)  # the KL terms are present during warm-up too
    assert not torch.allclose(warm.rec, normal.rec)
    # masked models have no decoded glimpses: warm-up falls back to the image reconstruction
    masked = fake_output(seed=2, glimpses=False)
    torch.testing.assert_close(dlp_loss(masked, x, warmup=True, **kw).rec, mse_reconstruction(x, masked.rec).mean())


def test_dlp_loss_custom_reconstruction_loss():
    out = fake_output(seed=3)
    x = torch.rand(2, 3, 8, 8)
    l1 = lambda a, b: (a - b).abs().flatten(1).sum(-1)  # noqa: E731
    terms = dlp_loss(out, x, beta_rec=2.0, beta_kl=0.0, kl_balance=1e-3, logvar_prior=LOGVAR_PRIOR, rec_loss=l1)
    torch.testing.assert_close(terms.rec, (out.rec - x).abs().flatten(1).sum(-1).mean())
    torch.testing.assert_close(terms.loss, 2.0 * terms.rec)
