"""`dlp eval CHECKPOINT`: evaluate a trained model with the metrics that fit its dataset.

* landmark datasets (CelebA / MAFL / any folder with landmarks) -> keypoint linear regression (`regression`);
* random shapes (ground-truth centres known) -> object discovery (`discovery`) and the validation ELBO (`elbo`);
* anything else (CLEVRER, Traffic, image folders) -> the validation ELBO.

>>> from dlp.evaluation.runner import evaluate_checkpoint, format_table
>>> results = evaluate_checkpoint("runs/celeba/checkpoint.pt", out="results.json")   # doctest: +SKIP
>>> print(format_table(results))                                                     # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

METRICS = ("regression", "discovery", "elbo")
# Dataset names whose items carry "landmarks"; other names are probed (first test item) before giving up.
LANDMARK_DATASETS = frozenset({"celeba", "celeba64", "mafl", "landmarks", "celeba-mini"})
SHAPES_DATASETS = frozenset({"shapes"})
# The shapes evaluation set is generated with a seed far from any training seed, so it never repeats training images.
SHAPES_EVAL_SEED_OFFSET = 1_000_003
DEFAULT_SHAPES_IMAGES = 1000
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

    Returns `mu`, `logvar` [N, K+1, 2], `mu_features`, `logvar_features` [N, K+1, D], `obj_on` [N, K] (object models),
    plus the batch entries named in `keys` (e.g. "landmarks", "centers"), concatenated as well.
    """
    was_training = model.training
    model.eval()
    model.to(device)
    acc: dict[str, list[torch.Tensor]] = {}
    try:
        for batch in loader:
            x = _images(batch).to(device, torch.float32)
            particles = model.encode(x)  # posterior means and statistics, no sampling
            for name in ("mu", "logvar", "mu_features", "logvar_features", "obj_on"):
                value = getattr(particles, name, None)
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
        if name == "centers":
            m = max(v.shape[1] for v in values)
            values = [torch.cat([v, v.new_full((v.shape[0], m - v.shape[1], 2), float("nan"))], 1) for v in values]
        out[name] = torch.cat(values)
    return out


def _build_dataset(name: str, data_root: str | None, image_size: int, split: str) -> Any:
    from dlp.data.registry import build_dataset

    return build_dataset(name, data_root=data_root, image_size=image_size, split=split)


def _shapes_dataset(num_images: int, image_size: int, seed: int) -> Any:
    from dlp.data.shapes import ShapesDataset

    return ShapesDataset(num_images, image_size, seed=seed)


def _has_landmarks(name: str, data_root: str | None, image_size: int) -> bool:
    if name in LANDMARK_DATASETS:
        return True
    if name in SHAPES_DATASETS:
        return False
    try:
        ds = _build_dataset(name, data_root, image_size, "test")
        return len(ds) > 0 and isinstance(ds[0], Mapping) and "landmarks" in ds[0]
    except Exception:  # a dataset without a test split or without labels: not a landmark dataset
        return False


def default_metrics(dataset: str, *, data_root: str | None = None, image_size: int = 128) -> list[str]:
    """The metrics `dlp eval` computes when none are requested."""
    if dataset in SHAPES_DATASETS:
        return ["discovery", "elbo"]
    if _has_landmarks(dataset, data_root, image_size):
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
    results, preds = keypoint_regression(
        tr, te, tr["landmarks"], te["landmarks"], topk=topk, eye_idx=eye_idx, return_predictions=True
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
    obj_on_threshold: float = 0.5,
    topk: int = 10,
) -> dict[str, float]:
    """Object discovery against the dataset's "centers" (pixels, (y, x)); see `dlp.evaluation.discovery`."""
    from dlp.evaluation.discovery import confident_particles, discovery_metrics
    from dlp.viz import kp_to_pixels

    enc = encode_dataset(model, _loader(dataset, batch_size), device=device, keys=("centers",))
    positions = kp_to_pixels(enc["mu"][:, :-1], model.config.image_size)
    confident = confident_particles(
        enc["logvar"][:, :-1], enc.get("obj_on"), obj_on_threshold=obj_on_threshold, topk=topk
    )
    return discovery_metrics(positions, confident, enc["centers"], radii=radii)


def _reconstruction_loss(name: str, device: str | torch.device) -> tuple[Any, str]:
    """The run's reconstruction loss as `(x, rec) -> [B]` (None = summed squared error) and the name used.

    A 'vgg' run without reachable ImageNet VGG16 weights falls back to MSE with a warning (the name says so).
    """
    if name != "vgg":
        return None, "mse"
    from dlp.perceptual import VGGPerceptual, VGGWeightsError

    try:
        vgg = VGGPerceptual().to(device)
    except VGGWeightsError as exc:
        warnings.warn(f"validation ELBO uses MSE instead of the run's VGG loss: {exc}", stacklevel=3)
        return None, "mse (vgg weights unavailable)"
    return (lambda x, rec: vgg(x, rec, reduction="none")), "vgg"


