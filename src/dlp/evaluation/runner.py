"""Evaluate a trained model (`dlp eval`) with the metrics that fit its dataset, for any model family.

* datasets with landmarks (CelebA / MAFL / landmark folders) -> keypoint linear regression (`regression`);
* datasets with ground-truth objects (random shapes) -> object discovery (`discovery`) and the validation ELBO;
* anything else (CLEVRER, Traffic, image folders) -> the validation ELBO (`elbo`);
* video models (DDLP) -> per-step video prediction quality against two baselines (`video`: PSNR, SSIM, LPIPS) and
  the validation ELBO on held-out clips, plus identity tracking (`tracking`) on video datasets with ground-truth
  objects (balls); see `dlp.evaluation.video`.

What a dataset has comes from its registry entry (`dlp.data.registry.dataset_info`); the particles come from the
family's `encode` + `particle_view`, the ELBO from the family's objective.

>>> from dlp.evaluation import evaluate_checkpoint, format_table
>>> results = evaluate_checkpoint("runs/celeba", out="results.json")   # a run directory or a .pt  # doctest: +SKIP
>>> print(format_table(results))                                       # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

METRICS = ("regression", "discovery", "elbo", "video", "tracking")
DEFAULT_GENERATED_IMAGES = 1000
FIGURE_IMAGES = 8


class EvaluationError(ValueError):
    """An evaluation request that cannot be satisfied (unknown metric, missing data or labels)."""


# ---------------------------------------------------------------------------------------------------------------------
# Data plumbing
def _collate(items: list[Any]) -> Any:
    """Stack dict items; "centers" [M, 2] of different M are NaN-padded to the largest M."""
    if not isinstance(items[0], Mapping):
        return torch.utils.data.default_collate(items)
    batch: dict[str, Any] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if key == "centers":
            values = [torch.as_tensor(v, dtype=torch.float32).reshape(-1, 2) for v in values]
            m = max(v.shape[0] for v in values)
            padded = torch.full((len(values), m, 2), float("nan"))
            for i, v in enumerate(values):
                padded[i, : v.shape[0]] = v
            batch[key] = padded
        elif isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(values[0], (int, float)):
            batch[key] = torch.tensor(values)
        else:
            batch[key] = values
    return batch


def _loader(dataset: Any, batch_size: int, num_images: int | None = None) -> torch.utils.data.DataLoader:
    if num_images is not None and num_images < len(dataset):
        dataset = torch.utils.data.Subset(dataset, range(num_images))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0,
                                       collate_fn=_collate)


def _images(batch: Any) -> torch.Tensor:
    from dlp.evaluation.elbo import batch_images

    return batch_images(batch)


@torch.no_grad()
def encode_dataset(
    model: torch.nn.Module, loader: Any, *, device: str | torch.device = "cpu", keys: Sequence[str] = ()
) -> dict[str, torch.Tensor]:
    """Deterministic particles of every image (model in eval mode), concatenated on the CPU.

    From the family's `particle_view`: `mu`, `logvar` [N, K+1, 2] and `mu_features`, `logvar_features` [N, K+1, D]
    with the background particle as the last row (a row of zeros for families without one: `has_background` is then
    0), `obj_on` [N, K] (models with a presence) and `confidence` [N, K]; plus the batch entries named in `keys`
    (e.g. "landmarks", "centers"), concatenated as well, and the family's attributes as "attribute/<name>".
    """
    was_training = model.training
    model.eval()
    model.to(device)
    acc: dict[str, list[torch.Tensor]] = {}
    has_background = True
    try:
        for batch in loader:
            x = _images(batch).to(device, torch.float32)
            view = model.particle_view(model.encode(x))  # posterior means and statistics, no sampling
            bg = view.background_particle
            has_background = bg is not None
            b, d = view.features.shape[0], view.features.shape[-1]
            no_row = {"position": view.positions.new_zeros(b, 2), "position_logvar": view.positions.new_zeros(b, 2),
                      "features": view.features.new_zeros(b, d), "feature_logvar": view.features.new_zeros(b, d)}
            bg = {**no_row, "features": view.background, **bg} if bg is not None else no_row
            rows = {"mu": (view.positions, bg["position"]), "logvar": (view.position_logvar, bg["position_logvar"]),
                    "mu_features": (view.features, bg["features"]),
                    "logvar_features": (view.feature_logvar, bg["feature_logvar"])}
            for name, (fg, background) in rows.items():
                if fg is not None:
                    acc.setdefault(name, []).append(torch.cat([fg, background[:, None]], 1).detach().float().cpu())
            for name, value in (("obj_on", view.presence), ("confidence", view.confidence),
                                *((f"attribute/{k}", v) for k, v in view.attributes.items())):
                if value is not None:
                    acc.setdefault(name, []).append(value.detach().float().cpu())
            for key in keys:
                if not isinstance(batch, Mapping) or key not in batch:
                    raise EvaluationError(f"the dataset items have no {key!r} entry, which this metric needs.")
                acc.setdefault(key, []).append(torch.as_tensor(batch[key]).float().cpu())
    finally:
        model.train(was_training)
    if not acc:
        raise EvaluationError("the evaluation dataset is empty; check --data-root and the split.")
    out: dict[str, torch.Tensor] = {}
    for name, values in acc.items():
        if name in ("centers", "boxes"):
            m = max(v.shape[1] for v in values)
            values = [torch.cat([v, v.new_full((v.shape[0], m - v.shape[1], v.shape[2]), float("nan"))], 1)
                      for v in values]
        out[name] = torch.cat(values)
    out["has_background"] = torch.tensor(float(has_background))
    return out


def build_split(dataset: str, split: str, *, data_root: str | None, image_size: int, seed: int = 0,
                num_images: int | None = None, **options: Any) -> Any:
    """A split of a registered dataset; `num_images` caps real data and sizes generated data (default 1000);
    `options` are the family's (`Objective.dataset_options`, e.g. the clip length of a video model)."""
    from dlp.data.registry import build_dataset, dataset_info

    if dataset_info(dataset).generated:
        num_images = num_images or DEFAULT_GENERATED_IMAGES
    return build_dataset(dataset, data_root=data_root, image_size=image_size, split=split, seed=seed,
                         num_images=num_images, **options)


