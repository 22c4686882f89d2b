"""The DLP sub-networks: patch prior, glimpse encoder, PointNet++ and the two decoders."""

from __future__ import annotations

import math

import torch
from torch import nn

from dlp.models.dlp_v1.glimpse import extract_glimpses
from dlp.models.dlp_v1.layers import MLP, ConvBlock, KeypointCNN, spatial_softmax
from dlp.models.kernels import fold_linear_batch_norm


class PatchPrior(nn.Module):
    """Spatial-softmax keypoint proposals, one per non-overlapping patch, filtered by distance from the patch centre.

    x [B, C, H, W] -> (kp_prior [B, P, 2], all proposals [B, Np, 2]); P = n_kp_prior, Np = (H / patch_size)^2.
    """

    def __init__(self, in_channels: int, channels: tuple[int, ...], image_size: int, patch_size: int, n_keep: int,
                 pad_mode: str):
        super().__init__()
        self.image_size = image_size
        self.patch_size = patch_size
        self.n_keep = n_keep
        self.cnn = KeypointCNN(in_channels, channels, 1, first_kernel_size=3, pad_mode=pad_mode)
        n = image_size // patch_size
        origin = torch.stack(torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij"), -1).view(-1, 2)
        self.register_buffer("patch_origin", (origin * patch_size).float(), persistent=False)  # [Np, 2] (row, col)

    def _to_global(self, local: torch.Tensor) -> torch.Tensor:
        # The official `get_global_kp`, in its float32 operation order; the patch spans pixels origin..origin+ps-1.
        return ((local + 1.0) / 2.0 * (self.patch_size - 1) + self.patch_origin) / (self.image_size - 1) * 2.0 - 1.0

    def proposals(self, x: torch.Tensor) -> torch.Tensor:
        """All patch proposals in global coordinates, patches in row-major order: [B, Np, 2]."""
        b, c = x.shape[:2]
        ps = self.patch_size
        patches = x.unfold(2, ps, ps).unfold(3, ps, ps)  # [B, C, n, n, ps, ps]
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c, ps, ps)
        local = spatial_softmax(self.cnn(patches)).view(b, -1, 2)
        return self._to_global(local)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kp = self.proposals(x)
        centre = self._to_global(torch.zeros_like(kp))
        distance = ((kp - centre) ** 2).sum(-1)  # [B, Np]
        idx = distance.topk(self.n_keep, dim=-1, largest=True, sorted=True).indices
        return torch.gather(kp, 1, idx[..., None].expand(-1, -1, 2)), kp


