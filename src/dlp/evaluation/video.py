"""Video prediction quality and object tracking of a video model (DDLP), against two baselines.

Protocol (DDLP's `eval_ddlp_im_metric`, spec §6, reported per future step): a held-out clip of `cond_frames +
horizon` frames x [B, T, C, H, W]; the model, in eval mode, encodes the first `cond_frames` frames and rolls out
`horizon` frames deterministically (`model.rollout(...).frames.clamp(0, 1)`); the predicted frames are compared
with the true future frames x[:, cond_frames:], step by step, beside

* ``last_frame``: the last conditioning frame repeated (what "nothing moves" scores), and
* ``reconstruction``: the model's own reconstruction of the true future frames, `model.decode(model.encode(x))`
  clamped to [0, 1] -- the quality a perfect dynamics model would reach with this encoder and decoder. `encode`
  runs the tracking encoder over the whole clip (any length: only the forward pass, whose PINT prior reads at most
  `timestep_horizon + 1` frames, is limited), exactly as the model tracks a clip, so no windowing is needed.

Per-frame metrics, with the truth first (piqa 1.3.1, `reduction='none'`, inputs in [0, 1]):

* PSNR: `psnr_piqa`, 10 log10(1 / (mean_{c,h,w} (x - y)^2 + 1e-8)) -- piqa's formula. It differs from
  `dlp.evaluation.image_metrics.psnr` by the 1e-8, which bounds a perfect prediction at 80 dB instead of inf (so
  means over clips stay finite).
* SSIM: `dlp.evaluation.image_metrics.ssim` -- piqa's definition (11-tap Gaussian window, sigma 1.5, per-channel
  "valid" filtering, c1 = 0.01^2, c2 = 0.03^2, mean over channels and positions). piqa filters with two separable
  1-D passes in float32; `ssim` applies the equal 11x11 outer-product window in float64, so the two agree to float
  rounding (~1e-6).
* LPIPS: `dlp.evaluation.lpips.LPIPS` (piqa's `LPIPS(network='vgg')`), when an LPIPS module is given.

Each metric is averaged over clips for every future step: lists of `horizon` values (step 1 = the first predicted
frame). See `tracking_metrics` for identity tracking on datasets whose clips carry ball identities ("balls").
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dlp.evaluation.image_metrics import ssim

__all__ = [
    "BASELINES",
    "QUALITY_METRICS",
    "evaluate_video",
    "flat_video_metrics",
    "psnr_piqa",
    "save_metric_plot",
    "track_balls",
    "tracking_metrics",
    "tracking_scores",
    "video_prediction_metrics",
]

METHODS = ("model", "last_frame", "reconstruction")
BASELINES = METHODS[1:]
QUALITY_METRICS = ("psnr", "ssim", "lpips")
PSNR_EPSILON = 1e-8  # piqa's: a perfect prediction scores 80 dB
LPIPS_CHUNK = 64  # frames per VGG pass: bounds the activation memory at any clip count


def psnr_piqa(x: torch.Tensor, y: torch.Tensor, epsilon: float = PSNR_EPSILON) -> torch.Tensor:
    """piqa's PSNR per image for x, y [N, C, H, W] in [0, 1]: 10 log10(1 / (mean (x - y)^2 + epsilon)), [N]."""
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"expected two [N, C, H, W] batches of the same shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}.")
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / (mse + epsilon))


# ---------------------------------------------------------------------------------------------------------------------
# One pass over held-out clips
@dataclass
class _ClipBatch:
    """What the metrics read of one batch of B clips of T = cond + horizon frames (on the model's device).

    truth: [B, T, C, H, W]; prediction: [B, T, C, H, W] the rollout, clamped (conditioning frames reconstructed, then
    predicted); rollout_position, rollout_presence: [B, T, K, 2], [B, T, K]; posterior: `model.encode(truth)` or
    None; reconstruction: [B, T, C, H, W] decoded posterior, clamped, or None; batch: the collated dataset items.
    """

    truth: torch.Tensor
    prediction: torch.Tensor
    rollout_position: torch.Tensor
    rollout_presence: torch.Tensor
    posterior: Any
    reconstruction: torch.Tensor | None
    batch: Any