PARTICLE_METRICS = ("regression", "discovery")  # they read particles: the model needs `particle_view`
VIDEO_METRICS = ("video", "tracking")  # they roll out: the model needs `rollout`, `encode` and `decode`


def carries_identities(dataset: str) -> bool:
    """Whether the clips of `dataset` carry per-frame ball identities ("positions" [T, N, 2], "ids" [T, N]): a video
    dataset with ground-truth objects (`DatasetInfo.videos` and `.objects`, i.e. balls) keeps them in its clips."""
    from dlp.data.registry import dataset_info

    info = dataset_info(dataset)
    return info.videos and info.objects


def _rolls_out(model: torch.nn.Module | None) -> bool:
    return model is None or all(hasattr(model, name) for name in ("rollout", "encode", "decode"))


def default_metrics(dataset: str, model: torch.nn.Module | None = None, *, videos: bool = False) -> list[str]:
    """The metrics `dlp eval` computes when none are requested, from what the dataset has (and, given a model,
    what the model has: models without particles get the validation objective only; video models (`videos`) are
    evaluated on held-out clips: video prediction ("video", for models that roll out) and the ELBO, plus "tracking"
    where the clips carry ball identities (`carries_identities`))."""
    from dlp.data.registry import dataset_info

    info = dataset_info(dataset)
    if videos:
        if not _rolls_out(model):
            return ["elbo"]
        return ["video", "elbo"] + (["tracking"] if carries_identities(dataset) else [])
    if model is not None and not hasattr(model, "particle_view"):
        return ["elbo"]
    if info.objects:
        return ["discovery", "elbo"]
    if info.landmarks:
        return ["regression"]
    return ["elbo"]


