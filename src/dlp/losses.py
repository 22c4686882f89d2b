"""DLP losses as pure functions: Chamfer-KL, Gaussian KL, reconstruction, and the training objective."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

ReconstructionLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, rec) -> [B]


def pairwise_gaussian_kl(mu_post: torch.Tensor, logvar_post: torch.Tensor, mu_prior: torch.Tensor,
                         logvar_prior: float | torch.Tensor) -> torch.Tensor:
    """KL(q_i || p_j) between diagonal Gaussians: [B, N, 2], [B, N, 2], [B, P, 2] -> [B, N, P]."""
    logvar_prior = torch.as_tensor(logvar_prior, dtype=mu_post.dtype, device=mu_post.device)
    mu_q, lv_q = mu_post[:, :, None], logvar_post[:, :, None]
    diff = mu_q - mu_prior[:, None]
    kl = 1 + lv_q - logvar_prior - lv_q.exp() / logvar_prior.exp() - diff**2 / logvar_prior.exp()
    return -0.5 * kl.sum(-1)


def chamfer_kl(mu_post: torch.Tensor, logvar_post: torch.Tensor, mu_prior: torch.Tensor,
               logvar_prior: float | torch.Tensor) -> torch.Tensor:
    """Chamfer-KL between the posterior particle set and the prior keypoint set, per image: [B].

    sum_j min_i KL(q_i || p_j) + sum_i min_j KL(q_i || p_j). Permutation invariant in both sets.
    """
    kl = pairwise_gaussian_kl(mu_post, logvar_post, mu_prior, logvar_prior)
    return kl.min(dim=1).values.sum(-1) + kl.min(dim=2).values.sum(-1)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over the last dimension: [..., D] -> [...]."""
    return -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(-1)


def mse_reconstruction(x: torch.Tensor, rec: torch.Tensor) -> torch.Tensor:
    """Per-image summed squared error: [B, ...] -> [B]."""
    return ((rec - x) ** 2).flatten(1).sum(-1)


def glimpse_reconstruction(target: torch.Tensor, dec_glimpses: torch.Tensor,
                           rec_loss: ReconstructionLoss | None = None) -> torch.Tensor:
    """Warm-up loss of object models: decoded glimpse RGB vs encoder glimpses, mean over the B*K glimpses.

    target [B, K, 3, S, S] (the encoder's crops), dec_glimpses [B, K, 4, S, S]. With a perceptual loss, glimpses
    under 32 px are first upsampled to 32 (bilinear), as the VGG needs.
    """
    target = target.flatten(0, 1)
    decoded = dec_glimpses[:, :, 1:].flatten(0, 1)
    if rec_loss is None:
        return mse_reconstruction(target, decoded).mean()
    if target.shape[-1] < 32:
        target = F.interpolate(target, size=32, mode="bilinear", align_corners=False)
        decoded = F.interpolate(decoded, size=32, mode="bilinear", align_corners=False)
    return rec_loss(target, decoded).mean()


def active_particles(obj_on: torch.Tensor) -> torch.Tensor:
    """Expected number of switched-on particles per image, the sparsity penalty on `obj_on`: [B, K] -> [B]."""
    return obj_on.sum(-1)


def alpha_spread(dec_glimpses: torch.Tensor) -> torch.Tensor:
    """Spread of the decoded objects around their particles: [B, K, 1+C, S, S] -> [B].

    The second moment of each decoded glimpse's alpha (clamped to [0, 1], as it is pasted) about the glimpse centre,
    summed over pixels and particles, with distances in glimpse half-widths: a pixel of alpha 1 costs its squared
    distance from the particle, up to 2 in the glimpse corners; a glimpse filled with alpha 1 costs about 2/3 per pixel.
    """
    alpha = dec_glimpses[:, :, 0].clamp(0.0, 1.0)
    size = alpha.shape[-1]
    coords = (torch.arange(size, device=alpha.device, dtype=alpha.dtype) + 0.5) / size * 2.0 - 1.0
    squared_distance = coords[:, None] ** 2 + coords[None, :] ** 2  # [S, S]
    return (alpha * squared_distance).sum((-1, -2)).sum(-1)


@dataclass
class LossTerms:
    """The training objective and its parts (0-dim tensors, batch means).

    loss = beta_rec * rec + beta_kl * (kl_kp + kl_balance * kl_feat) + beta_obj_on * active + beta_spread * spread,
    kl = kl_kp + kl_balance * kl_feat; `active` is `active_particles(obj_on)` and `spread` is
    `alpha_spread(dec_glimpses)` (both 0 for masked models).
    """

    loss: torch.Tensor
    rec: torch.Tensor
    kl: torch.Tensor
    kl_kp: torch.Tensor
    kl_feat: torch.Tensor
    active: torch.Tensor
    spread: torch.Tensor

    def detached(self) -> dict[str, torch.Tensor]:
        return {name: value.detach() for name, value in vars(self).items()}


def dlp_loss(out, x: torch.Tensor, *, beta_rec: float, beta_kl: float, kl_balance: float, logvar_prior: float,
             warmup: bool = False, rec_loss: ReconstructionLoss | None = None, beta_obj_on: float = 0.0,
             beta_spread: float = 0.0) -> LossTerms:
    """The official DLP objective for a `DLPOutput` (`train_dlp.py`), plus two optional costs for object models.

    rec_loss maps (x, rec) -> [B] (default: per-image summed squared error); in the object model's warm-up the
    reconstruction term compares decoded and encoder glimpses instead. The Chamfer-KL excludes the background
    particle; the feature KL covers all K+1 particles. beta_obj_on > 0 (object models; not in the official objective)
    charges every switched-on particle, so particles that reconstruct nothing switch off. beta_spread > 0 (object
    models; not in the official objective) charges decoded alpha far from the particle, so a particle draws its object
    centred on itself, and sits on the object's centre, instead of an opaque square anywhere in the glimpse.
    """
    if warmup and out.dec_glimpses is not None:
        rec = glimpse_reconstruction(out.glimpses, out.dec_glimpses, rec_loss)
    else:
        rec = (rec_loss or mse_reconstruction)(x, out.rec).mean()
    kl_kp = chamfer_kl(out.mu[:, :-1], out.logvar[:, :-1], out.kp_prior, logvar_prior).mean()
    kl_feat = gaussian_kl(out.mu_features, out.logvar_features).sum(-1).mean()
    kl = kl_kp + kl_balance * kl_feat
    loss = beta_rec * rec + beta_kl * kl
    active = active_particles(out.obj_on).mean() if out.obj_on is not None else torch.zeros_like(kl)
    if beta_obj_on:
        loss = loss + beta_obj_on * active
    spread = alpha_spread(out.dec_glimpses).mean() if out.dec_glimpses is not None else torch.zeros_like(kl)
    if beta_spread:
        loss = loss + beta_spread * spread
    return LossTerms(loss, rec, kl, kl_kp, kl_feat, active, spread)
