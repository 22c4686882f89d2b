"""Validation objective ("ELBO") of a model on a data loader, in the official and in a deterministic definition.

The terms of a batch come from the family's own objective (`Objective.validation_terms`), so the formula exists once,
next to the training loss. This module averages them over a loader:

* `official=True` reproduces the official evaluation (e.g. DLP's `eval/eval_model.py::evaluate_validation_elbo`): the
  model in eval mode, the family's official definition (for DLP v1 a *sampled* forward pass, so the value is
  stochastic), and the unweighted mean of the per-batch means (a last, partial batch counts as much as a full one).
* `official=False` is our deterministic variant: posterior means, and every mean weighted by batch size (a true
  per-image average).

Both return the terms the family reports and (unless `image_metrics=False`) the PSNR and SSIM of the *deterministic*
reconstructions (`model.decode(model.encode(x))`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch

from dlp.evaluation.image_metrics import psnr, ssim


class EmptyLoaderError(ValueError):
    """The loader given to `validation_elbo` yielded no batch."""


def batch_images(batch: Any) -> torch.Tensor:
    """The image tensor of a collated batch: a tensor, a dict with "image" (or "video": clips [B, T, C, H, W]), or a
    tuple/list whose first item is it."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, Mapping):
        return batch["video"] if "video" in batch else batch["image"]
    if isinstance(batch, (list, tuple)):
        return batch[0]
    raise TypeError(f"cannot find the images in a batch of type {type(batch).__name__}; yield tensors or dicts.")


@torch.no_grad()
def validation_elbo(model: torch.nn.Module, loader: Any, objective: Any, *, official: bool = True,
                    image_metrics: bool = True, device: str | torch.device = "cpu", seed: int | None = None
                    ) -> dict[str, float]:
    """Validation objective over `loader` (see the module docstring for the two definitions).

    Args:
        model: a model of any registered family.
        loader: iterable of batches (tensors, dicts with "image", or tuples whose first item is the images).
        objective: the family's objective for the run (`dlp.engine.objective.Objective`), which owns the formula.
        official: the official definition (True) or our deterministic one (False).
        image_metrics: also compute PSNR / SSIM of deterministic reconstructions.
        device: where to run the model.
        seed: seeds the sampling of the official definition (the global RNG state is restored afterwards).

    Returns:
        the family's terms ("elbo", "rec", ...; "elbo" is the weighted objective, the other terms are unweighted; all
        per-image batch averages), ["psnr", "ssim"], "num_images", "num_batches".
    """
    was_training = model.training
    model.eval()
    model.to(device)
    sums: dict[str, float] = {}
    n_images = n_batches = 0

    dev = torch.device(device)
    with contextlib.ExitStack() as stack:
        if seed is not None:
            cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
            stack.enter_context(torch.random.fork_rng(devices=cuda))
            torch.manual_seed(seed)
        stack.callback(model.train, was_training)
        for batch in loader:
            x = batch_images(batch).to(device, torch.float32)
            b = x.shape[0]
            terms = objective.validation_terms(model, x, official=official)
            weight = 1.0 if official else float(b)
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + weight * float(value)
            if image_metrics:
                rec = model.decode(model.encode(x)).rec
                frames, rec = x.flatten(0, -4), rec.flatten(0, -4)  # clips: every frame an image
                sums["psnr"] = sums.get("psnr", 0.0) + float(psnr(frames, rec).sum()) * b / frames.shape[0]
                sums["ssim"] = sums.get("ssim", 0.0) + float(ssim(frames, rec).sum()) * b / frames.shape[0]
            n_images += b
            n_batches += 1

    if n_batches == 0:
        raise EmptyLoaderError("the validation loader yielded no batches; check the dataset path and split.")
    denom = float(n_batches) if official else float(n_images)
    result = {k: v / (n_images if k in ("psnr", "ssim") else denom) for k, v in sums.items()}
    result["num_images"] = float(n_images)
    result["num_batches"] = float(n_batches)
    return result