# ---------------------------------------------------------------------------------------------------------------------
# Metric runners
def run_regression(
    model: torch.nn.Module,
    train_set: Any,
    test_set: Any,
    *,
    topk: int = 10,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    num_images: int | None = None,
    untrained_baseline: bool = True,
    figure_path: str | Path | None = None,
    eye_idx: tuple[int, int] = (0, 1),
) -> tuple[dict[str, float], dict[str, str]]:
    """Keypoint regression (both protocols, all variants, top-k) plus baselines; optionally the landmark figure.

    Baselines: `baseline/mean_shape` and, with `untrained_baseline`, the fair-protocol errors of a freshly initialised
    model of the same architecture (`baseline/untrained/<variant>`; seed 0), which tells how much of the score the
    architecture alone explains.
    """
    from dlp.evaluation.regression import keypoint_regression

    train_loader = _loader(train_set, batch_size, num_images)
    test_loader = _loader(test_set, batch_size, num_images)
    tr = encode_dataset(model, train_loader, device=device, keys=("landmarks",))
    te = encode_dataset(model, test_loader, device=device, keys=("landmarks",))
    # The official protocol keeps the background particle; families without one have only the fair protocol.
    protocols = ("official", "fair") if bool(tr["has_background"]) else ("fair",)
    results, preds = keypoint_regression(
        tr, te, tr["landmarks"], te["landmarks"], topk=topk, eye_idx=eye_idx, protocols=protocols,
        return_predictions=True,
    )
    if untrained_baseline:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            fresh = type(model)(model.config)
        tr0 = encode_dataset(fresh, train_loader, device=device)
        te0 = encode_dataset(fresh, test_loader, device=device)
        base = keypoint_regression(tr0, te0, tr["landmarks"], te["landmarks"], topk=None, protocols=("fair",),
                                   eye_idx=eye_idx)
        for k, v in base.items():
            if k.startswith("fair/"):
                results[f"baseline/untrained/{k.split('/', 1)[1]}"] = v
        del fresh
    figures: dict[str, str] = {}
    if figure_path is not None:
        # the best fair-protocol variant over all particles
        key = min((k for k in preds if k.startswith("fair/") and "@" not in k), key=results.__getitem__)
        n = min(FIGURE_IMAGES, len(test_set))
        images = torch.stack([_images(_collate([test_set[i]]))[0] for i in range(n)])
        save_landmark_figure(images, te["landmarks"][:n], preds[key][:n], figure_path,
                             title=f"{key}: {100 * results[key]:.2f}% of the inter-ocular distance")
        figures["landmarks"] = str(figure_path)
    return results, figures


def run_discovery(
    model: torch.nn.Module,
    dataset: Any,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    radii: Sequence[float] = (4.0, 6.0),
    presence_threshold: float = 0.5,
    topk: int = 10,
) -> dict[str, float]:
    """Object discovery against the dataset's "centers" (pixels, (y, x)); see `dlp.evaluation.discovery`.

    Confident particles: presence > `presence_threshold` for models with a presence, else the `topk` most confident.
    Particles with a size (a "scale" attribute, e.g. DLPv2) are also scored as boxes against the dataset's "boxes".
    """
    from dlp.evaluation.discovery import box_metrics, confident_particles, discovery_metrics
    from dlp.viz import kp_to_pixels, scale_boxes

    item = dataset[0]
    with_boxes = "boxes" in item
    enc = encode_dataset(model, _loader(dataset, batch_size), device=device,
                         keys=("centers", "boxes") if with_boxes else ("centers",))
    size = model.config.image_size
    positions = kp_to_pixels(enc["mu"][:, :-1], size)
    confident = confident_particles(enc["confidence"], enc.get("obj_on"), presence_threshold=presence_threshold,
                                    topk=topk)
    results = discovery_metrics(positions, confident, enc["centers"], radii=radii)
    if with_boxes and "attribute/scale" in enc:
        boxes = scale_boxes(enc["mu"][:, :-1], enc["attribute/scale"], size)
        results.update(box_metrics(boxes, confident, enc["boxes"]))
    return results


