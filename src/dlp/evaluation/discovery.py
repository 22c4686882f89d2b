"""Object discovery against ground-truth object centres (e.g. the random-shapes data, whose generator keeps them).

Metrics, for a batch of images with positions of the *confident* particles and the true object centres:

* `distance/mean`: for every true object, the pixel distance to the nearest confident particle of its image, averaged
  over objects. Objects of images without any confident particle have no such distance: they are left out of the
  mean and counted in `distance/undefined_fraction` (recall@r counts them as misses).
* `recall@r`, `precision@r`, `f1@r`: one-to-one matching of particles to objects within `r` pixels. Matching is
  **greedy by distance**: all (particle, object) pairs of an image closer than `r` are visited in increasing distance
  order and a pair is accepted when neither its particle nor its object is matched yet. A matched particle is a true
  positive. Counts are pooled over the whole set (micro average): recall = TP / #objects, precision = TP / #confident
  particles (0 when there are no confident particles at all), f1 their harmonic mean. Greedy matching can be
  sub-optimal compared to an optimal assignment only when two objects lie within 2r of each other; with the default
  radii (4 and 6 px) and non-overlapping 11-13 px shapes this does not happen.
* `count_error`: mean over images of |#confident particles - #objects|; `count_accuracy`: fraction of images where
  the two counts agree.
* `box_*` (`box_metrics`, for models whose particles have a size, e.g. DLPv2's glimpse scale): IoU-matched
  recall/precision/F1 of the particles' boxes against the ground-truth boxes, and the mean best IoU per object.

Coordinates are pixels, (y, x) = (row, col); any consistent order works since only distances are used.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class DiscoveryInputError(ValueError):
    """Inputs to the object-discovery metrics have inconsistent shapes."""


def confident_particles(
    confidence: torch.Tensor,
    presence: torch.Tensor | None = None,
    *,
    presence_threshold: float = 0.5,
    topk: int | None = None,
) -> torch.Tensor:
    """[B, K] bool mask of the confident foreground particles.

    Models with a presence (`obj_on`): `presence > presence_threshold`. Others (DLP's masked model): the `topk`
    particles of highest `confidence` per image (all particles if `topk` is None).

    Args:
        confidence: [B, K] per-particle confidence, higher = surer (DLP v1 masked: -sum_coords logvar).
        presence: [B, K] presence probabilities, or None for a model without one.
    """
    if presence is not None:
        return presence.detach() > presence_threshold
    conf = confidence.detach()  # [B, K]
    mask = torch.zeros_like(conf, dtype=torch.bool)
    k = conf.shape[1] if topk is None else min(int(topk), conf.shape[1])
    mask.scatter_(1, torch.topk(conf, k, dim=1).indices, True)
    return mask


def _greedy_matches(dist: torch.Tensor, radius: float) -> int:
    """Number of one-to-one matches within `radius` for a [P, M] distance matrix, greedy by increasing distance."""
    if dist.numel() == 0:
        return 0
    pairs = (dist <= radius).nonzero()
    if pairs.numel() == 0:
        return 0
    order = dist[pairs[:, 0], pairs[:, 1]].argsort(stable=True)
    used_p: set[int] = set()
    used_m: set[int] = set()
    for p, m in pairs[order].tolist():
        if p not in used_p and m not in used_m:
            used_p.add(p)
            used_m.add(m)
    return len(used_p)


def discovery_metrics(
    positions: torch.Tensor,
    confident: torch.Tensor,
    centers: torch.Tensor,
    *,
    radii: Sequence[float] = (4.0, 6.0),
) -> dict[str, float]:
    """Object-discovery metrics (see the module docstring).

    Args:
        positions: [B, K, 2] particle positions in pixels (foreground particles only).
        confident: [B, K] bool, which particles count as detections.
        centers: [B, M, 2] true object centres in pixels, rows of NaN for padding.
        radii: matching radii in pixels.
    """
    if positions.dim() != 3 or positions.shape[-1] != 2:
        raise DiscoveryInputError(f"positions must be [B, K, 2], got {tuple(positions.shape)}.")
    if confident.shape != positions.shape[:2]:
        raise DiscoveryInputError(
            f"confident must be [B, K] = {tuple(positions.shape[:2])}, got {tuple(confident.shape)}."
        )
    if centers.dim() != 3 or centers.shape[0] != positions.shape[0] or centers.shape[-1] != 2:
        raise DiscoveryInputError(
            f"centers must be [B, M, 2] with B = {positions.shape[0]}, got {tuple(centers.shape)}."
        )
    positions = positions.detach().to("cpu", torch.float64)
    centers = centers.detach().to("cpu", torch.float64)
    confident = confident.detach().to("cpu", torch.bool)

    tp = {r: 0 for r in radii}
    n_objects = n_detections = 0
    nearest: list[torch.Tensor] = []
    undefined = 0
    count_err = []
    for b in range(positions.shape[0]):
        obj = centers[b][~torch.isnan(centers[b]).any(-1)]  # [M_b, 2]
        det = positions[b][confident[b]]  # [P_b, 2]
        n_objects += obj.shape[0]
        n_detections += det.shape[0]
        count_err.append(abs(det.shape[0] - obj.shape[0]))
        if obj.shape[0] == 0:
            continue
        if det.shape[0] == 0:
            undefined += obj.shape[0]
            continue
        dist = torch.cdist(det, obj)  # [P_b, M_b]
        nearest.append(dist.min(0).values)
        for r in radii:
            tp[r] += _greedy_matches(dist, float(r))

    out: dict[str, float] = {}
    all_nearest = torch.cat(nearest) if nearest else torch.empty(0, dtype=torch.float64)
    out["distance/mean"] = float(all_nearest.mean()) if all_nearest.numel() else float("nan")
    out["distance/median"] = float(all_nearest.median()) if all_nearest.numel() else float("nan")
    out["distance/undefined_fraction"] = undefined / n_objects if n_objects else 0.0
    for r in radii:
        recall = tp[r] / n_objects if n_objects else float("nan")
        precision = tp[r] / n_detections if n_detections else 0.0
        f1 = 2 * precision * recall / (precision + recall) if (precision + recall) > 0 else 0.0
        tag = f"{float(r):g}"
        out[f"recall@{tag}"] = recall
        out[f"precision@{tag}"] = precision
        out[f"f1@{tag}"] = f1
    counts = torch.tensor(count_err, dtype=torch.float64)
    out["count_error"] = float(counts.mean()) if counts.numel() else float("nan")
    out["count_accuracy"] = float((counts == 0).double().mean()) if counts.numel() else float("nan")
    out["num_objects"] = float(n_objects)
    out["num_detections"] = float(n_detections)
    return out


def _box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of continuous boxes a [P, 4], b [M, 4] (x0, y0, x1, y1) -> [P, M]."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union, torch.zeros_like(union))


def box_metrics(
    boxes: torch.Tensor,
    confident: torch.Tensor,
    true_boxes: torch.Tensor,
    *,
    iou_thresholds: Sequence[float] = (0.5,),
) -> dict[str, float]:
    """Box quality of the confident particles against ground-truth boxes (models whose particles have a size).

    One-to-one matching, greedy by decreasing IoU, a pair accepted when its IoU >= the threshold; counts pooled over
    the set. Returns `box_recall@t`, `box_precision@t`, `box_f1@t` per threshold and `box_iou/mean`, the mean over
    true objects of the best IoU of any confident particle (0 when there is none).

    Args:
        boxes: [B, K, 4] (x0, y0, x1, y1) pixel boxes of the particles (exclusive ends, like the ground truth).
        confident: [B, K] bool, which particles count as detections.
        true_boxes: [B, M, 4] ground-truth boxes, rows of NaN for padding.
    """
    if boxes.shape[:2] != confident.shape or boxes.shape[-1] != 4:
        raise DiscoveryInputError(f"boxes must be [B, K, 4] matching confident {tuple(confident.shape)}, got "
                                  f"{tuple(boxes.shape)}.")
    if true_boxes.dim() != 3 or true_boxes.shape[0] != boxes.shape[0] or true_boxes.shape[-1] != 4:
        raise DiscoveryInputError(f"true_boxes must be [B, M, 4] with B = {boxes.shape[0]}, got "
                                  f"{tuple(true_boxes.shape)}.")
    boxes = boxes.detach().to("cpu", torch.float64)
    true_boxes = true_boxes.detach().to("cpu", torch.float64)
    confident = confident.detach().to("cpu", torch.bool)
    tp = {t: 0 for t in iou_thresholds}
    n_objects = n_detections = 0
    best: list[torch.Tensor] = []
    for b in range(boxes.shape[0]):
        obj = true_boxes[b][~torch.isnan(true_boxes[b]).any(-1)]
        det = boxes[b][confident[b]]
        n_objects += obj.shape[0]
        n_detections += det.shape[0]
        if obj.shape[0] == 0:
            continue
        if det.shape[0] == 0:
            best.append(torch.zeros(obj.shape[0], dtype=torch.float64))
            continue
        iou = _box_iou(det, obj)  # [P_b, M_b]
        best.append(iou.max(0).values)
        for t in iou_thresholds:
            # greedy by IoU = greedy by the distance 1 - IoU within 1 - t
            tp[t] += _greedy_matches(1.0 - iou, 1.0 - float(t))
    out: dict[str, float] = {}
    for t in iou_thresholds:
        recall = tp[t] / n_objects if n_objects else float("nan")
        precision = tp[t] / n_detections if n_detections else 0.0
        tag = f"{float(t):g}"
        out[f"box_recall@{tag}"] = recall
        out[f"box_precision@{tag}"] = precision
        out[f"box_f1@{tag}"] = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    all_best = torch.cat(best) if best else torch.empty(0, dtype=torch.float64)
    out["box_iou/mean"] = float(all_best.mean()) if all_best.numel() else float("nan")
    return out
