"""Glimpse geometry: anchor squares, glimpse extraction, pasting and alpha compositing.

The official code builds every glimpse by masking and translating the *full* image once per particle with
`affine_grid`/`grid_sample` and then cropping. Everything here works at glimpse size and reproduces the same numbers:
a translation by a keypoint only needs the (S+1) x (S+1) window of pixels under the glimpse and two bilinear weights.

Conventions (align_corners=False, as the official `grid_sample` calls): on an N-pixel axis, a keypoint coordinate
`k` in [-1, 1] corresponds to the pixel position `(N - 1) / 2 + k * N / 2`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def square_membership(kp: torch.Tensor, grid: int, side: int, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Whether pixel rows (or columns) lie inside the anchor square of side `side` centred on each coordinate.

    kp: [...] one coordinate per particle (y or x). Returns [..., P] booleans for pixels `positions` (default
    `arange(grid)`; or a tensor broadcastable to [..., P]). Pixel `r` is inside iff
    `pad <= round_half_even(r - k * grid / 2) <= pad + side - 1` with `pad = (grid - side) // 2` -- the closed form of
    the official nearest-neighbour `grid_sample` of a centred square.
    """
    pad = (grid - side) // 2
    if positions is None:
        positions = torch.arange(grid, device=kp.device, dtype=kp.dtype)
    source = torch.round(positions - kp[..., None] * (grid / 2))
    return (source >= pad) & (source <= pad + side - 1)


def square_masks(kp: torch.Tensor, grid: int, side: int) -> torch.Tensor:
    """Binary anchor squares of side `side` on a grid x grid canvas: kp [B, K, 2] (y, x) -> [B, K, 1, grid, grid]."""
    rows = square_membership(kp[..., 0], grid, side)  # [B, K, grid]
    cols = square_membership(kp[..., 1], grid, side)
    return (rows[..., :, None] & cols[..., None, :]).unsqueeze(2).to(kp.dtype)


def exclusive_coverage(weights: torch.Tensor) -> torch.Tensor:
    """Effective masks `m_i = min(1 - stopgrad(c_{i-1}), w_i)` with `c_i = c_{i-1} + m_i`, `m_0 = w_0`, vectorised.

    weights: [B, K, ...] in particle order (particle 0 on top). The running coverage obeys
    `c_i = min(1, c_{i-1} + w_i)` for i >= 1 (even for negative or > 1 weights), whose closed form is
    `c_i = s_i - relu(max_{1<=j<=i} s_j - 1)` with `s = cumsum(w)`. Only `w_i` inside the `min` receives gradient,
    exactly as the official sequential loop.
    """
    if weights.shape[1] == 1:
        return weights
    s = weights.detach().cumsum(dim=1)
    # The running maximum as K elementwise maxima: `cummax` walks the strided particle dimension one element at a
    # time and is 40x slower on a CPU for [32, 10, 1, 64, 64].
    running = [s[:, 1]]
    for i in range(2, s.shape[1]):
        running.append(torch.maximum(running[-1], s[:, i]))
    running_max = torch.stack(running, dim=1)
    coverage = torch.cat([s[:, :1], s[:, 1:] - torch.relu(running_max - 1.0)], dim=1)  # c_i
    covered_before = torch.cat([torch.zeros_like(s[:, :1]), coverage[:, :-1]], dim=1)  # c_{i-1}
    masks = torch.minimum(1.0 - covered_before, weights)
    return torch.cat([weights[:, :1], masks[:, 1:]], dim=1)


