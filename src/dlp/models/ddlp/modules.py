"""PINT, DDLP's Particle Interaction Transformer (`DynamicsDLP` of taldatech/ddlp, spec §4.3, §4.8).

Each frame's particles (position, scale, transparency, depth, features) and the background latent become K + 1 tokens;
a causal transformer over all tokens of all frames (a particle at time t attends to every token at times <= t, with
learned relative time and relative particle-index biases instead of position embeddings) predicts, for every token and
time t, the distribution of its attributes at time t + 1 as changes of the time-t values.

Shapes: B batch, T frames (T <= Tm = the block size `timestep_horizon`), K particles, N = K + 1 tokens (background
token last), D / Dbg features, E = token width, nh heads, hs = E / nh.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from dlp.models.dlpv2.layers import mlp


@dataclass
class DDLPParticles:
    """Particle trajectories of B clips over T frames (deterministic values, or samples).

    position: [B, T, K, 2] (y, x) in [-1, 1]; scale: [B, T, K, 2] glimpse-scale logits (s_y, s_x) -- a glimpse spans
    sigmoid(scale) * (H - 1) pixels; depth: [B, T, K, 1] (smaller = more weight when blending); obj_on: [B, T, K]
    transparency in [0, 1]; features: [B, T, K, D] visual features; bg_features: [B, T, Dbg] background latent.
    anchors: [B, T, K, 2] and kp_prior: [B, T, Kp, 2] are informational (encoder outputs, not used by decoding or PINT).
    """

    position: torch.Tensor
    scale: torch.Tensor
    depth: torch.Tensor
    obj_on: torch.Tensor
    features: torch.Tensor
    bg_features: torch.Tensor
    anchors: torch.Tensor | None = None
    kp_prior: torch.Tensor | None = None

    LATENTS: ClassVar[tuple[str, ...]] = ("position", "scale", "depth", "obj_on", "features", "bg_features")

    @property
    def num_frames(self) -> int:
        return self.position.shape[1]

    def replace(self, **changes: torch.Tensor) -> DDLPParticles:
        return replace(self, **changes)

    def frames(self, index: slice | int) -> DDLPParticles:
        """The latents of some frames (an int keeps the time axis with length 1); informational fields dropped."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return DDLPParticles(*(getattr(self, name)[:, index] for name in self.LATENTS))

    def detach(self) -> DDLPParticles:
        return DDLPParticles(*(getattr(self, name).detach() for name in self.LATENTS))

    @staticmethod
    def cat(parts: list[DDLPParticles]) -> DDLPParticles:
        """Concatenate trajectories along time (latents only)."""
        return DDLPParticles(*(torch.cat([getattr(p, name) for p in parts], dim=1) for name in DDLPParticles.LATENTS))


@dataclass
class DynamicsPrediction:
    """PINT's prediction, index t = the distribution of frame t + 1 given frames <= t (official `*_dyn` keys).

    mu, logvar: [B, T, K, 2] positions [mu_dyn, logvar_dyn]; mu_scale, logvar_scale: [B, T, K, 2] scale logits;
    mu_depth, logvar_depth: [B, T, K, 1] depth -- `logvar_depth` is the predicted depth *change* (official bug, spec
    §8 item 1, kept for parity); obj_on_a, obj_on_b: [B, T, K] transparency Beta parameters (not clamped in training,
    §8 item 8); mu_features, logvar_features: [B, T, K, D]; mu_bg, logvar_bg: [B, T, Dbg] background latent.
    """

    mu: torch.Tensor
    logvar: torch.Tensor
    mu_scale: torch.Tensor
    logvar_scale: torch.Tensor
    mu_depth: torch.Tensor
    logvar_depth: torch.Tensor
    obj_on_a: torch.Tensor
    obj_on_b: torch.Tensor
    mu_features: torch.Tensor
    logvar_features: torch.Tensor
    mu_bg: torch.Tensor
    logvar_bg: torch.Tensor

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# ----------------------------------------------------------------------------------------------------------------
class ParticleFeatureProjection(nn.Module):
    """Particles and background -> tokens (`ParticleFeatureProjection`, §4.3).

    Each attribute goes through its own `Linear(d, E) -> ReLU -> Linear(E, d)`, the results are concatenated in the
    order position, scale, transparency, depth, features (6 + D values) and projected to E; the background latent gets
    `Linear(Dbg, E) -> ReLU -> Linear(E, E)`. [B, T, K, .] and [B, T, Dbg] -> [B, T, K + 1, E], background token last.
    """

    def __init__(self, feature_dim: int, bg_feature_dim: int, width: int):
        super().__init__()
        self.xy_projection = mlp(2, width, 2)
        self.scale_projection = mlp(2, width, 2)
        self.obj_on_projection = mlp(1, width, 1)
        self.depth_projection = mlp(1, width, 1)
        self.features_projection = mlp(feature_dim, width, feature_dim)
        self.particle_projection = mlp(6 + feature_dim, width, width)
        self.bg_features_projection = mlp(bg_feature_dim, width, width)

    def forward(self, p: DDLPParticles) -> torch.Tensor:
        per_attribute = torch.cat([
            self.xy_projection(p.position), self.scale_projection(p.scale),
            self.obj_on_projection(p.obj_on.unsqueeze(-1)), self.depth_projection(p.depth),
            self.features_projection(p.features),
        ], dim=-1)  # [B, T, K, 6 + D]
        particles = self.particle_projection(per_attribute)  # [B, T, K, E]
        background = self.bg_features_projection(p.bg_features).unsqueeze(2)  # [B, T, 1, E]
        return torch.cat([particles, background], dim=2)  # [B, T, K + 1, E]