class GlimpseEncoder(nn.Module):
    """Visual features of each particle from the glimpse around it (the official `ObjectEncoder`).

    Object models crop the RGB image (S x S) and run a small CNN; masked models crop the K-channel encoder heat-map
    (a few cells of the F grid) and append the particle position. Output: (mu_f, logvar_f [B, K, D], glimpses).
    `read` gives the raw MLP output instead ([B, K, out_features], default 2 D), for encoders that split it otherwise.
    """

    def __init__(self, feature_dim: int, grid: int, side: int, channels: int, *, use_cnn: bool,
                 cnn_channels: tuple[int, ...] = (16, 16, 32), cnn_maps: int = 32, out_features: int | None = None):
        super().__init__()
        self.grid, self.side, self.feature_dim = grid, side, feature_dim
        if use_cnn:
            self.cnn = KeypointCNN(channels, cnn_channels, cnn_maps, first_kernel_size=3, pad_mode="replicate")
            down = 2 ** (len(cnn_channels) - 1)
            fc_in = cnn_maps * (side // down) ** 2
        else:
            self.cnn = None
            fc_in = channels * side**2 + 2
        self.fc = MLP(fc_in, out_features or 2 * feature_dim)

    def read(self, source: torch.Tensor, kp: torch.Tensor, *, exclusive: bool = False,
             obj_on: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        b, k = kp.shape[:2]
        glimpses = extract_glimpses(source, kp, self.side, exclusive=exclusive, obj_on=obj_on)  # [B, K, C, s, s]
        if self.cnn is not None:
            codes = self.cnn(glimpses.flatten(0, 1)).reshape(b, k, -1)
        else:
            codes = torch.cat([glimpses.reshape(b, k, -1), kp], dim=-1)
        return self.fc(codes), glimpses

    def forward(self, source: torch.Tensor, kp: torch.Tensor, *, exclusive: bool = False,
                obj_on: torch.Tensor | None = None):
        stats, glimpses = self.read(source, kp, exclusive=exclusive, obj_on=obj_on)
        mu, logvar = stats.chunk(2, dim=-1)
        return mu, logvar, glimpses


class HeatmapPositionEncoder(nn.Module):
    """The official particle positions: an MLP reads all K encoder heat-maps at once and gives each particle's mean
    (through tanh) and log-variance; object models add the `obj_on` MLP, which reads the heat-maps detached.

    x [B, C, H, W] (unused), heatmap [B, K, F, F] -> (mu [B, K, 2], logvar [B, K, 2], obj_on [B, K] or None).
    """

    needs_prior = False  # the positions are read from the heat-maps alone

    def __init__(self, heatmap_size: int, k: int, object_model: bool):
        super().__init__()
        self.to_normal_stats = MLP(heatmap_size, 4 * k)
        self.obj_on_head = MLP(heatmap_size, k) if object_model else None

    def forward(self, x: torch.Tensor, heatmap: torch.Tensor, anchors: torch.Tensor | None = None):
        b, k = heatmap.shape[:2]
        flat = heatmap.flatten(1)
        mu, logvar = self.to_normal_stats(flat).view(b, k, 4).chunk(2, dim=-1)
        obj_on = torch.sigmoid(self.obj_on_head(flat.detach())) if self.obj_on_head is not None else None
        return torch.tanh(mu), logvar, obj_on

    @staticmethod
    def feature_heatmap(heatmap: torch.Tensor) -> torch.Tensor:
        """The official features read detached heat-maps, so that they never train the position encoder."""
        return heatmap.detach()


class EdgeConv(nn.Module):
    """One PointNet++ layer: m_ij = MLP([h_j, pos_j - pos_i]) over the kNN edges, then max over neighbours j."""

    def __init__(self, in_features: int, out_features: int, pos_dim: int = 2):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_features + pos_dim, out_features),
            nn.BatchNorm1d(out_features),
            nn.ReLU(),
            nn.Linear(out_features, out_features),
            nn.BatchNorm1d(out_features),
        )

    def fold_batch_norm(self) -> None:
        """Inference form (eval mode): each BatchNorm1d folded into the Linear before it (same values up to float32
        rounding; the layer can no longer train)."""
        if self.training:
            raise RuntimeError("fold_batch_norm() needs an eval-mode layer (running statistics).")
        m = self.mlp
        if isinstance(m[1], nn.BatchNorm1d):
            self.mlp = nn.Sequential(fold_linear_batch_norm(m[0], m[1]), m[2], fold_linear_batch_norm(m[3], m[4]))

    def forward(self, h: torch.Tensor, rel_pos: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
        # h [B, N, Fin], rel_pos [B, N, k, 2], neighbours [B, N, k] -> [B, N, Fout]
        b, n, k = neighbours.shape
        h_j = h[torch.arange(b, device=h.device)[:, None, None], neighbours]  # [B, N, k, Fin]
        edges = torch.cat([h_j, rel_pos], dim=-1)  # [B, N, k, Fin + 2]
        messages = self.mlp(edges.reshape(b * n * k, -1))  # BatchNorm statistics over all edges of the batch
        return messages.view(b, n, k, -1).amax(dim=2)


class PointNetPP(nn.Module):
    """PointNet++ over the particle set, decoded to K feature maps on the F grid.

    Dense kNN inside each image (at most ~50 points, so `topk` over all pairwise distances is exact and fast).
    positions [B, N, 2], features [B, N, 2 + D] -> [B, K, F, F] with K = n_maps.
    """

    def __init__(self, feature_dim: int, n_maps: int, map_size: int, *, k: int = 10, pad_mode: str = "replicate"):
        super().__init__()
        self.k, self.n_maps = k, n_maps
        widths = (64, 128, 256, 512)
        ins = (2 + feature_dim,) + widths[:-1]
        self.layers = nn.ModuleList(EdgeConv(i, o) for i, o in zip(ins, widths))
        self.fc = nn.Sequential(nn.Linear(widths[-1], n_maps * 64), nn.ReLU())
        n_up = int(math.log2(map_size)) - 3
        self.upsample = nn.Sequential(
            *[ConvBlock(n_maps, n_maps, 3, pad_mode=pad_mode, upsample=True) for _ in range(n_up)]
        )

    def forward(self, positions: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        b, n, _ = positions.shape
        k = min(self.k, n)
        delta = positions[:, None, :, :] - positions[:, :, None, :]  # [B, N_i, N_j, 2] = pos_j - pos_i
        neighbours = (delta**2).sum(-1).topk(k, dim=-1, largest=False).indices  # [B, N, k], self included
        rel_pos = torch.gather(delta, 2, neighbours[..., None].expand(b, n, k, 2))
        h = features
        for layer in self.layers:
            h = torch.relu(layer(h, rel_pos, neighbours))
        pooled = h.amax(dim=1)  # [B, 512]
        return self.upsample(self.fc(pooled).view(b, self.n_maps, 8, 8))


class CNNDecoder(nn.Module):
    """Decoder from F x F maps to the image (masked models) or the background (object models); unbounded output."""

    def __init__(self, in_channels: int, channels: tuple[int, ...], n_particles: int, out_channels: int,
                 pad_mode: str):
        super().__init__()
        blocks = [ConvBlock(in_channels, channels[-1], 3, pad_mode=pad_mode, upsample=True)]
        prev = channels[-1]
        for ch in reversed(channels[1:-1]):
            blocks.append(ConvBlock(prev, ch, 3, pad_mode=pad_mode, upsample=True))
            prev = ch
        last = n_particles * (channels[0] // n_particles + 1)
        blocks.append(ConvBlock(prev, last, 3, pad_mode=pad_mode))
        self.blocks = nn.Sequential(*blocks)
        self.final = nn.Conv2d(last, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(self.blocks(x))


class GlimpseDecoder(nn.Module):
    """Decodes each particle's features to an RGBA glimpse: [B, K, D] -> [B, K, 4, S, S] (sigmoid, alpha first)."""

    def __init__(self, feature_dim: int, side: int, out_channels: int = 4):
        super().__init__()
        self.side, self.out_channels = side, out_channels
        self.fc = nn.Sequential(nn.Linear(feature_dim, 256), nn.ReLU(), nn.Linear(256, 32 * 8 * 8), nn.ReLU())
        n_up = int(math.log2(side)) - 3
        blocks = [ConvBlock(32, 64, 3, upsample=True)]
        blocks += [ConvBlock(64, 64, 3, upsample=True) for _ in range(n_up - 1)]
        blocks.append(ConvBlock(64, 32, 3))
        self.blocks = nn.Sequential(*blocks)
        self.final = nn.Conv2d(32, out_channels, 1)

    def forward(self, z_features: torch.Tensor) -> torch.Tensor:
        b, k, _ = z_features.shape
        h = self.fc(z_features.reshape(b * k, -1)).view(b * k, 32, 8, 8)
        out = torch.sigmoid(self.final(self.blocks(h)))
        return out.reshape(b, k, self.out_channels, self.side, self.side)
