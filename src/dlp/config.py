"""`DLPConfig`: every architectural hyper-parameter of a DLP model, validated at construction.

A config fully determines the model's parameters and their shapes; it is saved inside every checkpoint so that
`load_checkpoint(path)` can rebuild the model without the user re-typing anything.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

# Official `dec_bone` names and the readable aliases we accept for them.
DEC_BONE_ALIASES = {
    "gauss_pointnetpp_feat": "gauss_pointnetpp_feat",
    "masked": "gauss_pointnetpp_feat",
    "gauss_pointnetpp": "gauss_pointnetpp",
    "object": "gauss_pointnetpp",
}
KP_ACTIVATIONS = ("tanh",)
PAD_MODES = ("replicate", "zeros")


class ConfigError(ValueError):
    """An impossible or unsupported combination of hyper-parameters."""


def round_half_even(value: float) -> int:
    """numpy-style rounding (Python's `round` is half-to-even too); the official glimpse sizes depend on it."""
    return int(round(value))


def _coerce_fields(obj: Any) -> None:
    """Turn values given as strings (YAML reads `1e-3` as a string) into the field's declared scalar type."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        kind = {"int": int, "float": float, "bool": bool}.get(str(f.type).replace(" | None", ""))
        if kind is None or value is None or isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            continue
        try:
            if kind is bool:
                if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                    value = value.lower() in ("true", "1", "yes")
                elif not isinstance(value, (int, float)):
                    raise ValueError
                coerced = bool(value)
            elif kind is int:
                coerced = int(float(value)) if float(value).is_integer() else None
                if coerced is None:
                    raise ValueError
            else:
                coerced = float(value)
        except (TypeError, ValueError):
            noun = {"int": "an integer", "float": "a number", "bool": "true or false"}[kind.__name__]
            raise ConfigError(f"{f.name} must be {noun}, got {value!r}.") from None
        setattr(obj, f.name, coerced)


def _is_power_of_two(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


@dataclass
class DLPConfig:
    """Architecture of a Deep Latent Particles model (both the masked and the object variant).

    Shape vocabulary used across the library: B batch, K = `n_kp_enc` foreground particles (plus one background
    particle, appended last), D = `learned_feature_dim`, C/H/W image (H = W = `image_size`), F encoder feature-map
    side, S glimpse side on the image.
    """

    image_size: int = 128
    in_channels: int = 3
    enc_channels: tuple[int, ...] = (32, 64, 128, 256)
    prior_channels: tuple[int, ...] = (16, 32, 64)
    glimpse_channels: tuple[int, ...] = (16, 16, 32)
    n_kp_enc: int = 30
    n_kp_prior: int = 50
    patch_size: int = 8
    learned_feature_dim: int = 10
    anchor_s: float = 0.125
    sigma: float = 0.1
    dec_bone: str = "gauss_pointnetpp_feat"
    use_object_enc: bool = True
    use_object_dec: bool = False
    exclusive_patches: bool = False
    prior_anchored_positions: bool = False  # ours, object models: particles = prior proposals + glimpse offsets
    kp_range: tuple[float, float] = (-1.0, 1.0)
    kp_activation: str = "tanh"
    mask_threshold: float = 0.2
    pad_mode: str = "replicate"
    pointnet_k: int = 10
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        _coerce_fields(self)
        self.enc_channels = tuple(int(c) for c in self.enc_channels)
        self.prior_channels = tuple(int(c) for c in self.prior_channels)
        self.glimpse_channels = tuple(int(c) for c in self.glimpse_channels)
        self.kp_range = tuple(float(v) for v in self.kp_range)
        if self.extra:
            raise ConfigError(f"unknown DLPConfig keys {sorted(self.extra)}; see `dlp presets` for the valid ones.")
        if self.dec_bone not in DEC_BONE_ALIASES:
            raise ConfigError(
                f"unknown dec_bone {self.dec_bone!r}; use 'masked' (gauss_pointnetpp_feat) or 'object' (gauss_pointnetpp)."
            )
        self.dec_bone = DEC_BONE_ALIASES[self.dec_bone]
        self._validate()

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
        if self.kp_activation not in KP_ACTIVATIONS:
            fail(f"kp_activation must be one of {KP_ACTIVATIONS}, got {self.kp_activation!r}.")
        if self.kp_range != (-1.0, 1.0):
            fail("kp_range must be (-1, 1): glimpse extraction and pasting assume particles in [-1, 1].")
        if self.pad_mode not in PAD_MODES:
            fail(f"pad_mode must be one of {PAD_MODES}, got {self.pad_mode!r}.")
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
        if self.prior_anchored_positions:
            if not self.use_object_dec:
                fail("prior_anchored_positions=True needs the object model (use_object_dec=True), whose particles "
                     "read their offsets and obj_on from image glimpses; set use_object_dec or drop the option.")
            if self.n_kp_prior < self.n_kp_enc:
                fail(f"prior_anchored_positions=True anchors each of the n_kp_enc={self.n_kp_enc} particles on one of "
                     f"the prior's n_kp_prior={self.n_kp_prior} proposals; raise n_kp_prior to at least n_kp_enc.")
        for side, size, what in (
            (self.image_size, glimpse, "image glimpses"),
            (fmap, self.feature_glimpse_size, "feature-map glimpses"),
        ):
            if (side - size) % 2:
                fail(f"{what} of side {size} cannot be centred on a {side}-pixel grid (odd margin); change anchor_s.")
        if self.feature_glimpse_size < 1:
            fail(f"anchor_s={self.anchor_s} gives an empty glimpse on the {fmap}x{fmap} feature map; raise anchor_s.")

    # ----------------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("extra")
        for key, value in data.items():
            if isinstance(value, tuple):
                data[key] = list(value)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DLPConfig":
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**kwargs, extra=extra)

    def replace(self, **changes: Any) -> "DLPConfig":
        return DLPConfig.from_dict({**self.to_dict(), **changes})

    def diff(self, other: "DLPConfig") -> dict[str, tuple[Any, Any]]:
        """Keys whose values differ, as `{key: (self_value, other_value)}`."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


@dataclass
class TrainConfig:
    """Optimisation and data settings of a training run (everything that is not architecture)."""

    dataset: str = "shapes"
    data_root: str | None = None
    lr: float = 2e-4
    batch_size: int = 64
    num_epochs: int = 100
    eval_freq: int = 2
    beta_rec: float = 1.0
    beta_kl: float = 1.0
    kl_balance: float = 1e-3
    beta_obj_on: float = 0.0
    beta_spread: float = 0.0
    obj_on_ramp_epochs: int = 0
    rec_loss_function: str = "mse"
    warmup_epoch: int = 0
    lr_milestones: tuple[int, ...] = (50, 100, 200)
    lr_gamma: float = 0.5
    adam_eps: float = 1e-4
    topk: int = 10
    use_tps: bool = False
    use_pairs: bool = False
    iou_thresh: float = 0.2
    num_train_images: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        _coerce_fields(self)
        self.lr_milestones = tuple(int(m) for m in self.lr_milestones)
        if self.lr <= 0:
            raise ConfigError(f"the learning rate must be positive, got {self.lr}.")
        if self.batch_size < 1:
            raise ConfigError(f"the batch size must be a positive integer, got {self.batch_size}.")
        if self.num_epochs < 1:
            raise ConfigError(f"the number of epochs must be a positive integer, got {self.num_epochs}.")
        if self.eval_freq < 1:
            raise ConfigError(f"eval_freq must be a positive integer, got {self.eval_freq}.")
        if self.warmup_epoch < 0:
            raise ConfigError(f"warmup_epoch must be >= 0, got {self.warmup_epoch}.")
        if self.obj_on_ramp_epochs < 0:
            raise ConfigError(f"obj_on_ramp_epochs must be >= 0, got {self.obj_on_ramp_epochs}.")
        if self.rec_loss_function not in ("mse", "vgg"):
            raise ConfigError(f"rec_loss_function must be 'mse' or 'vgg', got {self.rec_loss_function!r}.")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["lr_milestones"] = list(self.lr_milestones)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown training keys {sorted(unknown)}; see `dlp train --help` for the valid ones.")
        return cls(**data)
