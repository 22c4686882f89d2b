"""DLPv2 (Daniel & Tamar, "DDLP: Unsupervised Object-centric Video Prediction with Deep Dynamic Latent Particles",
TMLR 2024), the single-image model `ObjectDLP` of taldatech/ddlp, numerically identical to the official code.

Each image becomes K foreground particles -- a position (y, x), a scale, a depth, a transparency and D visual features
-- plus a background latent of Dbg features. Positions start from the prior's patch proposals (anchors), are refined
by a two-pass attribute encoder and decoded into RGBA glimpses that are pasted and blended by depth over a decoded
background. Section numbers ("§2.3") refer to the DLPv2/DDLP model spec.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import torch
from torch import nn

from dlp.models.base import ParticleView, check_images
from dlp.models.dlpv2.config import DLPv2Config
from dlp.models.dlpv2.layers import init_official
from dlp.models.dlpv2.losses import DLPv2Priors, prior_constants
from dlp.models.dlpv2.modules import (
    BackgroundVAE,
    Composite,
    GlimpseDecoder,
    ParticleAttributeEncoder,
    ParticleFeaturesEncoder,
    ParticleFilterMixer,
    PatchPrior,
    background_encoder_mask,
    composite_particles,
)
from dlp.pretrained import PretrainedMixin


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """mu + eps * exp(logvar / 2), one randn draw of mu's shape from the global generator."""
    std = torch.exp(0.5 * logvar)
    return mu + torch.randn_like(std) * std


@dataclass
class ForegroundPosterior:
    """The particles of B images (or video frames) after `DLPv2Foreground.encode` (`FgDLP.encode_all`, §2.3).

    anchors: [B, K, 2] proposal + first-pass offset (the official outputs `mu` and `z_base`, equal values), (y, x) in
        [-1, 1]; with gradient into the prior (and the mixer) even in warm-up, where the official `z_base` is detached.
    z: [B, K, 2] final positions `anchors + mu_offset` (sampled unless deterministic).
    mu_offset, logvar_offset: [B, K, 2] second-pass position offsets.
    mu_scale, logvar_scale, z_scale: [B, K, 2] glimpse-scale logits (s_y, s_x); in the noisy phase z_scale is
        logit(anchor_s) + N(0, 0.1^2) noise.
    mu_depth, logvar_depth, z_depth: [B, K, 1] depth (smaller = more weight when blending).
    obj_on_a, obj_on_b: [B, K] Beta parameters of the transparency (>= 1e-5); obj_on: [B, K] its mean or a sample.
    mu_features, logvar_features, z_features: [B, K, D] visual features.
    glimpses: [B, K, C, S, S] the features encoder's crops of the image at z and sigmoid(z_scale).
    """

    anchors: torch.Tensor
    z: torch.Tensor
    mu_offset: torch.Tensor
    logvar_offset: torch.Tensor
    mu_scale: torch.Tensor
    logvar_scale: torch.Tensor
    z_scale: torch.Tensor
    mu_depth: torch.Tensor
    logvar_depth: torch.Tensor
    z_depth: torch.Tensor
    obj_on_a: torch.Tensor
    obj_on_b: torch.Tensor
    obj_on: torch.Tensor
    mu_features: torch.Tensor
    logvar_features: torch.Tensor
    z_features: torch.Tensor
    glimpses: torch.Tensor


