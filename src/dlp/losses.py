"""Loss terms shared by the model families, as pure functions: Chamfer-KL, Gaussian KL, reconstruction.

Each family combines them into its objective (e.g. `dlp.models.dlp_v1.objective.dlp_loss`)."""

from __future__ import annotations

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
    return per_glimpse_reconstruction(target.flatten(0, 1), dec_glimpses.flatten(0, 1), rec_loss).mean()


def per_glimpse_reconstruction(target: torch.Tensor, dec_glimpses: torch.Tensor,
                               rec_loss: ReconstructionLoss | None = None) -> torch.Tensor:
    """The warm-up loss of each glimpse: target [N, 3, S, S], dec_glimpses [N, 4, S, S] (alpha first) -> [N], the
    summed squared error of the RGB (or `rec_loss`, glimpses under 32 px upsampled to 32 first)."""
    decoded = dec_glimpses[:, 1:]
    if rec_loss is None:
        return mse_reconstruction(target, decoded)
    if target.shape[-1] < 32:
        target = F.interpolate(target, size=32, mode="bilinear", align_corners=False)
        decoded = F.interpolate(decoded, size=32, mode="bilinear", align_corners=False)
    return rec_loss(target, decoded)
