"""The DLPv2 training figures: the rows of the official `train_dlp.py` grid, and glimpses vs decoded glimpses."""

from __future__ import annotations

from typing import Any

import torch

from dlp.viz import boxes_from_masks, draw_boxes, draw_particles, make_grid, nms, particle_colors, scale_boxes


def _kept_boxes(boxes: torch.Tensor, scores: torch.Tensor, iou_thresh: float, colors: torch.Tensor):
    """Per image, the boxes scoring at least the batch mean (the official hard threshold), then NMS."""
    threshold = scores.mean()
    kept, kept_colors, kept_scores = [], [], []
    for i in range(boxes.shape[0]):
        idx = torch.nonzero(scores[i] >= threshold).flatten()
        idx = idx[nms(boxes[i, idx].float(), scores[i, idx], iou_thresh)]
        kept.append(boxes[i, idx].round().long())
        kept_colors.append(colors[idx])
        kept_scores.append(scores[i, idx])
    return kept, kept_colors, kept_scores


def training_figure(x: torch.Tensor, out: Any, *, topk: int = 10, iou_thresh: float = 0.2, max_imgs: int = 8,
                    x_prior: torch.Tensor | None = None) -> torch.Tensor:
    """The official DLPv2 figure grid as one image [3, H', W'], one row per panel, `max_imgs` columns:

    1. input; 2. input with every particle (final positions); 3. reconstruction; 4. the prior proposals (on x_prior,
    default x); 5. the `topk` particles of lowest `sum(logvar_offset) * obj_on`; 6. the blended foreground; 7. boxes
    from the glimpse scales, scored by transparency (those >= the batch mean, then NMS at `iou_thresh`); 8. boxes
    around each particle's alpha mask (> 0.05), same selection; 9. the decoded background.
    Particles and boxes are coloured by particle index. `out` is a `DLPv2Output` (or any object with its fields).
    """
    n = min(max_imgs, x.shape[0])
    x = x[:n]
    x_prior = x if x_prior is None else x_prior[:n]
    h, w = x.shape[-2:]
    z = out.z[:n].detach().float().clamp(-1.0, 1.0)  # [n, K, 2]
    k = z.shape[1]
    colors = particle_colors(k, device=x.device)
    obj_on = out.obj_on.detach().float()  # [B, K]: thresholds use the whole batch
    score = (out.logvar_offset[:n].detach().float().sum(-1) * obj_on[:n])  # [n, K], lower = surer and more on
    top = score.topk(min(topk, k), dim=1, largest=False).indices
    top_kp = torch.gather(z, 1, top[..., None].expand(-1, -1, 2))

    boxes = scale_boxes(z, torch.sigmoid(out.z_scale[:n].detach().float()), h, w)  # [n, K, 4]
    kept, kept_colors, kept_scores = _kept_boxes(boxes, obj_on[:n], iou_thresh, colors)
    alpha = out.alpha_masks[:n].detach().float()  # [n, K, 1, H, W]
    mask_boxes = boxes_from_masks((alpha > 0.05).flatten(0, 1).float(), w, h).view(n, k, 4)
    kept_m, kept_m_colors, kept_m_scores = _kept_boxes(mask_boxes, obj_on[:n], iou_thresh, colors)
    rows = [
        x,
        draw_particles(x, z, colors=colors),
        out.rec[:n].detach().clamp(0.0, 1.0),
        draw_particles(x_prior, out.kp_prior[:n].detach().float().clamp(-1.0, 1.0)),
        draw_particles(x, top_kp, colors=colors[top]),
        out.dec_objects[:n].detach().clamp(0.0, 1.0),
        draw_boxes(x, kept, kept_colors, kept_scores),
        draw_boxes(x, kept_m, kept_m_colors, kept_m_scores),
        out.bg[:n].detach().clamp(0.0, 1.0),
    ]
    labels = ["input", "particles", "reconstruction", "prior proposals", f"top {min(topk, k)} particles",
              "foreground", "boxes (scale)", "boxes (alpha)", "background"]
    return make_grid(rows, labels=labels)


def glimpse_figure(out: Any, n: int = 16) -> torch.Tensor:
    """The first `n` encoder glimpses (top row) and decoded glimpses' RGB (bottom row) as [3, H', W']."""
    glimpses = out.glimpses.detach().float().flatten(0, 1)[:n]  # [n, C, S, S]
    decoded = out.dec_glimpses[..., 1:, :, :].detach().float().flatten(0, 1)[:n]
    return make_grid([glimpses.clamp(0, 1), decoded.clamp(0, 1)], labels=["encoder glimpses", "decoded glimpses"])
