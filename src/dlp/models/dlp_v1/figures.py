"""The DLP v1 training figures: the official grid of particles, reconstructions, proposals and boxes."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from dlp.viz import anchor_boxes, draw_boxes, draw_particles, make_grid, nms, particle_colors


def training_figure(
    x: torch.Tensor,
    out: Any,
    x_prior: torch.Tensor | None = None,
    topk: int = 10,
    iou_thresh: float = 0.2,
    anchor_s: float = 0.25,
    *,
    max_imgs: int = 8,
    radius: float | None = None,
    box_scores: str = "obj_on",
    draw_scores: bool = True,
) -> torch.Tensor:
    """The official training figure as one image [3, H', W'] (one row per panel, `max_imgs` columns).

    Rows: input x; x with the posterior particles (foreground only, positions clamped to [-1, 1]); the reconstruction
    (clamped to [0, 1]); x_prior (default x) with the prior proposals; x with the `topk` most confident foreground
    particles (confidence = -sum of logvar). Object models (`out.obj_on` is not None) add: `out.dec_objects` (when not
    None) and x with bounding boxes: anchor squares of side round(anchor_s * (H - 1)) centred on the particles, scored
    by `obj_on` (`box_scores="obj_on"`, default) or by confidence (`"confidence"`, the official -sum logvar); boxes
    scoring at least the mean score over the whole batch (all B images, as the official `hard_thresh`) are kept, then
    NMS with `iou_thresh`. Particles and boxes are coloured by particle index, so a particle has the same colour in
    every row.

    `out` is a `DLPOutput` or anything with the fields mu, logvar [B, K+1, 2], kp_prior [B, P, 2], rec [B, C, H, W],
    obj_on [B, K] or None, dec_objects [B, C, H, W] or None.
    """
    n = min(max_imgs, x.shape[0])
    x = x[:n]
    x_prior = x[:n] if x_prior is None else x_prior[:n]
    h, w = x.shape[-2:]
    mu = out.mu[:n, :-1].detach().float().clamp(-1.0, 1.0)  # [n, K, 2] foreground
    logvar = out.logvar[:n, :-1].detach().float()  # [n, K, 2]
    k = mu.shape[1]
    colors = particle_colors(k, device=x.device)  # [K, 3]

    rows = [
        x,
        draw_particles(x, mu, radius=radius, colors=colors),
        out.rec[:n].detach().clamp(0.0, 1.0),
        draw_particles(x_prior, out.kp_prior[:n].detach().float().clamp(-1.0, 1.0), radius=radius),
    ]
    labels = ["input", "particles", "reconstruction", "prior proposals", f"top {min(topk, k)} particles"]
    confidence = -logvar.sum(dim=-1)  # [n, K]
    top = confidence.topk(min(topk, k), dim=1).indices  # [n, topk]
    top_kp = torch.gather(mu, 1, top.unsqueeze(-1).expand(-1, -1, 2))
    rows.append(draw_particles(x, top_kp, radius=radius, colors=colors[top]))

    obj_on = getattr(out, "obj_on", None)
    if obj_on is not None:
        dec_objects = getattr(out, "dec_objects", None)
        if dec_objects is not None:
            rows.append(dec_objects[:n].detach().clamp(0.0, 1.0))
            labels.append("decoded objects")
        if box_scores == "obj_on":
            scores = obj_on.detach().float()  # [B, K]
        elif box_scores == "confidence":
            scores = -out.logvar[:, :-1].detach().float().sum(dim=-1)  # [B, K]
        else:
            raise ValueError(f"box_scores must be 'obj_on' or 'confidence', got {box_scores!r}.")
        threshold = scores.mean()  # over the whole batch, as the official hard_thresh
        scores = scores[:n]
        boxes = anchor_boxes(mu, anchor_s, h, w)  # [n, K, 4]
        kept_boxes, kept_colors, kept_scores = [], [], []
        for i in range(n):
            idx = torch.nonzero(scores[i] >= threshold).flatten()
            idx = idx[nms(boxes[i, idx], scores[i, idx], iou_thresh)]
            kept_boxes.append(boxes[i, idx])
            kept_colors.append(colors[idx])
            kept_scores.append(scores[i, idx])
        rows.append(draw_boxes(x, kept_boxes, kept_colors, kept_scores if draw_scores else None))
        labels.append("boxes (obj_on)" if box_scores == "obj_on" else "boxes (confidence)")
    return make_grid(rows, labels=labels)


def glimpse_figure(out: Any, n: int = 16) -> torch.Tensor | None:
    """Object models: the first `n` encoder glimpses (top row) and decoded glimpses' RGB (bottom row) as [3, H', W'].

    `out.glimpses` may be [B, K, 3, s, s] or [B*K, 3, s, s]; it is resized (bilinear) to the decoder's S when sizes
    differ. Returns None when `out.dec_glimpses` is None.
    """
    dec = getattr(out, "dec_glimpses", None)
    if dec is None:
        return None
    dec_rgb = dec[..., 1:4, :, :].detach().reshape(-1, 3, *dec.shape[-2:])[:n]  # [n, 3, S, S]
    rows = []
    glimpses = getattr(out, "glimpses", None)
    if glimpses is not None:
        g = glimpses.detach().float().reshape(-1, glimpses.shape[-3], *glimpses.shape[-2:])[:n]
        if g.shape[-2:] != dec_rgb.shape[-2:]:
            g = F.interpolate(g, size=tuple(dec_rgb.shape[-2:]), mode="bilinear", align_corners=False)
        rows.append(g)
    rows.append(dec_rgb)
    return make_grid(rows, labels=["encoder glimpses", "decoded glimpses"][-len(rows):])