class DLPv2Foreground(nn.Module):
    """The particle part of DLPv2 (`FgDLP`): prior proposals, anchors, two-pass attribute encoding, features, glimpse
    decoding and compositing. DDLP's tracking encoder reuses `encode` frame by frame (`refine=False`, previous crops
    and scales) and `decode` on all frames at once."""

    def __init__(self, config: DLPv2Config):
        super().__init__()
        cfg = config
        self.n_particles, self.image_size, self.anchor_s = cfg.n_kp_enc, cfg.image_size, cfg.anchor_s
        # logit(anchor_s) in float64 (numpy), the noisy phase's scale (§2.3 step 7)
        self.noisy_scale_logit = float(np.log(cfg.anchor_s / (1 - cfg.anchor_s + 1e-5)))
        s, c = cfg.glimpse_size, cfg.in_channels
        self.prior = PatchPrior(c, cfg.prior_channels, cfg.image_size, cfg.patch_size, cfg.pad_mode)
        self.mixer = (
            ParticleFilterMixer(c, cfg.prior_channels, s, cfg.image_size, cfg.num_patches, cfg.n_kp_enc, cfg.pad_mode)
            if cfg.filtering_heuristic == "none" else None
        )
        # The official model honours use_correlation_heatmaps even without tracking (§2.1, §8 item 5): in single
        # images the extra channel is zeros.
        self.attribute_encoder = ParticleAttributeEncoder(c, cfg.prior_channels, s, cfg.image_size, cfg.pad_mode,
                                                          use_correlation=cfg.use_correlation_heatmaps)
        self.features_encoder = ParticleFeaturesEncoder(c, cfg.prior_channels, s, cfg.image_size,
                                                        cfg.learned_feature_dim, cfg.pad_mode)
        self.glimpse_decoder = GlimpseDecoder(cfg.learned_feature_dim, s, 1 + c)
        self.filtering_heuristic, self.num_prior_kp = cfg.filtering_heuristic, cfg.num_prior_kp

    def prior_keypoints(self, x: torch.Tensor) -> torch.Tensor:
        """Filtered prior proposals (`encode_prior`, §1.4): [B, C, H, W] -> [B, Kp, 2] ([B, NP, 2] for the mixer)."""
        kp, var = self.prior(x)
        return self.prior.select(kp, var, self.filtering_heuristic, self.num_prior_kp)

    def initial_anchors(self, x: torch.Tensor, kp_prior: torch.Tensor) -> torch.Tensor:
        """Anchor candidates from the proposals (§2.2 step 2): the mixer's K convex combinations with
        `filtering_heuristic='none'`, else the proposals themselves (with gradient into the prior either way)."""
        return kp_prior if self.mixer is None else self.mixer(x, kp_prior)

    def encode(self, x: torch.Tensor, kp_init: torch.Tensor, *, deterministic: bool, warmup: bool = False,
               noisy: bool = False, previous_objects: torch.Tensor | None = None,
               previous_scale: torch.Tensor | None = None, refine: bool = True) -> ForegroundPosterior:
        """Encode the particles of x [B, C, H, W] anchored at kp_init [B, >=K, 2] (`FgDLP.encode_all`, §2.3).

        refine=True (DLPv2, DDLP frame 0): two attribute passes, the second at the first pass's anchors and scales.
        refine=False (DDLP frames t >= 1): one pass at kp_init with `previous_scale` [B, K, 2] (logits) and
        `previous_objects` [B*K, C, S, S] (correlation templates). In the noisy or warm-up phase the crops use the
        fixed scale and no templates. Random draws (global generator, official order §2.7): when not deterministic
        z, the unused offset sample, z_scale, z_depth, the Beta sample; noisy: the scale noise; then the features.
        """
        k = self.n_particles
        warm = warmup or noisy
        if warm:
            previous_objects = previous_scale = None
        mu = kp_init[:, :k] if kp_init.shape[1] > k else kp_init  # [B, K, 2], the K lowest-variance proposals
        logvar = torch.zeros_like(mu)
        z_base = mu + 0.0 * logvar
        if refine:
            first = self.attribute_encoder(x, z_base.detach(), previous_scale, previous_objects)
            mu = z_base + first.mu_offset  # the first pass's offset keeps its gradient
            z_base = mu + 0.0 * logvar
            previous_scale = None if warm else first.mu_scale.detach()
        attrs = self.attribute_encoder(x, z_base.detach(), previous_scale, previous_objects)
        obj_on_a = attrs.log_obj_on_a.exp().clamp_min(1e-5)  # [B, K]
        obj_on_b = attrs.log_obj_on_b.exp().clamp_min(1e-5)
        mu_tot = z_base + attrs.mu_offset
        if deterministic:
            z, z_scale, z_depth = mu_tot, attrs.mu_scale, attrs.mu_depth
            obj_on = obj_on_a / (obj_on_a + obj_on_b)  # the Beta mean
        else:
            z = reparameterize(mu_tot, attrs.logvar_offset)
            reparameterize(attrs.mu_offset, attrs.logvar_offset)  # official draws an unused offset sample (§2.7)
            z_scale = reparameterize(attrs.mu_scale, attrs.logvar_scale)
            z_depth = reparameterize(attrs.mu_depth, attrs.logvar_depth)
            obj_on = torch.distributions.Beta(obj_on_a, obj_on_b).rsample()
        if noisy:
            # A fixed scale plus noise, with zero gradient to the scale head (§2.3 step 7, §8 item 15).
            z_scale = 0.0 * z_scale + (self.noisy_scale_logit + 0.1 * torch.randn_like(z_scale))
        if warmup:
            # Official: z_base, z and z_scale are detached. The anchors `mu` (official output `mu`, equal in value to
            # `z_base`) are a separate variable and keep their gradient, so the Chamfer term still trains the prior.
            z, z_scale = z.detach(), z_scale.detach()
        mu_f, logvar_f, glimpses = self.features_encoder(x, z, z_scale.detach())
        z_features = mu_f if deterministic else reparameterize(mu_f, logvar_f)
        return ForegroundPosterior(
            mu, z, attrs.mu_offset, attrs.logvar_offset, attrs.mu_scale, attrs.logvar_scale, z_scale,
            attrs.mu_depth, attrs.logvar_depth, z_depth, obj_on_a, obj_on_b, obj_on, mu_f, logvar_f, z_features,
            glimpses,
        )

    def decode(self, z: torch.Tensor, z_scale: torch.Tensor, z_depth: torch.Tensor, obj_on: torch.Tensor,
               z_features: torch.Tensor, *, noisy: bool = False) -> tuple[torch.Tensor, Composite]:
        """Decode glimpses [B, K, 1+C, S, S] from z_features [B, K, D] and blend them (`FgDLP.decode_all`, §2.4).
        noisy: jitter the pasted alphas (one randn [B, K, 1, H, W] draw)."""
        dec_glimpses = self.glimpse_decoder(z_features)
        blend = composite_particles(dec_glimpses, z, z_scale, obj_on, z_depth, self.image_size, alpha_noise=noisy)
        return dec_glimpses, blend


