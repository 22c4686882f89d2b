"""DDLP (Daniel & Tamar, "DDLP: Unsupervised Object-centric Video Prediction with Deep Dynamic Latent Particles",
TMLR 2024), the video model `ObjectDynamicsDLP` of taldatech/ddlp, numerically identical to the official code.

Every frame of a clip is encoded into DLPv2 particles by a tracking encoder (frame 0 from the prior's proposals, each
later frame anchored at the previous frame's particles and correlating their glimpses with the previous crops), all
frames are decoded at once over per-frame backgrounds, and PINT (`modules.DynamicsDLP`) predicts every frame's
particles from the earlier frames. Rollouts encode a few conditioning frames and let PINT continue alone.
Section numbers ("§4.2") refer to the DLPv2/DDLP model spec.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from dlp.models.ddlp.config import PINT_DROPOUT, DDLPConfig
from dlp.models.ddlp.modules import DDLPParticles, DynamicsDLP, DynamicsPrediction
from dlp.models.dlpv2.layers import init_official
from dlp.models.dlpv2.losses import DLPv2Priors, prior_constants
from dlp.models.dlpv2.model import DLPv2Foreground, ForegroundPosterior, reparameterize
from dlp.models.dlpv2.modules import BackgroundVAE, background_encoder_mask
from dlp.pretrained import PretrainedMixin


@dataclass
class DDLPDecoded:
    """A decoding of particle trajectories. rec: [B, T, C, H, W] frames (unclamped); bg: [B, T, C, H, W] backgrounds;
    dec_objects: [B, T, C, H, W] blended foregrounds; dec_glimpses: [B, T, K, 1+C, S, S] decoded RGBA glimpses (alpha
    first); alpha_masks: [B, T, K, 1, H, W] each particle's effective alpha; bg_mask: [B, T, 1, H, W] background
    weight."""

    rec: torch.Tensor
    bg: torch.Tensor
    dec_objects: torch.Tensor
    dec_glimpses: torch.Tensor
    alpha_masks: torch.Tensor
    bg_mask: torch.Tensor


@dataclass
class RolloutResult:
    """A video prediction (`ObjectDynamicsDLP.sample`, §4.8).

    frames: [B, cond_steps + horizon, C, H, W] reconstructions of the conditioning frames followed by the predicted
        frames, unclamped; particles: the latent trajectories [B, cond_steps + horizon, ...] (position, scale, depth,
        obj_on, features, bg_features); cond_steps: how many leading frames are conditioning frames;
    decoded: every decoding product of the trajectory (glimpses, alpha masks, backgrounds).
    """

    frames: torch.Tensor
    particles: DDLPParticles
    cond_steps: int
    decoded: DDLPDecoded


@dataclass
class DDLPOutput:
    """Everything one forward pass over clips x [B, T, C, H, W] computes (official output keys in brackets, §4.5; the
    official per-frame outputs are these flattened to [B*T, ...], row b * T + t).

    kp_prior: [B, T, Kp, 2] prior proposals of the first min(num_static_frames, T) frames, later frames repeating the
        last of them; detached [kp_p].
    anchors: [B, T, K, 2] frame 0: proposal + first-pass offset; frames t >= 1: the final positions of frame t - 1
        (detached) [mu, z_base]; their log-variance is 0 [logvar].
    z: [B, T, K, 2] final positions (y, x) [z]; mu_offset, logvar_offset: [B, T, K, 2] offsets from the anchors.
    mu_scale, logvar_scale, z_scale: [B, T, K, 2] glimpse-scale logits (s_y, s_x).
    mu_depth, logvar_depth, z_depth: [B, T, K, 1] depth.
    obj_on_a, obj_on_b: [B, T, K] transparency Beta parameters (>= 1e-5); obj_on: [B, T, K] transparency.
    mu_features, logvar_features, z_features: [B, T, K, D] glimpse features.
    mu_bg, logvar_bg, z_bg: [B, T, Dbg] background latents.
    glimpses: [B, T, K, C, S, S] the features encoder's crops [cropped_objects_original].
    dec_glimpses: [B, T, K, 1+C, S, S] decoded RGBA glimpses, alpha first [dec_objects_original].
    dec_objects: [B, T, C, H, W] blended foregrounds [dec_objects]; alpha_masks: [B, T, K, 1, H, W] [alpha_masks].
    bg_mask: [B, T, 1, H, W] background weight; bg: [B, T, C, H, W] backgrounds [bg].
    rec: [B, T, C, H, W] reconstructions `bg_mask * bg + dec_objects`, unclamped [rec].
    dynamics: PINT's predictions from frames 0 ... T-2, [B, T-1, ...]; index t is the prior of frame t + 1
        [mu_dyn, logvar_dyn, mu_scale_dyn, ..., logvar_bg_dyn].
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
    dynamics: DynamicsPrediction

    def particles(self) -> DDLPParticles:
        """The (sampled) particle trajectories of this pass."""
        return DDLPParticles(self.z, self.z_scale, self.z_depth, self.obj_on, self.z_features, self.z_bg,
                             anchors=self.anchors, kp_prior=self.kp_prior)

    def to_dict(self) -> dict[str, torch.Tensor]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "dynamics"}
        return out | {f"dyn_{k}": v for k, v in self.dynamics.to_dict().items()}