def _check_protocol(model: torch.nn.Module, cond_frames: int, horizon: int) -> None:
    if not all(hasattr(model, name) for name in ("rollout", "encode", "decode")):
        raise ValueError(f"video prediction needs a video model with rollout/encode/decode (e.g. DDLP), got a "
                         f"{type(model).__name__}.")
    if cond_frames < 1 or horizon < 1:
        raise ValueError(f"cond_frames and horizon must be positive, got {cond_frames} and {horizon}.")


@torch.no_grad()
def _clip_batches(model: torch.nn.Module, dataset: Any, *, cond_frames: int, horizon: int, batch_size: int,
                  device: str | torch.device, posterior: bool, reconstruction: bool) -> Iterator[_ClipBatch]:
    """Roll out every clip of `dataset` (items with "video" [T', C, H, W], T' >= cond + horizon, or a tensor of clips
    [N, T', C, H, W]); the first cond + horizon frames are used. The model is in eval mode meanwhile."""
    from dlp.evaluation.elbo import batch_images
    from dlp.evaluation.runner import _collate

    _check_protocol(model, cond_frames, horizon)
    length = cond_frames + horizon
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0,
                                         collate_fn=_collate)
    was_training = model.training
    model.eval()
    model.to(device)
    try:
        for batch in loader:
            clips = batch_images(batch)
            if clips.dim() != 5 or clips.shape[1] < length:
                raise ValueError(f"video prediction with {cond_frames} conditioning + {horizon} predicted frames needs "
                                 f"clips [B, >= {length}, C, H, W], got {list(clips.shape)}.")
            truth = clips[:, :length].to(device, torch.float32)
            rollout = model.rollout(truth[:, :cond_frames], cond_frames, horizon, deterministic=True)
            post = model.encode(truth) if posterior or reconstruction else None
            rec = model.decode(post).rec.clamp(0, 1) if reconstruction else None
            yield _ClipBatch(truth, rollout.frames.clamp(0, 1), rollout.particles.position,
                             rollout.particles.obj_on, post, rec, batch)
    finally:
        model.train(was_training)