@dataclass
class DLPv2Particles:
    """A (possibly edited) deterministic posterior, enough to decode an image with `DLPv2.decode`.

    position: [B, K, 2] (y, x) in [-1, 1]; scale: [B, K, 2] glimpse-scale logits (the glimpse spans
    sigmoid(scale) * (H - 1) pixels); depth: [B, K, 1] (smaller = in front); obj_on: [B, K] transparency in [0, 1];
    features: [B, K, D] visual features; bg_features: [B, Dbg] background latent.
    Informational (not used by `decode`): anchors [B, K, 2], kp_prior [B, Kp, 2], position_logvar [B, K, 2] (the
    offsets' log-variance), features_logvar [B, K, D].
    """

    position: torch.Tensor
    scale: torch.Tensor
    depth: torch.Tensor
    obj_on: torch.Tensor
    features: torch.Tensor
    bg_features: torch.Tensor
    anchors: torch.Tensor | None = None
    kp_prior: torch.Tensor | None = None
    position_logvar: torch.Tensor | None = None
    features_logvar: torch.Tensor | None = None

    def replace(self, **changes: torch.Tensor) -> "DLPv2Particles":
        return replace(self, **changes)


SCALE_RANGE = (0.02, 1.0)  # editable glimpse sides, as fractions of the image side
DEPTH_RANGE = (-4.0, 4.0)


def particle_view(particles: DLPv2Particles) -> ParticleView:
    """DLPv2 (and DDLP) particles [B, K, ...] in the common vocabulary (`dlp.models.base.ParticleView`)."""
    p = particles
    return ParticleView(
        positions=p.position, features=p.features, confidence=p.obj_on, background=p.bg_features,
        position_logvar=p.position_logvar, feature_logvar=p.features_logvar, presence=p.obj_on,
        attributes={"scale": torch.sigmoid(p.scale), "depth": p.depth},
        attribute_ranges={"scale": SCALE_RANGE, "depth": DEPTH_RANGE},
    )


def apply_view(particles: DLPv2Particles, view: ParticleView, switched_off: torch.Tensor | None = None
               ) -> DLPv2Particles:
    """The particles of an edited view: positions, features, background, transparency, scale and depth."""
    presence = view.presence
    if switched_off is not None:
        presence = presence.masked_fill(switched_off, 0.0)
    scale = view.attributes["scale"].clamp(1e-6, 1 - 1e-6)  # back to logits (edits stay within SCALE_RANGE)
    return replace(particles, position=view.positions, features=view.features, bg_features=view.background,
                   obj_on=presence, scale=torch.log(scale / (1 - scale)), depth=view.attributes["depth"])


