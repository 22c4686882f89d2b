"""The DDLP objective (`train_ddlp.py` of taldatech/ddlp, spec §4.7): DLPv2's phases, optimiser and schedule on clips
of `timestep_horizon + 1` frames, the dynamics KL against PINT's predictions phased in by the official discount, and
the video figures (the clip, its reconstruction with the particles, and a rollout)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from dlp.config import ConfigError
from dlp.models.ddlp.losses import ddlp_loss, dynamic_discount
from dlp.models.dlpv2.objective import DLPv2Objective


class DDLPObjective(DLPv2Objective):
    """The official DDLP training objective (see the module docstring)."""

    loss_names: ClassVar[tuple[str, ...]] = ("loss", "rec", "kl", "kl_dyn", "kl_kp", "kl_feat", "kl_obj_on",
                                             "kl_scale", "kl_depth", "obj_on_l1", "psnr")
    headline_metrics: ClassVar[tuple[str, ...]] = ("psnr/model", "psnr/last_frame", "tracking/posterior",
                                                   "tracking/rollout")

    @property
    def clip_length(self) -> int:
        return self.model_config.timestep_horizon + 1

    def dataset_options(self) -> dict[str, Any]:
        return {"clip_length": self.clip_length}

    def check_item(self, item: Mapping[str, Any]) -> None:
        video = item.get("video") if isinstance(item, Mapping) else None
        cfg = self.model_config
        expected = (self.clip_length, cfg.in_channels, cfg.image_size, cfg.image_size)
        if video is None:
            raise ConfigError("DDLP trains on video clips, but the dataset yields no 'video'; use a video dataset.")
        if tuple(video.shape) != expected:
            raise ConfigError(f"the dataset yields clips of shape {list(video.shape)} but the model expects "
                              f"{list(expected)} (timestep_horizon + 1 frames at image_size); pass --image-size "
                              f"{video.shape[-1]} or change timestep_horizon.")

    def _terms(self, out, x: torch.Tensor, *, warmup: bool, noisy: bool, discount=None):
        tcfg = self.train_config
        return ddlp_loss(out, x, warmup=warmup, noisy=noisy, beta_rec=tcfg.beta_rec, beta_kl=tcfg.beta_kl,
                         beta_dyn=tcfg.beta_dyn, beta_dyn_rec=tcfg.beta_dyn_rec, kl_balance=tcfg.kl_balance,
                         num_static_frames=self.model_config.num_static_frames, dynamic_discount=discount,
                         rec_loss=self.rec_loss, priors=self.priors)

    def discount(self, step: int) -> list[float]:
        """The official dynamics discount before optimisation step `step` (the first step's is all zeros)."""
        return dynamic_discount(step, self.steps_per_epoch or 1, self.train_config.warmup_epoch,
                                self.model_config.timestep_horizon, self.train_config.discount_steps)

    def loss(self, model, batch: Mapping[str, Any], *, epoch: int, phase: str, step: int = 0
             ) -> dict[str, torch.Tensor]:
        x = batch["video"]
        warmup, noisy = phase == "warm-up", phase in ("warm-up", "noisy")
        out = model(x, warmup=warmup, noisy=noisy)
        terms = self._terms(out, x, warmup=warmup, noisy=noisy, discount=self.discount(step))
        return {name: getattr(terms, name) for name in self.loss_names}

    def figures(self, model, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        from dlp.models.ddlp.figures import clip_figure

        tcfg = self.train_config
        video = batch["video"]
        cond = min(tcfg.cond_steps, video.shape[1] - 1)
        out = model(video, deterministic=True)
        rollout = model.rollout(video, cond, video.shape[1] - cond)
        return {"clip": clip_figure(video, out, rollout)}

    def validation_terms(self, model, x: torch.Tensor, *, official: bool) -> dict[str, torch.Tensor]:
        """The validation ELBO of held-out clips (`evaluate_validation_elbo_dyn`: eval mode, a sampled forward pass
        when `official`, the posterior means otherwise), every future frame fully weighted."""
        out = model(x, deterministic=not official)
        terms = self._terms(out, x, warmup=False, noisy=False)
        return {"elbo": terms.loss, "rec": terms.rec, "kl": terms.kl, "kl_dyn": terms.kl_dyn}
