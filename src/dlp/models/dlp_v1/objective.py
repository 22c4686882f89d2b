"""The DLP v1 objective (`train_dlp.py`): loss, phases, the two optimisers, figures and the validation ELBO.

Phases, per epoch: object models first learn to reconstruct their own glimpses without the background decoder
("warm-up", `epoch < warmup_epoch`), then train with noisy masks (`obj_on` replaced by U(0, 1) noise, decoded alphas
jittered) until `5 * warmup_epoch`, then normally. Masked models always train normally. Two Adam optimisers (eps 1e-4)
over the encoder-side and the decoder-side parameters, both stepped every batch; MultiStepLR on each, stepped once per
epoch. The extension costs of `DLPTrainConfig.extensions` apply in the normal phase (`obj_on`) and after the warm-up
(spread); with their default weights of 0 this is the official objective.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from dlp.engine.objective import Objective
from dlp.losses import ReconstructionLoss, chamfer_kl, gaussian_kl, glimpse_reconstruction, mse_reconstruction
from dlp.models.dlp_v1.extensions import active_particles, alpha_spread, obj_on_cost_weight
from dlp.models.kernels import adam as fused_adam
from dlp.perceptual import ReconstructionObjectiveMixin

# The official optimiser split: (prior + encoders, decoders); module names of `DLP`.
ENCODER_SIDE = ("prior", "encoder", "position_encoder", "bg_encoder", "glimpse_encoder")
DECODER_SIDE = ("decoder", "pointnet", "glimpse_decoder")


@dataclass
class LossTerms:
    """The training objective and its parts (0-dim tensors, batch means).

    loss = beta_rec * rec + beta_kl * (kl_kp + kl_balance * kl_feat) + beta_obj_on * active + beta_spread * spread,
    kl = kl_kp + kl_balance * kl_feat; `active` is `active_particles(obj_on)` and `spread` is
    `alpha_spread(dec_glimpses)` (both 0 for masked models; the costs are extensions, see `dlp_v1.extensions`).
    """

    loss: torch.Tensor
    rec: torch.Tensor
    kl: torch.Tensor
    kl_kp: torch.Tensor
    kl_feat: torch.Tensor
    active: torch.Tensor
    spread: torch.Tensor

    def as_dict(self) -> dict[str, torch.Tensor]:
        return dict(vars(self))


def dlp_loss(out, x: torch.Tensor, *, beta_rec: float, beta_kl: float, kl_balance: float, logvar_prior: float,
             warmup: bool = False, rec_loss: ReconstructionLoss | None = None, beta_obj_on: float = 0.0,
             beta_spread: float = 0.0, chamfer_with_background: bool = False) -> LossTerms:
    """The official DLP objective for a `DLPOutput` (`train_dlp.py`), plus the two optional extension costs.

    rec_loss maps (x, rec) -> [B] (default: per-image summed squared error); in the object model's warm-up the
    reconstruction term compares decoded and encoder glimpses instead. The Chamfer-KL excludes the background
    particle (`chamfer_with_background=True` includes it, as the official validation ELBO does); the feature KL covers
    all K+1 particles. beta_obj_on > 0 (object models; not in the official objective) charges every switched-on
    particle, so particles that reconstruct nothing switch off. beta_spread > 0 (object models; not in the official
    objective) charges decoded alpha far from the particle, so a particle draws its object centred on itself.
    """
    if warmup and out.dec_glimpses is not None:
        rec = glimpse_reconstruction(out.glimpses, out.dec_glimpses, rec_loss)
    else:
        rec = (rec_loss or mse_reconstruction)(x, out.rec).mean()
    mu, logvar = (out.mu, out.logvar) if chamfer_with_background else (out.mu[:, :-1], out.logvar[:, :-1])
    kl_kp = chamfer_kl(mu, logvar, out.kp_prior, logvar_prior).mean()
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


def parameter_groups(model: torch.nn.Module) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """The official optimiser split: (prior + encoders, decoders)."""
    groups = []
    for names in (ENCODER_SIDE, DECODER_SIDE):
        params = []
        for name in names:
            module = getattr(model, name)
            if module is not None:
                params += list(module.parameters())
        groups.append(params)
    assert sum(map(len, groups)) == len(list(model.parameters())), "every parameter belongs to one optimiser"
    return groups[0], groups[1]


class DLPObjective(ReconstructionObjectiveMixin, Objective):
    """The DLP v1 training objective (see the module docstring)."""

    loss_names: ClassVar[tuple[str, ...]] = ("loss", "rec", "kl", "kl_kp", "kl_feat", "active", "spread")
    headline_metrics: ClassVar[tuple[str, ...]] = ("recall@4", "precision@4", "fair/mu", "official/mu",
                                                   "deterministic/elbo", "deterministic/psnr")

    # ------------------------------------------------------------------------------------------------------------
    @property
    def first_normal_epoch(self) -> int:
        """Object models leave the noisy-mask phase after 5 x warmup_epoch epochs (the warm-up included)."""
        return 5 * self.train_config.warmup_epoch if self.model_config.is_object_model else 0

    def phase(self, epoch: int) -> str:
        if self.model_config.is_object_model and epoch < self.train_config.warmup_epoch:
            return "warm-up"
        if epoch < self.first_normal_epoch:
            return "noisy"
        return "normal"

    def obj_on_weight(self, epoch: int, phase: str | None = None) -> float:
        """The weight of the `beta_obj_on` extension cost in `epoch` (0 outside the normal phase; `phase` defaults to
        the epoch's)."""
        if (phase or self.phase(epoch)) != "normal":
            return 0.0
        return obj_on_cost_weight(self.train_config.extensions, epoch - self.first_normal_epoch + 1)

    def configure_optimizers(self, model):
        tcfg = self.train_config
        adam = dict(lr=tcfg.lr, betas=(0.9, 0.999), eps=tcfg.adam_eps, weight_decay=0.0)
        # The fused Adam step (one kernel per optimiser) where the device has one: the same update up to rounding.
        optimizers = [fused_adam(params, **adam) for params in parameter_groups(model)]
        schedulers = [torch.optim.lr_scheduler.MultiStepLR(opt, tcfg.lr_milestones, tcfg.lr_gamma) for opt in optimizers]
        return optimizers, schedulers

    def loss(self, model, batch: Mapping[str, Any], *, epoch: int, phase: str, step: int = 0
             ) -> dict[str, torch.Tensor]:
        tcfg = self.train_config
        x, x_prior = batch["image"], batch.get("image_prior")
        warmup = phase == "warm-up"
        out = model(x, x_prior, warmup=warmup, noisy_masks=phase != "normal")
        terms = dlp_loss(out, x, beta_rec=tcfg.beta_rec, beta_kl=tcfg.beta_kl, kl_balance=tcfg.kl_balance,
                         logvar_prior=self.model_config.logvar_prior, warmup=warmup, rec_loss=self.rec_loss,
                         beta_obj_on=self.obj_on_weight(epoch, phase),
                         beta_spread=0.0 if warmup else tcfg.extensions.beta_spread).as_dict()
        if warmup and self.model_config.is_object_model:
            # The warm-up leaves the background decoder out of the graph; a zero term keeps every DDP bucket in it.
            terms["loss"] = terms["loss"] + 0.0 * out.rec.mean()
        return terms

    def figures(self, model, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        from dlp.models.dlp_v1.figures import glimpse_figure, training_figure

        x = batch["image"]
        x_prior = batch.get("image_prior")
        x_prior = x if x_prior is None else x_prior
        out = model(x, x_prior, deterministic=True)
        figures = {"particles": training_figure(x, out, x_prior, topk=self.train_config.topk,
                                                iou_thresh=self.train_config.iou_thresh,
                                                anchor_s=self.model_config.anchor_s)}
        glimpses = glimpse_figure(out)
        if glimpses is not None:
            figures["glimpses"] = glimpses
        return figures

    def validation_terms(self, model, x: torch.Tensor, *, official: bool) -> dict[str, torch.Tensor]:
        """The validation ELBO of a batch, in the official or in our deterministic definition.

        official=True reproduces `eval/eval_model.py::evaluate_validation_elbo`: a *sampled* forward pass and the
        Chamfer-KL over the full posterior **including the background particle** [QUIRK of the official code].
        official=False: the posterior means and the training objective's Chamfer-KL (background excluded). Both are
        `dlp_loss` without warm-up and without the extension costs, which are not part of the ELBO.
        """
        tcfg = self.train_config
        out = model(x, x_prior=x, deterministic=not official)
        terms = dlp_loss(out, x, beta_rec=tcfg.beta_rec, beta_kl=tcfg.beta_kl, kl_balance=tcfg.kl_balance,
                         logvar_prior=self.model_config.logvar_prior, rec_loss=self.rec_loss,
                         chamfer_with_background=official)
        return {"elbo": terms.loss, "rec": terms.rec, "kl_kp": terms.kl_kp, "kl_feat": terms.kl_feat}
