"""The evaluation a training run performs every `eval_freq` epochs; its `score` (lower is better) picks best.pt.

What is measured follows the dataset's registry entry, for every model family:

* ground-truth objects (shapes): object discovery on held-out generated images; score = 1 - F1 at 4 px.
* landmarks (faces): keypoint regression (fair protocol, particle means); score = that error.
* everything else: the family's deterministic validation objective; score = that objective.
"""

from __future__ import annotations

from typing import Any

import torch

from dlp.evaluation.runner import default_metrics, evaluate_model

TRAINING_EVAL_IMAGES = 512  # enough for stable numbers, small enough to cost seconds on a CPU


def evaluate_during_training(model: torch.nn.Module, objective: Any, *, device: str | torch.device = "cpu"
                             ) -> dict[str, float]:
    """Held-out metrics of `model` for the run described by `objective.train_config`, flat, plus "score"."""
    tcfg = objective.train_config
    metrics = default_metrics(tcfg.dataset, model, videos="clip_length" in objective.dataset_options())
    if "discovery" in metrics:
        metrics = ["discovery"]
    results = evaluate_model(model, dataset=tcfg.dataset, data_root=tcfg.data_root, metrics=metrics,
                             objective=objective, topk=getattr(tcfg, "topk", 10), device=device,
                             num_images=TRAINING_EVAL_IMAGES, untrained_baseline=False)
    flat = {f"eval/{k}": float(v) for k, v in results["metrics"].items() if isinstance(v, (int, float))}
    if "discovery" in metrics:
        score = 1.0 - flat["eval/discovery/f1@4"]
    elif "regression" in metrics:
        score = flat["eval/regression/fair/mu"]
    else:
        score = flat["eval/elbo/deterministic/elbo"]
    return {**flat, "score": score}