@dataclass
class DLPv2Decoded:
    """A decoding of particles. rec: [B, C, H, W] image (unclamped); bg: [B, C, H, W] background;
    dec_objects: [B, C, H, W] blended foreground; dec_glimpses: [B, K, 1+C, S, S] decoded RGBA glimpses (alpha
    first); alpha_masks: [B, K, 1, H, W] each particle's effective alpha; bg_mask: [B, 1, H, W] background weight."""

    rec: torch.Tensor
    bg: torch.Tensor
    dec_objects: torch.Tensor
    dec_glimpses: torch.Tensor
    alpha_masks: torch.Tensor
    bg_mask: torch.Tensor


@dataclass
class DLPv2Output:
    """Everything one forward pass computes (official output keys in brackets, §2.8).

    kp_prior: [B, Kp, 2] prior proposals, detached [kp_p]; with filtering 'none' all NP proposals in patch order.
    anchors: [B, K, 2] proposal (or mixer output) + first-pass offset [mu, z_base]; their log-variance is 0 [logvar].
    z: [B, K, 2] final positions (y, x) [z].
    mu_offset, logvar_offset: [B, K, 2] position offsets from the anchors.
    mu_scale, logvar_scale, z_scale: [B, K, 2] glimpse-scale logits (s_y, s_x).
    mu_depth, logvar_depth, z_depth: [B, K, 1] depth.
    obj_on_a, obj_on_b: [B, K] transparency Beta parameters; obj_on: [B, K] transparency.
    mu_features, logvar_features, z_features: [B, K, D] glimpse features.
    mu_bg, logvar_bg, z_bg: [B, Dbg] background latent.
    glimpses: [B, K, C, S, S] crops of the image read by the features encoder [cropped_objects_original].
    dec_glimpses: [B, K, 1+C, S, S] decoded RGBA glimpses, alpha first [dec_objects_original].
    dec_objects: [B, C, H, W] blended foreground [dec_objects].
    alpha_masks: [B, K, 1, H, W] effective alpha of each particle [alpha_masks].
    bg_mask: [B, 1, H, W] weight of the background in rec.
    bg: [B, C, H, W] decoded background [bg].
    rec: [B, C, H, W] reconstruction `bg_mask * bg + dec_objects`, unclamped [rec].
    The official outputs `logvar` ([B, K, 2]) and `z_kp_bg` ([B, 1, 2]) are always zeros and not stored.
    """

    kp_prior: torch.Tensor
    anchors: torch.Tensor
    z: torch.Tensor
    mu_offset: torch.Tensor
    logvar_offset: torch.Tensor
    mu_scale: torch.Tensor
    logvar_scale: torch.Tensor
    z_scale: torch.Tensor
    mu_depth: torch.Tensor
    logvar_depth: torch.Tensor
    z_depth: torch.Tensor
    obj_on_a: torch.Tensor
    obj_on_b: torch.Tensor
    obj_on: torch.Tensor
    mu_features: torch.Tensor
    logvar_features: torch.Tensor
    z_features: torch.Tensor
    mu_bg: torch.Tensor
    logvar_bg: torch.Tensor
    z_bg: torch.Tensor
    glimpses: torch.Tensor
    dec_glimpses: torch.Tensor
    dec_objects: torch.Tensor
    alpha_masks: torch.Tensor
    bg_mask: torch.Tensor
    bg: torch.Tensor
    rec: torch.Tensor

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class DLPv2(nn.Module, PretrainedMixin):
    """DLPv2: object-centric particles for single images (the official `ObjectDLP`).

    >>> from dlp.models.dlpv2 import DLPv2, DLPv2Config
    >>> model = DLPv2(DLPv2Config(image_size=64, n_kp_enc=8, n_kp_prior=16, learned_feature_dim=4))
    >>> out = model(torch.rand(2, 3, 64, 64), deterministic=True)
    >>> out.z.shape, out.rec.shape
    (torch.Size([2, 8, 2]), torch.Size([2, 3, 64, 64]))
    """

    def __init__(self, config: DLPv2Config):
        super().__init__()
        self.config = cfg = config
        # The loss's constant priors, kept as buffers as in the official state dict (scale_prior_mu is float64, §2.1).
        for name, value in vars(prior_constants(cfg)).items():
            self.register_buffer(name, value)
        self.foreground = DLPv2Foreground(cfg)
        self.background = BackgroundVAE(cfg.in_channels, cfg.enc_channels, cfg.image_size, cfg.bg_feature_dim,
                                        cfg.pad_mode)
        init_official(self)

    def priors(self) -> DLPv2Priors:
        """The constant priors of the objective (this model's buffers)."""
        return DLPv2Priors(**{f.name: getattr(self, f.name) for f in fields(DLPv2Priors)})

    # ------------------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *, deterministic: bool = False, warmup: bool = False, noisy: bool = False,
                x_prior: torch.Tensor | None = None) -> DLPv2Output:
        """Encode, sample and decode a batch x [B, C, H, W] in [0, 1] (`ObjectDLP.forward`, §2.2).

        deterministic: posterior means instead of samples (obj_on = the Beta mean).
        warmup: the glimpse warm-up phase (positions and scales detached; the loss compares glimpses).
        noisy: the noisy phase (fixed glimpse scale plus noise, noisy alphas, warm priors in the loss).
        x_prior: the image the prior proposes keypoints on (default x).
        Random draws follow the official order (§2.7), so a seeded run reproduces the official samples.
        """
        self._check_input(x)
        fg, cfg = self.foreground, self.config
        kp_prior = fg.prior_keypoints(x if x_prior is None else x_prior)
        kp_init = fg.initial_anchors(x, kp_prior)
        post = fg.encode(x, kp_init, deterministic=deterministic, warmup=warmup, noisy=noisy)
        dec_glimpses, blend = fg.decode(post.z, post.z_scale, post.z_depth, post.obj_on, post.z_features, noisy=noisy)
        bg_input_mask = background_encoder_mask(post.z, post.obj_on, cfg.anchor_s, cfg.image_size)
        mu_bg, logvar_bg = self.background.encode(x, bg_input_mask)
        z_bg = mu_bg if deterministic else reparameterize(mu_bg, logvar_bg)
        bg = self.background.decode(z_bg)
        rec = blend.bg_mask * bg + blend.dec_objects
        return DLPv2Output(
            kp_prior.detach(), post.anchors, post.z, post.mu_offset, post.logvar_offset, post.mu_scale,
            post.logvar_scale, post.z_scale, post.mu_depth, post.logvar_depth, post.z_depth, post.obj_on_a,
            post.obj_on_b, post.obj_on, post.mu_features, post.logvar_features, post.z_features, mu_bg, logvar_bg,
            z_bg, post.glimpses, dec_glimpses, blend.dec_objects, blend.alpha_masks, blend.bg_mask, bg, rec,
        )

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> DLPv2Particles:
        """The deterministic posterior of images x [B, C, H, W] (no sampling, no gradient)."""
        self._check_input(x)
        fg, cfg = self.foreground, self.config
        kp_prior = fg.prior_keypoints(x)
        post = fg.encode(x, fg.initial_anchors(x, kp_prior), deterministic=True)
        mask = background_encoder_mask(post.z, post.obj_on, cfg.anchor_s, cfg.image_size)
        mu_bg, _ = self.background.encode(x, mask)
        return DLPv2Particles(post.z, post.z_scale, post.z_depth, post.obj_on, post.z_features, mu_bg,
                              anchors=post.anchors, kp_prior=kp_prior, position_logvar=post.logvar_offset,
                              features_logvar=post.logvar_features)

    def decode(self, particles: DLPv2Particles) -> DLPv2Decoded:
        """Decode (possibly edited) particles into an image (`decode_all`)."""
        p = particles
        dec_glimpses, blend = self.foreground.decode(p.position, p.scale, p.depth, p.obj_on, p.features)
        bg = self.background.decode(p.bg_features)
        rec = blend.bg_mask * bg + blend.dec_objects
        return DLPv2Decoded(rec, bg, blend.dec_objects, dec_glimpses, blend.alpha_masks, blend.bg_mask)

    # ------------------------------------------------------------------------------------------------------------
    # The common particle vocabulary (evaluation and the demo)
    def particle_view(self, particles: DLPv2Particles) -> ParticleView:
        """`encode`'s particles in the library's common vocabulary; the glimpse scale is shown as the fraction of the
        image side the glimpse spans (`sigmoid(scale)`), the depth as it is (smaller = in front)."""
        return particle_view(particles)

    def apply_view(self, particles: DLPv2Particles, view: ParticleView,
                   switched_off: torch.Tensor | None = None) -> DLPv2Particles:
        """`particles` with an edited view written back; switched-off particles [B, K] get transparency 0."""
        return apply_view(particles, view, switched_off)

    def _check_input(self, x: torch.Tensor) -> None:
        check_images(x, self.config)

    def extra_repr(self) -> str:
        cfg = self.config
        return (f"{cfg.n_kp_enc} particles, {cfg.image_size}px, glimpses {cfg.glimpse_size}px, "
                f"filtering {cfg.filtering_heuristic!r}")
