"""The DLPv2 objective (`train_dlp.py` of taldatech/ddlp, spec §3.3): loss, phases, optimiser, figures, ELBO.

Phases, per epoch: "warm-up" (`epoch < warmup_epoch`: the decoded glimpses learn to reproduce the encoder's crops;
positions and scales detached), then one "noisy" epoch (fixed glimpse scale plus noise, noisy alphas, warm priors),
then "normal". Every forward pass samples (`deterministic=False`), as officially. One Adam over every parameter
(betas (0.9, 0.999), eps `adam_eps`, no weight decay), StepLR(1, `scheduler_gamma`) stepped once per epoch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from dlp.engine.objective import Objective
from dlp.models.dlpv2.losses import dlpv2_loss, prior_constants
from dlp.models.kernels import adam as fused_adam
from dlp.perceptual import DDLP_FEATURE_WEIGHT, ReconstructionObjectiveMixin


class DLPv2Objective(ReconstructionObjectiveMixin, Objective):
    """The official DLPv2 training objective (see the module docstring)."""

    loss_names: ClassVar[tuple[str, ...]] = ("loss", "rec", "kl", "kl_kp", "kl_feat", "kl_obj_on", "kl_scale",
                                             "kl_depth", "obj_on_l1", "psnr")
    headline_metrics: ClassVar[tuple[str, ...]] = ("recall@4", "precision@4", "box_f1@0.5", "deterministic/psnr")
    reconstruction_options: ClassVar[dict[str, Any]] = {"imagenet_normalize": True,
                                                         "feature_weight": DDLP_FEATURE_WEIGHT}

    def __init__(self, model_config, train_config, **kwargs):
        super().__init__(model_config, train_config, **kwargs)
        self.priors = prior_constants(model_config)

    def phase(self, epoch: int) -> str:
        warmup_epoch = self.train_config.warmup_epoch
        if epoch < warmup_epoch:
            return "warm-up"
        if epoch < warmup_epoch + 1:
            return "noisy"
        return "normal"

    def configure_optimizers(self, model):
        tcfg = self.train_config
        # The fused Adam step (one kernel) where the device has one: the same update up to float32 rounding.
        optimizer = fused_adam(model.parameters(), lr=tcfg.lr, betas=(0.9, 0.999), eps=tcfg.adam_eps,
                               weight_decay=0.0)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=tcfg.scheduler_gamma)]

    def _terms(self, out, x: torch.Tensor, *, warmup: bool, noisy: bool):
        tcfg = self.train_config
        return dlpv2_loss(out, x, warmup=warmup, noisy=noisy, beta_rec=tcfg.beta_rec, beta_kl=tcfg.beta_kl,
                          kl_balance=tcfg.kl_balance, rec_loss=self.rec_loss, priors=self.priors)

    def loss(self, model, batch: Mapping[str, Any], *, epoch: int, phase: str, step: int = 0
             ) -> dict[str, torch.Tensor]:
        x = batch["image"]
        warmup, noisy = phase == "warm-up", phase in ("warm-up", "noisy")
        out = model(x, warmup=warmup, noisy=noisy, x_prior=batch.get("image_prior"))
        return dict(vars(self._terms(out, x, warmup=warmup, noisy=noisy)))

    def figures(self, model, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        from dlp.models.dlpv2.figures import glimpse_figure, training_figure

        x = batch["image"]
        out = model(x, deterministic=True, x_prior=batch.get("image_prior"))
        return {"particles": training_figure(x, out, topk=self.train_config.topk,
                                             iou_thresh=self.train_config.iou_thresh,
                                             x_prior=batch.get("image_prior")),
                "glimpses": glimpse_figure(out)}

    def validation_terms(self, model, x: torch.Tensor, *, official: bool) -> dict[str, torch.Tensor]:
        """The validation ELBO of a batch: official=True is `evaluate_validation_elbo` (eval mode, a *sampled*
        forward pass), official=False the posterior means; both the training objective of the normal phase."""
        out = model(x, deterministic=not official)
        terms = self._terms(out, x, warmup=False, noisy=False)
        return {"elbo": terms.loss, "rec": terms.rec, "kl": terms.kl, "kl_kp": terms.kl_kp,
                "kl_feat": terms.kl_feat, "kl_obj_on": terms.kl_obj_on, "kl_scale": terms.kl_scale,
                "kl_depth": terms.kl_depth}
