"""Validation objective ("ELBO") of a DLP model on a data loader, in the official and in a deterministic definition.

* `official=True` reproduces `eval/eval_model.py::evaluate_validation_elbo`: the model in eval mode, a *sampled*
  forward pass (`deterministic=False`, so the value is stochastic), Chamfer-KL over the full posterior **including
  the background particle**, the beta-weighted sum `beta_rec * rec + beta_kl * (kl_kp + kl_balance * kl_feat)`, and the
  unweighted mean of the per-batch means (a last, partial batch counts as much as a full one).
* `official=False` is our deterministic variant: `deterministic=True`, Chamfer-KL over the foreground particles only
  (the background excluded, as in the training objective), and every mean weighted by batch size (a true per-image
  average). Its value is the training objective of `dlp.losses.dlp_loss` without warm-up (and without the optional
  `beta_obj_on` and `beta_spread` costs, which are not part of the ELBO), evaluated at the posterior means.

Both return the unweighted terms too, and (unless `image_metrics=False`) the PSNR and SSIM of the *deterministic*
reconstructions; in official mode that costs a second, deterministic forward pass per batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import torch

from dlp.evaluation.image_metrics import psnr, ssim


class EmptyLoaderError(ValueError):
    """The loader given to `validation_elbo` yielded no batch."""


def batch_images(batch: Any) -> torch.Tensor:
    """The image tensor of a collated batch: a tensor, a dict with "image", or a tuple/list whose first item is it."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, Mapping):
        return batch["image"]
    if isinstance(batch, (list, tuple)):
        return batch[0]
    raise TypeError(f"cannot find the images in a batch of type {type(batch).__name__}; yield tensors or dicts.")


def _rec_term(rec_loss: Callable | None, x: torch.Tensor, rec: torch.Tensor) -> torch.Tensor:
    """Batch mean of the reconstruction loss; `rec_loss(x, rec)` may return per-image values [B] or their mean."""
    if rec_loss is None:
        from dlp.losses import mse_reconstruction

        return mse_reconstruction(x, rec).mean()
    value = rec_loss(x, rec)
    return value.mean() if value.dim() > 0 else value


@torch.no_grad()
def validation_elbo(
    model: torch.nn.Module,
    loader: Any,
    *,
    beta_rec: float = 1.0,
    beta_kl: float = 1.0,
    kl_balance: float = 1e-3,
    rec_loss: Callable | None = None,
    official: bool = True,
    image_metrics: bool = True,
    device: str | torch.device = "cpu",
    seed: int | None = None,
) -> dict[str, float]:
    """Validation objective over `loader` (see the module docstring for the two definitions).

    Args:
        model: a `dlp.model.DLP` (or anything with the same forward / config contract).
        loader: iterable of batches (tensors, dicts with "image", or tuples whose first item is the images).
        beta_rec, beta_kl, kl_balance: the weights of the training objective.
        rec_loss: `rec_loss(x, rec) -> [B]` (or its batch mean); default: per-image summed squared error.
        official: the official stochastic definition (True) or our deterministic one (False).
        image_metrics: also compute PSNR / SSIM of deterministic reconstructions.
        device: where to run the model.
        seed: seeds the sampling of the official definition (the global RNG state is restored afterwards).

    Returns:
        {"elbo", "rec", "kl_kp", "kl_feat", ["psnr", "ssim"], "num_images", "num_batches"}: "elbo" is the
        beta-weighted objective, the other terms are unweighted; all are per-image batch averages.
    """
    from dlp.losses import chamfer_kl, gaussian_kl

    was_training = model.training
    model.eval()
    model.to(device)
    logvar_prior = float(model.config.logvar_prior)
    sums = {k: 0.0 for k in ("elbo", "rec", "kl_kp", "kl_feat", "psnr", "ssim")}
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
            out = model(x, x_prior=x, deterministic=not official)
            if official:
                mu, logvar = out.mu, out.logvar  # background particle included [QUIRK of the official code]
            else:
                mu, logvar = out.mu[:, :-1], out.logvar[:, :-1]
            rec = _rec_term(rec_loss, x, out.rec)
            kl_kp = chamfer_kl(mu, logvar, out.kp_prior, logvar_prior).mean()
            if out.mu_features is not None:
                kl_feat = gaussian_kl(out.mu_features, out.logvar_features).sum(-1).mean()
            else:
                kl_feat = torch.zeros((), device=x.device)
            elbo = beta_rec * rec + beta_kl * (kl_kp + kl_balance * kl_feat)
            weight = 1.0 if official else float(b)
            for key, value in (("elbo", elbo), ("rec", rec), ("kl_kp", kl_kp), ("kl_feat", kl_feat)):
                sums[key] += weight * float(value)
            if image_metrics:
                rec_img = model(x, x_prior=x, deterministic=True).rec if official else out.rec
                sums["psnr"] += float(psnr(x, rec_img).sum())
                sums["ssim"] += float(ssim(x, rec_img).sum())
            n_images += b
            n_batches += 1

    if n_batches == 0:
        raise EmptyLoaderError("the validation loader yielded no batches; check the dataset path and split.")
    denom = float(n_batches) if official else float(n_images)
    result = {k: sums[k] / denom for k in ("elbo", "rec", "kl_kp", "kl_feat")}
    if image_metrics:
        result["psnr"] = sums["psnr"] / n_images
        result["ssim"] = sums["ssim"] / n_images
    result["num_images"] = float(n_images)
    result["num_batches"] = float(n_batches)
    return result
