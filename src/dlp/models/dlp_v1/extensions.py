"""DLP v1 extensions that are not in the paper, fenced in one place and off by default.

* `PriorAnchoredPositionEncoder` (`DLPConfig.position_encoder="prior_anchored"`): object-model particles start on the
  prior's top proposals and move by offsets read from their glimpses.
* The object-sparsity costs (`DLPTrainConfig.extensions`, see `ObjectSparsity`): `active_particles` charges every
  switched-on particle, `alpha_spread` charges decoded alpha far from its particle.
"""

from __future__ import annotations

import torch

from dlp.models.dlp_v1.config import ObjectSparsity
from dlp.models.dlp_v1.modules import GlimpseEncoder


class PriorAnchoredPositionEncoder(GlimpseEncoder):
    """Positions of object-model particles as prior proposals plus offsets.

    Each particle reads the image glimpse around its anchor (one of the prior's proposals) with the object glimpse
    encoder's CNN and returns where in that glimpse its object lies, with a log-variance and its `obj_on`:
    x [B, C, H, W], heatmap [B, K, F, F] (unused), anchors [B, K, 2] -> (mu [B, K, 2], logvar [B, K, 2], obj_on [B, K]).
    The offset is at most `max_offset` (half a glimpse) and positions stay inside the image.
    """

    needs_prior = True  # anchors: the prior's top proposals on the encoded image

    def __init__(self, in_channels: int, image_size: int, side: int, max_offset: float,
                 cnn_channels: tuple[int, ...], *, exclusive: bool):
        super().__init__(2, image_size, side, in_channels, use_cnn=True, cnn_channels=cnn_channels, out_features=5)
        self.max_offset = max_offset
        self.exclusive = exclusive

    def forward(self, x: torch.Tensor, heatmap: torch.Tensor, anchors: torch.Tensor):
        anchors = anchors[:, : heatmap.shape[1]].detach()
        stats, _ = self.read(x, anchors, exclusive=self.exclusive)
        offset, logvar, obj_on_logit = stats.split([2, 2, 1], dim=-1)
        mu = (anchors + self.max_offset * torch.tanh(offset)).clamp(-1.0, 1.0)
        return mu, logvar, torch.sigmoid(obj_on_logit.squeeze(-1))

    @staticmethod
    def feature_heatmap(heatmap: torch.Tensor) -> torch.Tensor:
        """The heat-maps locate nothing here; the background feature is what trains them, so they keep the gradient."""
        return heatmap


def active_particles(obj_on: torch.Tensor) -> torch.Tensor:
    """Expected number of switched-on particles per image, the sparsity penalty on `obj_on`: [B, K] -> [B]."""
    return obj_on.sum(-1)


def alpha_spread(dec_glimpses: torch.Tensor) -> torch.Tensor:
    """Spread of the decoded objects around their particles: [B, K, 1+C, S, S] -> [B].

    The second moment of each decoded glimpse's alpha (clamped to [0, 1], as it is pasted) about the glimpse centre,
    summed over pixels and particles, with distances in glimpse half-widths: a pixel of alpha 1 costs its squared
    distance from the particle, up to 2 in the glimpse corners; a glimpse filled with alpha 1 costs about 2/3 per pixel.
    """
    alpha = dec_glimpses[:, :, 0].clamp(0.0, 1.0)
    size = alpha.shape[-1]
    coords = (torch.arange(size, device=alpha.device, dtype=alpha.dtype) + 0.5) / size * 2.0 - 1.0
    squared_distance = coords[:, None] ** 2 + coords[None, :] ** 2  # [S, S]
    return (alpha * squared_distance).sum((-1, -2)).sum(-1)


def obj_on_cost_weight(sparsity: ObjectSparsity, normal_epochs_so_far: int) -> float:
    """The weight of the obj_on sparsity cost in the `normal_epochs_so_far`-th normal epoch (1-based).

    It rises linearly to `beta_obj_on` over the first `obj_on_ramp_epochs` normal epochs (0: full weight at once).
    """
    if sparsity.obj_on_ramp_epochs == 0:
        return sparsity.beta_obj_on
    return sparsity.beta_obj_on * min(1.0, max(1, normal_epochs_so_far) / sparsity.obj_on_ramp_epochs)
