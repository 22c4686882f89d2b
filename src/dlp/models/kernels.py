"""Speed paths shared by the model families, each with the arithmetic of the plain PyTorch formulation (the same
values, or the same up to float32 rounding where noted).

* `replicate_pad`: `F.pad(mode='replicate')` in eager mode; under `torch.compile` the same values from edge slices
  (inductor's CPU backend fails on `replication_pad2d_backward` of channels-last tensors).
* `match_weight_layout`: a convolution whose weight is channels-last gets a channels-last input (oneDNN runs mixed
  layouts through a slow path).
* `fold_conv_batch_norm`, `fold_linear_batch_norm`, `conv_activation`: the inference forms of conv -> BatchNorm ->
  activation (BatchNorm folded into the weights, the activation fused into oneDNN's convolution on CPUs); equal to
  the eval-mode module up to float32 rounding.
* `adam`: `torch.optim.Adam` with the fused (single-kernel) step where the parameters' device has one: ~3x faster
  than the per-parameter loop on a CPU; the same update up to float32 rounding. `DLP_FUSED_ADAM=0` turns it off.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn


# ------------------------------------------------------------------------------------------------------------------
# Padding and layouts
def replicate_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Replicate-pad the last two dimensions of x by `pad` on every side (`F.pad(x, (pad,) * 4, mode='replicate')`)."""
    if torch.compiler.is_compiling():
        return _replicate_pad_slices(x, pad)
    return F.pad(x, (pad,) * 4, mode="replicate")


def _replicate_pad_slices(x: torch.Tensor, pad: int) -> torch.Tensor:
    """The replicate padding as concatenated edge slices: copies of the same values, whose backward (sums of the
    gradients that fall on the border) inductor compiles."""
    h, w = x.shape[-2:]
    lead = x.shape[:-2]
    x = torch.cat([x[..., :1, :].expand(*lead, pad, w), x, x[..., -1:, :].expand(*lead, pad, w)], -2)
    hp = h + 2 * pad
    return torch.cat([x[..., :1].expand(*lead, hp, pad), x, x[..., -1:].expand(*lead, hp, pad)], -1)


def _is_channels_last(weight: torch.Tensor) -> bool:
    return weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


def match_weight_layout(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x in channels-last layout if the convolution weight is channels-last and x is not (else x itself)."""
    if x.dim() == 4 and weight.dim() == 4 and _is_channels_last(weight) and \
            not x.is_contiguous(memory_format=torch.channels_last):
        return x.contiguous(memory_format=torch.channels_last)
    return x


# ------------------------------------------------------------------------------------------------------------------
# Inference forms
def _batch_norm_scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, shift) of an eval-mode BatchNorm, in float64: y = x * scale + shift."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("folding needs a BatchNorm with running statistics (track_running_stats=True).")
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    shift = -bn.running_mean.double() * scale
    if bn.affine:
        scale = scale * bn.weight.double()
        shift = shift * bn.weight.double() + bn.bias.double()
    return scale, shift


def fold_conv_batch_norm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv (with bias) computing `bn(conv(x))` of an eval-mode BatchNorm; weights folded in float64."""
    scale, shift = _batch_norm_scale_shift(bn)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                      padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                      padding_mode=conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)
    layout = torch.channels_last if _is_channels_last(conv.weight) else torch.contiguous_format
    with torch.no_grad():
        weight = conv.weight.double() * scale.view(-1, 1, 1, 1)
        fused.weight.copy_(weight.to(conv.weight.dtype))
        fused.weight.data = fused.weight.data.contiguous(memory_format=layout)
        bias = shift if conv.bias is None else conv.bias.double() * scale + shift
        fused.bias.copy_(bias.to(conv.weight.dtype))
    return fused


def fold_linear_batch_norm(linear: nn.Linear, bn: nn.BatchNorm1d) -> nn.Linear:
    """A Linear computing `bn(linear(x))` of an eval-mode BatchNorm1d; weights folded in float64."""
    scale, shift = _batch_norm_scale_shift(bn)
    fused = nn.Linear(linear.in_features, linear.out_features, bias=True, device=linear.weight.device,
                      dtype=linear.weight.dtype)
    with torch.no_grad():
        fused.weight.copy_((linear.weight.double() * scale[:, None]).to(linear.weight.dtype))
        bias = shift if linear.bias is None else linear.bias.double() * scale + shift
        fused.bias.copy_(bias.to(linear.weight.dtype))
    return fused


def _pointwise_conv_available() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    except (AttributeError, RuntimeError):
        return False


_POINTWISE_CONV = _pointwise_conv_available()


def conv_activation(x: torch.Tensor, conv: nn.Conv2d, act: nn.Module) -> torch.Tensor:
    """`act(conv(x))`; on a CPU without gradients, one oneDNN convolution with the activation as its post-op."""
    if (_POINTWISE_CONV and x.device.type == "cpu" and x.dtype == torch.float32 and conv.weight.dtype == torch.float32
            and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)):
        if isinstance(act, nn.LeakyReLU):
            attr, scalars = "leaky_relu", [act.negative_slope]
        elif isinstance(act, nn.ReLU):
            attr, scalars = "relu", []
        else:
            attr = None
        if attr is not None:
            return torch.ops.mkldnn._convolution_pointwise(x, conv.weight, conv.bias, list(conv.padding),
                                                           list(conv.stride), list(conv.dilation), conv.groups, attr,
                                                           scalars, "")
    return act(conv(x))


# ------------------------------------------------------------------------------------------------------------------
# Optimiser
def adam(params: Iterable[torch.nn.Parameter], **kwargs) -> torch.optim.Adam:
    """`torch.optim.Adam(params, **kwargs)` with the fused step where every parameter's device has one."""
    params = list(params)
    fused = os.environ.get("DLP_FUSED_ADAM", "1") != "0" and bool(params)
    if fused:
        try:
            from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

            devices = set(_get_fused_kernels_supported_devices())
        except ImportError:  # an older PyTorch: its fused Adam is CUDA-only
            devices = {"cuda"}
        fused = all(p.device.type in devices and p.is_floating_point() for p in params)
    return torch.optim.Adam(params, fused=True, **kwargs) if fused else torch.optim.Adam(params, **kwargs)
