"""DLPv2 building blocks without learned state beyond plain layers: conv blocks, the keypoint CNN, the 2-D spatial
softmax, glimpse cropping/pasting, the background-encoder squares and the correlation maps.

Coordinates are `(y, x)` = (row, column) in [-1, 1] with the `align_corners=True` convention everywhere (spec §1.0): on
an N-pixel axis, u is pixel `(u + 1) / 2 * (N - 1)`. Section numbers ("§1.5") refer to the DLPv2/DDLP model spec.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from dlp.models.dlpv2.config import group_norm_groups
from dlp.models.kernels import match_weight_layout, replicate_pad

GROUP_NORM_EPS = 1e-4  # official §1.1


class ConvBlock(nn.Module):
    """[pad] -> conv -> [GroupNorm] -> [ReLU] -> [bilinear x2 upsampling] (the official `ConvBlock`, §1.1).

    With `pad_mode='replicate'` the input is replicate-padded by `kernel_size // 2` and the conv does not pad; with
    'zeros' the conv zero-pads. GroupNorm uses 4 groups (5 if the channels are not divisible by 4) and eps 1e-4.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, *, stride: int = 1,
                 pad_mode: str = "replicate", norm: bool = True, activation: bool = True, upsample: bool = False,
                 bias: bool = False):
        super().__init__()
        self.pad = kernel_size // 2
        self.replicate = pad_mode != "zeros"  # official: any mode but 'zeros' replicates (§1.1, §8 item 20)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=0 if self.replicate else self.pad, bias=bias)
        self.norm = nn.GroupNorm(group_norm_groups(out_channels), out_channels, eps=GROUP_NORM_EPS) if norm else None
        self.activation = activation
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = match_weight_layout(x, self.conv.weight)  # a channels-last model converts other inputs (oneDNN)
        if self.replicate and self.pad:
            x = replicate_pad(x, self.pad)
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation:
            x = F.relu(x)
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return x


class CNNStage(NamedTuple):
    """One block of a `KeypointCNN`, with the name the official `Sequential` gives it."""

    official_name: str
    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int


def keypoint_cnn_layout(in_channels: int, channels: tuple[int, ...], input_size: int,
                        first_kernel_size: int) -> list[CNNStage]:
    """The blocks the official `KeyPointCNNOriginal` actually executes, in order (§1.2).

    The official constructor calls `Sequential.add_module` with names `in_block_1`, `in_block_2`, then per extra
    channel stage `conv_in_{size}_0` (stride 2) and `conv_in_{ch}_1` (stride 1). A repeated name replaces the earlier
    module *in place* (the dict keeps the first position), so when `channels[1:]` repeats a value the earlier stride-1
    block disappears and the later one runs at the earlier position (official bug, §8 item 4, kept for parity).
    """
    stages: dict[str, CNNStage] = {}
    c0 = channels[0]
    stages["in_block_1"] = CNNStage("in_block_1", in_channels, c0, first_kernel_size, 1)
    stages["in_block_2"] = CNNStage("in_block_2", c0, c0, 3, 1)
    prev, size = c0, input_size
    for ch in channels[1:]:
        name = f"conv_in_{size}_0"
        stages[name] = CNNStage(name, prev, ch, 3, 2)
        name = f"conv_in_{ch}_1"
        stages[name] = CNNStage(name, ch, ch, 3, 1)  # replaces an existing entry in place, as add_module does
        prev, size = ch, size // 2
    return list(stages.values())


