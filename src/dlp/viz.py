"""Visualisation helpers for training, evaluation and the demo: particles, boxes, NMS, grids, figures, loss curves.

Everything but `save_image` (PIL) and `plot_loss_curves` (matplotlib, imported inside the function with the Agg canvas,
never through `matplotlib.use`) is plain torch on [B, 3, H, W] float images in [0, 1], so it runs on any device and
importing this module imports neither matplotlib nor PIL.

Conventions: particles are (y, x) in [-1, 1] with pixel position (kp + 1) / 2 * (size - 1); boxes are integer
(x0, y0, x1, y1) pixel boxes with exclusive ends (a box covers x0 <= col < x1, y0 <= row < y1; area (x1-x0)*(y1-y0)),
the convention torchvision uses for `nms` and `box_iou`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "PALETTE_HEX",
    "particle_colors",
    "kp_to_pixels",
    "draw_particles",
    "boxes_from_masks",
    "anchor_boxes",
    "scale_boxes",
    "box_iou",
    "nms",
    "draw_boxes",
    "make_grid",
    "label_rows",
    "save_image",
    "plot_loss_curves",
    "agg_figure",
    "save_figure",
]

# the official 11-colour particle palette (utils/util_func.py::color_map); particle i gets colour i mod 11
PALETTE_HEX: tuple[str, ...] = (
    "FF355E", "8FFE09", "1D5DEC", "FF9933", "FFFF66", "CCFF00", "AAF0D1", "FF6EFF", "FF00CC", "299617", "AF6E4D",
)  # fmt: skip


def particle_colors(n: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """The official palette repeated to n colours: [n, 3] float in [0, 1]."""
    base = torch.tensor([[int(h[i : i + 2], 16) for i in (0, 2, 4)] for h in PALETTE_HEX], dtype=torch.float32) / 255.0
    return base[torch.arange(n) % len(PALETTE_HEX)].to(device)


def kp_to_pixels(kp: torch.Tensor, height: int, width: int | None = None) -> torch.Tensor:
    """(y, x) particle coordinates in [-1, 1] -> (row, col) float pixel positions, (kp + 1) / 2 * (size - 1)."""
    width = height if width is None else width
    scale = kp.new_tensor([height - 1, width - 1])
    return (kp + 1.0) / 2.0 * scale


def _as_rgb(images: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> float [B, 3, H, W] clamped to [0, 1] (1-channel images repeated), a new tensor."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images [B, 1 or 3, H, W], got shape {tuple(images.shape)}.")
    images = images.detach().float()
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    return images.clamp(0.0, 1.0)


def _expand_colors(colors: torch.Tensor | None, b: int, n: int, device: torch.device) -> torch.Tensor:
    """None | [n, 3] | [B, n, 3] -> [B, n, 3] float on `device`."""
    if colors is None:
        colors = particle_colors(n)
    colors = torch.as_tensor(colors, dtype=torch.float32, device=device)
    if colors.dim() == 2:
        colors = colors.unsqueeze(0).expand(b, -1, -1)
    if colors.shape[:2] != (b, n) or colors.shape[-1] != 3:
        raise ValueError(f"colors must be [{n}, 3] or [{b}, {n}, 3], got {tuple(colors.shape)}.")
    return colors


def _paint(images: torch.Tensor, masks: torch.Tensor, colors: torch.Tensor) -> torch.Tensor:
    """Paint bool masks [B, N, H, W] with colors [B, N, 3] onto images [B, 3, H, W]; later masks cover earlier ones."""
    n = masks.shape[1]
    if n == 0:
        return images
    order = torch.arange(1, n + 1, device=masks.device).view(1, n, 1, 1)
    top = (masks * order).amax(dim=1)  # [B, H, W]: 1 + index of the last mask covering the pixel, 0 = none
    painted = torch.gather(colors, 1, (top.clamp(min=1) - 1).flatten(1).unsqueeze(-1).expand(-1, -1, 3))  # [B, H*W, 3]
    painted = painted.transpose(1, 2).reshape(images.shape)
    return torch.where((top > 0).unsqueeze(1), painted, images)


def draw_particles(
    images: torch.Tensor,
    kp: torch.Tensor,
    radius: float | None = None,
    colors: torch.Tensor | None = None,
) -> torch.Tensor:
    """Filled discs at the particles: images [B, C, H, W], kp [B, N, 2] (y, x) in [-1, 1] -> [B, 3, H, W] float.

    Disc centres are rounded to the nearest pixel (as the official cv2 plots); `radius` in pixels defaults to
    max(1, round(H / 40)) (3 at 128 px, 2 at 64 px). Particle i gets `colors[..., i, :]` (default: the palette);
    higher indices are drawn on top; NaN particles are skipped. Images are clamped to [0, 1] first.
    """
    out = _as_rgb(images)
    b, _, h, w = out.shape
    if kp.dim() != 3 or kp.shape[0] != b or kp.shape[-1] != 2:
        raise ValueError(f"expected kp [{b}, N, 2], got shape {tuple(kp.shape)}.")
    n = kp.shape[1]
    radius = max(1.0, round(h / 40)) if radius is None else float(radius)
    centre = kp_to_pixels(kp.detach().float().to(out.device), h, w).round()  # [B, N, 2]
    rows = torch.arange(h, device=out.device, dtype=torch.float32).view(1, 1, h, 1)
    cols = torch.arange(w, device=out.device, dtype=torch.float32).view(1, 1, 1, w)
    dist2 = (rows - centre[..., 0, None, None]) ** 2 + (cols - centre[..., 1, None, None]) ** 2  # [B, N, H, W]
    masks = dist2 <= radius**2 + 1e-6  # NaN particles compare False
    return _paint(out, masks, _expand_colors(colors, b, n, out.device))


def boxes_from_masks(masks: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Tight boxes around masks [N, 1, h, w] -> int64 [N, 4] (x0, y0, x1, y1) in image pixels (width x height).

    The mask grid is scaled to the image (x by width / w, y by height / h), x1/y1 exclusive, clamped to the image;
    empty masks give (0, 0, 0, 0). Unlike the official `get_bb_from_masks` (first/last pixel in raster order, one mask
    pixel short on the far side) the box covers every mask pixel whatever the mask's shape.
    """
    if masks.dim() == 3:
        masks = masks.unsqueeze(1)
    if masks.dim() != 4 or masks.shape[1] != 1:
        raise ValueError(f"expected masks [N, 1, h, w], got shape {tuple(masks.shape)}.")
    on = masks[:, 0] > 0  # [N, h, w]
    n, h, w = on.shape
    rows_on, cols_on = on.any(dim=2), on.any(dim=1)  # [N, h], [N, w]
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    y0 = torch.where(rows_on, ar_h, h).amin(dim=1)
    y1 = torch.where(rows_on, ar_h + 1, 0).amax(dim=1)
    x0 = torch.where(cols_on, ar_w, w).amin(dim=1)
    x1 = torch.where(cols_on, ar_w + 1, 0).amax(dim=1)
    sx, sy = width / w, height / h
    boxes = torch.stack(
        [
            torch.floor(x0 * sx).clamp(0, width),
            torch.floor(y0 * sy).clamp(0, height),
            torch.ceil(x1 * sx).clamp(0, width),
            torch.ceil(y1 * sy).clamp(0, height),
        ],
        dim=1,
    ).long()
    empty = ~rows_on.any(dim=1)
    boxes[empty] = 0
    return boxes