class CausalParticleSelfAttention(nn.Module):
    """Multi-head self-attention over all tokens of all frames, causal in time (`CausalParticleSelfAttention`, §4.3).

    x [B, N, T, E] -> [B, N, T, E]. Tokens are flattened particle-major (index n * T + t). The attention logits get a
    learned bias per head for the time difference (`time_bias[Tm - 1 + s - t]`, key time s, query time t) and for the
    token-index difference (`token_bias[N - 1 + m - n]`); keys later than the query are masked for every token pair
    (the `mask` buffer, `tril(ones(Tm, Tm))`, part of the official state dict). Dropout (train mode) on the attention
    probabilities and on the projected output, in that order, as official (spec §4.3 "Dropout RNG order").
    """

    def __init__(self, width: int, n_heads: int, block_size: int, n_tokens: int, dropout: float):
        super().__init__()
        self.n_heads, self.block_size, self.n_tokens, self.dropout = n_heads, block_size, n_tokens, dropout
        self.key = nn.Linear(width, width, bias=False)
        self.query = nn.Linear(width, width, bias=False)
        self.value = nn.Linear(width, width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.time_bias = nn.Parameter(torch.zeros(2 * block_size - 1, n_heads))  # official rel_pos_bias
        self.token_bias = nn.Parameter(torch.zeros(2 * n_tokens - 1, n_heads))  # official particle_rel_pos_bias
        mask = torch.tril(torch.ones(block_size, block_size)).view(1, 1, 1, block_size, 1, block_size)
        self.register_buffer("mask", mask)

    def relative_bias(self, n: int, t: int) -> torch.Tensor:
        """The additive logit bias [nh, N, T, N, T] for N tokens over T <= Tm frames."""
        steps = torch.arange(t, device=self.time_bias.device)
        tokens = torch.arange(n, device=self.token_bias.device)
        time = self.time_bias[self.block_size - 1 + steps[None, :] - steps[:, None]].permute(2, 0, 1)  # [nh, T, T]
        token = self.token_bias[self.n_tokens - 1 + tokens[None, :] - tokens[:, None]].permute(2, 0, 1)  # [nh, N, N]
        return token[:, :, None, :, None] + time[:, None, :, None, :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, t, e = x.shape
        nh, hs = self.n_heads, e // self.n_heads
        tokens = x.reshape(b, n * t, e)
        q = self.query(tokens).view(b, n * t, nh, hs).transpose(1, 2)  # [B, nh, N*T, hs]
        k = self.key(tokens).view(b, n * t, nh, hs).transpose(1, 2)
        v = self.value(tokens).view(b, n * t, nh, hs).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # [B, nh, N*T, N*T]
        att = att.view(b, nh, n, t, n, t) + self.relative_bias(n, t)
        att = att.masked_fill(self.mask[:, :, :, :t, :, :t] == 0, float("-inf"))
        att = att.view(b, nh, n * t, n * t).softmax(dim=-1)
        att = F.dropout(att, self.dropout, self.training)  # one draw [B, nh, N*T, N*T]
        y = (att @ v).transpose(1, 2).reshape(b, n * t, e)  # heads merged: [B, N*T, E]
        y = F.dropout(self.proj(y), self.dropout, self.training)  # one draw [B, N*T, E]
        return y.view(b, n, t, e)


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attention(LN(x)), then x + MLP(LN(x)) with MLP = Linear(E, 4E) -> GELU (erf) ->
    Linear(4E, E) -> dropout (one draw [B, N, T, E] in train mode). [B, N, T, E] -> [B, N, T, E]."""

    def __init__(self, width: int, n_heads: int, block_size: int, n_tokens: int, dropout: float):
        super().__init__()
        self.dropout = dropout
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalParticleSelfAttention(width, n_heads, block_size, n_tokens, dropout)
        self.ln2 = nn.LayerNorm(width)
        self.fc = nn.Linear(width, 4 * width)
        self.proj = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        hidden = F.gelu(self.fc(self.ln2(x)))  # [B, N, T, 4E]
        return x + F.dropout(self.proj(hidden), self.dropout, self.training)


class ParticleTransformer(nn.Module):
    """`n_layers` blocks, a final LayerNorm and a bias-free linear head (`ParticleTransformer` with
    `positional_bias=True`: no absolute position embedding). [B, N, T, E] -> [B, N, T, E], T <= block_size."""

    def __init__(self, width: int, n_heads: int, n_layers: int, block_size: int, n_tokens: int, dropout: float):
        super().__init__()
        self.blocks = nn.ModuleList(
            [TransformerBlock(width, n_heads, block_size, n_tokens, dropout) for _ in range(n_layers)])
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, width, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Official init (§1.13): Linear N(0, 0.02^2) with zero bias, LayerNorm (1, 0), the bias tables N(0, 0.02^2).
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, CausalParticleSelfAttention):
                nn.init.normal_(module.time_bias, 0.0, 0.02)
                nn.init.normal_(module.token_bias, 0.0, 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] > self.blocks[0].attn.block_size:
            raise ValueError(f"PINT sees at most {self.blocks[0].attn.block_size} frames (timestep_horizon), got "
                             f"{x.shape[2]}; pass a shorter window.")
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


class ParticleFeatureDecoder(nn.Module):
    """Tokens -> predicted attribute changes and log-variances (`ParticleFeatureDecoder`, §4.3).

    h [B, T, K + 1, E] -> a `DynamicsPrediction` of *changes* (means are deltas; add the inputs for predict_delta).
    The official heads `x_head` / `y_head` drive coordinates 0 (y) / 1 (x), as in the encoder (§8 item 7); the
    position change is `tanh(.) * max_delta` (1.0).
    """

    def __init__(self, width: int, feature_dim: int, bg_feature_dim: int, max_delta: float = 1.0):
        super().__init__()
        self.max_delta = max_delta
        self.backbone = mlp(width, width, width, final_activation=True)
        self.offset_y_head = nn.Linear(width, 2)  # official x_head: (delta y, logvar y)
        self.offset_x_head = nn.Linear(width, 2)  # official y_head: (delta x, logvar x)
        self.scale_head = nn.Linear(width, 4)  # (delta s_y, delta s_x, logvar s_y, logvar s_x)
        self.obj_on_head = nn.Linear(width, 2)  # (log a, log b)
        self.depth_head = nn.Linear(width, 2)  # (delta depth, unused: official bug §8 item 1)
        self.features_head = nn.Linear(width, 2 * feature_dim)  # (delta features, logvar features)
        self.bg_features_head = nn.Linear(width, 2 * bg_feature_dim)

    def forward(self, h: torch.Tensor) -> DynamicsPrediction:
        h = self.backbone(h)
        particles, background = h[..., :-1, :], h[..., -1, :]  # [B, T, K, E], [B, T, E]
        pos_y, pos_x = self.offset_y_head(particles), self.offset_x_head(particles)
        delta = torch.tanh(torch.stack([pos_y[..., 0], pos_x[..., 0]], dim=-1)) * self.max_delta  # [B, T, K, 2]
        logvar = torch.stack([pos_y[..., 1], pos_x[..., 1]], dim=-1)
        scale = self.scale_head(particles)
        log_obj_on = self.obj_on_head(particles)
        delta_depth = self.depth_head(particles)[..., :1]  # [B, T, K, 1]
        mu_features, logvar_features = self.features_head(particles).chunk(2, dim=-1)
        mu_bg, logvar_bg = self.bg_features_head(background).chunk(2, dim=-1)
        return DynamicsPrediction(
            delta, logvar, scale[..., :2], scale[..., 2:], delta_depth,
            delta_depth,  # the official log-variance of the depth is the depth change (§8 item 1, kept for parity)
            log_obj_on[..., 0], log_obj_on[..., 1],  # log-parameters here; exponentiated by the caller
            mu_features, logvar_features, mu_bg, logvar_bg,
        )


class DynamicsDLP(nn.Module):
    """PINT: predicts the particles of frame t + 1 from the particles of frames <= t (`DynamicsDLP`, §4.3).

    `forward` (training) predicts every next frame of a trajectory in one causal pass; `sample` (rollout, §4.8)
    extends a trajectory autoregressively over a sliding window of the last `block_size` frames.
    """

    def __init__(self, feature_dim: int, bg_feature_dim: int, *, width: int, n_heads: int, n_layers: int,
                 block_size: int, n_particles: int, dropout: float):
        super().__init__()
        self.block_size = block_size
        self.particle_projection = ParticleFeatureProjection(feature_dim, bg_feature_dim, width)
        self.particle_transformer = ParticleTransformer(width, n_heads, n_layers, block_size, n_particles + 1, dropout)
        self.particle_decoder = ParticleFeatureDecoder(width, feature_dim, bg_feature_dim)

    def _changes(self, particles: DDLPParticles, last_only: bool = False) -> DynamicsPrediction:
        tokens = self.particle_projection(particles)  # [B, T, N, E]
        h = self.particle_transformer(tokens.transpose(1, 2)).transpose(1, 2)  # [B, T, N, E]
        if last_only:  # a rollout step decodes only the newest frame's output
            h = h[:, -1:]
        return self.particle_decoder(h)

    def forward(self, particles: DDLPParticles) -> DynamicsPrediction:
        """Predictions for frames 1 ... T of a trajectory of T <= block_size frames: [B, T, ...] each (index t
        predicts frame t + 1). Residual on the inputs (predict_delta); the transparency's Beta parameters are
        `exp(.)` without the clamp of the encoder and of `sample` (official, §8 item 8)."""
        return self._residual(particles, self._changes(particles), clamp_obj_on=False)

    @staticmethod
    def _residual(particles: DDLPParticles, changes: DynamicsPrediction, *, clamp_obj_on: bool) -> DynamicsPrediction:
        p, c = particles, changes
        t = c.mu.shape[1]
        last = p.frames(slice(p.num_frames - t, None))  # the inputs at the predicting time steps
        a, b = c.obj_on_a.exp(), c.obj_on_b.exp()
        if clamp_obj_on:
            a, b = a.clamp_min(1e-5), b.clamp_min(1e-5)
        return DynamicsPrediction(
            last.position + c.mu, c.logvar, last.scale + c.mu_scale, c.logvar_scale, last.depth + c.mu_depth,
            c.logvar_depth, a, b, last.features + c.mu_features, c.logvar_features, last.bg_features + c.mu_bg,
            c.logvar_bg,
        )

    def step(self, particles: DDLPParticles, *, deterministic: bool = True) -> DDLPParticles:
        """The particles of the frame after the last of `particles` ([B, T, ...], the last `block_size` frames are
        read): [B, 1, ...]. Deterministic: the predicted means (transparency = the Beta mean); else samples with the
        predicted log-variances (the depth's is the official buggy one) and a Beta sample."""
        window = particles.frames(slice(max(0, particles.num_frames - self.block_size), None))
        pred = self._residual(window, self._changes(window, last_only=True), clamp_obj_on=True)
        if deterministic:
            return DDLPParticles(pred.mu, pred.mu_scale, pred.mu_depth, pred.obj_on_a / (pred.obj_on_a + pred.obj_on_b),
                                 pred.mu_features, pred.mu_bg)

        def sample(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
            return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

        # The draw order of the official stochastic rollout is not specified (no fixture covers it).
        return DDLPParticles(
            sample(pred.mu, pred.logvar), sample(pred.mu_scale, pred.logvar_scale),
            sample(pred.mu_depth, pred.logvar_depth), torch.distributions.Beta(pred.obj_on_a, pred.obj_on_b).sample(),
            sample(pred.mu_features, pred.logvar_features), sample(pred.mu_bg, pred.logvar_bg),
        )

    def sample(self, particles: DDLPParticles, steps: int, *, deterministic: bool = True) -> DDLPParticles:
        """Extend a trajectory [B, T, ...] by `steps` predicted frames: [B, T + steps, ...] (`DynamicsDLP.sample`)."""
        trajectory = particles.frames(slice(None))
        for _ in range(steps):  # autoregressive: each prediction is fed back
            trajectory = DDLPParticles.cat([trajectory, self.step(trajectory, deterministic=deterministic)])
        return trajectory