def run_elbo(model: torch.nn.Module, dataset: Any, objective: Any, *, batch_size: int = 64,
             device: str | torch.device = "cpu", seed: int = 0) -> dict[str, float]:
    """Both validation objectives of the family (official; ours, deterministic) with the run's weights."""
    from dlp.evaluation.elbo import validation_elbo

    loader = _loader(dataset, batch_size)
    official = validation_elbo(model, loader, objective, official=True, image_metrics=False, device=device, seed=seed)
    ours = validation_elbo(model, loader, objective, official=False, image_metrics=True, device=device)
    results = {f"official/{k}": v for k, v in official.items() if k not in ("num_images", "num_batches")}
    results.update({f"deterministic/{k}": v for k, v in ours.items() if k not in ("num_images", "num_batches")})
    results["num_images"] = ours["num_images"]
    return results


# ---------------------------------------------------------------------------------------------------------------------
# Figure
def save_landmark_figure(
    images: torch.Tensor,
    true_landmarks: torch.Tensor,
    pred_landmarks: torch.Tensor,
    path: str | Path,
    *,
    title: str | None = None,
) -> Path:
    """Save a row of test images with the true (green circles) and regressed (red crosses) landmarks.

    `images` [N, C, H, W] in [0, 1]; landmarks [N, L, 2] in pixels, (x, y) order as the datasets store them.
    """
    from dlp.viz import agg_figure, save_figure

    n = images.shape[0]
    fig = agg_figure((2.0 * n, 2.3 if title else 2.0))
    axes = fig.subplots(1, n, squeeze=False)[0]
    for i, ax in enumerate(axes):
        img = images[i].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
        ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
        t, p = true_landmarks[i].cpu().numpy(), pred_landmarks[i].cpu().numpy()
        ax.scatter(t[:, 0], t[:, 1], s=18, facecolors="none", edgecolors="lime", linewidths=1.2, label="true")
        ax.scatter(p[:, 0], p[:, 1], s=18, c="red", marker="x", linewidths=1.2, label="regressed")
        ax.set_axis_off()
    axes[0].legend(loc="lower left", fontsize=6, framealpha=0.6)
    if title:
        fig.suptitle(title, fontsize=8)
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------------------------------------------
# Entry points
def run_train_config(model: torch.nn.Module, train_config: Any = None, *, dataset: str | None = None):
    """The family's training config of a run from a config, a dict of its settings (e.g. a checkpoint's) or None
    (the family's defaults), on `dataset` if given."""
    from dlp.registry import family_of

    if train_config is not None and not isinstance(train_config, Mapping):
        return train_config if dataset is None else train_config.replace(dataset=dataset)
    values = dict(train_config or {})
    if dataset is not None:
        values["dataset"] = dataset
    return family_of(model).train_config_class.from_dict(values)


def evaluation_objective(model: torch.nn.Module, train_config: Any = None, *, dataset: str | None = None,
                         device: str | torch.device = "cpu", vgg_weights: str | None = None):
    """The model family's objective for evaluation, with the run's weights (see `run_train_config`); a perceptual
    loss falls back to MSE (with a warning) when its weights are missing."""
    from dlp.registry import family_of

    config = run_train_config(model, train_config, dataset=dataset)
    return family_of(model).objective_class(model.config, config, device=device, vgg_weights=vgg_weights,
                                            fallback_rec_loss=True)


