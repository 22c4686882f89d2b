"""The DDLP objective (`ObjectDynamicsDLP.calc_elbo`, spec §4.6) and the dynamics discount schedule (§4.7).

A training clip has T = Tm + 1 frames (Tm = timestep_horizon). The first tau = `num_static_frames` frames are
regularised by DLPv2's static priors; every later frame t by PINT's prediction from the frames before it, weighted by
the dynamics discount d[t - tau]. The reconstruction of later frames is weighted by `beta_dyn_rec * d[t - tau]` too:

loss = (beta_rec * rec + beta_kl * kl + beta_dyn * kl_dyn) / (Tm + 1)   (times 1e-3 with a perceptual loss)
kl = kl_kp + kl_scale + kl_obj_on + kl_balance * (kl_feat + kl_depth),  kl_kp = 0.5 * kl_balance * kl_kp_base + offset
kl_dyn = kl_kp_dyn + kl_scale_dyn + kl_depth_dyn + kl_features_dyn + kl_obj_on_dyn + kl_bg_dyn

Every term is summed over frames and particles (and dimensions) and averaged over the batch, except the static
background KL (official axes bug, §8 item 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dlp.losses import ReconstructionLoss, per_glimpse_reconstruction
from dlp.models.dlpv2.config import DLPv2Config
from dlp.models.dlpv2.losses import (
    PERCEPTUAL_SCALE,
    WARM_LOGVAR,
    WARM_OBJ_ON,
    DLPv2Priors,
    anchor_chamfer_kl,
    beta_distribution_kl,
    gaussian_kl,
    prior_constants,
)


def dynamic_discount(iteration: int, iters_per_epoch: int, warmup_epoch: int, timestep_horizon: int,
                     min_window: int = 10000) -> list[float]:
    """The official dynamics discount before training batch `iteration` (counted from 0; `train_ddlp.py`, §4.7).

    Future frame i (0-based, i < Tm) is phased in linearly over the first (i + 1) * per_step iterations, with
    per_step = max(warmup_epoch, 1) * max(min_window, iters_per_epoch) // Tm; the very first batch has all zeros.
    `min_window` is 10000 officially (a run shorter than that never weighs its last frames fully).
    """
    window = max(warmup_epoch, 1) * max(min_window, iters_per_epoch)
    per_step = window // timestep_horizon
    return [min(max(iteration / (per_step * (i + 1)), 0.0), 1.0) for i in range(timestep_horizon)]


@dataclass
class DDLPLossTerms:
    """The objective and its parts (0-dim tensors; official names in brackets).

    loss [loss]; rec [loss_rec]; kl: the static KL [kl]; kl_dyn: the dynamics KL [kl_dyn];
    kl_kp = 0.5 * kl_balance * kl_kp_base + kl_kp_offset [loss_kl_kp]; kl_kp_base: Chamfer-KL of the anchors, summed
    over the static frames [loss_kl_kp_base]; kl_kp_offset [loss_kl_kp_offset]; kl_feat = kl_feat_obj + kl_feat_bg
    [loss_kl_feat, loss_kl_feat_obj, loss_kl_feat_bg]; kl_obj_on [loss_kl_obj_on]; kl_scale [loss_kl_scale];
    kl_depth [loss_kl_depth]; obj_on_l1: summed transparency per frame [obj_on_l1]; psnr: of all frames, in dB, no
    gradient, 0 in warm-up [psnr]; the dynamics terms kl_kp_dyn, kl_obj_on_dyn, kl_scale_dyn, kl_depth_dyn,
    kl_features_dyn, kl_bg_dyn [loss_kl_*_dyn].
    """

    loss: torch.Tensor
    rec: torch.Tensor
    kl: torch.Tensor
    kl_dyn: torch.Tensor
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
    kl_kp_dyn: torch.Tensor
    kl_obj_on_dyn: torch.Tensor
    kl_scale_dyn: torch.Tensor
    kl_depth_dyn: torch.Tensor
    kl_features_dyn: torch.Tensor
    kl_bg_dyn: torch.Tensor

    def detached(self) -> dict[str, torch.Tensor]:
        return {name: value.detach() for name, value in vars(self).items()}


def _frame_reconstruction(out, x: torch.Tensor, warmup: bool, rec_loss: ReconstructionLoss | None) -> torch.Tensor:
    """Per-frame reconstruction loss [B, T]: the summed squared error of each frame (or `rec_loss`), or in warm-up
    each frame's per-glimpse losses summed over its particles (decoded glimpse RGB against the encoder's crops)."""
    b, t = x.shape[:2]
    if warmup:
        per_glimpse = per_glimpse_reconstruction(out.glimpses.flatten(0, 2), out.dec_glimpses.flatten(0, 2), rec_loss)
        return per_glimpse.view(b, t, -1).sum(-1)
    if rec_loss is None:
        return ((out.rec - x) ** 2).flatten(2).sum(-1)
    return rec_loss(x.flatten(0, 1), out.rec.flatten(0, 1)).view(b, t)


def ddlp_loss(out, x: torch.Tensor, *, warmup: bool, noisy: bool, beta_rec: float, beta_kl: float, beta_dyn: float,
              beta_dyn_rec: float, kl_balance: float, num_static_frames: int,
              dynamic_discount: list[float] | torch.Tensor | None = None, rec_loss: ReconstructionLoss | None = None,
              config: DLPv2Config | None = None, priors: DLPv2Priors | None = None,
              rec_loss_scale: float | None = None) -> DDLPLossTerms:
    """The official DDLP objective for a `DDLPOutput` `out` of clips x [B, T, C, H, W], T = timestep_horizon + 1.

    num_static_frames: tau, the frames under the static priors (the official training passes the forward's value).
    dynamic_discount: weights of the T - tau predicted frames (the first T - tau entries are used; None = ones),
        e.g. `dynamic_discount(iteration, ...)` of this module.
    beta_dyn_rec: extra weight of the predicted frames' reconstruction (1 in every official config).
    rec_loss: (x, rec) -> [N] per-image loss (a perceptual loss); default the summed squared error. With a rec_loss
        the total is multiplied by `rec_loss_scale` (default 1e-3, the official factor for the VGG loss).
    warmup / noisy: the phases given to the forward pass (warm priors for the offsets, scales and transparency).
    config / priors: the constant priors, from the model's buffers (`model.priors()`) or rebuilt from the config.
    """
    if priors is None:
        if config is None:
            raise ValueError("ddlp_loss needs the model's priors: pass priors=model.priors() or config=model.config.")
        priors = prior_constants(config)
    priors = DLPv2Priors(**{k: v.to(x.device) for k, v in vars(priors).items()})
    b, t = x.shape[:2]
    tau = num_static_frames
    if not 1 <= tau < t or out.dynamics.mu.shape[1] != t - 1:
        raise ValueError(f"the DDLP objective needs 1 <= num_static_frames < T and PINT predictions for frames 1 ... "
                         f"T-1; got num_static_frames={tau}, T={t}, {out.dynamics.mu.shape[1]} predicted frames.")
    n_future = t - tau
    if dynamic_discount is None:
        discount = torch.ones(n_future, device=x.device)
    else:
        discount = torch.as_tensor(dynamic_discount, dtype=x.dtype, device=x.device)[:n_future]  # [T - tau]
    warm = warmup or noisy

    # Reconstruction: static frames as they are, predicted frames weighted by beta_dyn_rec * d.
    per_frame = _frame_reconstruction(out, x, warmup, rec_loss)  # [B, T]
    rec = per_frame[:, :tau].sum(1).mean() + (beta_dyn_rec * discount * per_frame[:, tau:]).sum(1).mean()
    if warmup:
        rec = rec + 0.0 * out.rec.mean()
        psnr = torch.zeros((), device=x.device)
    else:
        with torch.no_grad():
            psnr = -10 * torch.log10(((out.rec - x) ** 2).mean())

    # Static priors on frames t < tau, summed over (frame, particle), averaged over the batch.
    logvar_offset_prior = WARM_LOGVAR if warm else priors.offset_prior_logvar
    logvar_scale_prior = WARM_LOGVAR if warm else priors.scale_prior_logvar
    obj_on_prior = WARM_OBJ_ON if warm else (priors.obj_on_prior_a, priors.obj_on_prior_b)

    def static(v: torch.Tensor) -> torch.Tensor:
        return v[:, :tau]

    def summed(v: torch.Tensor) -> torch.Tensor:  # [B, tau, K] -> batch mean of the sum
        return v.sum((1, 2)).mean()

    chamfer = anchor_chamfer_kl(static(out.anchors).flatten(0, 1), static(out.kp_prior).flatten(0, 1),
                                priors.kp_prior_logvar)  # [B * tau]
    kl_kp_base = chamfer.view(b, tau).sum(1).mean()
    kl_kp_offset = summed(gaussian_kl(static(out.mu_offset), static(out.logvar_offset), 0.0, logvar_offset_prior))
    kl_kp = 0.5 * kl_balance * kl_kp_base + kl_kp_offset
    kl_depth = summed(gaussian_kl(static(out.mu_depth), static(out.logvar_depth)))
    kl_scale = summed(gaussian_kl(static(out.mu_scale), static(out.logvar_scale), priors.scale_prior_mu,
                                  logvar_scale_prior))
    kl_obj_on = summed(beta_distribution_kl(static(out.obj_on_a), static(out.obj_on_b), *obj_on_prior))
    kl_feat_obj = summed(gaussian_kl(static(out.mu_features), static(out.logvar_features)))
    # Official bug (§8 item 2, kept for parity): the background KL sums over the static *frames* and averages over
    # the batch and the feature dimensions.
    mu_bg, logvar_bg = static(out.mu_bg), static(out.logvar_bg)  # [B, tau, Dbg]
    kl_feat_bg = (-0.5 * (1 + logvar_bg - mu_bg.pow(2) - logvar_bg.exp()).sum(1)).mean()
    kl_feat = kl_feat_obj + kl_feat_bg
    obj_on_l1 = out.obj_on.abs().sum(-1).mean()  # per frame, averaged over the B * T frames

    # Dynamics priors on frames t >= tau: PINT's prediction from frame t - 1, weighted by d[t - tau].
    pred = out.dynamics

    def future(v: torch.Tensor) -> torch.Tensor:
        return v[:, tau:]

    def predicted(v: torch.Tensor) -> torch.Tensor:
        return v[:, tau - 1:]

    def discounted(v: torch.Tensor) -> torch.Tensor:  # [B, T - tau] -> batch mean of the weighted sum
        return (v * discount).sum(1).mean()

    position = future(out.anchors).detach() + future(out.mu_offset)  # the posterior mean before sampling
    kl_kp_dyn = discounted(gaussian_kl(position, future(out.logvar_offset), predicted(pred.mu),
                                       predicted(pred.logvar)).sum(-1))
    kl_scale_dyn = discounted(gaussian_kl(future(out.mu_scale), future(out.logvar_scale), predicted(pred.mu_scale),
                                          predicted(pred.logvar_scale)).sum(-1))
    kl_depth_dyn = discounted(gaussian_kl(future(out.mu_depth), future(out.logvar_depth), predicted(pred.mu_depth),
                                          predicted(pred.logvar_depth)).sum(-1))
    kl_features_dyn = discounted(gaussian_kl(future(out.mu_features), future(out.logvar_features),
                                             predicted(pred.mu_features), predicted(pred.logvar_features)).sum(-1))
    kl_obj_on_dyn = discounted(beta_distribution_kl(future(out.obj_on_a), future(out.obj_on_b),
                                                    predicted(pred.obj_on_a), predicted(pred.obj_on_b)).sum(-1))
    kl_bg_dyn = discounted(gaussian_kl(future(out.mu_bg), future(out.logvar_bg), predicted(pred.mu_bg),
                                       predicted(pred.logvar_bg)))
    kl_dyn = kl_kp_dyn + kl_obj_on_dyn + kl_scale_dyn + kl_depth_dyn + kl_features_dyn + kl_bg_dyn

    kl = kl_kp + kl_scale + kl_obj_on + kl_balance * (kl_feat + kl_depth)
    # Official: divided by the clip length although the static terms cover tau frames and the dynamic ones T - tau.
    loss = (beta_rec * rec + beta_kl * kl + beta_dyn * kl_dyn) / t
    if rec_loss is not None:
        loss = loss * (PERCEPTUAL_SCALE if rec_loss_scale is None else rec_loss_scale)
    return DDLPLossTerms(loss, rec, kl, kl_dyn, kl_kp, kl_kp_base, kl_kp_offset, kl_feat, kl_feat_obj, kl_feat_bg,
                         kl_obj_on, kl_scale, kl_depth, obj_on_l1, psnr, kl_kp_dyn, kl_obj_on_dyn, kl_scale_dyn,
                         kl_depth_dyn, kl_features_dyn, kl_bg_dyn)