def run_elbo(
    model: torch.nn.Module,
    dataset: Any,
    *,
    train_config: Mapping[str, Any] | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    seed: int = 0,
    rec_loss: str | None = None,
) -> tuple[dict[str, float], str]:
    """Both validation objectives (official, stochastic; ours, deterministic) with the run's beta weights.

    `rec_loss` ('mse' | 'vgg', default: the run's `rec_loss_function`). Returns (metrics, name of the rec loss used).
    """
    from dlp.evaluation.elbo import validation_elbo

    cfg = dict(train_config or {})
    weights = dict(
        beta_rec=float(cfg.get("beta_rec", 1.0)),
        beta_kl=float(cfg.get("beta_kl", 1.0)),
        kl_balance=float(cfg.get("kl_balance", 1e-3)),
    )
    loss_fn, loss_name = _reconstruction_loss(rec_loss or str(cfg.get("rec_loss_function", "mse")), device)
    loader = _loader(dataset, batch_size)
    common = dict(weights, rec_loss=loss_fn, device=device)
    official = validation_elbo(model, loader, **common, official=True, image_metrics=False, seed=seed)
    ours = validation_elbo(model, loader, **common, official=False, image_metrics=True)
    results = {f"official/{k}": v for k, v in official.items() if k not in ("num_images", "num_batches")}
    results.update({f"deterministic/{k}": v for k, v in ours.items() if k not in ("num_images", "num_batches")})
    results["num_images"] = ours["num_images"]
    return results, loss_name


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
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = images.shape[0]
    fig = Figure(figsize=(2.0 * n, 2.3 if title else 2.0))
    FigureCanvasAgg(fig)
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
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Entry points
def evaluate_model(
    model: torch.nn.Module,
    *,
    dataset: str,
    data_root: str | None = None,
    metrics: Sequence[str] | None = None,
    train_config: Mapping[str, Any] | None = None,
    topk: int = 10,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    num_images: int | None = None,
    untrained_baseline: bool = True,
    figure_path: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate an in-memory model; see `evaluate_checkpoint` (which loads the model and calls this)."""
    image_size = int(model.config.image_size)
    if metrics is None:
        metrics = default_metrics(dataset, data_root=data_root, image_size=image_size)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise EvaluationError(f"unknown metrics {unknown}; choose from {list(METRICS)}.")
    if "discovery" in metrics and dataset not in SHAPES_DATASETS:
        raise EvaluationError(
            f"object discovery needs ground-truth object centres, which only {sorted(SHAPES_DATASETS)} provide, "
            f"not {dataset!r}; drop 'discovery' from the metrics."
        )
    seed = int((train_config or {}).get("seed", 0)) + SHAPES_EVAL_SEED_OFFSET
    shapes_images = num_images or DEFAULT_SHAPES_IMAGES

    results: dict[str, Any] = {"dataset": dataset, "metrics": {}, "figures": {}}
    flat: dict[str, float] = results["metrics"]
    if "regression" in metrics:
        train_set = _build_dataset(dataset, data_root, image_size, "train")
        test_set = _build_dataset(dataset, data_root, image_size, "test")
        reg, figs = run_regression(
            model, train_set, test_set, topk=topk, batch_size=batch_size, device=device, num_images=num_images,
            untrained_baseline=untrained_baseline, figure_path=figure_path,
        )
        flat.update({f"regression/{k}": v for k, v in reg.items()})
        results["figures"].update(figs)
    eval_set = None
    if "discovery" in metrics or ("elbo" in metrics and dataset in SHAPES_DATASETS):
        eval_set = _shapes_dataset(shapes_images, image_size, seed) if dataset in SHAPES_DATASETS else None
    if "discovery" in metrics:
        disc = run_discovery(model, eval_set, batch_size=batch_size, device=device, topk=topk)
        flat.update({f"discovery/{k}": v for k, v in disc.items()})
    if "elbo" in metrics:
        if eval_set is None:
            eval_set = _build_dataset(dataset, data_root, image_size, "test")
            if num_images is not None and num_images < len(eval_set):
                eval_set = torch.utils.data.Subset(eval_set, range(num_images))
        elbo, loss_name = run_elbo(model, eval_set, train_config=train_config, batch_size=batch_size, device=device)
        flat.update({f"elbo/{k}": v for k, v in elbo.items()})
        results["elbo_rec_loss"] = loss_name
    return results


def evaluate_checkpoint(
    checkpoint_path: str | Path,
    *,
    data_root: str | None = None,
    metrics: Sequence[str] | None = None,
    out: str | Path | None = None,
    topk: int = 10,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    num_images: int | None = None,
    untrained_baseline: bool = True,
) -> dict[str, Any]:
    """Load a checkpoint and evaluate it with the metrics that fit its training dataset.

    Args:
        checkpoint_path: a checkpoint written by `dlp train` (or `dlp convert-official`).
        data_root: dataset location; default: the `data_root` recorded in the checkpoint's training config.
        metrics: subset of ('regression', 'discovery', 'elbo'); default: by dataset (see the module docstring).
        out: write the results as JSON there; the landmark figure goes next to it (`<stem>_landmarks.png`).
        topk: size of the confident-particle selection (regression top-k, discovery for masked models).
        device: torch device for the model.
        batch_size: evaluation batch size.
        num_images: cap on the images per split (landmarks, ELBO); number of generated images for shapes (1000).
        untrained_baseline: also regress from a freshly initialised model of the same architecture.

    Returns:
        {"checkpoint", "dataset", "metrics": {flat name -> float}, "figures": {name -> path}}; regression errors are
        fractions of the inter-ocular distance (`format_table` shows them in %).
    """
    from dlp.checkpoint import model_from_checkpoint, read_checkpoint

    payload = read_checkpoint(checkpoint_path, map_location=device)
    train_config = dict(payload.get("train_config") or {})
    model = model_from_checkpoint(payload, device, source=checkpoint_path)
    dataset = train_config.get("dataset")
    if not dataset:
        raise EvaluationError(f"{checkpoint_path} records no training dataset; it cannot be evaluated automatically.")
    data_root = data_root if data_root is not None else train_config.get("data_root")
    figure_path = None
    if out is not None:
        out = Path(out)
        figure_path = out.with_name(f"{out.stem}_landmarks.png")
    results = evaluate_model(
        model, dataset=dataset, data_root=data_root, metrics=metrics, train_config=train_config, topk=topk,
        device=device, batch_size=batch_size, num_images=num_images, untrained_baseline=untrained_baseline,
        figure_path=figure_path,
    )
    results = {"checkpoint": str(checkpoint_path), **results}
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
    return results


def format_table(results: Mapping[str, Any]) -> str:
    """A two-column text table; regression errors are shown in % of the inter-ocular distance."""
    metrics = results.get("metrics", results)
    rows = []
    for key, value in metrics.items():
        if not isinstance(value, (int, float)):
            continue
        if key.startswith("regression/"):
            text = f"{100 * value:.2f} %"
        elif key.endswith(("num_images", "num_objects", "num_detections")):
            text = f"{int(value)}" if math.isfinite(value) else str(value)
        else:
            text = f"{value:.4f}"
        rows.append((key, text))
    width = max((len(k) for k, _ in rows), default=6)
    header = []
    for name in ("checkpoint", "dataset", "elbo_rec_loss"):
        if name in results:
            header.append(f"{name}: {results[name]}")
    lines = header + [f"{'metric':<{width}}  value", f"{'-' * width}  -----"]
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    for name, path in (results.get("figures") or {}).items():
        lines.append(f"figure ({name}): {path}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# CLI
def configure_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `eval` sub-command to a `dlp` argparse sub-parser group; sets `func`."""
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint (keypoint regression, object discovery, validation ELBO)",
        description=__doc__.split("\n\n>>>")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", help="checkpoint file written by `dlp train` or `dlp convert-official`")
    parser.add_argument("--data-root", default=None,
                        help="dataset location (default: the one recorded in the checkpoint)")
    parser.add_argument("--metrics", nargs="+", choices=METRICS, default=None,
                        help="metrics to compute (default: chosen by the dataset)")
    parser.add_argument("--out", default=None,
                        help="write the results as JSON to this file (and the figure next to it)")
    parser.add_argument("--topk", type=int, default=10, help="number of confident particles for the top-k metrics")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=64, help="evaluation batch size")
    parser.add_argument("--num-images", type=int, default=None,
                        help="cap on the images per split (shapes: number of generated images, default 1000)")
    parser.add_argument("--no-untrained-baseline", dest="untrained_baseline", action="store_false",
                        help="skip the regression baseline from a freshly initialised model")
    parser.set_defaults(func=_main)
    return parser


def _main(args: argparse.Namespace) -> int:
    if torch.device(args.device).type == "cpu":
        from dlp.engine.allocator import retain_freed_memory

        retain_freed_memory()
    results = evaluate_checkpoint(
        args.checkpoint, data_root=args.data_root, metrics=args.metrics, out=args.out, topk=args.topk,
        device=args.device, batch_size=args.batch_size, num_images=args.num_images,
        untrained_baseline=args.untrained_baseline,
    )
    print(format_table(results))
    if args.out:
        print(f"results written to {args.out}")
    return 0