def run_video(
    model: torch.nn.Module,
    dataset: Any,
    *,
    cond_frames: int,
    horizon: int,
    quality: Sequence[str] = ("psnr", "ssim", "lpips"),
    tracking: bool = False,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    lpips_weights: str | None = None,
    vgg_weights: str | None = None,
    figure_path: str | Path | None = None,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """Video prediction quality (`quality` among psnr, ssim, lpips) and/or tracking on held-out clips, in one pass.

    LPIPS needs the ImageNet VGG16 and the LPIPS linear weights (`dlp.evaluation.lpips`); when either is missing it
    is skipped with a warning (PSNR and SSIM are always computed). Returns (flat metrics, protocol: {"cond_frames",
    "horizon", "lpips": where its weights came from or why it was skipped}, figures)."""
    import warnings

    from dlp.evaluation.video import evaluate_video, flat_video_metrics, save_metric_plot

    protocol: dict[str, Any] = {"cond_frames": cond_frames, "horizon": horizon}
    lpips = None
    if "lpips" in quality:
        from dlp.evaluation.lpips import LPIPS
        from dlp.perceptual import VGGWeightsError

        try:
            lpips = LPIPS(lpips_weights, vgg_weights or "imagenet")
            protocol["lpips"] = f"vgg: {lpips.weights_source['vgg']}, linear: {lpips.weights_source['linear']}"
        except VGGWeightsError as exc:
            warnings.warn(f"LPIPS skipped: {exc}", stacklevel=2)
            protocol["lpips"] = f"skipped: {exc}"
    res = evaluate_video(model, dataset, cond_frames=cond_frames, horizon=horizon, batch_size=batch_size,
                         device=device, metrics=[m for m in quality if m != "lpips"], lpips=lpips, tracking=tracking)
    figures: dict[str, str] = {}
    if figure_path is not None and res["video"] is not None:
        figures["video"] = str(save_metric_plot(res["video"], figure_path))
    return flat_video_metrics(res["video"], res["tracking"]), protocol, figures


def evaluate_model(
    model: torch.nn.Module,
    *,
    dataset: str,
    data_root: str | None = None,
    metrics: Sequence[str] | None = None,
    train_config: Any = None,
    objective: Any = None,
    topk: int = 10,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    num_images: int | None = None,
    untrained_baseline: bool = True,
    figure_path: str | Path | None = None,
    cond_frames: int | None = None,
    horizon: int | None = None,
    video_quality: Sequence[str] = ("psnr", "ssim", "lpips"),
    lpips_weights: str | None = None,
    vgg_weights: str | None = None,
    video_figure_path: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate an in-memory model; see `evaluate_checkpoint` (which loads the model and calls this).

    `objective` (or else `train_config`, a config or dict of the run's settings) supplies the ELBO's weights and the
    family's dataset options (a video model is evaluated on held-out clips), and the video protocol's defaults
    (`cond_steps` conditioning frames, `rollout_horizon` predicted ones). `video_quality` picks the per-frame metrics
    of "video" (training uses PSNR only).
    """
    from dlp.data.registry import dataset_info

    info = dataset_info(dataset)
    image_size = int(model.config.image_size)
    if objective is None:
        objective = evaluation_objective(model, train_config, dataset=dataset, device=device,
                                         vgg_weights=vgg_weights)
    options = objective.dataset_options()  # e.g. clips for a video model
    if metrics is None:
        metrics = default_metrics(dataset, model, videos="clip_length" in options)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise EvaluationError(f"unknown metrics {unknown}; choose from {list(METRICS)}.")
    needs_particles = [m for m in metrics if m in PARTICLE_METRICS]
    if needs_particles and not hasattr(model, "particle_view"):
        raise EvaluationError(f"{needs_particles} read particles, which a {type(model).__name__} does not expose "
                              "(no `particle_view`); evaluate the 'elbo' only.")
    if "discovery" in metrics and not info.objects:
        raise EvaluationError(f"object discovery needs ground-truth objects, which dataset {dataset!r} does not have; "
                              "drop 'discovery' from the metrics.")
    needs_rollout = [m for m in metrics if m in VIDEO_METRICS]
    if needs_rollout and not (_rolls_out(model) and info.videos):
        raise EvaluationError(f"{needs_rollout} roll out video predictions, which needs a video model (e.g. DDLP) on a "
                              f"video dataset; got a {type(model).__name__} on {dataset!r}.")
    if "tracking" in metrics and not carries_identities(dataset):
        raise EvaluationError(f"tracking needs clips with ball identities, which dataset {dataset!r} does not have; "
                              "drop 'tracking' from the metrics.")
    if "regression" in metrics and not info.landmarks:
        raise EvaluationError(f"keypoint regression needs landmarks, which dataset {dataset!r} does not have; "
                              "drop 'regression' from the metrics.")
    # Generated held-out data is drawn from the run's seed (offset, so that it never repeats training data).
    heldout = dict(data_root=data_root, image_size=image_size, seed=objective.train_config.seed,
                   num_images=num_images)

    results: dict[str, Any] = {"dataset": dataset, "metrics": {}, "figures": {}}
    flat: dict[str, float] = results["metrics"]
    if "regression" in metrics:
        train_set = _build_dataset(dataset, data_root, image_size, "train")
        test_set = _build_dataset(dataset, data_root, image_size, info.heldout_split)
        reg, figs = run_regression(
            model, train_set, test_set, topk=topk, batch_size=batch_size, device=device, num_images=num_images,
            untrained_baseline=untrained_baseline, figure_path=figure_path,
        )
        flat.update({f"regression/{k}": v for k, v in reg.items()})
        results["figures"].update(figs)
    if "discovery" in metrics:
        eval_set = build_split(dataset, info.heldout_split, **heldout)
        disc = run_discovery(model, eval_set, batch_size=batch_size, device=device, topk=topk)
        flat.update({f"discovery/{k}": v for k, v in disc.items()})
    if "elbo" in metrics:
        eval_set = build_split(dataset, info.heldout_split, **heldout, **options)
        elbo = run_elbo(model, eval_set, objective, batch_size=batch_size, device=device)
        flat.update({f"elbo/{k}": v for k, v in elbo.items()})
        results["elbo_rec_loss"] = getattr(objective, "rec_loss_name", "mse")
    if needs_rollout:
        tcfg = objective.train_config
        cond_frames = getattr(tcfg, "cond_steps", None) if cond_frames is None else cond_frames
        horizon = getattr(tcfg, "rollout_horizon", None) if horizon is None else horizon
        if cond_frames is None or horizon is None:
            raise EvaluationError("the run records no rollout protocol (cond_steps, rollout_horizon); pass "
                                  "--cond-frames and --horizon.")
        cond_frames, horizon = int(cond_frames), int(horizon)
        eval_set = build_split(dataset, info.heldout_split, **heldout, clip_length=cond_frames + horizon)
        video, protocol, figs = run_video(
            model, eval_set, cond_frames=cond_frames, horizon=horizon,
            quality=video_quality if "video" in metrics else (), tracking="tracking" in metrics,
            batch_size=batch_size, device=device, lpips_weights=lpips_weights, vgg_weights=vgg_weights,
            figure_path=video_figure_path,
        )
        flat.update(video)
        if "video" in metrics:
            results["video"] = protocol
        results["figures"].update(figs)
    return results


def _build_dataset(name: str, data_root: str | None, image_size: int, split: str) -> Any:
    return build_split(name, split, data_root=data_root, image_size=image_size)


def evaluate_checkpoint(
    checkpoint_path: str | Path,
    *,
    dataset: str | None = None,
    data_root: str | None = None,
    metrics: Sequence[str] | None = None,
    out: str | Path | None = None,
    topk: int = 10,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    num_images: int | None = None,
    untrained_baseline: bool = True,
    cond_frames: int | None = None,
    horizon: int | None = None,
    video_quality: Sequence[str] = ("psnr", "ssim", "lpips"),
    lpips_weights: str | None = None,
    vgg_weights: str | None = None,
) -> dict[str, Any]:
    """Load a checkpoint and evaluate it with the metrics that fit its dataset.

    Args:
        checkpoint_path: a checkpoint written by `dlp train` or `dlp convert-official`, or a run directory (its
            best.pt, else last.pt).
        dataset: the dataset to evaluate on (default: the one the checkpoint records; required for checkpoints that
            record none, e.g. converted official weights without a preset).
        data_root: dataset location (default: the one recorded with the checkpoint's dataset).
        metrics: subset of ('regression', 'discovery', 'elbo', 'video', 'tracking'); default: by dataset (see the
            module docstring).
        out: write the results as JSON there; the figures go next to it (`<stem>_landmarks.png`,
            `<stem>_video.png`: the video metrics against the future step).
        topk: size of the confident-particle selection (regression top-k, discovery for masked models).
        device: torch device for the model.
        batch_size: evaluation batch size.
        num_images: cap on the images per split (landmarks, ELBO); number of generated images (default 1000).
        untrained_baseline: also regress from a freshly initialised model of the same architecture.
        cond_frames, horizon: the video protocol (default: the run's `cond_steps` and `rollout_horizon`).
        video_quality: the per-frame video metrics (psnr, ssim, lpips).
        lpips_weights: the LPIPS linear weights (default: $DLP_LPIPS_WEIGHTS, the caches, a download; LPIPS is
            skipped with a warning when unavailable); vgg_weights: the ImageNet VGG16 file (default
            $DLP_VGG_WEIGHTS, the torch hub cache, a download).

    Returns:
        {"checkpoint", "dataset", "metrics": {flat name -> float, or list over future steps for "video.*"},
        "figures": {name -> path}, and for video models "video": {"cond_frames", "horizon", "lpips"}}; regression
        errors are fractions of the inter-ocular distance (`format_table` shows them in %).
    """
    from dlp.checkpoint import model_from_checkpoint, read_checkpoint, resolve_checkpoint_path

    path = resolve_checkpoint_path(checkpoint_path)
    payload = read_checkpoint(path, map_location=device)
    train_config = dict(payload.get("train_config") or {})
    if not train_config and payload.get("preset"):
        from dlp.registry import get_preset

        train_config = dict(get_preset(payload["preset"]).train)
    model = model_from_checkpoint(payload, device, source=path)
    recorded = train_config.get("dataset")
    dataset = dataset or recorded
    if not dataset:
        raise EvaluationError(f"{path} records no training dataset; pass the one to evaluate on with -d/--dataset "
                              "(and --data-root).")
    if data_root is None and dataset == recorded:
        data_root = train_config.get("data_root")
    train_config["dataset"] = dataset
    train_config["data_root"] = data_root
    figure_path = video_figure_path = None
    if out is not None:
        out = Path(out)
        figure_path = out.with_name(f"{out.stem}_landmarks.png")
        video_figure_path = out.with_name(f"{out.stem}_video.png")
    results = evaluate_model(
        model, dataset=dataset, data_root=data_root, metrics=metrics, train_config=train_config, topk=topk,
        device=device, batch_size=batch_size, num_images=num_images, untrained_baseline=untrained_baseline,
        figure_path=figure_path, cond_frames=cond_frames, horizon=horizon, video_quality=video_quality,
        lpips_weights=lpips_weights, vgg_weights=vgg_weights, video_figure_path=video_figure_path,
    )
    results = {"checkpoint": str(path), **results}
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
    return results


def format_table(results: Mapping[str, Any]) -> str:
    """A two-column text table; regression errors are shown in % of the inter-ocular distance, per-step lists (video
    metrics) as their mean and their last step."""
    metrics = results.get("metrics", results)
    rows = []
    for key, value in metrics.items():
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, (int, float)) for v in value):
            rows.append((key, f"{sum(value) / len(value):.4f} (mean), {value[-1]:.4f} (step {len(value)})"))
            continue
        if not isinstance(value, (int, float)):
            continue
        if key.startswith("regression/"):
            text = f"{100 * value:.2f} %"
        elif key.endswith(("num_images", "num_objects", "num_detections", "num_clips", "num_balls")):
            text = f"{int(value)}" if math.isfinite(value) else str(value)
        else:
            text = f"{value:.4f}"
        rows.append((key, text))
    width = max((len(k) for k, _ in rows), default=6)
    header = []
    for name in ("checkpoint", "dataset", "elbo_rec_loss", "video"):
        if name in results:
            value = results[name]
            if isinstance(value, Mapping):
                value = ", ".join(f"{k} {v}" for k, v in value.items())
            header.append(f"{name}: {value}")
    lines = header + [f"{'metric':<{width}}  value", f"{'-' * width}  -----"]
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    for name, path in (results.get("figures") or {}).items():
        lines.append(f"figure ({name}): {path}")
    return "\n".join(lines)