def _stack_frames(posteriors: list[ForegroundPosterior]) -> ForegroundPosterior:
    """Per-frame posteriors [B, ...] -> one posterior whose tensors are [B, T, ...]."""
    return ForegroundPosterior(*(torch.stack([getattr(p, f.name) for p in posteriors], dim=1)
                                 for f in fields(ForegroundPosterior)))


class DDLP(nn.Module, PretrainedMixin):
    """DDLP: object-centric particles for video, with PINT dynamics (the official `ObjectDynamicsDLP`).

    >>> from dlp.models.ddlp import DDLP, DDLPConfig
    >>> cfg = DDLPConfig(image_size=64, patch_size=8, n_kp_enc=6, n_kp_prior=12, learned_feature_dim=4,
    ...                  timestep_horizon=4, num_static_frames=2, pint_layers=1, pint_heads=2, pint_dim=32)
    >>> model = DDLP(cfg)
    >>> out = model(torch.rand(2, 5, 3, 64, 64), deterministic=True)
    >>> out.z.shape, out.rec.shape, out.dynamics.mu.shape
    (torch.Size([2, 5, 6, 2]), torch.Size([2, 5, 3, 64, 64]), torch.Size([2, 4, 6, 2]))
    >>> model.rollout(torch.rand(2, 3, 3, 64, 64), cond_steps=3, horizon=4).frames.shape
    torch.Size([2, 7, 3, 64, 64])
    """

    def __init__(self, config: DDLPConfig):
        super().__init__()
        self.config = cfg = config
        # The loss's constant priors, kept as buffers as in the official state dict (scale_prior_mu is float64, §2.1).
        for name, value in vars(prior_constants(cfg)).items():
            self.register_buffer(name, value)
        self.foreground = DLPv2Foreground(cfg)
        self.background = BackgroundVAE(cfg.in_channels, cfg.enc_channels, cfg.image_size, cfg.bg_feature_dim,
                                        cfg.pad_mode)
        init_official(self)
        self.dynamics = DynamicsDLP(cfg.learned_feature_dim, cfg.bg_feature_dim, width=cfg.pint_dim,
                                    n_heads=cfg.pint_heads, n_layers=cfg.pint_layers, block_size=cfg.timestep_horizon,
                                    n_particles=cfg.n_kp_enc, dropout=PINT_DROPOUT)

    def priors(self) -> DLPv2Priors:
        """The constant priors of the objective (this model's buffers)."""
        return DLPv2Priors(**{f.name: getattr(self, f.name) for f in fields(DLPv2Priors)})

    # ------------------------------------------------------------------------------------------------------------
    def encode_frames(self, x: torch.Tensor, *, deterministic: bool, warmup: bool = False, noisy: bool = False,
                      num_static_frames: int | None = None) -> tuple[torch.Tensor, ForegroundPosterior]:
        """The tracking encoder (`fg_sequential_opt`, §4.2): x [B, T, C, H, W] -> (kp_prior [B, T, Kp, 2] with
        gradient, the particles' posterior with [B, T, ...] tensors).

        The prior proposes keypoints on the first min(num_static_frames, T) frames only (later frames repeat the last
        proposals); frame 0 is encoded from its proposals with two attribute passes; frame t >= 1 with one pass
        anchored at frame t - 1's final positions, cropping at its scales and correlating with its crops (all
        detached). This loop over frames is inherently sequential. Random draws happen inside each frame's encoding.
        """
        fg = self.foreground
        b, t = x.shape[:2]
        n_static = min(self.config.num_static_frames if num_static_frames is None else num_static_frames, t)
        kp_prior = fg.prior_keypoints(x[:, :n_static].flatten(0, 1)).view(b, n_static, -1, 2)  # [B, n_s, Kp, 2]
        kp_prior = torch.cat([kp_prior, kp_prior[:, -1:].expand(-1, t - n_static, -1, -1)], dim=1)  # [B, T, Kp, 2]
        phases = dict(deterministic=deterministic, warmup=warmup, noisy=noisy)
        frames = [fg.encode(x[:, 0], kp_prior[:, 0], **phases)]
        for i in range(1, t):
            prev = frames[-1]
            frames.append(fg.encode(
                x[:, i], prev.z.detach(), previous_objects=prev.glimpses.detach().flatten(0, 1),
                previous_scale=prev.z_scale.detach(), refine=False, **phases,
            ))
        return kp_prior, _stack_frames(frames)

    def forward(self, x: torch.Tensor, *, deterministic: bool = False, warmup: bool = False, noisy: bool = False,
                num_static_frames: int | None = None) -> DDLPOutput:
        """Encode, decode and predict clips x [B, T, C, H, W] in [0, 1], 2 <= T <= timestep_horizon + 1
        (`ObjectDynamicsDLP.forward`, §4.4).

        deterministic: posterior means instead of samples (obj_on = the Beta mean). PINT's dropout still acts in
            train mode (official, §8 item 9).
        warmup: the glimpse warm-up phase; noisy: the noisy phase (fixed glimpse scale plus noise, noisy alphas).
        num_static_frames: frames the prior proposes keypoints for (default the config's).
        Random draws follow the official order (§4.4): per frame the encoder's, then the alpha noise of all frames,
        then the background samples, then PINT's dropout.
        """
        self._check_input(x, min_frames=2, max_frames=self.config.timestep_horizon + 1)
        cfg, fg = self.config, self.foreground
        b, t = x.shape[:2]
        kp_prior, post = self.encode_frames(x, deterministic=deterministic, warmup=warmup, noisy=noisy,
                                            num_static_frames=num_static_frames)

        def flat(v: torch.Tensor) -> torch.Tensor:  # [B, T, ...] -> [B*T, ...]: all frames decoded at once
            return v.flatten(0, 1)

        def frames(v: torch.Tensor) -> torch.Tensor:  # [B*T, ...] -> [B, T, ...]
            return v.view(b, t, *v.shape[1:])

        dec_glimpses, blend = fg.decode(flat(post.z), flat(post.z_scale), flat(post.z_depth), flat(post.obj_on),
                                        flat(post.z_features), noisy=noisy)
        bg_input_mask = background_encoder_mask(flat(post.z), flat(post.obj_on), cfg.anchor_s, cfg.image_size)
        mu_bg, logvar_bg = self.background.encode(flat(x), bg_input_mask)  # [B*T, Dbg]
        z_bg = mu_bg if deterministic else reparameterize(mu_bg, logvar_bg)
        bg = self.background.decode(z_bg)
        rec = blend.bg_mask * bg + blend.dec_objects  # [B*T, C, H, W]
        particles = DDLPParticles(post.z, post.z_scale, post.z_depth, post.obj_on, post.z_features, frames(z_bg))
        dynamics = self.dynamics(particles.frames(slice(0, t - 1)))  # frames 0 ... T-2 predict frames 1 ... T-1
        return DDLPOutput(
            kp_prior.detach(), post.anchors, post.z, post.mu_offset, post.logvar_offset, post.mu_scale,
            post.logvar_scale, post.z_scale, post.mu_depth, post.logvar_depth, post.z_depth, post.obj_on_a,
            post.obj_on_b, post.obj_on, post.mu_features, post.logvar_features, post.z_features, frames(mu_bg),
            frames(logvar_bg), frames(z_bg), post.glimpses, frames(dec_glimpses), frames(blend.dec_objects),
            frames(blend.alpha_masks), frames(blend.bg_mask), frames(bg), frames(rec), dynamics,
        )

    # ------------------------------------------------------------------------------------------------------------
    def _particles_of(self, x: torch.Tensor, deterministic: bool) -> DDLPParticles:
        cfg = self.config
        kp_prior, post = self.encode_frames(x, deterministic=deterministic)
        mask = background_encoder_mask(post.z.flatten(0, 1), post.obj_on.flatten(0, 1), cfg.anchor_s, cfg.image_size)
        mu_bg, logvar_bg = self.background.encode(x.flatten(0, 1), mask)
        z_bg = mu_bg if deterministic else reparameterize(mu_bg, logvar_bg)
        return DDLPParticles(post.z, post.z_scale, post.z_depth, post.obj_on, post.z_features,
                             z_bg.view(*x.shape[:2], -1), anchors=post.anchors, kp_prior=kp_prior.detach())

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> DDLPParticles:
        """The deterministic particles of every frame of clips x [B, T, C, H, W] (any T >= 1; no gradient); equal to
        the deterministic forward's z, z_scale, z_depth, obj_on, z_features and mu_bg."""
        self._check_input(x)
        return self._particles_of(x, deterministic=True)

    def decode(self, particles: DDLPParticles) -> DDLPDecoded:
        """Decode (possibly edited or predicted) particle trajectories [B, T, ...] into frames, all at once."""
        p = particles
        b, t = p.position.shape[:2]
        dec_glimpses, blend = self.foreground.decode(p.position.flatten(0, 1), p.scale.flatten(0, 1),
                                                     p.depth.flatten(0, 1), p.obj_on.flatten(0, 1),
                                                     p.features.flatten(0, 1))
        bg = self.background.decode(p.bg_features.flatten(0, 1))
        rec = blend.bg_mask * bg + blend.dec_objects
        parts = (rec, bg, blend.dec_objects, dec_glimpses, blend.alpha_masks, blend.bg_mask)
        return DDLPDecoded(*(v.view(b, t, *v.shape[1:]) for v in parts))

    @torch.no_grad()
    def rollout(self, x: torch.Tensor, cond_steps: int, horizon: int, *, deterministic: bool = True) -> RolloutResult:
        """Video prediction (`ObjectDynamicsDLP.sample`, §4.8): encode the first `cond_steps` frames of x
        [B, >= cond_steps, C, H, W] (later frames are never read), let PINT predict `horizon` more frames from its own
        predictions, and decode everything. deterministic=False samples the encoder and PINT (no gradient)."""
        self._check_input(x)
        if not 1 <= cond_steps <= x.shape[1]:
            raise ValueError(f"cond_steps must lie between 1 and the number of frames given ({x.shape[1]}), got "
                             f"{cond_steps}.")
        return self.rollout_from(self._particles_of(x[:, :cond_steps], deterministic), horizon,
                                 deterministic=deterministic)

    @torch.no_grad()
    def rollout_from(self, particles: DDLPParticles, horizon: int, *, deterministic: bool = True) -> RolloutResult:
        """Roll out from given conditioning particles [B, c, ...] -- e.g. `encode`d frames with a particle moved,
        switched off or given other features ("what if") -- for `horizon` predicted frames. PINT reads the last
        `timestep_horizon` frames of the trajectory at each step."""
        if horizon < 0:
            raise ValueError(f"horizon must be a non-negative number of frames, got {horizon}.")
        trajectory = self.dynamics.sample(particles, horizon, deterministic=deterministic)
        decoded = self.decode(trajectory)
        return RolloutResult(decoded.rec, trajectory, particles.num_frames, decoded)

    # ------------------------------------------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor, min_frames: int = 1, max_frames: int | None = None) -> None:
        cfg = self.config
        expected = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if x.dim() != 5 or tuple(x.shape[2:]) != expected:
            raise ValueError(
                f"expected clips of shape [B, T, {cfg.in_channels}, {cfg.image_size}, {cfg.image_size}], got "
                f"{list(x.shape)}; resize the frames to the model's image_size or build the model for this size."
            )
        t = x.shape[1]
        if max_frames is not None and not min_frames <= t <= max_frames:
            raise ValueError(f"the forward pass takes clips of 2 to timestep_horizon + 1 = {max_frames} frames (PINT "
                             f"predicts each frame from the earlier ones within its horizon), got {t}.")
        if t < min_frames:
            raise ValueError(f"expected at least {min_frames} frame(s), got {t}.")

    def extra_repr(self) -> str:
        cfg = self.config
        return (f"{cfg.n_kp_enc} particles, {cfg.image_size}px, glimpses {cfg.glimpse_size}px, "
                f"horizon {cfg.timestep_horizon}, PINT {cfg.pint_layers}x{cfg.pint_heads}x{cfg.pint_dim}")
