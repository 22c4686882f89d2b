"""The DLPv2 objective (`ObjectDLP.calc_elbo`, spec §3) as pure functions.

loss = beta_rec * rec + beta_kl * kl (times 1e-3 with a perceptual reconstruction loss), where
kl = kl_kp + kl_scale + kl_obj_on + kl_balance * (kl_feat + kl_depth) and kl_kp = 0.5 * kl_balance * chamfer + offset.
Every term is summed over particles (and dimensions) and averaged over the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dlp.losses import ReconstructionLoss, chamfer_kl, glimpse_reconstruction, mse_reconstruction
from dlp.models.dlpv2.config import DLPv2Config

WARM_LOGVAR = torch.log(torch.tensor(0.01)).item()  # log(float32(0.01)) in float32: warm offset/scale prior (§3.2)
WARM_OBJ_ON = (0.2, 0.1)  # Beta prior of the transparency in warm-up/noisy
PERCEPTUAL_SCALE = 1e-3  # the official loss is scaled by 1e-3 with the VGG reconstruction loss


@dataclass
class DLPv2Priors:
    """The objective's constant priors (the official buffers, §2.1), 0-dim tensors.

    kp_prior_logvar: log(sigma^2) of the prior proposals in the Chamfer-KL; scale_prior_mu: logit of 0.75 * anchor_s
    (float64, as official); scale_prior_logvar / offset_prior_logvar: log(scale_std^2) / log(offset_std^2);
    obj_on_prior_a / obj_on_prior_b: the transparency's Beta prior.
    """

    kp_prior_logvar: torch.Tensor
    scale_prior_mu: torch.Tensor
    scale_prior_logvar: torch.Tensor
    offset_prior_logvar: torch.Tensor
    obj_on_prior_a: torch.Tensor
    obj_on_prior_b: torch.Tensor


def prior_constants(config: DLPv2Config) -> DLPv2Priors:
    """The priors exactly as the official constructor makes them (log in float64, stored float32, except the
    float64 scale mean)."""
    a = config.anchor_s
    f32 = torch.float32
    return DLPv2Priors(
        kp_prior_logvar=torch.tensor(np.log(config.sigma**2), dtype=f32),
        scale_prior_mu=torch.tensor(np.log(0.75 * a / (1 - 0.75 * a + 1e-5)), dtype=torch.float64),
        scale_prior_logvar=torch.tensor(np.log(config.scale_std**2), dtype=f32),
        offset_prior_logvar=torch.tensor(np.log(config.offset_std**2), dtype=f32),
        obj_on_prior_a=torch.tensor(config.obj_on_alpha, dtype=f32),
        obj_on_prior_b=torch.tensor(config.obj_on_beta, dtype=f32),
    )


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor, mu_prior: torch.Tensor | float = 0.0,
                logvar_prior: torch.Tensor | float = 0.0) -> torch.Tensor:
    """KL(N(mu, e^logvar) || N(mu_prior, e^logvar_prior)) summed over the last dimension (`calc_kl`): [..., d] -> [...].

    A 0-dim prior of another dtype (the float64 scale mean) is applied in mu's dtype, as official.
    """
    if not torch.is_tensor(logvar_prior):
        logvar_prior = torch.tensor(logvar_prior, dtype=mu.dtype, device=mu.device)
    var_prior = torch.exp(logvar_prior)
    kl = 1 + logvar - logvar_prior - logvar.exp() / var_prior - (mu - mu_prior).pow(2) / var_prior
    return -0.5 * kl.sum(dim=-1)


def beta_distribution_kl(a: torch.Tensor, b: torch.Tensor, a_prior: torch.Tensor | float, b_prior: torch.Tensor | float,
            eps: float = 1e-5) -> torch.Tensor:
    """KL(Beta(a, b) || Beta(a_prior, b_prior)) elementwise (`calc_kl_beta_dist`, with its eps = 1e-5)."""
    a0 = torch.as_tensor(a_prior, dtype=a.dtype, device=a.device)
    b0 = torch.as_tensor(b_prior, dtype=a.dtype, device=a.device)

    def log_beta(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.lgamma(x + eps) + torch.lgamma(y + eps) - torch.lgamma(x + y + eps)

    return (log_beta(a0, b0) - log_beta(a, b) + (a - a0) * torch.digamma(a + eps) + (b - b0) * torch.digamma(b + eps)
            + (a0 - a + b0 - b) * torch.digamma(a + b + eps))


def anchor_chamfer_kl(anchors: torch.Tensor, kp_prior: torch.Tensor, kp_prior_logvar: torch.Tensor) -> torch.Tensor:
    """Chamfer-KL between the anchors [B, K, 2] (log-variance 0) and the detached prior proposals [B, Kp, 2] with
    log-variance log(sigma^2), per image: [B] (`ChamferLossKL`, §3.2)."""
    return chamfer_kl(anchors, torch.zeros_like(anchors), kp_prior.detach(), kp_prior_logvar)


def warmup_glimpse_loss(glimpses: torch.Tensor, dec_glimpses: torch.Tensor,
                        rec_loss: ReconstructionLoss | None = None) -> torch.Tensor:
    """The warm-up reconstruction (§3.1): decoded glimpse RGB [B, K, 1+C, S, S] against the features encoder's crops
    [B, K, C, S, S], per-glimpse summed squared error (or `rec_loss` at >= 32 px) averaged over the B*K glimpses."""
    return glimpse_reconstruction(glimpses, dec_glimpses, rec_loss)


@dataclass
class DLPv2LossTerms:
    """The objective and its parts (0-dim tensors, batch means; official names in brackets).

    loss [loss]; rec [loss_rec]; kl [kl]; kl_kp = 0.5 * kl_balance * kl_kp_base + kl_kp_offset [loss_kl_kp];
    kl_kp_base: Chamfer-KL of the anchors [loss_kl_kp_base]; kl_kp_offset [loss_kl_kp_offset];
    kl_feat = kl_feat_obj + kl_feat_bg [loss_kl_feat, loss_kl_feat_obj, loss_kl_feat_bg]; kl_obj_on [loss_kl_obj_on];
    kl_scale [loss_kl_scale]; kl_depth [loss_kl_depth]; obj_on_l1: summed transparency [obj_on_l1];
    psnr: of rec in dB, no gradient, 0 in warm-up [psnr].
    """

    loss: torch.Tensor
    rec: torch.Tensor
    kl: torch.Tensor
    kl_kp: torch.Tensor
    kl_kp_base: torch.Tensor
    kl_kp_offset: torch.Tensor
    kl_feat: torch.Tensor
    kl_feat_obj: torch.Tensor
    kl_feat_bg: torch.Tensor
    kl_obj_on: torch.Tensor
    kl_scale: torch.Tensor
    kl_depth: torch.Tensor
    obj_on_l1: torch.Tensor
    psnr: torch.Tensor

    def detached(self) -> dict[str, torch.Tensor]:
        return {name: value.detach() for name, value in vars(self).items()}


def dlpv2_loss(out, x: torch.Tensor, *, warmup: bool, noisy: bool, beta_rec: float, beta_kl: float,
               kl_balance: float, rec_loss: ReconstructionLoss | None = None, config: DLPv2Config | None = None,
               priors: DLPv2Priors | None = None, rec_loss_scale: float | None = None) -> DLPv2LossTerms:
    """The official DLPv2 objective for a `DLPv2Output` `out` of images x [B, C, H, W] (§3).

    rec_loss: (x, rec) -> [B] per-image loss (a perceptual loss); default the summed squared error. With a rec_loss
        the total is multiplied by `rec_loss_scale` (default 1e-3, the official factor for the VGG loss).
    warmup / noisy: the phases given to the forward pass. In warm-up the reconstruction compares decoded glimpses
        with the crops; in warm-up or noisy the offset and scale priors have variance 0.01 and the transparency prior
        is Beta(0.2, 0.1).
    config / priors: the constant priors, from the model's buffers (`model.priors()`) or rebuilt from the config.
    """
    if priors is None:
        if config is None:
            raise ValueError("dlpv2_loss needs the model's priors: pass priors=model.priors() or config=model.config.")
        priors = prior_constants(config)
    priors = DLPv2Priors(**{k: v.to(x.device) for k, v in vars(priors).items()})
    warm = warmup or noisy
    if warmup:
        rec = warmup_glimpse_loss(out.glimpses, out.dec_glimpses, rec_loss) + 0.0 * out.rec.mean()
        psnr = torch.zeros((), device=x.device)
    else:
        rec = (rec_loss or mse_reconstruction)(x, out.rec).mean()
        with torch.no_grad():
            psnr = -10 * torch.log10(((out.rec - x) ** 2).mean())

    logvar_offset_prior = WARM_LOGVAR if warm else priors.offset_prior_logvar
    logvar_scale_prior = WARM_LOGVAR if warm else priors.scale_prior_logvar
    obj_on_prior = WARM_OBJ_ON if warm else (priors.obj_on_prior_a, priors.obj_on_prior_b)

    kl_kp_base = anchor_chamfer_kl(out.anchors, out.kp_prior, priors.kp_prior_logvar).mean()
    kl_kp_offset = gaussian_kl(out.mu_offset, out.logvar_offset, 0.0, logvar_offset_prior).sum(-1).mean()
    kl_kp = 0.5 * kl_balance * kl_kp_base + kl_kp_offset
    kl_depth = gaussian_kl(out.mu_depth, out.logvar_depth).sum(-1).mean()
    kl_scale = gaussian_kl(out.mu_scale, out.logvar_scale, priors.scale_prior_mu, logvar_scale_prior).sum(-1).mean()
    kl_obj_on = beta_distribution_kl(out.obj_on_a, out.obj_on_b, *obj_on_prior).sum(-1).mean()
    kl_feat_obj = gaussian_kl(out.mu_features, out.logvar_features).sum(-1).mean()
    kl_feat_bg = gaussian_kl(out.mu_bg, out.logvar_bg).mean()
    kl_feat = kl_feat_obj + kl_feat_bg
    obj_on_l1 = out.obj_on.abs().sum(-1).mean()

    kl = kl_kp + kl_scale + kl_obj_on + kl_balance * (kl_feat + kl_depth)
    loss = beta_rec * rec + beta_kl * kl
    if rec_loss is not None:
        loss = loss * (PERCEPTUAL_SCALE if rec_loss_scale is None else rec_loss_scale)
    return DLPv2LossTerms(loss, rec, kl, kl_kp, kl_kp_base, kl_kp_offset, kl_feat, kl_feat_obj, kl_feat_bg, kl_obj_on,
                          kl_scale, kl_depth, obj_on_l1, psnr)
