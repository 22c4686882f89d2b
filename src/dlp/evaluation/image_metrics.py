"""Per-image reconstruction metrics in pure torch: PSNR and SSIM (Wang et al. 2004).

Both take images in [0, 1], [B, C, H, W], and return one value per image ([B]). The reconstruction is clamped to
[0, 1] first (the decoders' outputs are unclamped).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class ImageMetricError(ValueError):
    """Images passed to a metric have mismatched or unsupported shapes."""


def _check(x: torch.Tensor, rec: torch.Tensor) -> None:
    if x.dim() != 4 or x.shape != rec.shape:
        raise ImageMetricError(
            f"x and rec must both be [B, C, H, W] with equal shapes, got {tuple(x.shape)} and {tuple(rec.shape)}."
        )


def psnr(x: torch.Tensor, rec: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, data range 1: 10 log10(1 / MSE). Identical images give inf."""
    _check(x, rec)
    x = x.detach().to(torch.float64)
    rec = rec.detach().to(torch.float64).clamp(0.0, 1.0)
    mse = (x - rec).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse)  # mse = 0 -> inf


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]  # [size, size]


def ssim(
    x: torch.Tensor,
    rec: torch.Tensor,
    *,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Structural similarity per image (mean of the SSIM map over channels and valid positions), data range 1.

    The standard definition: an 11x11 Gaussian window (sigma 1.5), C1 = (0.01)^2, C2 = (0.03)^2, local statistics
    computed per channel with 'valid' filtering (no padding), as the reference MATLAB implementation.
    """
    _check(x, rec)
    if min(x.shape[-2:]) < window_size:
        raise ImageMetricError(f"SSIM needs images of at least {window_size}x{window_size}, got {tuple(x.shape[-2:])}.")
    x = x.detach().to(torch.float64)
    rec = rec.detach().to(torch.float64).clamp(0.0, 1.0)
    channels = x.shape[1]
    win = _gaussian_window(window_size, sigma, x.dtype, x.device).expand(channels, 1, window_size, window_size)

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, win, groups=channels)

    mu_x, mu_y = filt(x), filt(rec)
    var_x = filt(x * x) - mu_x**2
    var_y = filt(rec * rec) - mu_y**2
    cov = filt(x * rec) - mu_x * mu_y
    c1, c2 = k1**2, k2**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(1)