def _per_step(metric: str, truth: torch.Tensor, pred: torch.Tensor, lpips: Any = None,
              truth_embedding: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """A per-frame metric of future frames truth, pred [B, H, C, H', W'] -> [B, H] (float64 on the CPU)."""
    b, h = truth.shape[:2]
    x, y = truth.flatten(0, 1), pred.flatten(0, 1)
    if metric == "psnr":
        values = psnr_piqa(x, y)
    elif metric == "ssim":
        values = ssim(x, y)
    else:
        emb_y = lpips.embed(y)
        emb_x = truth_embedding if truth_embedding is not None else lpips.embed(x)
        values = lpips.distance(emb_x, emb_y)
    return values.detach().to("cpu", torch.float64).view(b, h)


def evaluate_video(
    model: torch.nn.Module,
    dataset: Any,
    *,
    cond_frames: int,
    horizon: int,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    metrics: Sequence[str] = ("psnr", "ssim"),
    lpips: Any = None,
    tracking: bool = False,
    radius: float = 4.0,
    presence_threshold: float = 0.5,
) -> dict[str, Any]:
    """Video prediction quality (`video_prediction_metrics`) and, with `tracking`, identity tracking
    (`tracking_metrics`) in one pass over the clips: {"video": ... or None, "tracking": ... or None}.

    `metrics` picks among "psnr", "ssim" (and "lpips", computed only when an `LPIPS` module is given); an empty
    `metrics` with `tracking` skips the quality part (and the reconstruction decode)."""
    unknown = [m for m in metrics if m not in QUALITY_METRICS]
    if unknown:
        raise ValueError(f"unknown video metrics {unknown}; choose from {list(QUALITY_METRICS)}.")
    quality = [m for m in metrics if m != "lpips"] + (["lpips"] if lpips is not None else [])
    if lpips is not None:
        lpips.to(device)
    sums = {m: {method: torch.zeros(horizon, dtype=torch.float64) for method in METHODS} for m in quality}
    hits: dict[str, list[torch.Tensor]] = {"posterior": [], "rollout": []}
    assigned: list[torch.Tensor] = []
    num_clips = 0
    for item in _clip_batches(model, dataset, cond_frames=cond_frames, horizon=horizon, batch_size=batch_size,
                              device=device, posterior=tracking, reconstruction=bool(quality)):
        num_clips += item.truth.shape[0]
        future = item.truth[:, cond_frames:]  # [B, H, C, H', W']
        candidates = {
            "model": item.prediction[:, cond_frames:],
            "last_frame": item.truth[:, cond_frames - 1: cond_frames].expand_as(future),
            "reconstruction": item.reconstruction[:, cond_frames:] if item.reconstruction is not None else None,
        }
        for metric in quality:
            # LPIPS in chunks of frames, the truth embedded once per chunk for the three candidates
            step = max(1, LPIPS_CHUNK // horizon) if metric == "lpips" else future.shape[0]
            for start in range(0, future.shape[0], step):
                part = slice(start, start + step)
                emb = lpips.embed(future[part].flatten(0, 1)) if metric == "lpips" else None
                for method, pred in candidates.items():
                    sums[metric][method] += _per_step(metric, future[part], pred[part], lpips, emb).sum(0)
        if tracking:
            balls = _ball_positions(item.batch)
            post = item.posterior
            post_hits, post_assigned = track_balls(post.position, post.obj_on, balls, image_size=future.shape[-1],
                                                   radius=radius, presence_threshold=presence_threshold)
            roll_hits, _ = track_balls(item.rollout_position, item.rollout_presence, balls,
                                       image_size=future.shape[-1], radius=radius,
                                       presence_threshold=presence_threshold)
            hits["posterior"].append(post_hits)
            hits["rollout"].append(roll_hits)
            assigned.append(post_assigned >= 0)
    if num_clips == 0:
        raise ValueError("the video evaluation dataset is empty; check --data-root, the split and --num-images.")
    video = None
    if quality:
        video = {"cond_frames": cond_frames, "horizon": horizon, "num_clips": num_clips}
        for metric in quality:
            video[metric] = {method: (sums[metric][method] / num_clips).tolist() for method in METHODS}
        video["mean"] = {metric: {method: float(sum(v) / len(v)) for method, v in video[metric].items()}
                         for metric in quality}
    tracked = None
    if tracking:
        tracked = tracking_scores(torch.cat(hits["posterior"]), torch.cat(hits["rollout"]), cond_frames)
        tracked.update(assigned=float(torch.cat(assigned).float().mean()), radius=float(radius))
    return {"video": video, "tracking": tracked}


def video_prediction_metrics(
    model: torch.nn.Module,
    dataset: Any,
    *,
    cond_frames: int,
    horizon: int,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    lpips: Any = None,
    metrics: Sequence[str] = ("psnr", "ssim"),
) -> dict[str, Any]:
    """Per-future-step PSNR, SSIM (and LPIPS, given an `LPIPS` module) of the model's deterministic rollout and of
    the two baselines (see the module docstring for the protocol and the definitions).

    Args:
        model: a video model with `rollout`, `encode` and `decode` (DDLP); put in eval mode meanwhile.
        dataset: held-out clips: items {"video": [T', C, H, W], ...} with T' >= cond_frames + horizon, or a tensor of
            clips [N, T', C, H, W].
        cond_frames: C, frames the model sees; horizon: H, frames it predicts.
        lpips: a `dlp.evaluation.lpips.LPIPS` (None: no LPIPS).
        metrics: the per-frame metrics besides LPIPS ("psnr", "ssim"; training uses PSNR only).

    Returns:
        {"psnr": {"model": [H floats], "last_frame": [H], "reconstruction": [H]}, "ssim": {...}, "lpips": {...}
        (with `lpips`), "mean": {metric: {method: mean over steps}}, "cond_frames": C, "horizon": H,
        "num_clips": N}; entry i of a list is future step i + 1, averaged over the N clips.
    """
    return evaluate_video(model, dataset, cond_frames=cond_frames, horizon=horizon, batch_size=batch_size,
                          device=device, metrics=metrics, lpips=lpips)["video"]


# ---------------------------------------------------------------------------------------------------------------------
# Tracking
def _ball_positions(batch: Any) -> torch.Tensor:
    """(y, x) pixel centres [B, T, N, 2] of a collated batch of clips with "positions" and "ids", columns ordered by
    identity (column n is the same ball in every frame)."""
    if not isinstance(batch, Mapping) or "positions" not in batch or "ids" not in batch:
        raise ValueError("tracking needs clips with ball identities ('positions' and 'ids'), e.g. the balls dataset.")
    positions = torch.as_tensor(batch["positions"], dtype=torch.float32)
    order = torch.as_tensor(batch["ids"]).long().argsort(dim=-1)  # [B, T, N]
    return positions.gather(2, order[..., None].expand(*order.shape, 2))


@torch.no_grad()
def track_balls(particle_position: torch.Tensor, presence: torch.Tensor | None, ball_positions: torch.Tensor, *,
                image_size: int, radius: float = 4.0, presence_threshold: float = 0.5
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Whether each ball keeps its particle, frame by frame.

    Args:
        particle_position: [B, T, K, 2] particle positions (y, x) in [-1, 1] (pixel = (kp + 1) / 2 * (image_size - 1)).
        presence: [B, T, K] obj_on in [0, 1] (None: every particle is on); a particle is switched on in a frame when
            its presence exceeds `presence_threshold`.
        ball_positions: [B, T, N, 2] ball centres (y, x) in pixels; column n is ball n in every frame.
        radius: the distance in pixels within which a particle is on a ball.

    Definition. In frame 0 every ball is assigned to a switched-on particle within `radius` of its centre, one ball
    per particle, greedily by increasing distance (the closest pair first); a ball with no such particle stays
    unassigned. Ball n is tracked in frame t when it has a particle and that same particle is switched on and
    within `radius` of ball n's centre in frame t.

    Returns:
        hits [B, T, N] bool (frame 0: whether the ball was assigned), assigned [B, N] the particle index of every
        ball (-1: none).
    """
    b, t, k = particle_position.shape[:3]
    pixels = (particle_position.detach().float().cpu() + 1.0) / 2.0 * (image_size - 1)
    balls = ball_positions.detach().float().cpu()
    on = (torch.ones(b, t, k, dtype=torch.bool) if presence is None
          else presence.detach().float().cpu() > presence_threshold)
    distance = torch.cdist(balls.flatten(0, 1), pixels.flatten(0, 1)).view(b, t, balls.shape[2], k)  # [B, T, N, K]
    close = (distance <= radius) & on[:, :, None, :]
    assigned = torch.full((b, balls.shape[2]), -1, dtype=torch.long)
    for clip in range(b):
        pairs = close[clip, 0].nonzero().tolist()  # [(ball, particle)] within reach in frame 0
        pairs.sort(key=lambda pair: float(distance[clip, 0, pair[0], pair[1]]))
        taken: set[int] = set()
        for ball, particle in pairs:
            if assigned[clip, ball] < 0 and particle not in taken:
                assigned[clip, ball] = particle
                taken.add(particle)
    index = assigned.clamp_min(0)[:, None, :, None].expand(b, t, -1, 1)  # [B, T, N, 1]
    hits = close.gather(3, index).squeeze(3) & (assigned >= 0)[:, None, :]
    return hits, assigned


def tracking_scores(posterior_hits: torch.Tensor, rollout_hits: torch.Tensor, cond_frames: int) -> dict[str, float]:
    """Fractions of (ball, frame) pairs tracked (`track_balls` hits [B, T, N]), pooled over clips and balls:

    * "posterior": the posterior over frames 1 ... T-1 (every frame after the assignment);
    * "posterior_future": the posterior over the predicted frames cond_frames ... T-1 (comparable with "rollout");
    * "rollout": the rollout's particles over the predicted frames cond_frames ... T-1.

    NaN where the frame range is empty; "num_balls" counts the balls (clips x balls per clip).
    """
    def fraction(hits: torch.Tensor) -> float:
        return float(hits.float().mean()) if hits.numel() else math.nan

    return {"posterior": fraction(posterior_hits[:, 1:]), "posterior_future": fraction(posterior_hits[:, cond_frames:]),
            "rollout": fraction(rollout_hits[:, cond_frames:]),
            "num_balls": int(posterior_hits.shape[0] * posterior_hits.shape[2])}


def tracking_metrics(
    model: torch.nn.Module,
    dataset: Any,
    *,
    cond_frames: int,
    horizon: int,
    radius: float = 4.0,
    presence_threshold: float = 0.5,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Identity tracking of balls by the model's particles on clips with "positions" [T', N, 2] (y, x pixels) and
    "ids" [T', N] (the balls dataset), for the posterior (`model.encode` of the whole clip of cond_frames + horizon
    frames) and the deterministic rollout (the conditioning frames encoded, then PINT's predicted particles).

    Definitions: `track_balls` (assignment in frame 0, hits per frame) and `tracking_scores` (the fractions).

    Returns:
        {"posterior", "posterior_future", "rollout": fractions in [0, 1], "assigned": fraction of balls given a
        particle in frame 0, "num_balls", "radius"}.
    """
    return evaluate_video(model, dataset, cond_frames=cond_frames, horizon=horizon, batch_size=batch_size,
                          device=device, metrics=(), tracking=True, radius=radius,
                          presence_threshold=presence_threshold)["tracking"]


# ---------------------------------------------------------------------------------------------------------------------
# Reporting
def flat_video_metrics(video: Mapping[str, Any] | None = None, tracking: Mapping[str, Any] | None = None
                       ) -> dict[str, Any]:
    """The flat metric names of `dlp eval`: "video.<metric>.<method>" -> list over future steps, "video/num_clips",
    and "tracking/<name>" -> float."""
    flat: dict[str, Any] = {}
    if video:
        for metric in QUALITY_METRICS:
            for method, values in (video.get(metric) or {}).items():
                flat[f"video.{metric}.{method}"] = list(values)
        flat["video/num_clips"] = video["num_clips"]
    if tracking:
        flat.update({f"tracking/{k}": v for k, v in tracking.items() if k != "radius"})
    return flat


def save_metric_plot(results: Mapping[str, Any], path: str | Path, *, title: str | None = None) -> Path:
    """One panel per metric (PSNR, SSIM, LPIPS: those present in `results`, as `video_prediction_metrics` returns
    them) of its value against the future step, for the model and both baselines -> PNG at `path`.
    Uses matplotlib's Agg canvas directly; never changes the global backend."""
    from dlp.viz import agg_figure, save_figure

    metrics = [m for m in QUALITY_METRICS if m in results]
    if not metrics:
        raise ValueError("no per-step PSNR, SSIM or LPIPS values to plot.")
    styles = {"model": {"color": "C0", "marker": "o"}, "last_frame": {"color": "C1", "linestyle": "--"},
              "reconstruction": {"color": "C2", "linestyle": ":"}}
    labels = {"model": "model (rollout)", "last_frame": "last frame repeated", "reconstruction": "reconstruction"}
    units = {"psnr": "PSNR (dB) ↑", "ssim": "SSIM ↑", "lpips": "LPIPS ↓"}
    fig = agg_figure((4.2 * len(metrics), 3.2))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        for method, values in results[metric].items():
            steps = list(range(1, len(values) + 1))
            ax.plot(steps, values, markersize=3, label=labels.get(method, method), **styles.get(method, {}))
        ax.set_xlabel("future step")
        ax.set_ylabel(units[metric])
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best", fontsize=8)
    if title is None and "cond_frames" in results:
        title = f"{results['cond_frames']} conditioning frames, {results.get('num_clips', '?')} clips"
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)
