"""The evaluation a training run performs every `eval_freq` epochs; its `score` (lower is better) picks best.pt.

* shapes (ground-truth centres): object discovery on held-out generated images; score = 1 - F1 at 4 px.
* face datasets with landmarks: keypoint regression (fair protocol, particle means); score = that error.
* everything else: the deterministic validation loss (same formula as training); score = that loss.
"""

from __future__ import annotations

from typing import Any

import torch

from dlp.config import TrainConfig
from dlp.evaluation.runner import SHAPES_DATASETS, default_metrics, evaluate_model

TRAINING_EVAL_IMAGES = 512  # enough for stable numbers, small enough to cost seconds on a CPU


def evaluate_during_training(model: torch.nn.Module, train_config: TrainConfig, *, device: str | torch.device = "cpu",
                             rec_loss: Any = None) -> dict[str, float]:
    dataset = train_config.dataset
    metrics = default_metrics(dataset, data_root=train_config.data_root, image_size=model.config.image_size)
    if dataset in SHAPES_DATASETS:
        metrics = ["discovery"]
    results = evaluate_model(model, dataset=dataset, data_root=train_config.data_root, metrics=metrics,
                             train_config=train_config.to_dict(), topk=train_config.topk, device=device,
                             num_images=TRAINING_EVAL_IMAGES, untrained_baseline=False)
    flat = {f"eval/{k}": float(v) for k, v in results["metrics"].items() if isinstance(v, (int, float))}
    if "discovery" in metrics:
        score = 1.0 - flat["eval/discovery/f1@4"]
    elif "regression" in metrics:
        score = flat["eval/regression/fair/mu"]
    else:
        score = flat["eval/elbo/elbo"]
    return {**flat, "score": score}
