"""Speed paths shared by the model families, each with the same arithmetic as the plain PyTorch formulation.

* `replicate_pad`: `F.pad(mode='replicate')` in eager mode; under `torch.compile` the same values from edge slices,
  which inductor fuses (its CPU backend fails on `replication_pad2d_backward` of channels-last tensors).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def replicate_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Replicate-pad the last two dimensions of x by `pad` on every side (`F.pad(x, (pad,) * 4, mode='replicate')`)."""
    if torch.compiler.is_compiling():
        return _replicate_pad_slices(x, pad)
    return F.pad(x, (pad,) * 4, mode="replicate")


def _replicate_pad_slices(x: torch.Tensor, pad: int) -> torch.Tensor:
    """The replicate padding as concatenated edge slices: copies of the same values, whose backward (sums of the
    gradients that fall on the border) inductor compiles."""
    h, w = x.shape[-2:]
    x = torch.cat([x[..., :1, :].expand(*x.shape[:-2], pad, w), x, x[..., -1:, :].expand(*x.shape[:-2], pad, w)], -2)
    hp = h + 2 * pad
    return torch.cat([x[..., :1].expand(*x.shape[:-2], hp, pad), x, x[..., -1:].expand(*x.shape[:-2], hp, pad)], -1)
