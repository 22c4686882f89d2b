"""The seam between the engine and a model family: what a family trains and how (nanoGPT's `configure_optimizers`
and model-returned loss; one base class per family as in the object-centric library).

The trainer only calls what is declared here. A family subclasses `Objective` and registers it with
`dlp.register_family(..., objective="package.module:Class")`; nothing in `dlp.engine` knows any family.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from dlp.config import ConfigError


class Objective:
    """A family's training objective for one run: its phases, loss terms, optimisers, figures and evaluation.

    Args:
        model_config: the family's architecture config (the model's `config`).
        train_config: the family's training config (a `dlp.config.TrainConfig` subclass).
        device: where the model runs (objectives may hold frozen networks, e.g. a perceptual loss).
        vgg_weights: ImageNet VGG16 weights for perceptual losses (path; None = the usual caches / download).
        fallback_rec_loss: evaluation only -- a perceptual loss whose weights cannot be found falls back to MSE with a
            warning instead of raising (training never falls back silently).
    """

    # Names of the loss terms `loss` returns and the trainer logs (averaged per epoch); the first is the total.
    loss_names: ClassVar[tuple[str, ...]] = ("loss",)
    # Evaluation metrics (keys of `evaluate`'s result, without "eval/") printed in the epoch summary line.
    headline_metrics: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model_config: Any, train_config: Any, *, device: str | torch.device = "cpu",
                 vgg_weights: str | None = None, fallback_rec_loss: bool = False):
        self.model_config = model_config
        self.train_config = train_config
        self.device = torch.device(device)
        self.vgg_weights = vgg_weights
        self.fallback_rec_loss = fallback_rec_loss
        self.steps_per_epoch: int | None = None  # set by the trainer once its data loader exists

    # ------------------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Load what the objective needs beyond the configs (e.g. a frozen perceptual network). The trainer calls it
        once the data are checked, so that missing weights fail before the run directory is made; objectives load
        lazily otherwise."""

    def dataset_options(self) -> dict[str, Any]:
        """Extra keyword arguments of `dlp.data.registry.build_dataset` for this family's items (e.g. clips of a
        given length for a video model); none by default (single images)."""
        return {}

    def check_item(self, item: Mapping[str, Any]) -> None:
        """Refuse, with one sentence, a training item the model cannot take (checked before anything is written).

        The default checks "image" against the config's `in_channels` and `image_size`.
        """
        image = item.get("image") if isinstance(item, Mapping) else None
        size = getattr(self.model_config, "image_size", None)
        if image is None or size is None:
            return
        expected = (getattr(self.model_config, "in_channels", image.shape[0]), size, size)
        if tuple(image.shape) != expected:
            raise ConfigError(
                f"the dataset yields images of shape {list(image.shape)} but the model expects {list(expected)}; "
                f"pass --image-size {image.shape[-1]} or prepare the data at {size} pixels."
            )

    def phase(self, epoch: int) -> str:
        """The name of the training phase of `epoch` (0-based); one phase, "normal", unless the family has more."""
        return "normal"

    def configure_optimizers(self, model: torch.nn.Module
                             ) -> tuple[list[torch.optim.Optimizer], list[torch.optim.lr_scheduler.LRScheduler]]:
        """The optimisers (all stepped every batch) and schedulers (stepped once per epoch) of a training run."""
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, batch: Mapping[str, Any], *, epoch: int, phase: str, step: int = 0
             ) -> dict[str, torch.Tensor]:
        """The loss terms of one batch (0-dim tensors named by `loss_names`; "loss" is what is minimised); `step` is
        the number of optimisation steps before this one (for schedules that count batches)."""
        raise NotImplementedError

    def figures(self, model: torch.nn.Module, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Training figures of a batch (model in eval mode, no gradient): name -> image [3, H, W] in [0, 1].

        The first one is the run's main figure (`figures/epoch_NNNN.png`, `latest.png`).
        """
        return {}

    def evaluate(self, model: torch.nn.Module, *, device: str | torch.device) -> dict[str, float]:
        """Held-out evaluation every `eval_freq` epochs: metric name -> value, plus "score" (lower is better), which
        picks `best.pt`. The default evaluates the dataset's metrics with `dlp.evaluation`."""
        from dlp.evaluation.training import evaluate_during_training

        return evaluate_during_training(model, self, device=device)

    def validation_terms(self, model: torch.nn.Module, x: torch.Tensor, *, official: bool
                         ) -> dict[str, torch.Tensor]:
        """The validation objective of a batch of held-out images (`dlp eval`'s "elbo"): 0-dim tensors with at least
        "elbo" (the weighted objective) and "rec"; `official` selects the official code's definition where it
        differs from ours. Families without one raise NotImplementedError."""
        raise NotImplementedError
