"""Supervised linear regression from particles to landmarks: the DLP paper's headline metric (Table 1, MAFL).

A linear map is fitted (ordinary least squares, float64) from each image's particles to its annotated landmarks on a
train split, and the error on a test split is reported as a fraction of the inter-ocular distance.

Two protocols are reported side by side (see `keypoint_regression`):

* **official** — what `evaluate_lin_reg_on_mafl(_topk)` of the official code computes: no intercept, the background
  particle kept. Its `mu` is constantly (0, 0), so it adds all-zero columns (a rank-deficient design, solved here by
  the minimum-norm least-squares solution, as sklearn's fallback does), and in the `+logvar` variants its constant
  log-variance columns act as a de-facto intercept that the plain `mu` variant does not have.
* **fair** — the background particle dropped and an explicit (unpenalised) intercept fitted, so that the three
  feature variants differ only in the information they carry.

Feature variants (per particle, concatenated in this order, then flattened over particles):
`mu` (2 numbers), `mu_logvar` (mu, logvar: 4), `mu_logvar_features` (mu, logvar, mu_features, logvar_features: 4 + 2D).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

VARIANTS = ("mu", "mu_logvar", "mu_logvar_features")
PROTOCOLS = ("official", "fair")


class RegressionInputError(ValueError):
    """Inputs to the landmark regression have inconsistent shapes or an unknown option."""


# ---------------------------------------------------------------------------------------------------------------------
# Design matrix
def particle_features(
    mu: torch.Tensor,
    logvar: torch.Tensor | None = None,
    mu_features: torch.Tensor | None = None,
    logvar_features: torch.Tensor | None = None,
    *,
    variant: str = "mu",
    drop_background: bool = False,
    particle_idx: Sequence[int] | torch.Tensor | None = None,
) -> torch.Tensor:
    """Flatten particles into a regression design matrix.

    Args:
        mu, logvar: [N, K+1, 2] posterior means / log-variances (background particle last).
        mu_features, logvar_features: [N, K+1, D] (needed for `variant='mu_logvar_features'`).
        variant: 'mu' | 'mu_logvar' | 'mu_logvar_features'.
        drop_background: remove the last (background) particle.
        particle_idx: indices into the full particle axis (0..K, background = K) of the particles to keep, the same
            for every image (global selection, as `evaluate_lin_reg_on_mafl_topk`). With `drop_background=True` the
            background index is not allowed.

    Returns:
        [N, P * d] float64 matrix, P the number of kept particles, d = 2, 4 or 4 + 2D.
    """
    if variant not in VARIANTS:
        raise RegressionInputError(f"unknown regression variant {variant!r}; use one of {VARIANTS}.")
    if mu.dim() != 3:
        raise RegressionInputError(f"mu must have shape [N, K+1, 2], got {tuple(mu.shape)}.")
    parts = [mu]
    if variant in ("mu_logvar", "mu_logvar_features"):
        if logvar is None:
            raise RegressionInputError(f"variant {variant!r} needs logvar; pass the posterior log-variances.")
        parts.append(logvar)
    if variant == "mu_logvar_features":
        if mu_features is None or logvar_features is None:
            raise RegressionInputError(
                "variant 'mu_logvar_features' needs mu_features and logvar_features; pass both or use 'mu_logvar'."
            )
        parts += [mu_features, logvar_features]
    for p in parts:
        if p.shape[:2] != mu.shape[:2]:
            raise RegressionInputError(
                f"all particle tensors must share [N, K+1], got {tuple(mu.shape[:2])} and {tuple(p.shape[:2])}."
            )
    x = torch.cat([p.detach().to("cpu", torch.float64) for p in parts], dim=-1)  # [N, K+1, d]
    n_particles = x.shape[1]
    if particle_idx is not None:
        idx = torch.as_tensor(particle_idx, dtype=torch.long).flatten()
        if idx.numel() == 0 or idx.min() < 0 or idx.max() >= n_particles:
            raise RegressionInputError(f"particle_idx must hold indices in [0, {n_particles - 1}], got {idx.tolist()}.")
        if drop_background and (idx == n_particles - 1).any():
            raise RegressionInputError(
                "particle_idx selects the background particle while drop_background=True; remove its index."
            )
        x = x[:, idx]
    elif drop_background:
        x = x[:, :-1]
    return x.reshape(x.shape[0], -1)


# ---------------------------------------------------------------------------------------------------------------------
# Least squares
@dataclass
class LinearFit:
    """y = x @ weight + bias; `bias` is zero when fitted without intercept."""

    weight: torch.Tensor  # [d, m] float64
    bias: torch.Tensor  # [m] float64
    rank: int


def fit_linear_regression(x: torch.Tensor, y: torch.Tensor, *, intercept: bool) -> LinearFit:
    """Ordinary least squares (no regularisation) in float64 on the CPU.

    The minimum-norm solution is returned for rank-deficient designs (LAPACK gelsd, SVD based), which is what
    sklearn's `Ridge(alpha=0)` ends up computing when its Cholesky solve fails. With `intercept=True` the columns and
    targets are centred first, so the intercept itself is not part of the minimum-norm penalty (as in sklearn).

    Args:
        x: [N, d] design matrix. y: [N, m] targets (or [N, L, 2], flattened).
    """
    x = torch.as_tensor(x).detach().to("cpu", torch.float64)
    y = torch.as_tensor(y).detach().to("cpu", torch.float64)
    y = y.reshape(y.shape[0], -1)
    if x.dim() != 2 or x.shape[0] != y.shape[0]:
        raise RegressionInputError(
            f"x must be [N, d] and y [N, m] with the same N, got {tuple(x.shape)} and {tuple(y.shape)}."
        )
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise RegressionInputError("the regression inputs contain NaN or inf; check the encoder outputs and labels.")
    if intercept:
        x_mean, y_mean = x.mean(0), y.mean(0)
        sol = torch.linalg.lstsq(x - x_mean, y - y_mean, driver="gelsd")
        bias = y_mean - x_mean @ sol.solution
    else:
        sol = torch.linalg.lstsq(x, y, driver="gelsd")
        bias = torch.zeros(y.shape[1], dtype=torch.float64)
    return LinearFit(weight=sol.solution, bias=bias, rank=int(sol.rank))


def predict(fit: LinearFit, x: torch.Tensor) -> torch.Tensor:
    """[N, d] -> [N, m] predictions (float64)."""
    x = torch.as_tensor(x).detach().to("cpu", torch.float64)
    return x @ fit.weight + fit.bias


# ---------------------------------------------------------------------------------------------------------------------
# Error
def normalised_landmark_error(
    pred: torch.Tensor, target: torch.Tensor, eye_idx: tuple[int, int] = (0, 1)
) -> float:
    """Mean over images and landmarks of ||pred - target|| / ||target[eye0] - target[eye1]||.

    A fraction (multiply by 100 for the paper's "%"). `pred`, `target`: [N, L, 2] (or [N, 2L]) in the same
    coordinate frame; the coordinate order (x, y) or (y, x) does not matter as long as both agree.
    """
    target = torch.as_tensor(target).detach().to("cpu", torch.float64)
    pred = torch.as_tensor(pred).detach().to("cpu", torch.float64)
    if target.dim() == 2:
        target = target.reshape(target.shape[0], -1, 2)
    pred = pred.reshape(target.shape)
    iod = (target[:, eye_idx[0]] - target[:, eye_idx[1]]).norm(dim=-1)  # [N]
    if (iod <= 0).any():
        raise RegressionInputError("some images have coinciding eye landmarks (zero inter-ocular distance).")
    err = (pred - target).norm(dim=-1) / iod[:, None]  # [N, L]
    return float(err.mean())


def mean_shape_error(
    train_landmarks: torch.Tensor, test_landmarks: torch.Tensor, eye_idx: tuple[int, int] = (0, 1)
) -> float:
    """Baseline: predict the mean training landmarks for every test image."""
    train = torch.as_tensor(train_landmarks).to(torch.float64)
    test = torch.as_tensor(test_landmarks).to(torch.float64)
    mean = train.reshape(train.shape[0], -1).mean(0)
    pred = mean.expand(test.shape[0], -1)
    return normalised_landmark_error(pred, test.reshape(test.shape[0], -1, 2), eye_idx)


# ---------------------------------------------------------------------------------------------------------------------
# Global top-k selection
def select_particles_by_confidence(
    logvar_train: torch.Tensor, k: int, *, exclude_background: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Global particle selection of `evaluate_lin_reg_on_mafl_topk`.

    confidence score = mean over train images of sum_coords logvar, per particle index (lower = more confident).
    Returns (most confident k, least confident k) indices into the full particle axis, each sorted ascending. With
    `exclude_background=False` the background particle (last) is a candidate, as in the official code.
    """
    score = logvar_train.detach().to("cpu", torch.float64).sum(-1).mean(0)  # [K+1]
    candidates = torch.arange(score.shape[0])
    if exclude_background:
        candidates = candidates[:-1]
    k = min(int(k), candidates.numel())
    if k < 1:
        raise RegressionInputError("top-k selection needs k >= 1 and at least one candidate particle.")
    cand_score = score[candidates]
    confident = candidates[torch.topk(cand_score, k, largest=False).indices].sort().values
    uncertain = candidates[torch.topk(cand_score, k, largest=True).indices].sort().values
    return confident, uncertain


# ---------------------------------------------------------------------------------------------------------------------
# The full report
def _get(feats: Any, name: str) -> torch.Tensor | None:
    if isinstance(feats, Mapping):
        return feats.get(name)
    return getattr(feats, name, None)


def _regress(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    intercept: bool,
    eye_idx: tuple[int, int],
) -> tuple[float, float, torch.Tensor]:
    fit = fit_linear_regression(x_train, y_train, intercept=intercept)
    train_err = normalised_landmark_error(predict(fit, x_train), y_train, eye_idx)
    test_pred = predict(fit, x_test).reshape(y_test.shape)
    return normalised_landmark_error(test_pred, y_test, eye_idx), train_err, test_pred


def keypoint_regression(
    train_feats: Any,
    test_feats: Any,
    train_landmarks: torch.Tensor,
    test_landmarks: torch.Tensor,
    *,
    topk: int | None = 10,
    eye_idx: tuple[int, int] = (0, 1),
    protocols: Sequence[str] = PROTOCOLS,
    variants: Sequence[str] | None = None,
    include_uncertain: bool = True,
    report_train: bool = False,
    return_predictions: bool = False,
) -> dict[str, float] | tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Landmark regression errors of every protocol x variant (x particle selection), plus the mean-shape baseline.

    Args:
        train_feats, test_feats: particles of the train / test images, a mapping or object with `mu`, `logvar`
            ([N, K+1, 2]) and optionally `mu_features`, `logvar_features` ([N, K+1, D]) — e.g. `dlp` `Particles`
            concatenated over the dataset.
        train_landmarks, test_landmarks: [N, L, 2] ground-truth landmarks (pixels, any fixed coordinate order).
        topk: size of the global confident / uncertain particle selections (None or 0: skip them). Clamped to the
            number of candidate particles; the key carries the k actually used.
        eye_idx: landmark indices of the two eyes (inter-ocular normalisation).
        protocols: subset of ('official', 'fair').
        variants: subset of VARIANTS (default: all that the inputs allow).
        include_uncertain: also report the `k` least confident particles (`@uncertain{k}`), as the official code.
        report_train: also report train-split errors under `<key>/train`.
        return_predictions: also return the test predictions [N, L, 2] per key.

    Returns:
        A flat dict of fractions, e.g. `official/mu`, `official/mu_logvar@top10`, `fair/mu_logvar_features`,
        `fair/mu@uncertain10`, `baseline/mean_shape`.
    """
    y_train = torch.as_tensor(train_landmarks).detach().to("cpu", torch.float64)
    y_test = torch.as_tensor(test_landmarks).detach().to("cpu", torch.float64)
    if y_train.dim() != 3 or y_test.dim() != 3 or y_train.shape[1:] != y_test.shape[1:]:
        raise RegressionInputError(
            f"landmarks must be [N, L, 2] with the same L for train and test, got {tuple(y_train.shape)} and "
            f"{tuple(y_test.shape)}."
        )
    for p in protocols:
        if p not in PROTOCOLS:
            raise RegressionInputError(f"unknown protocol {p!r}; use 'official' and/or 'fair'.")

    tr = {n: _get(train_feats, n) for n in ("mu", "logvar", "mu_features", "logvar_features")}
    te = {n: _get(test_feats, n) for n in ("mu", "logvar", "mu_features", "logvar_features")}
    if tr["mu"] is None or te["mu"] is None:
        raise RegressionInputError("train_feats and test_feats must provide `mu` of shape [N, K+1, 2].")
    if tr["mu"].shape[0] != y_train.shape[0] or te["mu"].shape[0] != y_test.shape[0]:
        raise RegressionInputError("the number of particle sets and of landmark sets differ; pair them one to one.")
    if variants is None:
        variants = ["mu"]
        if tr["logvar"] is not None and te["logvar"] is not None:
            variants.append("mu_logvar")
            if all(d[n] is not None for d in (tr, te) for n in ("mu_features", "logvar_features")):
                variants.append("mu_logvar_features")

    results: dict[str, float] = {}
    predictions: dict[str, torch.Tensor] = {}

    def run(key: str, variant: str, *, intercept: bool, drop_background: bool, idx: torch.Tensor | None) -> None:
        x_train = particle_features(**tr, variant=variant, drop_background=drop_background, particle_idx=idx)
        x_test = particle_features(**te, variant=variant, drop_background=drop_background, particle_idx=idx)
        test_err, train_err, pred = _regress(x_train, y_train, x_test, y_test, intercept=intercept, eye_idx=eye_idx)
        results[key] = test_err
        if report_train:
            results[f"{key}/train"] = train_err
        if return_predictions:
            predictions[key] = pred

    for protocol in protocols:
        official = protocol == "official"
        selections: list[tuple[str, torch.Tensor | None]] = [("", None)]
        if topk and tr["logvar"] is not None:
            confident, uncertain = select_particles_by_confidence(tr["logvar"], topk, exclude_background=not official)
            selections.append((f"@top{confident.numel()}", confident))
            if include_uncertain:
                selections.append((f"@uncertain{uncertain.numel()}", uncertain))
        for variant in variants:
            for suffix, idx in selections:
                # With a global selection the background is dropped through the candidate list, not by slicing.
                drop = (not official) and idx is None
                run(f"{protocol}/{variant}{suffix}", variant, intercept=not official, drop_background=drop, idx=idx)

    results["baseline/mean_shape"] = mean_shape_error(y_train, y_test, eye_idx)
    if report_train:
        results["baseline/mean_shape/train"] = mean_shape_error(y_train, y_train, eye_idx)
    if return_predictions:
        mean = y_train.reshape(y_train.shape[0], -1).mean(0)
        predictions["baseline/mean_shape"] = mean.expand(y_test.shape[0], -1).reshape(y_test.shape)
        return results, predictions
    return results