def extract_glimpses(
    image: torch.Tensor,
    kp: torch.Tensor,
    side: int,
    *,
    exclusive: bool = False,
    obj_on: torch.Tensor | None = None,
) -> torch.Tensor:
    """Crop the anchor-square glimpse of each particle: image [B, C, N, N], kp [B, K, 2] -> [B, K, C, side, side].

    Same numbers as the official `ObjectEncoder`: mask the image with the particle's anchor square (made exclusive
    in particle order, weighted by `obj_on`, when `exclusive`), translate it so the particle lands on the canvas
    centre (bilinear, zeros outside), crop the central `side` x `side` window.
    """
    b, c, n, _ = image.shape
    k = kp.shape[1]
    # Sampling rows of the crop: u = r + k_y * N / 2 for r in [N/2 - side/2, N/2 + side/2).
    start = (n // 2 - side // 2) + kp * (n / 2)  # [B, K, 2] position of the first crop pixel
    base = torch.floor(start)
    frac = start - base  # bilinear weight of the second tap, identical for every row (column) of the crop
    offsets = torch.arange(side + 1, device=kp.device, dtype=kp.dtype)
    taps = base[..., None] + offsets  # [B, K, 2, side + 1] integer pixel rows / cols of the window
    inside = (taps >= 0) & (taps <= n - 1)
    rows, cols = taps[:, :, 0], taps[:, :, 1]

    if exclusive:
        # a_j on the window of particle i, for every square j: [B, K_i, K_j, side+1, side+1].
        row_in = square_membership(kp[:, None, :, 0], n, side, rows[:, :, None, :]) & inside[:, :, None, 0, :]
        col_in = square_membership(kp[:, None, :, 1], n, side, cols[:, :, None, :]) & inside[:, :, None, 1, :]
        weight = torch.ones(b, k, device=kp.device, dtype=kp.dtype) if obj_on is None else obj_on.clamp(0.0, 1.0)
        amounts = weight[:, None, :, None, None] * (row_in[..., :, None] & col_in[..., None, :]).to(kp.dtype)
        # With weights in [0, 1] the coverage before particle i is min(1, sum_{j<i} a_j).
        earlier = torch.tril(torch.ones(k, k, device=kp.device, dtype=kp.dtype), diagonal=-1)
        covered_before = torch.einsum("ij,bijrc->birc", earlier, amounts.detach()).clamp(max=1.0)
        own = torch.diagonal(amounts, dim1=1, dim2=2).permute(0, 3, 1, 2)  # [B, K, side+1, side+1]
        mask = torch.cat([own[:, :1], torch.minimum(1.0 - covered_before, own)[:, 1:]], dim=1).to(image.dtype)
    else:
        row_in = square_membership(kp[..., 0], n, side, rows) & inside[:, :, 0]  # [B, K, side+1]
        col_in = square_membership(kp[..., 1], n, side, cols) & inside[:, :, 1]
        mask = (row_in[..., :, None] & col_in[..., None, :]).to(image.dtype)

    # Gather the window pixels (out-of-range taps are zeroed by the mask).
    r_idx = rows.clamp(0, n - 1).long()  # [B, K, side+1]
    c_idx = cols.clamp(0, n - 1).long()
    flat = image.reshape(b, 1, c, n * n).expand(b, k, c, n * n)
    index = (r_idx[..., :, None] * n + c_idx[..., None, :]).reshape(b, k, 1, -1).expand(b, k, c, (side + 1) ** 2)
    window = torch.gather(flat, 3, index).view(b, k, c, side + 1, side + 1) * mask[:, :, None]

    fy = frac[..., 0, None, None, None]  # [B, K, 1, 1, 1]
    fx = frac[..., 1, None, None, None]
    top = window[..., :-1, :] * (1 - fy) + window[..., 1:, :] * fy
    return top[..., :-1] * (1 - fx) + top[..., 1:] * fx


def paste_glimpses(patches: torch.Tensor, kp: torch.Tensor, size: int) -> torch.Tensor:
    """Paste glimpses centred on keypoints into a size x size canvas: [B, K, C, S, S], [B, K, 2] -> [B, K, C, size, size].

    Equals the official `translate_patches` (zero-pad to the canvas, translate by the keypoint, bilinear,
    align_corners=False) but samples the glimpse directly. Differentiable w.r.t. both the patches and `kp`.
    """
    b, k, c, s, _ = patches.shape
    pad = (size - s) // 2
    # Output pixel r samples the padded canvas at r - kp * size / 2, i.e. the glimpse at r - kp * size / 2 - pad;
    # in the glimpse's own normalised coordinates (align_corners=False) that is (2 * u + 1) / s - 1.
    pixels = torch.arange(size, device=kp.device, dtype=kp.dtype)
    u = pixels - kp[..., None] * (size / 2) - pad  # [B, K, 2, size]
    g = (2 * u + 1) / s - 1
    gy = g[:, :, 0].reshape(b * k, size, 1).expand(b * k, size, size)
    gx = g[:, :, 1].reshape(b * k, 1, size).expand(b * k, size, size)
    grid = torch.stack([gx, gy], dim=-1)
    out = F.grid_sample(patches.reshape(b * k, c, s, s), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.view(b, k, c, size, size)


def composite(alpha: torch.Tensor, rgb: torch.Tensor, obj_on: torch.Tensor, background: torch.Tensor):
    """Alpha-composite objects in particle order (particle 0 on top) over a background.

    alpha [B, K, 1, H, W], rgb [B, K, C, H, W], obj_on [B, K], background [B, C, H, W] ->
    (image [B, C, H, W], objects [B, C, H, W]) where objects is the foreground alone. Not clamped.
    """
    masks = exclusive_coverage(obj_on[:, :, None, None, None] * alpha)
    objects = (masks * rgb).sum(dim=1)
    image = (1 - masks.sum(dim=1).clamp(0.0, 1.0)) * background + objects
    return image, objects