class KeypointCNN(nn.Module):
    """The official `KeyPointCNNOriginal` with GroupNorm+ReLU blocks and a 1x1 `keymap` conv (with bias) giving raw
    heat-maps: [N, C, H, W] -> [N, n_maps, H / 2^(len(channels)-1), ...] (§1.2).

    `stage_names` holds the official block names in execution order (used by the checkpoint converter).
    """

    def __init__(self, in_channels: int, channels: tuple[int, ...], n_maps: int, *, input_size: int,
                 first_kernel_size: int = 3, pad_mode: str = "replicate"):
        super().__init__()
        layout = keypoint_cnn_layout(in_channels, tuple(channels), input_size, first_kernel_size)
        self.stage_names = [stage.official_name for stage in layout]
        self.blocks = nn.Sequential(*[
            ConvBlock(s.in_channels, s.out_channels, s.kernel_size, stride=s.stride, pad_mode=pad_mode)
            for s in layout
        ])
        self.keymap = nn.Conv2d(layout[-1].out_channels, n_maps, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.keymap(self.blocks(x))


def mlp(*sizes: int, final_activation: bool = False) -> nn.Sequential:
    """Linear layers with ReLUs in between (state-dict indices 0, 2, 4, ... as the official `Sequential`s)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if final_activation or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def spatial_softmax_2d(heatmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected position and spread of each heat-map under a 2-D softmax (`AlternativeSpatialSoftmaxKP`, §1.3).

    heatmap [N, k, H, W] -> (kp [N, k, 2] as (y, x) in [-1, 1], var [N, k, 3] as (v_y, v_x, cov)). The variances are
    clamped below at 1e-6; the covariance is not. Shift-invariant in the heat-map.
    """
    n, k, h, w = heatmap.shape
    p = heatmap.reshape(n, k, h * w).softmax(dim=-1).view(n, k, h, w)
    lin_y = torch.linspace(-1.0, 1.0, h, device=heatmap.device, dtype=heatmap.dtype)  # float32 linspace, as official
    lin_x = torch.linspace(-1.0, 1.0, w, device=heatmap.device, dtype=heatmap.dtype)
    p_y = p.sum(dim=-1)  # [N, k, H]
    p_x = p.sum(dim=-2)  # [N, k, W]
    y = (p_y * lin_y).sum(dim=-1)
    x = (p_x * lin_x).sum(dim=-1)
    var_y = ((p * lin_y[:, None] ** 2).sum(dim=(-2, -1)) - y**2).clamp_min(1e-6)
    var_x = ((p * lin_x[None, :] ** 2).sum(dim=(-2, -1)) - x**2).clamp_min(1e-6)
    cov = (p * (lin_y[:, None] * lin_x[None, :])).sum(dim=(-2, -1)) - y * x
    return torch.stack([y, x], dim=-1), torch.stack([var_y, var_x, cov], dim=-1)


# ----------------------------------------------------------------------------------------------------------------
# Glimpse geometry (official `spatial_transform`, §1.5)
def glimpse_theta(position: torch.Tensor, scale: torch.Tensor | float, *, inverse: bool) -> torch.Tensor:
    """The affine matrices of the official `spatial_transform`: position [N, 2] (y, x), scale [N, 2] (s_y, s_x) in
    (0, 1) or one number -> theta [N, 2, 3] (row 0 acts on x, row 1 on y).

    crop: `[[s_x, 0, x], [0, s_y, y]]`; paste: `[[1/(s_x+1e-9), 0, -x/(s_x+1e-9)], [0, 1/(s_y+1e-9), -y/(s_y+1e-9)]]`
    (the 1e-9 added in the tensor's dtype, as official). Built by filling zeros so that gradients reach position/scale.
    """
    n = position.shape[0]
    theta = torch.zeros(n, 2, 3, device=position.device, dtype=position.dtype)
    if not torch.is_tensor(scale):
        scale = torch.full_like(position, float(scale))
    y, x = position[:, 0], position[:, 1]
    s_y, s_x = scale[:, 0], scale[:, 1]
    if inverse:
        s_y, s_x = s_y + 1e-9, s_x + 1e-9
        theta[:, 0, 0] = 1 / s_x
        theta[:, 1, 1] = 1 / s_y
        theta[:, 0, 2] = -x / s_x
        theta[:, 1, 2] = -y / s_y
    else:
        theta[:, 0, 0] = s_x
        theta[:, 1, 1] = s_y
        theta[:, 0, 2] = x
        theta[:, 1, 2] = y
    return theta


def crop_glimpses(image: torch.Tensor, position: torch.Tensor, scale: torch.Tensor | float,
                  size: int) -> torch.Tensor:
    """Bilinear size x size crops centred on particles, spanning `scale * (H - 1)` pixels (§1.5, crop).

    image [B, C, H, W], position [B, K, 2] (y, x), scale [B, K, 2] (s_y, s_x) in (0, 1) or one number ->
    [B, K, C, size, size]; zeros outside the image. Gradients reach position and scale through the sampling grid.
    Every crop of an image samples the image once (the K grids are stacked along the grid's height): the same
    per-pixel arithmetic as the official per-particle copies of the image, without the copies.
    """
    b, k = position.shape[:2]
    c = image.shape[1]
    flat_scale = scale.reshape(b * k, 2) if torch.is_tensor(scale) else scale
    theta = glimpse_theta(position.reshape(b * k, 2), flat_scale, inverse=False)
    grid = F.affine_grid(theta, [b * k, c, size, size], align_corners=True)  # [B*K, s, s, 2]
    crops = F.grid_sample(image, grid.view(b, k * size, size, 2), mode="bilinear", padding_mode="zeros",
                          align_corners=True)  # [B, C, K*s, s]
    return crops.view(b, c, k, size, size).transpose(1, 2)


def paste_glimpses(glimpses: torch.Tensor, position: torch.Tensor, scale: torch.Tensor, size: int) -> torch.Tensor:
    """Paste glimpses onto a size x size canvas at the particles' positions and scales (§1.5, paste; the exact inverse
    geometry of `crop_glimpses`): glimpses [B, K, ch, s, s], position [B, K, 2], scale [B, K, 2] in (0, 1) ->
    [B, K, ch, size, size]; zeros outside the glimpse."""
    b, k, ch, s, _ = glimpses.shape
    theta = glimpse_theta(position.reshape(b * k, 2), scale.reshape(b * k, 2), inverse=True)
    grid = F.affine_grid(theta, [b * k, ch, size, size], align_corners=True)  # [B*K, size, size, 2]
    out = F.grid_sample(glimpses.reshape(b * k, ch, s, s), grid, mode="bilinear", padding_mode="zeros",
                        align_corners=True)
    return out.view(b, k, ch, size, size)


def square_masks(position: torch.Tensor, anchor_s: float, size: int) -> torch.Tensor:
    """Binary squares of side `round(anchor_s * (size - 1))` centred on particles (`create_masks_fast`, §1.6).

    position [B, K, 2] -> [B, K, 1, size, size] float32 0/1, no gradient. As official: a centred square of ones,
    translated by `theta = [[1, 0, -x], [0, 1, -y]]` with nearest sampling (align_corners=True).
    """
    b, k = position.shape[:2]
    side = round(anchor_s * (size - 1))  # Python's round is half-to-even, as numpy's
    pad = (size - side) // 2
    square = torch.zeros(1, 1, size, size, device=position.device)
    square[..., pad:pad + side, pad:pad + side] = 1.0
    theta = torch.zeros(b * k, 2, 3, device=position.device)  # float32, as official (.float())
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = -position.detach().reshape(b * k, 2)[:, 1].float()
    theta[:, 1, 2] = -position.detach().reshape(b * k, 2)[:, 0].float()
    grid = F.affine_grid(theta, [b * k, 1, size, size], align_corners=True)
    masks = F.grid_sample(square, grid.view(1, b * k * size, size, 2), mode="nearest", padding_mode="zeros",
                          align_corners=True)  # [1, 1, B*K*size, size]
    return masks.view(b, k, 1, size, size)


@torch.no_grad()
def correlation_maps(image: torch.Tensor, position: torch.Tensor, scale: torch.Tensor | float, size: int,
                     previous_objects: torch.Tensor | None = None) -> torch.Tensor:
    """The attribute encoder's input with correlation heat-maps (`generate_correlation_maps`, §1.7).

    image [B, C, H, W] (clamped to [0, 1]), position [B, K, 2], scale [B, K, 2] in (0, 1) or one number,
    previous_objects [B*K, C, s, s] (the previous frame's crops) or None -> [B*K, C+1, s, s]: the crop, then the
    normalised cross-correlation of the crop (replicate-padded by s) with the previous crop, cut to s x s and min-max
    normalised per map; a zero channel when there are no previous crops. No gradient.
    The normaliser multiplies by one global sum of squared templates over all B*K templates (official, §8 item 6).
    """
    b, k = position.shape[:2]
    c = image.shape[1]
    n = b * k
    crops = crop_glimpses(image.clamp(0, 1), position, scale, size).reshape(n, c, size, size)
    if previous_objects is None:
        return torch.cat([crops, crops.new_zeros(n, 1, size, size)], dim=1)
    padded = F.pad(crops.reshape(1, n * c, size, size), (size,) * 4, mode="replicate")  # [1, N*C, 3s, 3s]
    templates = previous_objects.reshape(n, c, size, size).clamp(0, 1)
    # Officially the correlation is computed at all (2s+1)^2 offsets and then cut to the central s x s ones
    # [lo, hi); correlating only the input window those offsets read gives the same numbers (bit for bit) with a
    # quarter of the work.
    lo, hi = size // 2 + 1, 2 * size + 1 - size // 2
    window = padded[..., lo:hi + size - 1, lo:hi + size - 1]  # [1, N*C, 2s-1, 2s-1]
    corr = F.conv2d(window, templates, groups=n)  # [1, N, s, s]: offsets lo..hi-1 of the full correlation
    norm = torch.sqrt((templates**2).sum() * F.conv2d(window**2, torch.ones_like(templates), groups=n) + 1e-10)
    corr = (corr / (norm + 1e-5)).view(n, 1, hi - lo, hi - lo)  # [N, 1, s, s]
    c_min = corr.amin(dim=(-2, -1), keepdim=True)
    c_max = corr.amax(dim=(-2, -1), keepdim=True)
    corr = (corr - c_min) / (c_max - c_min + 1e-5)
    return torch.cat([crops, corr], dim=1)


def init_official(module: nn.Module) -> None:
    """Official initialisation (§1.13): Conv2d weights N(0, 0.01^2) with zero bias, GroupNorm (1, 0); Linear, Conv1d
    and LayerNorm keep PyTorch's defaults."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