def anchor_boxes(kp: torch.Tensor, anchor_s: float, height: int, width: int | None = None) -> torch.Tensor:
    """Boxes of the particles' glimpse squares: kp [..., 2] (y, x) in [-1, 1] -> int64 [..., 4] (x0, y0, x1, y1).

    A square of side p = round(anchor_s * (H - 1)) (the glimpse size) centred on the particle's pixel position:
    x0 = floor(col - (p - 1) / 2 + 1/2) (rounding half up), x1 = x0 + p, clipped to the image; an even side reaches
    one pixel further past the particle's pixel on the high side.
    """
    width = height if width is None else width
    side = round(anchor_s * (height - 1))
    pix = kp_to_pixels(kp.detach().float(), height, width)
    y0 = torch.floor(pix[..., 0] - (side - 1) / 2 + 0.5)
    x0 = torch.floor(pix[..., 1] - (side - 1) / 2 + 0.5)
    boxes = torch.stack(
        [x0.clamp(0, width), y0.clamp(0, height), (x0 + side).clamp(0, width), (y0 + side).clamp(0, height)], dim=-1
    )
    return boxes.long()


def scale_boxes(kp: torch.Tensor, scale: torch.Tensor, height: int, width: int | None = None) -> torch.Tensor:
    """Boxes of glimpses of variable size (DLPv2): kp [..., 2] (y, x) in [-1, 1] and scale [..., 2] (s_y, s_x), the
    fraction of the image the glimpse spans (sigmoid of the scale logits) -> float [..., 4] (x0, y0, x1, y1).

    A glimpse of scale s samples pixel centres from c - s (H - 1) / 2 to c + s (H - 1) / 2 around the particle's
    pixel c; as a box of pixel areas (exclusive ends, like the ground-truth boxes) that is half a pixel wider on
    each side. Not clipped.
    """
    width = height if width is None else width
    pix = kp_to_pixels(kp.detach().float(), height, width)  # (row, col)
    half_y = scale[..., 0].detach().float() * (height - 1) / 2 + 0.5
    half_x = scale[..., 1].detach().float() * (width - 1) / 2 + 0.5
    return torch.stack([pix[..., 1] - half_x, pix[..., 0] - half_y, pix[..., 1] + half_x, pix[..., 0] + half_y], -1)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of boxes a [N, 4] and b [M, 4] (x0, y0, x1, y1) -> [N, M] float (0 where the union is empty)."""
    a, b = a.float(), b.float()
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thresh: float = 0.5) -> torch.Tensor:
    """Greedy non-maximum suppression (same result as `torchvision.ops.nms`).

    boxes [N, 4] (x0, y0, x1, y1), scores [N] -> int64 indices of the kept boxes, by decreasing score (ties: lower
    index first). A box is dropped when its IoU with an already kept, higher-scoring box is > `iou_thresh`.
    """
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores.detach(), descending=True, stable=True).indices
    iou = box_iou(boxes[order], boxes[order]).cpu()  # [N, N] in score order
    suppressed = torch.zeros(order.numel(), dtype=torch.bool)
    keep = []
    for i in range(order.numel()):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_thresh
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]


# 3x5 bitmap glyphs for score labels, one string of 15 bits (row-major) per character
_GLYPHS = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001001001",
    "8": "111101111101111", "9": "111101111001111", ".": "000000000000010", "-": "000000111000000",
}  # fmt: skip


def _text_mask(text: str, height: int, width: int, top: int, left: int, device: torch.device) -> torch.Tensor:
    """[H, W] bool mask of `text` in the 3x5 font, top-left corner at (top, left), clipped to the image."""
    mask = torch.zeros(height, width, dtype=torch.bool, device=device)
    for j, ch in enumerate(text):
        glyph = _GLYPHS.get(ch)
        if glyph is None:
            continue
        bits = torch.tensor([c == "1" for c in glyph], dtype=torch.bool, device=device).view(5, 3)
        r0, c0 = top, left + 4 * j
        r1, c1 = min(r0 + 5, height), min(c0 + 3, width)
        if r0 >= height or c0 >= width or r0 < 0 or c0 < 0:
            continue
        mask[r0:r1, c0:c1] |= bits[: r1 - r0, : c1 - c0]
    return mask


def draw_boxes(
    images: torch.Tensor,
    boxes: torch.Tensor | Sequence[torch.Tensor],
    colors: torch.Tensor | Sequence[torch.Tensor] | None = None,
    scores: torch.Tensor | Sequence[torch.Tensor] | None = None,
    thickness: int = 1,
) -> torch.Tensor:
    """Rectangle outlines: images [B, C, H, W], boxes [B, N, 4] or a list of B [N_b, 4] tensors -> [B, 3, H, W].

    `colors`: None (palette by box position), [N, 3], [B, N, 3] or a list of [N_b, 3]. `scores` (same layout as the
    boxes' first dims) are written as "0.87" in a 3x5 pixel font inside the top-left corner. Boxes are (x0, y0, x1, y1)
    with exclusive ends; the outline is drawn on the box's outer `thickness` pixels.
    """
    out = _as_rgb(images)
    b, _, h, w = out.shape
    if len(boxes) != b:
        raise ValueError(f"expected boxes for {b} images, got {len(boxes)}.")
    rows = torch.arange(h, device=out.device).view(1, h, 1)
    cols = torch.arange(w, device=out.device).view(1, 1, w)
    result = []
    for i in range(b):
        bx = torch.as_tensor(boxes[i], device=out.device).reshape(-1, 4).long()  # [N, 4]
        n = bx.shape[0]
        if colors is None:
            col = particle_colors(n, device=out.device)
        else:
            col = torch.as_tensor(colors if torch.is_tensor(colors) and colors.dim() == 2 else colors[i])
            col = col.to(out.device, torch.float32).reshape(n, 3)
        x0, y0, x1, y1 = (bx[:, j, None, None] for j in range(4))
        inside = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)  # [N, H, W]
        core = (rows >= y0 + thickness) & (rows < y1 - thickness) & (cols >= x0 + thickness) & (cols < x1 - thickness)
        masks = inside & ~core
        if scores is not None:
            sc = torch.as_tensor(scores[i]).reshape(-1)
            for k in range(n):
                if bx[k, 2] <= bx[k, 0] or bx[k, 3] <= bx[k, 1]:
                    continue  # empty box: no label
                text = f"{float(sc[k]):.2f}"
                top, left = int(bx[k, 1]) + thickness + 1, int(bx[k, 0]) + thickness + 1
                masks[k] |= _text_mask(text, h, w, top, left, out.device)
        result.append(_paint(out[i : i + 1], masks.unsqueeze(0), col.unsqueeze(0)))
    return torch.cat(result, dim=0) if result else out


def make_grid(rows: Sequence[torch.Tensor], pad_value: float = 1.0, padding: int = 2,
              labels: Sequence[str] | None = None) -> torch.Tensor:
    """Tile rows of images (each [b, C, H, W], C in {1, 3}, same H, W) into one image [3, H', W'].

    Row r holds the images of `rows[r]` from left to right; shorter rows are filled with `pad_value`; `padding`
    pixels of `pad_value` separate the tiles (as torchvision's make_grid with nrow = the longest row). `labels` (one
    per row) are written in a column on the left (`label_rows`).
    """
    if labels is not None:
        grid = make_grid(rows, pad_value, padding)
        h = next(r for r in rows if r is not None).shape[-2]
        return label_rows(grid, labels, row_height=h, padding=padding)
    rows = [_as_rgb(r) for r in rows if r is not None]
    if not rows:
        raise ValueError("make_grid needs at least one row of images.")
    h, w = rows[0].shape[-2:]
    if any(r.shape[-2:] != (h, w) for r in rows):
        raise ValueError(f"all rows must hold images of the same size, got {[tuple(r.shape[-2:]) for r in rows]}.")
    ncol = max(r.shape[0] for r in rows)
    device = rows[0].device
    grid = torch.full(
        (3, padding + len(rows) * (h + padding), padding + ncol * (w + padding)), float(pad_value), device=device
    )
    for i, row in enumerate(rows):
        for j in range(row.shape[0]):
            top, left = padding + i * (h + padding), padding + j * (w + padding)
            grid[:, top : top + h, left : left + w] = row[j].to(device)
    return grid


def label_rows(grid: torch.Tensor, labels: Sequence[str], *, row_height: int, padding: int = 2) -> torch.Tensor:
    """A grid of `make_grid` [3, H', W'] with a white column on the left naming each row (black text, PIL's bitmap
    font, vertically centred on the row)."""
    import numpy as np
    from PIL import Image, ImageDraw

    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = max((probe.textbbox((0, 0), text)[2] for text in labels), default=0) + 2 * padding + 2
    column = Image.new("RGB", (width, grid.shape[-2]), "white")
    draw = ImageDraw.Draw(column)
    for i, text in enumerate(labels):
        top = padding + i * (row_height + padding)
        text_height = probe.textbbox((0, 0), text)[3]
        draw.text((padding + 1, top + (row_height - text_height) // 2), text, fill="black")
    label_tensor = torch.from_numpy(np.asarray(column).copy()).permute(2, 0, 1).float() / 255.0
    return torch.cat([label_tensor.to(grid.device, grid.dtype), grid], dim=-1)


def save_image(tensor: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write an image [3, H, W] / [1, H, W] / [H, W] in [0, 1] (clamped), or a batch [B, C, H, W] as one grid row, with
    PIL; the format follows the file extension (png, jpg, ...). Creates the parent folder. Returns the path."""
    from PIL import Image

    t = tensor.detach().float().cpu()
    if t.dim() == 4:
        t = make_grid([t])
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3 or t.shape[0] not in (1, 3):
        raise ValueError(f"expected an image [C, H, W] with C in (1, 3), got shape {tuple(tensor.shape)}.")
    array = t.clamp(0, 1).mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(path)
    return path


# keys of the metric dicts that are not plotted as curves (x axes and bookkeeping)
_X_KEYS = ("epoch", "step", "global_step", "iteration")
_SKIP_KEYS = frozenset(_X_KEYS) | {"time", "elapsed", "wall_time", "lr"}
_PANELS = (("loss", ("loss",)), ("KL", ("kl", "kl_kp", "kl_feat")), ("reconstruction", ("rec",)))


def plot_loss_curves(metrics: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str | None = None) -> Path:
    """Stacked curves of a training history -> PNG (or any matplotlib format) at `path`.

    `metrics` is one dict per epoch (or eval point), e.g. {"epoch": 3, "loss": ..., "kl": ..., "val_loss": ...}.
    Panels: loss; KL terms (kl, kl_kp, kl_feat); reconstruction (rec); then one panel per other numeric key present
    (eval metrics such as psnr, val_loss, mafl_error; keys starting with "lr" and time/step counters are skipped). A key
    missing from some entries is drawn only where present (no stale repeats). x axis: "epoch" (or "step") if present,
    else the entry index. Uses matplotlib's Agg canvas directly; never changes the global backend.
    """
    x_key = next((k for k in _X_KEYS if any(k in m for m in metrics)), None)

    def series(key: str) -> tuple[list[float], list[float]]:
        xs, ys = [], []
        for i, m in enumerate(metrics):
            v = m.get(key)
            if isinstance(v, torch.Tensor) and v.numel() == 1:
                v = v.item()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
                xs.append(float(m.get(x_key, i)) if x_key else float(i))
                ys.append(float(v))
        return xs, ys

    panels: list[tuple[str, list[str]]] = []
    used: set[str] = set()
    for name, keys in _PANELS:
        present = [k for k in keys if series(k)[0]]
        used.update(keys)
        if present:
            panels.append((name, present))
    extra: list[str] = []
    for m in metrics:
        for k in m:
            if k not in used and k not in _SKIP_KEYS and not k.startswith("lr") and k not in extra and series(k)[0]:
                extra.append(k)
    panels += [(k, [k]) for k in extra]
    if not panels:
        panels = [("loss", [])]

    fig = agg_figure((8, 2.4 * len(panels)))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (name, keys) in zip(axes, panels):
        for k in keys:
            xs, ys = series(k)
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=k)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(loc="best", fontsize=8)
    axes[-1].set_xlabel(x_key or "entry")
    if title:
        axes[0].set_title(title)
    return save_figure(fig, path)


def agg_figure(figsize: tuple[float, float]):
    """A matplotlib `Figure` on its own Agg canvas: drawing never touches pyplot or the global backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Lay out `fig` and write it to `path` (any matplotlib format, parent folders made) at 100 dpi."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
