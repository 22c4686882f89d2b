"""Building blocks shared by the encoders, the prior and the decoders."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dlp.models.kernels import (
    conv_activation,
    fold_conv_batch_norm,
    match_weight_layout,
    replicate_pad,
)


class ConvBlock(nn.Module):
    """[pad] -> conv (no bias) -> BatchNorm -> activation -> [bilinear x2 upsampling].

    With `pad_mode='replicate'` the input is replicate-padded and the conv itself does not pad; with 'zeros' the
    conv zero-pads. Upsampling comes after the activation, as in the official `ConvBlock`.

    A block whose weights are channels-last (a model converted with `.to(memory_format=torch.channels_last)`, as the
    trainer does) converts an input in another layout first: oneDNN is slow on mixed layouts. `fold_batch_norm()`
    turns an eval-mode block into its inference form (see `fold_batch_norm`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        pad_mode: str = "replicate",
        activation: str = "leaky",
        upsample: bool = False,
    ):
        super().__init__()
        self.pad = kernel_size // 2
        self.replicate = pad_mode == "replicate"
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=0 if self.replicate else self.pad, bias=False
        )
        self.norm = nn.BatchNorm2d(out_channels)
        # In place: BatchNorm keeps its own input for backward, so its output buffer can hold the activation.
        self.act = nn.LeakyReLU(0.01, inplace=True) if activation == "leaky" else nn.ReLU(inplace=True)
        self.upsample = upsample
        self.folded = False

    def fold_batch_norm(self) -> None:
        """Inference form of an eval-mode block: the BatchNorm's running statistics and affine folded into the conv's
        weight and bias (conv -> BN is one affine map per output channel), the activation fused into the conv on
        CPUs. Same values up to float32 rounding; the block can no longer train (nor save the official layout)."""
        if self.folded:
            return
        if self.training:
            raise RuntimeError("fold_batch_norm() needs an eval-mode block (running statistics).")
        self.conv = fold_conv_batch_norm(self.conv, self.norm)
        self.norm = nn.Identity()
        self.folded = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = match_weight_layout(x, self.conv.weight)
        if self.replicate and self.pad:
            x = replicate_pad(x, self.pad)
        if self.folded:
            if self.training:
                raise RuntimeError("this ConvBlock has its BatchNorm folded for inference; it cannot train.")
            x = conv_activation(x, self.conv, self.act)
        else:
            x = self.act(self.norm(self.conv(x)))
        if self.upsample:
            # PyTorch's CPU bilinear kernel is an order of magnitude faster on channels-last tensors (its NCHW path
            # round-trips through copies); the values are identical.
            x = x.contiguous(memory_format=torch.channels_last)
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return x


class KeypointCNN(nn.Module):
    """The official `KeyPointCNNOriginal`: two stride-1 blocks, then (stride-2, stride-1) per extra channel stage,
    then a 1x1 `keymap` conv (with bias) giving raw heat-maps. [N, C, H, W] -> [N, n_maps, H/2^s, W/2^s]."""

    def __init__(
        self,
        in_channels: int,
        channels: tuple[int, ...],
        n_maps: int,
        *,
        first_kernel_size: int = 3,
        pad_mode: str = "replicate",
    ):
        super().__init__()
        c0 = channels[0]
        blocks = [
            ConvBlock(in_channels, c0, first_kernel_size, pad_mode=pad_mode, activation="relu"),
            ConvBlock(c0, c0, 3, pad_mode=pad_mode, activation="relu"),
        ]
        prev = c0
        for ch in channels[1:]:
            blocks.append(ConvBlock(prev, ch, 3, stride=2, pad_mode=pad_mode, activation="relu"))
            blocks.append(ConvBlock(ch, ch, 3, pad_mode=pad_mode, activation="relu"))
            prev = ch
        self.blocks = nn.Sequential(*blocks)
        self.keymap = nn.Conv2d(prev, n_maps, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.keymap(self.blocks(x))


class MLP(nn.Sequential):
    """Linear(in, 256) -> ReLU -> Linear(256, 128) -> ReLU -> Linear(128, out); indices .0/.2/.4 as official."""

    def __init__(self, in_features: int, out_features: int, hidden: tuple[int, int] = (256, 128)):
        super().__init__(
            nn.Linear(in_features, hidden[0]),
            nn.ReLU(),
            nn.Linear(hidden[0], hidden[1]),
            nn.ReLU(),
            nn.Linear(hidden[1], out_features),
        )


def spatial_softmax(heatmap: torch.Tensor) -> torch.Tensor:
    """Expected (y, x) position in [-1, 1] of each map: [N, k, H, W] -> [N, k, 2].

    Two 1-D softmaxes over the row- and column-averaged maps (not a 2-D softmax), as the official `SpatialSoftmaxKP`.
    """
    h, w = heatmap.shape[-2:]
    p_y = heatmap.mean(dim=-1).softmax(dim=-1)  # [N, k, H]
    p_x = heatmap.mean(dim=-2).softmax(dim=-1)  # [N, k, W]
    lin_y = torch.linspace(-1.0, 1.0, h, device=heatmap.device, dtype=heatmap.dtype)
    lin_x = torch.linspace(-1.0, 1.0, w, device=heatmap.device, dtype=heatmap.dtype)
    return torch.stack([(p_y * lin_y).sum(-1), (p_x * lin_x).sum(-1)], dim=-1)


def gaussian_maps(kp: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Un-normalised Gaussians (peak 1) centred on keypoints: kp [B, n, 2] (y, x) -> [B, n, size, size].

    The grid is `linspace(-1, 1, size)` (-1 and +1 are the centres of the border pixels).
    """
    lin = torch.linspace(-1.0, 1.0, size, device=kp.device, dtype=kp.dtype)
    var = sigma**2
    dy = (lin.view(1, 1, size, 1) - kp[..., 0, None, None]) ** 2 / var
    dx = (lin.view(1, 1, 1, size) - kp[..., 1, None, None]) ** 2 / var
    g = torch.exp(-0.5 * (dy + dx))
    # Values below the smallest normal float (exp(-87) in float32) become 0: a change far below the rounding of
    # anything they are added to, and it keeps subnormal numbers out of the decoder's first convolution, where
    # each one costs a microcode assist (x86: ~60x slower arithmetic on the affected vectors).
    return g.masked_fill(g < torch.finfo(g.dtype).tiny, 0.0)


def init_official(module: nn.Module) -> None:
    """Official initialisation: convs N(0, 0.01^2) with zero bias, BatchNorm2d (1, 0); Linear keeps PyTorch's default."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
