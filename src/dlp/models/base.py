"""What every model family offers to evaluation and the demo: particles in one vocabulary.

A family's model keeps its own typed outputs (`DLPOutput`, ...). Beside them it implements

* `encode(x) -> particles` — the deterministic posterior in the family's own dataclass,
* `decode(particles) -> decoded` — images from (possibly edited) particles; `decoded.rec` [B, C, H, W] and, where the
  family has them, `decoded.dec_objects` [B, C, H, W] and `decoded.dec_glimpses` [B, K, 1+C, S, S] (alpha first),
* `particle_view(particles) -> ParticleView` — the particles in the common vocabulary below,
* `apply_view(particles, view, switched_off) -> particles` — the family's particles with an edited view written back,

so that `dlp eval` (keypoint regression, object discovery) and `dlp demo` (move, switch, re-style particles) work on
every family without knowing it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch


@dataclass
class ParticleView:
    """The foreground particles of a batch (B images, K particles, D features, Dbg background features).

    positions: [B, K, 2] (y, x) in [-1, 1]; pixel = (p + 1) / 2 * (H - 1).
    position_logvar: [B, K, 2] log-variances of the positions, or None.
    features: [B, K, D] visual feature means; feature_logvar: [B, K, D] or None.
    presence: [B, K] transparency / "on" weight in [0, 1], or None for models without one (DLP's masked model).
    confidence: [B, K] how sure the model is of each particle, higher = surer (presence where there is one).
    background: [B, Dbg] the background latent (DLP v1: the background particle's features).
    attributes: further editable per-particle attributes of the family, name -> [B, K, n] (e.g. DLPv2 "scale",
        "depth"), with the slider range of each in `attribute_ranges` (name -> (low, high)).
    background_particle: DLP v1 only, the background particle's rows for the official regression protocol:
        {"position": [B, 2], "position_logvar": [B, 2], "feature_logvar": [B, D]}; None elsewhere.
    """

    positions: torch.Tensor
    features: torch.Tensor
    confidence: torch.Tensor
    background: torch.Tensor
    position_logvar: torch.Tensor | None = None
    feature_logvar: torch.Tensor | None = None
    presence: torch.Tensor | None = None
    attributes: dict[str, torch.Tensor] = field(default_factory=dict)
    attribute_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    background_particle: dict[str, torch.Tensor] | None = None

    def clone(self) -> "ParticleView":
        def copy(value):
            if isinstance(value, torch.Tensor):
                return value.detach().clone()
            if isinstance(value, dict):
                return {k: copy(v) for k, v in value.items()}
            return value

        return replace(self, **{name: copy(getattr(self, name)) for name in self.__dataclass_fields__})

    def select(self, index: int) -> "ParticleView":
        """The view of one image of the batch, keeping a batch dimension of 1."""
        def pick(value):
            if isinstance(value, torch.Tensor):
                return value[index: index + 1]
            if isinstance(value, dict) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
                return {k: v[index: index + 1] for k, v in value.items()}
            return value

        return replace(self, **{name: pick(getattr(self, name)) for name in self.__dataclass_fields__})


def check_images(x: torch.Tensor, config) -> None:
    """Raise a one-sentence error unless x is a batch of images [B, C, H, W] of the config's `in_channels` and
    `image_size` (the image families' input check, before any work)."""
    expected = (config.in_channels, config.image_size, config.image_size)
    if x.dim() != 4 or tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"expected images of shape [B, {config.in_channels}, {config.image_size}, {config.image_size}], got "
            f"{list(x.shape)}; resize the images to the model's image_size or build the model for this size."
        )
