"""The evaluation a training run performs every `eval_freq` epochs; its `score` (lower is better) picks best.pt.

What is measured follows the dataset's registry entry, for every model family:

* ground-truth objects (shapes): object discovery on held-out generated images; score = 1 - F1 at 4 px.
* landmarks (faces): keypoint regression (fair protocol, particle means); score = that error.
* video models (DDLP): the validation objective (on 64 clips), and the PSNR of deterministic rollouts of a few
  held-out clips (the run's `cond_steps` + `rollout_horizon` frames; no SSIM or LPIPS, to stay cheap) beside the
  last-frame and reconstruction baselines, plus ball tracking on clips with identities; score = - the model's mean
  PSNR. Per-step lists are logged as their means: "eval/video/psnr/model", "eval/video/psnr/last_frame", ...
* everything else: the family's deterministic validation objective; score = that objective.
"""

from __future__ import annotations

from typing import Any

import torch

from dlp.evaluation.runner import default_metrics, evaluate_model

TRAINING_EVAL_IMAGES = 512  # enough for stable numbers, small enough to cost seconds on a CPU
TRAINING_ELBO_CLIPS = 64  # video models: clips of timestep_horizon + 1 frames, about as many frames as 512 images
TRAINING_VIDEO_CLIPS = 16  # rollouts are sequential over frames: a few clips keep the evaluation cheap


def evaluate_during_training(model: torch.nn.Module, objective: Any, *, device: str | torch.device = "cpu"
                             ) -> dict[str, float]:
    """Held-out metrics of `model` for the run described by `objective.train_config`, flat, plus "score"."""
    tcfg = objective.train_config
    metrics = default_metrics(tcfg.dataset, model, videos="clip_length" in objective.dataset_options())
    if "discovery" in metrics:
        metrics = ["discovery"]
    video = [m for m in metrics if m in ("video", "tracking")]
    metrics = [m for m in metrics if m not in video]
    common = {"dataset": tcfg.dataset, "data_root": tcfg.data_root, "objective": objective, "device": device}
    found: dict[str, Any] = {}
    if metrics:
        found.update(evaluate_model(model, metrics=metrics, topk=getattr(tcfg, "topk", 10),
                                    num_images=TRAINING_ELBO_CLIPS if video else TRAINING_EVAL_IMAGES,
                                    untrained_baseline=False, **common)["metrics"])
    if video:
        found.update(evaluate_model(model, metrics=video, num_images=TRAINING_VIDEO_CLIPS, video_quality=("psnr",),
                                    **common)["metrics"])
    flat = {}
    for key, value in found.items():
        if isinstance(value, (list, tuple)) and value:  # per-step video metrics -> their mean
            flat[f"eval/{key.replace('.', '/')}"] = float(sum(value) / len(value))
        elif isinstance(value, (int, float)):
            flat[f"eval/{key}"] = float(value)
    if "video" in video:
        score = -flat["eval/video/psnr/model"]
    elif "discovery" in metrics:
        score = 1.0 - flat["eval/discovery/f1@4"]
    elif "regression" in metrics:
        score = flat["eval/regression/fair/mu"]
    else:
        score = flat["eval/elbo/deterministic/elbo"]
    return {**flat, "score": score}
