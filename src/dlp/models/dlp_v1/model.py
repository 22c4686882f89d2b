"""Deep Latent Particles (Daniel & Tamar, "Unsupervised Image Representation Learning with Deep Latent Particles",
ICML 2022): a VAE whose latent is a set of particles -- a 2-D position with uncertainty and a visual feature vector
each -- with a patch spatial-softmax prior and a Chamfer-KL objective.

Two variants share this module (`DLPConfig.is_object_model`):
* the *masked* model decodes the whole image with a CNN from Gaussian maps, PointNet++ maps and masked heat-maps;
* the *object* model decodes an RGBA glimpse per particle and alpha-composites them over a decoded background.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import nn

from dlp.models.base import ParticleView, check_images
from dlp.models.dlp_v1.config import DLPConfig
from dlp.models.dlp_v1.extensions import PriorAnchoredPositionEncoder
from dlp.models.dlp_v1.glimpse import composite, paste_glimpses, square_masks
from dlp.models.dlp_v1.layers import MLP, KeypointCNN, gaussian_maps, init_official
from dlp.models.dlp_v1.modules import (
    CNNDecoder,
    GlimpseDecoder,
    GlimpseEncoder,
    HeatmapPositionEncoder,
    PatchPrior,
    PointNetPP,
)
from dlp.pretrained import PretrainedMixin

# Parameter names of checkpoints written before the position encoder became one module (prefix -> new prefix).
_LEGACY_PREFIXES = {"to_normal_stats.": "position_encoder.to_normal_stats.",
                    "obj_on_head.": "position_encoder.obj_on_head.",
                    "anchor_offsets.": "position_encoder."}
# An "off" particle of a masked model is parked this many sigmas beyond the image border (see `apply_view`).
PARK_SIGMAS = 5.0


@dataclass
class Particles:
    """The posterior particles of a batch of images (background particle last).

    mu, logvar: [B, K+1, 2] (y, x) positions in [-1, 1] and their log-variances.
    mu_features, logvar_features: [B, K+1, D] visual features.
    obj_on: [B, K] transparency ("on") weights of object models, None for masked models.
    heatmap: [B, K, F, F] raw encoder heat-maps (the masked model's decoder reads them for the background).
    """

    mu: torch.Tensor
    logvar: torch.Tensor
    mu_features: torch.Tensor
    logvar_features: torch.Tensor
    obj_on: torch.Tensor | None
    heatmap: torch.Tensor


@dataclass
class Decoded:
    """A decoding of particles.

    rec: [B, C, H, W] reconstruction (unclamped).
    dec_glimpses: [B, K, 1+C, S, S] decoded glimpses (alpha channel 0, then the C image channels), object models only.
    dec_objects: [B, C, H, W] the composited objects without background, object models only.
    gmap: [B, 2K or 3K, F, F] decoder input maps (None in the object model's warm-up).
    """

    rec: torch.Tensor
    dec_glimpses: torch.Tensor | None = None
    dec_objects: torch.Tensor | None = None
    gmap: torch.Tensor | None = None


@dataclass
class DLPOutput:
    """Everything one forward pass computes.

    kp_prior: [B, P, 2] prior keypoint proposals, farthest from their patch centre first (P = n_kp_prior).
    mu, logvar, z: [B, K+1, 2] posterior means, log-variances and samples (z = mu when deterministic).
    mu_features, logvar_features, z_features: [B, K+1, D] posterior visual features and their samples.
    obj_on: [B, K] learned "on" weights (object models), None for masked models.
    heatmap: [B, K, F, F] encoder heat-maps.
    glimpses: encoder glimpses: [B, K, C, S, S] image crops (object models) or [B, K, K, s, s] heat-map crops
        (masked models); None without a glimpse encoder.
    rec: [B, C, H, W] reconstruction (unclamped; in the object model's warm-up: objects over black).
    dec_glimpses: [B, K, 1+C, S, S] decoded glimpses (alpha first, then the C image channels), object models only.
    dec_objects: [B, C, H, W] composited foreground, object models only.
    gmap: [B, 2K or 3K, F, F] decoder input maps; None in warm-up.
    """

    kp_prior: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    z: torch.Tensor
    mu_features: torch.Tensor
    logvar_features: torch.Tensor
    z_features: torch.Tensor
    obj_on: torch.Tensor | None
    heatmap: torch.Tensor
    glimpses: torch.Tensor | None
    rec: torch.Tensor
    dec_glimpses: torch.Tensor | None
    dec_objects: torch.Tensor | None
    gmap: torch.Tensor | None

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


class DLP(nn.Module, PretrainedMixin):
    """Deep Latent Particles. Build it from a `DLPConfig` (or a preset: `dlp.create_model("celeba")`).

    >>> from dlp import DLP, DLPConfig
    >>> model = DLP(DLPConfig(image_size=64, enc_channels=(32, 64, 128), n_kp_enc=10, n_kp_prior=20))
    >>> out = model(torch.rand(2, 3, 64, 64))
    >>> out.mu.shape  # 10 particles + the background particle, (y, x)
    torch.Size([2, 11, 2])
    """

    def __init__(self, config: DLPConfig):
        super().__init__()
        self.config = cfg = config
        k, d, fmap = cfg.n_kp_enc, cfg.learned_feature_dim, cfg.feature_map_size
        heatmap_size = k * fmap**2

        self.encoder = KeypointCNN(cfg.in_channels, cfg.enc_channels, k, first_kernel_size=7, pad_mode=cfg.pad_mode)
        # The one place where the position encoder is chosen (the official MLP or our prior-anchored extension).
        if cfg.position_encoder == "prior_anchored":
            self.position_encoder = PriorAnchoredPositionEncoder(cfg.in_channels, cfg.image_size, cfg.glimpse_size,
                                                                 cfg.anchor_s, cfg.glimpse_channels,
                                                                 exclusive=cfg.exclusive_patches)
        else:
            self.position_encoder = HeatmapPositionEncoder(heatmap_size, k, cfg.is_object_model)
        # With a glimpse encoder this MLP encodes only the background particle; without one, every particle.
        self.bg_encoder = MLP(heatmap_size, 2 * d)
        if cfg.is_object_model:
            self.glimpse_encoder = GlimpseEncoder(d, cfg.image_size, cfg.glimpse_size, cfg.in_channels, use_cnn=True,
                                                  cnn_channels=cfg.glimpse_channels)
        elif cfg.use_object_enc:
            self.glimpse_encoder = GlimpseEncoder(d, fmap, cfg.feature_glimpse_size, k, use_cnn=False)
        else:
            self.glimpse_encoder = None
        self.prior = PatchPrior(cfg.in_channels, cfg.prior_channels, cfg.image_size, cfg.patch_size, cfg.n_kp_prior,
                                cfg.pad_mode)
        self.pointnet = PointNetPP(d, k, fmap, k=cfg.pointnet_k, pad_mode=cfg.pad_mode)
        masked_decoder = cfg.dec_bone == "gauss_pointnetpp_feat"
        self.decoder = CNNDecoder((3 if masked_decoder else 2) * k, cfg.enc_channels, k + 1, cfg.in_channels,
                                  cfg.pad_mode)
        # Decoded glimpses: an alpha channel, then the image channels.
        self.glimpse_decoder = GlimpseDecoder(d, cfg.glimpse_size, 1 + cfg.in_channels) if cfg.is_object_model else None
        init_official(self)
        self.register_load_state_dict_pre_hook(_rename_legacy_keys)

    # ------------------------------------------------------------------------------------------------------------
    # Encoding
    def _encode_positions(self, x: torch.Tensor, anchors: torch.Tensor | None = None):
        cfg = self.config
        heatmap = self.encoder(x)  # [B, K, F, F]
        b = heatmap.shape[0]
        if self.position_encoder.needs_prior and anchors is None:
            anchors, _ = self.prior(x)
        mu, logvar, obj_on = self.position_encoder(x, heatmap, anchors)  # [B, K, 2] x 2, [B, K] or None
        bg_logvar = torch.full((b, 1, 2), cfg.logvar_prior, device=x.device, dtype=mu.dtype)
        mu = torch.cat([mu, torch.zeros_like(bg_logvar)], dim=1)
        logvar = torch.cat([logvar, bg_logvar], dim=1)
        return mu, logvar, obj_on, heatmap

    def _encode_features(self, x, mu, z, heatmap, obj_on):
        """Visual features of the K foreground particles and the background particle: ([B, K+1, D] x 2, glimpses)."""
        cfg = self.config
        k, fmap = cfg.n_kp_enc, cfg.feature_map_size
        hm = self.position_encoder.feature_heatmap(heatmap)
        kp = mu[:, :k].detach()
        if self.glimpse_encoder is None:
            fg = (gaussian_maps(z[:, :k], fmap, cfg.sigma) > cfg.mask_threshold).to(hm.dtype)
            masks = torch.cat([fg, 1 - fg.sum(1, keepdim=True).clamp(0, 1)], dim=1)  # [B, K+1, F, F]
            stats = self.bg_encoder((masks[:, :, None] * hm[:, None]).flatten(2))
            mu_f, logvar_f = stats.chunk(2, dim=-1)
            return mu_f, logvar_f, None
        if cfg.is_object_model:
            mu_f, logvar_f, glimpses = self.glimpse_encoder(x, kp, exclusive=cfg.exclusive_patches, obj_on=obj_on)
            squares = square_masks(kp, fmap, cfg.feature_glimpse_size)[:, :, 0]  # [B, K, F, F]
            bg_mask = 1 - squares.sum(1, keepdim=True).clamp(0, 1)
        else:
            mu_f, logvar_f, glimpses = self.glimpse_encoder(hm, kp, exclusive=cfg.exclusive_patches)
            # The masked model's background is what the sampled particles' Gaussian discs leave uncovered.
            fg = (gaussian_maps(z[:, :k], fmap, cfg.sigma) > cfg.mask_threshold).to(hm.dtype)
            bg_mask = 1 - fg.sum(1, keepdim=True).clamp(0, 1)
        mu_bg, logvar_bg = self.bg_encoder((bg_mask[:, :, None] * hm[:, None]).flatten(2)).chunk(2, dim=-1)
        return torch.cat([mu_f, mu_bg], 1), torch.cat([logvar_f, logvar_bg], 1), glimpses

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> Particles:
        """Posterior particle statistics of images x [B, C, H, W] (no sampling, no gradient)."""
        self._check_input(x)
        mu, logvar, obj_on, heatmap = self._encode_positions(x)
        mu_f, logvar_f, _ = self._encode_features(x, mu, mu, heatmap, obj_on)
        return Particles(mu, logvar, mu_f, logvar_f, obj_on, heatmap)

    # ------------------------------------------------------------------------------------------------------------
    # Decoding
    def _decode_background(self, z, z_features, heatmap, *, detach_fg_features: bool):
        cfg = self.config
        k, fmap = cfg.n_kp_enc, cfg.feature_map_size
        g = gaussian_maps(z[:, :k], fmap, cfg.sigma)  # [B, K, F, F]
        features = z_features
        if detach_fg_features:
            # PointNet never trains the object model's glimpse encoder; only the background row keeps its gradient.
            features = torch.cat([z_features[:, :k].detach(), z_features[:, k:]], dim=1)
        positions = z.detach()
        pn = self.pointnet(positions, torch.cat([positions, features], dim=-1))  # [B, K, F, F]
        if cfg.dec_bone == "gauss_pointnetpp_feat":
            fg = (g > cfg.mask_threshold).to(g.dtype).sum(1, keepdim=True).clamp(0, 1)
            if heatmap is None:
                raise ValueError("the masked decoder needs the encoder heat-map: pass heatmap=particles.heatmap.")
            gmap = torch.cat([g, fg * pn, (1 - fg) * heatmap.detach()], dim=1)
        else:
            gmap = torch.cat([g, pn], dim=1)
        return self.decoder(gmap), gmap

    def _decode_objects(self, z, z_features, obj_on, background, *, noisy: bool):
        cfg = self.config
        k = cfg.n_kp_enc
        dec_glimpses = self.glimpse_decoder(z_features[:, :k])  # [B, K, 4, S, S]
        pasted = paste_glimpses(dec_glimpses, z[:, :k], cfg.image_size).clamp(0, 1)  # [B, K, 4, H, W]
        alpha, rgb = pasted.split([1, pasted.shape[2] - 1], dim=2)  # split: its backward concatenates, no zero canvas
        if noisy:
            alpha = alpha + cfg.sigma * torch.randn_like(alpha) * (alpha > 0.1).to(alpha.dtype)
        rec, dec_objects = composite(alpha, rgb, obj_on, background)
        return rec, dec_glimpses, dec_objects

    def decode(self, particles: Particles) -> Decoded:
        """Decode (possibly edited) particles, e.g. `model.decode(model.encode(x))`.

        Reads `mu` [B, K+1, 2] and `mu_features` [B, K+1, D] (background row last), `heatmap` (the masked model's
        decoder reads the encoder heat-maps where no particle sits) and `obj_on` [B, K] (object models; None = all on).
        """
        z, z_features, obj_on = particles.mu, particles.mu_features, particles.obj_on
        background, gmap = self._decode_background(z, z_features, particles.heatmap, detach_fg_features=False)
        if not self.config.is_object_model:
            return Decoded(background, gmap=gmap)
        if obj_on is None:
            obj_on = torch.ones(z.shape[0], self.config.n_kp_enc, device=z.device, dtype=z.dtype)
        rec, dec_glimpses, dec_objects = self._decode_objects(z, z_features, obj_on, background, noisy=False)
        return Decoded(rec, dec_glimpses, dec_objects, gmap)

    # ------------------------------------------------------------------------------------------------------------
    # The common particle vocabulary (evaluation and the demo)
    def particle_view(self, particles: Particles) -> ParticleView:
        """The foreground particles of `encode`'s output in the library's common vocabulary (`ParticleView`)."""
        k = self.config.n_kp_enc
        logvar = particles.logvar[:, :k]
        confidence = particles.obj_on if particles.obj_on is not None else -logvar.sum(-1)
        return ParticleView(
            positions=particles.mu[:, :k], features=particles.mu_features[:, :k], confidence=confidence,
            background=particles.mu_features[:, k], position_logvar=logvar,
            feature_logvar=particles.logvar_features[:, :k], presence=particles.obj_on,
            background_particle={"position": particles.mu[:, k], "position_logvar": particles.logvar[:, k],
                                 "feature_logvar": particles.logvar_features[:, k]},
        )

    def apply_view(self, particles: Particles, view: ParticleView, switched_off: torch.Tensor | None = None
                   ) -> Particles:
        """`particles` with the positions, features, background and presence of an edited `view`.

        switched_off [B, K] bool: particles to hide. Object models hide them through `obj_on` = 0. The masked model
        has no presence variable: an off particle is parked just outside the image, 1 + 5 sigma from the centre on
        the side of its nearest edge, so that its Gaussian disc covers no pixel (< 1e-5 everywhere) and the decoder
        shows the encoder heat-map there, as it does for the background; it keeps its place in the set (the decoder
        needs all K) and its features.
        """
        positions, presence = view.positions, view.presence
        if switched_off is not None and bool(switched_off.any()):
            if presence is not None:
                presence = presence.masked_fill(switched_off, 0.0)
            else:
                positions = torch.where(switched_off[..., None], self._parked(positions), positions)
        background = particles.mu[:, -1:]
        return replace(particles, mu=torch.cat([positions, background], 1),
                       mu_features=torch.cat([view.features, view.background[:, None]], 1), obj_on=presence)

    def _parked(self, kp: torch.Tensor) -> torch.Tensor:
        """Positions just outside the image, beyond the nearest edge of each particle: [B, K, 2] -> [B, K, 2]."""
        park = 1.0 + PARK_SIGMAS * self.config.sigma
        axis = kp.abs().argmax(dim=-1, keepdim=True)  # 0: nearer the top/bottom edge, 1: the left/right edge
        nearest = torch.gather(kp, -1, axis)
        sign = torch.where(nearest < 0, -1.0, 1.0).to(kp.dtype)
        return kp.scatter(-1, axis, sign * park)

    # ------------------------------------------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        x_prior: torch.Tensor | None = None,
        *,
        deterministic: bool = False,
        warmup: bool = False,
        noisy_masks: bool = False,
    ) -> DLPOutput:
        """Encode, sample and decode a batch x [B, C, H, W] in [0, 1].

        x_prior: the image the prior proposes keypoints on (a differently warped view of x; default x).
        deterministic: use the posterior means instead of samples (z = mu, z_features = mu_features).
        warmup: object models only -- skip the background decoder and reconstruct objects over black.
        noisy_masks: object models only -- replace obj_on by U(0, 1) noise and jitter the decoded alphas, the
            official early-training phase. (Masked models have neither, so both flags are no-ops there.)
        """
        self._check_input(x)
        object_model = self.config.is_object_model
        noisy = noisy_masks and object_model
        kp_prior, _ = self.prior(x if x_prior is None else x_prior)

        mu, logvar, obj_on, heatmap = self._encode_positions(x, kp_prior if x_prior is None else None)
        z = mu if deterministic else mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        # Random draws happen in the official order, so a seeded run reproduces the official samples.
        obj_on_in = 0.0 * obj_on + torch.rand_like(obj_on) if noisy else obj_on
        mu_f, logvar_f, glimpses = self._encode_features(x, mu, z, heatmap, obj_on_in)
        z_f = mu_f if deterministic else mu_f + torch.randn_like(mu_f) * torch.exp(0.5 * logvar_f)

        if warmup and object_model:
            rec, gmap = torch.zeros_like(x), None
        else:
            rec, gmap = self._decode_background(z, z_f, heatmap, detach_fg_features=object_model)
        dec_glimpses = dec_objects = None
        if object_model:
            obj_on_in = 0.0 * obj_on + torch.rand_like(obj_on) if noisy else obj_on
            rec, dec_glimpses, dec_objects = self._decode_objects(z, z_f, obj_on_in, rec, noisy=noisy)
        return DLPOutput(kp_prior, mu, logvar, z, mu_f, logvar_f, z_f, obj_on, heatmap, glimpses, rec, dec_glimpses,
                         dec_objects, gmap)

    def fuse_for_inference(self) -> DLP:
        """A copy of the model for fast inference (`model.fuse_for_inference()(x, deterministic=True)`).

        Every BatchNorm is folded into the convolution (or linear layer) before it, with the running statistics of
        eval mode, and on CPUs the activation runs inside oneDNN's convolution: a ConvBlock becomes pad -> one fused
        kernel [-> upsampling]. The outputs equal the eval-mode model's up to float32 rounding (relative ~1e-6).
        The copy is in eval mode without gradients on its parameters; it cannot train, and its state dict has the
        folded layout (save the original model, not the copy). Sampling (`deterministic=False`) works as usual.
        """
        import copy

        from dlp.models.dlp_v1.layers import ConvBlock
        from dlp.models.dlp_v1.modules import EdgeConv

        fused = copy.deepcopy(self).eval()
        for module in list(fused.modules()):
            if isinstance(module, (ConvBlock, EdgeConv)):
                module.fold_batch_norm()
        fused.requires_grad_(False)
        fused.fused_for_inference = True
        return fused

    def train(self, mode: bool = True) -> DLP:
        if mode and getattr(self, "fused_for_inference", False):
            raise RuntimeError("this model was fused for inference (fuse_for_inference): it cannot train; train the "
                               "original model.")
        return super().train(mode)

    def _check_input(self, x: torch.Tensor) -> None:
        check_images(x, self.config)

    def extra_repr(self) -> str:
        kind = "object" if self.config.is_object_model else "masked"
        return f"{kind} model, {self.config.n_kp_enc} particles, {self.config.image_size}px"


def _rename_legacy_keys(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    """Checkpoints written before the position encoder became one module keep loading (strictly)."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        local = key[len(prefix):]
        for old, new in _LEGACY_PREFIXES.items():
            if local.startswith(old):
                state_dict[prefix + new + local[len(old):]] = state_dict.pop(key)
                break
