"""DLP v1 configs: `DLPConfig` (architecture, kept on the model) and `DLPTrainConfig` (the objective of `train_dlp.py`).

A `DLPConfig` fully determines the model's parameters and their shapes; it is saved inside every checkpoint so that
`load_checkpoint(path)` can rebuild the model without the user re-typing anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from dlp.config import ConfigBase, ConfigError, TrainConfig, option, round_half_even

# Official `dec_bone` names and the readable aliases we accept for them.
DEC_BONE_ALIASES = {
    "gauss_pointnetpp_feat": "gauss_pointnetpp_feat",
    "masked": "gauss_pointnetpp_feat",
    "gauss_pointnetpp": "gauss_pointnetpp",
    "object": "gauss_pointnetpp",
}
POSITION_ENCODERS = ("heatmap", "prior_anchored")


def _is_power_of_two(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


@dataclass
class DLPConfig(ConfigBase):
    """Architecture of a Deep Latent Particles (v1) model, the masked and the object variant.

    Shape vocabulary used across the library: B batch, K = `n_kp_enc` foreground particles (plus one background
    particle, appended last), D = `learned_feature_dim`, C/H/W image (H = W = `image_size`), F encoder feature-map
    side, S glimpse side on the image.
    """

    # Keys of older checkpoints: `kp_range` and `kp_activation` only ever accepted one value, and
    # `prior_anchored_positions` became the choice `position_encoder`.
    legacy_keys: ClassVar[frozenset[str]] = frozenset({"kp_range", "kp_activation", "prior_anchored_positions"})

    image_size: int = option(128, "image size (the model is built for it)", flags=("--image-size",))
    in_channels: int = option(3, "image channels")
    enc_channels: tuple[int, ...] = option((32, 64, 128, 256), "keypoint-encoder CNN channels (one stage each)")
    prior_channels: tuple[int, ...] = option((16, 32, 64), "prior patch CNN channels")
    glimpse_channels: tuple[int, ...] = option((16, 16, 32), "object glimpse-encoder CNN channels")
    n_kp_enc: int = option(30, "number of posterior particles K")
    n_kp_prior: int = option(50, "number of prior keypoints kept", flags=("--n_kp_enc_prior",))
    patch_size: int = option(8, "prior patch size")
    learned_feature_dim: int = option(10, "visual feature dimension D")
    anchor_s: float = option(0.125, "glimpse size as a fraction of the image")
    sigma: float = option(0.1, "prior keypoint std (also the Gaussian-map width)", flags=("-s",))
    dec_bone: str = option("gauss_pointnetpp_feat",
                           "decoder: gauss_pointnetpp_feat (masked) or gauss_pointnetpp (object)",
                           choices=tuple(DEC_BONE_ALIASES))
    use_object_enc: bool = option(True, "glimpse (object) encoder")
    use_object_dec: bool = option(False, "glimpse (object) decoder: the object model")
    exclusive_patches: bool = option(False, "object glimpses exclusive in particle order")
    mask_threshold: float = option(0.2, "Gaussian-map threshold of the masked model's particle masks")
    pad_mode: str = option("replicate", "convolution padding", choices=("replicate", "zeros"))
    pointnet_k: int = option(10, "PointNet++ neighbours")
    position_encoder: str = option(
        "heatmap", "how object particles get their positions: heatmap (official: an MLP over all encoder heat-maps) "
        "or prior_anchored (each particle = one of the prior's top proposals moved by an offset read from its glimpse)",
        group="extensions", choices=POSITION_ENCODERS)

    def __post_init__(self) -> None:
        if self.dec_bone in DEC_BONE_ALIASES:
            self.dec_bone = DEC_BONE_ALIASES[self.dec_bone]
        self._normalise()
        self._validate()

    @classmethod
    def _upgrade(cls, data: dict[str, Any]) -> dict[str, Any]:
        if "kp_range" in data:
            if tuple(float(v) for v in data.pop("kp_range")) != (-1.0, 1.0):
                raise ConfigError("kp_range must be (-1, 1): glimpse extraction and pasting assume particles in [-1, 1].")
        if "kp_activation" in data and data.pop("kp_activation") != "tanh":
            raise ConfigError("kp_activation must be 'tanh', the only activation of the official model.")
        if "prior_anchored_positions" in data:
            anchored = data.pop("prior_anchored_positions")
            data.setdefault("position_encoder", "prior_anchored" if anchored else "heatmap")
        return data

    # ----------------------------------------------------------------------------------------------------------
    # Derived sizes
    @property
    def feature_map_size(self) -> int:
        """F: side of the encoder heat-maps (image size halved once per extra encoder stage)."""
        return self.image_size // 2 ** (len(self.enc_channels) - 1)

    @property
    def glimpse_size(self) -> int:
        """S: side of an object glimpse on the image, `round(anchor_s * (image_size - 1))` (half-to-even)."""
        return round_half_even(self.anchor_s * (self.image_size - 1))

    @property
    def feature_glimpse_size(self) -> int:
        """Side of a glimpse on the F grid (masked model's heat-map crops and the background squares)."""
        return round_half_even(self.anchor_s * (self.feature_map_size - 1))

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def is_object_model(self) -> bool:
        """The object model decodes a glimpse per particle (and has `obj_on`); the masked model decodes one image."""
        return self.use_object_dec

    @property
    def logvar_prior(self) -> float:
        """log(sigma^2), the prior keypoints' fixed log-variance (and the background particle's)."""
        return math.log(self.sigma**2)

    # ----------------------------------------------------------------------------------------------------------
    def _validate(self) -> None:
        def fail(msg: str) -> None:
            raise ConfigError(msg)

        for name in ("image_size", "in_channels", "n_kp_enc", "n_kp_prior", "patch_size", "pointnet_k"):
            if int(getattr(self, name)) < 1:
                fail(f"{name} must be a positive integer, got {getattr(self, name)}.")
        if self.learned_feature_dim < 1:
            fail("learned_feature_dim must be at least 1: every particle carries a visual feature vector.")
        if len(self.enc_channels) < 2 or len(self.prior_channels) < 2 or len(self.glimpse_channels) < 2:
            fail("enc_channels, prior_channels and glimpse_channels need at least two entries each.")
        if not self.sigma > 0:
            fail(f"sigma must be positive, got {self.sigma}.")
        if not 0 < self.mask_threshold < 1:
            fail(f"mask_threshold must lie in (0, 1), got {self.mask_threshold}.")
        if not 0 < self.anchor_s <= 1:
            fail(f"anchor_s must lie in (0, 1], got {self.anchor_s}.")

        down = 2 ** (len(self.enc_channels) - 1)
        if self.image_size % down:
            fail(
                f"image_size {self.image_size} is not divisible by {down} (2 ** (len(enc_channels) - 1)); "
                "pick an image size that the encoder halves evenly."
            )
        fmap = self.feature_map_size
        if fmap < 8 or not _is_power_of_two(fmap):
            fail(
                f"the encoder feature map is {fmap}x{fmap}, but PointNet++ decodes from 8x8 by doubling, so it must be "
                "a power of two >= 8; change image_size or the number of enc_channels."
            )
        if self.image_size % self.patch_size:
            fail(f"patch_size {self.patch_size} does not divide image_size {self.image_size}; choose a divisor.")
        prior_down = 2 ** (len(self.prior_channels) - 1)
        if self.patch_size % prior_down:
            fail(
                f"patch_size {self.patch_size} is not divisible by {prior_down} (2 ** (len(prior_channels) - 1)), "
                "so the prior CNN cannot halve it evenly."
            )
        if self.n_kp_prior > self.num_patches:
            fail(
                f"n_kp_prior={self.n_kp_prior} is larger than the {self.num_patches} prior proposals "
                f"((image_size / patch_size)^2); lower n_kp_prior or the patch size."
            )

        glimpse = self.glimpse_size
        if glimpse < 8 or not _is_power_of_two(glimpse):
            fail(
                f"the glimpse size round(anchor_s * (image_size - 1)) = {glimpse} is not a power of two >= 8; "
                "change anchor_s (e.g. 0.25 or 0.125) or image_size."
            )
        if self.use_object_dec:
            if glimpse < 16:
                fail(
                    f"the object decoder upsamples glimpses from 8x8 at least once, so the glimpse size must be >= 16, "
                    f"got {glimpse}; raise anchor_s or image_size."
                )
            if not self.use_object_enc:
                fail("use_object_dec=True needs use_object_enc=True: the glimpse decoder decodes glimpse features.")
            glimpse_down = 2 ** (len(self.glimpse_channels) - 1)
            if glimpse % glimpse_down:
                fail(f"glimpse size {glimpse} is not divisible by {glimpse_down} (2 ** (len(glimpse_channels) - 1)).")
        if self.position_encoder == "prior_anchored":
            if not self.use_object_dec:
                fail("position_encoder='prior_anchored' needs the object model (use_object_dec=True), whose particles "
                     "read their offsets and obj_on from image glimpses; set use_object_dec or use 'heatmap'.")
            if self.n_kp_prior < self.n_kp_enc:
                fail(f"position_encoder='prior_anchored' anchors each of the n_kp_enc={self.n_kp_enc} particles on one "
                     f"of the prior's n_kp_prior={self.n_kp_prior} proposals; raise n_kp_prior to at least n_kp_enc.")
        for side, size, what in (
            (self.image_size, glimpse, "image glimpses"),
            (fmap, self.feature_glimpse_size, "feature-map glimpses"),
        ):
            if (side - size) % 2:
                fail(f"{what} of side {size} cannot be centred on a {side}-pixel grid (odd margin); change anchor_s.")
        if self.feature_glimpse_size < 1:
            fail(f"anchor_s={self.anchor_s} gives an empty glimpse on the {fmap}x{fmap} feature map; raise anchor_s.")


@dataclass
class ObjectSparsity(ConfigBase):
    """Costs that make object models switch unused particles off (ours, not in the paper; all 0 = the official
    objective). They apply after the noisy-mask phase (see `DLPObjective`)."""

    default_group: ClassVar[str] = "extensions"

    beta_obj_on: float = option(
        0.0, "object models: cost of each switched-on particle after the noisy-mask phase (0 = the official objective)")
    obj_on_ramp_epochs: int = option(
        0, "object models: epochs over which the beta_obj_on cost rises linearly from 0 once the noisy phase ends")
    beta_spread: float = option(
        0.0, "object models: cost of decoded alpha far from its particle after the warm-up (0 = the official objective)")

    def __post_init__(self) -> None:
        self._normalise()
        if self.beta_obj_on < 0 or self.beta_spread < 0:
            raise ConfigError("beta_obj_on and beta_spread are costs and must be >= 0.")
        if self.obj_on_ramp_epochs < 0:
            raise ConfigError(f"obj_on_ramp_epochs must be >= 0, got {self.obj_on_ramp_epochs}.")


@dataclass
class DLPTrainConfig(TrainConfig):
    """The official DLP v1 training recipe (`train_dlp.py`), plus the fenced `extensions` (off by default)."""

    beta_rec: float = option(1.0, "weight of the reconstruction term", flags=("-r",))
    beta_kl: float = option(1.0, "weight of the KL terms", flags=("-k",))
    kl_balance: float = option(1e-3, "weight of the feature KL relative to the Chamfer-KL", flags=("-c",))
    rec_loss_function: str = option("mse", "reconstruction loss: mse or vgg", flags=("-v",), choices=("mse", "vgg"))
    warmup_epoch: int = option(0, "object models: warm-up epochs (noisy masks for 5x as many)")
    lr_milestones: tuple[int, ...] = option((50, 100, 200), "epochs at which the learning rate is multiplied by lr_gamma")
    lr_gamma: float = option(0.5, "learning-rate factor at each milestone")
    adam_eps: float = option(1e-4, "Adam epsilon")
    topk: int = option(10, "particles shown in the top-k figure and used by top-k evaluation")
    iou_thresh: float = option(0.2, "NMS overlap threshold of the bounding-box figure")
    extensions: ObjectSparsity = field(default_factory=ObjectSparsity)

    legacy_keys: ClassVar[frozenset[str]] = frozenset(ObjectSparsity.field_names())

    def __post_init__(self) -> None:
        if isinstance(self.extensions, dict):
            self.extensions = ObjectSparsity.from_dict(self.extensions)
        super().__post_init__()
        if self.warmup_epoch < 0:
            raise ConfigError(f"warmup_epoch must be >= 0, got {self.warmup_epoch}.")

    @classmethod
    def _upgrade(cls, data: dict[str, Any]) -> dict[str, Any]:
        # Flat keys (flags, config files, older checkpoints) of the extension group move into it.
        moved = {key: data.pop(key) for key in ObjectSparsity.field_names() if key in data}
        if moved:
            extensions = data.get("extensions") or {}
            if isinstance(extensions, ObjectSparsity):
                extensions = extensions.to_dict()
            data["extensions"] = {**extensions, **moved}
        return data

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["extensions"] = self.extensions.to_dict()
        return data
