"""DLPv2 sub-networks: the patch prior, the particle-filter mixer, the particle attribute and feature encoders, the
glimpse decoder, the background VAE, and compositing with depth (spec §1.4-§1.12).

They are shared by DLPv2 and DDLP (whose tracking encoder calls the same encoders frame by frame with previous crops
and scales). Shapes: B batch, K particles, NP patches, D / Dbg features, C/H/W image, S glimpse side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from dlp.models.dlpv2.config import background_upsamplings
from dlp.models.dlpv2.layers import (
    ConvBlock,
    KeypointCNN,
    correlation_maps,
    crop_glimpses,
    mlp,
    paste_glimpses,
    spatial_softmax_2d,
    square_masks,
)

GLIMPSE_MAPS = 32  # heat-maps of every glimpse CNN and of the background encoder (hard-coded officially, §1.0)
HIDDEN = 256  # width of every encoder/decoder MLP (hard-coded officially)


class PatchPrior(nn.Module):
    """Keypoint proposals, one per non-overlapping patch, from a 2-D spatial softmax with variance (§1.4).

    x [B, C, H, W] -> (kp [B, NP, 2] global (y, x), var [B, NP, 3] local (v_y, v_x, cov)); patches in row-major order.
    """

    def __init__(self, in_channels: int, channels: tuple[int, ...], image_size: int, patch_size: int, pad_mode: str):
        super().__init__()
        self.image_size, self.patch_size = image_size, patch_size
        self.cnn = KeypointCNN(in_channels, channels, 1, input_size=patch_size, first_kernel_size=3,
                               pad_mode=pad_mode)
        n = image_size // patch_size
        origin = torch.stack(torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij"), -1).view(-1, 2)
        self.register_buffer("patch_origin", (origin * patch_size).float(), persistent=False)  # [NP, 2] (row, col)

    def to_global(self, local: torch.Tensor) -> torch.Tensor:
        # The official `get_global_kp` in its float32 operation order (v1 §1.5): the patch spans origin..origin+ps-1.
        return ((local + 1.0) / 2.0 * (self.patch_size - 1) + self.patch_origin) / (self.image_size - 1) * 2.0 - 1.0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c = x.shape[:2]
        ps = self.patch_size
        patches = x.unfold(2, ps, ps).unfold(3, ps, ps)  # [B, C, n, n, ps, ps]
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c, ps, ps)  # [B*NP, C, ps, ps]
        local, var = spatial_softmax_2d(self.cnn(patches))  # [B*NP, 1, 2], [B*NP, 1, 3]
        return self.to_global(local.view(b, -1, 2)), var.view(b, -1, 3)

    def select(self, kp: torch.Tensor, var: torch.Tensor, heuristic: str, n_keep: int) -> torch.Tensor:
        """Filter the proposals (`FgDLP.encode_prior`, §1.4): kp [B, NP, 2], var [B, NP, 3] -> [B, Kp, 2].

        'variance': the n_keep lowest total variances, ascending (the first K become the anchors); 'distance': the
        n_keep farthest from their patch centre, descending (v1's rule); 'none': all proposals in patch order.
        """
        if heuristic == "none":
            return kp
        if heuristic == "variance":
            idx = var.sum(dim=-1).topk(n_keep, dim=-1, largest=False, sorted=True).indices  # [B, Kp]
        elif heuristic == "distance":
            centre = self.to_global(torch.zeros_like(kp))
            idx = ((kp - centre) ** 2).sum(dim=-1).topk(n_keep, dim=-1, largest=True, sorted=True).indices
        else:
            raise ValueError(f"unknown filtering heuristic {heuristic!r}; use 'none', 'variance' or 'distance'.")
        return torch.gather(kp, 1, idx[..., None].expand(-1, -1, 2))


class GlimpseCNNEncoder(nn.Module):
    """Glimpses -> glimpse CNN (32 heat-maps) -> flattened maps -> Linear to 256 (no activation): the shared front of
    the mixer and the particle encoders (§1.8). [N, C, S, S] -> [N, 256]."""

    def __init__(self, in_channels: int, cnn_channels: tuple[int, ...], glimpse_size: int, pad_mode: str,
                 out_features: int = HIDDEN):
        super().__init__()
        self.cnn = KeypointCNN(in_channels, cnn_channels, GLIMPSE_MAPS, input_size=glimpse_size, first_kernel_size=3,
                               pad_mode=pad_mode)
        map_size = glimpse_size // 2 ** (len(cnn_channels) - 1)
        self.projection = nn.Linear(GLIMPSE_MAPS * map_size**2, out_features)

    def forward(self, glimpses: torch.Tensor) -> torch.Tensor:
        return self.projection(self.cnn(glimpses).flatten(1))  # heat-maps flattened (channel, row, col)


class ParticleFilterMixer(GlimpseCNNEncoder):
    """Anchors as convex combinations of all NP proposals (`ParticleFilterMixer`, §1.9; `filtering_heuristic='none'`).

    Each proposal becomes a 128-wide token (64 from its glimpse at the default crop scale S/H, 64 from its position),
    an MLP-mixer block mixes tokens and channels, and a softmax over the tokens gives K weights per proposal set:
    x [B, C, H, W], kp [B, NP, 2] -> anchors [B, K, 2] (gradient flows into kp, not through the crops).
    """

    def __init__(self, in_channels: int, cnn_channels: tuple[int, ...], glimpse_size: int, image_size: int,
                 num_patches: int, n_particles: int, pad_mode: str, width: int = 128):
        super().__init__(in_channels, cnn_channels, glimpse_size, pad_mode, out_features=width // 2)
        self.glimpse_size, self.default_scale = glimpse_size, glimpse_size / image_size
        self.position_projection = nn.Linear(2, width // 2)
        # PreNorm(f)(u) = f(LayerNorm(u)) + u, twice: across tokens (1x1 convs over the token axis), then channels.
        self.token_norm = nn.LayerNorm(width)
        self.token_mixing = nn.Sequential(nn.Conv1d(num_patches, width, 1), nn.ReLU(), nn.Conv1d(width, num_patches, 1))
        self.channel_norm = nn.LayerNorm(width)
        self.channel_mixing = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
        self.out_norm = nn.LayerNorm(width)
        self.to_weights = nn.Linear(width, n_particles)

    def forward(self, x: torch.Tensor, kp: torch.Tensor) -> torch.Tensor:
        b, n = kp.shape[:2]
        positions = kp.detach()
        glimpses = crop_glimpses(x, positions, self.default_scale, self.glimpse_size)  # [B, NP, C, S, S]
        codes = super().forward(glimpses.flatten(0, 1)).view(b, n, -1)  # [B, NP, 64]
        tokens = torch.cat([codes, self.position_projection(positions)], dim=-1)  # [B, NP, 128]
        tokens = self.token_mixing(self.token_norm(tokens)) + tokens
        tokens = self.channel_mixing(self.channel_norm(tokens)) + tokens
        weights = self.to_weights(self.out_norm(tokens)).softmax(dim=1)  # [B, NP, K], softmax over the proposals
        return (kp.transpose(1, 2) @ weights).transpose(1, 2)  # [B, K, 2]


@dataclass
class ParticleAttributes:
    """Output of `ParticleAttributeEncoder` for B images and K particles.

    mu_offset, logvar_offset: [B, K, 2] position offsets (tanh-bounded means) from the crop centres, (y, x).
    mu_scale, logvar_scale: [B, K, 2] glimpse scale logits (s_y, s_x).
    log_obj_on_a, log_obj_on_b: [B, K] log-parameters of the transparency Beta.
    mu_depth, logvar_depth: [B, K, 1] depth.
    cnn_input: [B*K, C(+1), S, S] what the CNN read (the crops, plus the correlation channel when enabled).
    """

    mu_offset: torch.Tensor
    logvar_offset: torch.Tensor
    mu_scale: torch.Tensor
    logvar_scale: torch.Tensor
    log_obj_on_a: torch.Tensor
    log_obj_on_b: torch.Tensor
    mu_depth: torch.Tensor
    logvar_depth: torch.Tensor
    cnn_input: torch.Tensor


class ParticleAttributeEncoder(GlimpseCNNEncoder):
    """Position offset, scale, transparency and depth of each particle from the glimpse around its anchor
    (`ParticleAttributeEncoder`, §1.8).

    forward(x [B, C, H, W], kp [B, K, 2], scale [B, K, 2] logits or None, previous_objects [B*K, C, S, S] or None).
    Crops are taken at `sigmoid(scale)`, or at the fixed scale S/H when `scale` is None (not a sigmoid, §8 item 16).
    With `use_correlation` the CNN reads the crop of the clamped image plus a correlation channel (zeros without
    previous crops, §1.7); otherwise the plain crop.
    """

    def __init__(self, in_channels: int, cnn_channels: tuple[int, ...], glimpse_size: int, image_size: int,
                 pad_mode: str, *, use_correlation: bool):
        super().__init__(in_channels + int(use_correlation), cnn_channels, glimpse_size, pad_mode)
        self.glimpse_size, self.default_scale = glimpse_size, glimpse_size / image_size
        self.use_correlation = use_correlation
        self.backbone = mlp(HIDDEN, HIDDEN, HIDDEN, final_activation=True)
        # The official heads are named x_head / y_head, but x_head drives coordinate 0 = y (§1.8, §8 item 7).
        self.offset_y_head = nn.Linear(HIDDEN, 2)  # (mu_y, logvar_y)
        self.offset_x_head = nn.Linear(HIDDEN, 2)  # (mu_x, logvar_x)
        self.scale_head = nn.Linear(HIDDEN, 4)  # (mu_sy, mu_sx, logvar_sy, logvar_sx)
        self.obj_on_head = nn.Linear(HIDDEN, 2)  # (log a, log b)
        self.depth_head = nn.Linear(HIDDEN, 2)  # (mu, logvar)

    def forward(self, x: torch.Tensor, kp: torch.Tensor, scale: torch.Tensor | None = None,
                previous_objects: torch.Tensor | None = None) -> ParticleAttributes:
        b, k = kp.shape[:2]
        crop_scale = self.default_scale if scale is None else torch.sigmoid(scale)
        if self.use_correlation:
            cnn_input = correlation_maps(x, kp, crop_scale, self.glimpse_size, previous_objects)
        else:
            cnn_input = crop_glimpses(x, kp, crop_scale, self.glimpse_size).flatten(0, 1)  # [B*K, C, S, S]
        h = self.backbone(super().forward(cnn_input))  # [B*K, 256]
        pos_y, pos_x = self.offset_y_head(h), self.offset_x_head(h)
        mu_offset = torch.tanh(torch.stack([pos_y[:, 0], pos_x[:, 0]], dim=-1)).view(b, k, 2)
        logvar_offset = torch.stack([pos_y[:, 1], pos_x[:, 1]], dim=-1).view(b, k, 2)
        scale_stats = self.scale_head(h).view(b, k, 4)
        obj_on = self.obj_on_head(h).view(b, k, 2)
        depth = self.depth_head(h).view(b, k, 2)
        return ParticleAttributes(
            mu_offset, logvar_offset, scale_stats[..., :2], scale_stats[..., 2:], obj_on[..., 0], obj_on[..., 1],
            depth[..., :1], depth[..., 1:], cnn_input,
        )


class ParticleFeaturesEncoder(GlimpseCNNEncoder):
    """Visual features of each particle from the glimpse at its final position and scale (`ParticleFeaturesEncoder`,
    §1.8): x [B, C, H, W], kp [B, K, 2], scale [B, K, 2] logits -> (mu, logvar [B, K, D], glimpses [B, K, C, S, S]).
    Gradient reaches `kp` through the crop grid."""

    def __init__(self, in_channels: int, cnn_channels: tuple[int, ...], glimpse_size: int, image_size: int,
                 feature_dim: int, pad_mode: str):
        super().__init__(in_channels, cnn_channels, glimpse_size, pad_mode)
        self.glimpse_size, self.default_scale = glimpse_size, glimpse_size / image_size
        self.backbone = mlp(HIDDEN, HIDDEN, HIDDEN, final_activation=True)
        self.head = nn.Linear(HIDDEN, 2 * feature_dim)

    def forward(self, x: torch.Tensor, kp: torch.Tensor, scale: torch.Tensor | None):
        b, k = kp.shape[:2]
        crop_scale = self.default_scale if scale is None else torch.sigmoid(scale)
        glimpses = crop_glimpses(x, kp, crop_scale, self.glimpse_size)  # [B, K, C, S, S]
        stats = self.head(self.backbone(super().forward(glimpses.flatten(0, 1)))).view(b, k, -1)
        mu, logvar = stats.chunk(2, dim=-1)
        return mu, logvar, glimpses


def _upsampling_stack(in_channels: int, widths: list[int], last_width: int, pad_mode: str,
                      first_norm: bool = True) -> nn.Sequential:
    """3x3 ConvBlocks, each upsampling x2 (one per entry of `widths`), then one without upsampling to `last_width`."""
    blocks, prev = [], in_channels
    for i, width in enumerate(widths):
        blocks.append(ConvBlock(prev, width, 3, pad_mode=pad_mode, upsample=True, norm=first_norm or i > 0))
        prev = width
    blocks.append(ConvBlock(prev, last_width, 3, pad_mode=pad_mode))
    return nn.Sequential(*blocks)


class GlimpseDecoder(nn.Module):
    """Decodes each particle's features into an RGBA glimpse (`ObjectDecoderCNN`, §1.10):
    [B, K, D] -> [B, K, 1+C, S, S] after a sigmoid, alpha in channel 0.

    MLP to a 32x8x8 map, log2(S) - 3 upsampling blocks (32 -> 64 -> 64 ...), a block to 32 channels and a 1x1 conv.
    Always replicate padding (the official default 'reflect' acts as replicate, §8 item 20).
    """

    def __init__(self, feature_dim: int, glimpse_size: int, out_channels: int = 4):
        super().__init__()
        self.glimpse_size, self.out_channels = glimpse_size, out_channels
        n_up = int(math.log2(glimpse_size)) - 3
        self.fc = mlp(feature_dim, HIDDEN, HIDDEN, 32 * 8 * 8, final_activation=True)
        self.blocks = _upsampling_stack(32, [64] * n_up, 32, "replicate")
        self.final = nn.Conv2d(32, out_channels, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, k, _ = features.shape
        h = self.fc(features.reshape(b * k, -1)).view(b * k, 32, 8, 8)
        out = torch.sigmoid(self.final(self.blocks(h)))
        return out.view(b, k, self.out_channels, self.glimpse_size, self.glimpse_size)


class BackgroundVAE(nn.Module):
    """The background latent (`BgDLP`, §1.11): encodes the image outside the particles' squares into Dbg features and
    decodes them into a background image.

    encode(x [B, C, H, W], mask [B, 1, H, W]) -> (mu, logvar [B, Dbg]); decode(z [B, Dbg]) -> [B, C, H, W] in (0, 1).
    """

    def __init__(self, in_channels: int, enc_channels: tuple[int, ...], image_size: int, feature_dim: int,
                 pad_mode: str):
        super().__init__()
        fmap = image_size // 2 ** (len(enc_channels) - 1)
        self.encoder_cnn = KeypointCNN(in_channels, enc_channels, GLIMPSE_MAPS, input_size=image_size,
                                       first_kernel_size=7, pad_mode=pad_mode)
        self.encoder_mlp = mlp(GLIMPSE_MAPS * fmap**2, HIDDEN, HIDDEN, 2 * feature_dim)
        # Decoder: features -> 32x8x8 -> 32xFxF (`FCToCNN`) -> image (`CNNDecoder`: no GroupNorm in its first block).
        self.latent_mlp = mlp(feature_dim, HIDDEN, HIDDEN, 32 * 8 * 8, final_activation=True)
        self.latent_upsample = nn.Sequential(*[
            ConvBlock(32, 32, 3, pad_mode=pad_mode, upsample=True) for _ in range(background_upsamplings(fmap))
        ])
        widths = [enc_channels[-1], *reversed(enc_channels[1:-1])]
        self.decoder = _upsampling_stack(32, widths, enc_channels[0], pad_mode, first_norm=False)
        self.final = nn.Conv2d(enc_channels[0], in_channels, 1)

    def encode(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stats = self.encoder_mlp(self.encoder_cnn(x * mask).flatten(1))  # heat-maps [B, 32, F, F] flattened
        mu, logvar = stats.chunk(2, dim=-1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.latent_upsample(self.latent_mlp(z).view(z.shape[0], 32, 8, 8))  # [B, 32, F, F]
        return torch.sigmoid(self.final(self.decoder(h)))


def background_encoder_mask(position: torch.Tensor, obj_on: torch.Tensor, anchor_s: float, size: int) -> torch.Tensor:
    """What the background encoder sees (`get_bg_mask_from_particle_glimpses`, §2.6): 1 minus the fixed-size squares
    at the particles' positions weighted by their transparency, clamped: [B, K, 2], [B, K] -> [B, 1, H, W].
    No gradient (positions and transparencies are detached)."""
    squares = square_masks(position.detach(), anchor_s, size)  # [B, K, 1, H, W]
    covered = (squares * obj_on.detach()[:, :, None, None, None]).sum(dim=1)  # [B, 1, H, W]
    return 1 - covered.clamp(0, 1)


@dataclass
class Composite:
    """Decoded glimpses pasted and blended (§1.12). dec_objects [B, C, H, W] foreground; bg_mask [B, 1, H, W] weight of
    the background; alpha_masks [B, K, 1, H, W] each particle's effective alpha."""

    dec_objects: torch.Tensor
    bg_mask: torch.Tensor
    alpha_masks: torch.Tensor


def composite_particles(dec_glimpses: torch.Tensor, position: torch.Tensor, scale: torch.Tensor,
                        obj_on: torch.Tensor, depth: torch.Tensor, image_size: int, *,
                        alpha_noise: bool = False) -> Composite:
    """Paste RGBA glimpses [B, K, 1+C, S, S] at positions [B, K, 2] and scales `sigmoid(scale)` [B, K, 2], weight them
    by transparency obj_on [B, K] and depth [B, K, 1] (smaller depth = more weight) and blend (`get_objects_alpha_rgb`).

    The blend normalises the depth-weighted alphas over the particles (no hard occlusion) and uses the alpha twice
    (official, §8 item 10). `alpha_noise` (noisy phase) adds clamped N(0, 0.1^2) noise to the pasted alphas, one
    randn [B, K, 1, H, W] draw from the global generator.
    """
    pasted = paste_glimpses(dec_glimpses, position, torch.sigmoid(scale), image_size).clamp(0, 1)
    alpha, rgb = pasted[:, :, :1], pasted[:, :, 1:]  # [B, K, 1, H, W], [B, K, C, H, W]
    if alpha_noise:
        alpha = (alpha + 0.1 * torch.randn_like(alpha)).clamp(0, 1)
    a = obj_on[:, :, None, None, None] * alpha
    importance = a * torch.sigmoid(-depth[:, :, :, None, None])
    importance = importance / (importance.sum(dim=1, keepdim=True) + 1e-5)
    dec_objects = ((a * rgb) * importance).sum(dim=1)  # [B, C, H, W]
    alpha_masks = importance * a
    bg_mask = 1 - alpha_masks.sum(dim=1)  # [B, 1, H, W]
    return Composite(dec_objects, bg_mask, alpha_masks)
