"""Evaluation of DLP models: keypoint regression (MAFL protocol), object discovery, validation ELBO, image metrics.

Pure functions (tensors in, floats out) live in `regression`, `discovery`, `image_metrics` and `elbo`; `runner`
ties them to checkpoints and datasets (`dlp eval CHECKPOINT`).
"""

from dlp.evaluation.discovery import confident_particles, discovery_metrics
from dlp.evaluation.elbo import validation_elbo
from dlp.evaluation.image_metrics import psnr, ssim
from dlp.evaluation.regression import (
    LinearFit,
    fit_linear_regression,
    keypoint_regression,
    mean_shape_error,
    normalised_landmark_error,
    particle_features,
    predict,
    select_particles_by_confidence,
)
from dlp.evaluation.runner import evaluate_checkpoint, evaluate_model, format_table

__all__ = [
    "LinearFit",
    "confident_particles",
    "discovery_metrics",
    "evaluate_checkpoint",
    "evaluate_model",
    "fit_linear_regression",
    "format_table",
    "keypoint_regression",
    "mean_shape_error",
    "normalised_landmark_error",
    "particle_features",
    "predict",
    "psnr",
    "select_particles_by_confidence",
    "ssim",
    "validation_elbo",
]
