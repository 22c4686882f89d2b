"""`DLPv2Config`: every architectural hyper-parameter of a DLPv2 model (the official `ObjectDLP`), validated.

Field names are readable versions of the official constructor arguments (`dlp.compat.ddlp` maps them both ways); the
official arguments that accept a single value (`n_kp=1`, `kp_range=(-1, 1)`, `kp_activation='tanh'`,
`use_resblock=False`, `enable_enc_attn=False`) or that the model never reads (`dropout`) are not fields.

Shape vocabulary: B batch, K = `n_kp_enc` particles, Kp prior proposals kept, NP prior patches, D =
`learned_feature_dim`, Dbg background features, C/H/W image (H = W = `image_size`), S glimpse side (P in the spec),
F background-encoder map side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlp.config import ConfigBase, ConfigError, TrainConfig, option, round_half_even

FILTERING_HEURISTICS = ("none", "variance", "distance")
PAD_MODES = ("replicate", "zeros")


def _is_power_of_two(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


def background_upsamplings(feature_map_size: int) -> int:
    """Upsamplings of the official `FCToCNN` from 8x8: `int(np.log(F) // np.log(2)) - 3`, float logs included
    (spec §1.11, §8 item 22): F = 8, 16, 32 give 0, 1, 2, but F = 64 gives 2 and F = 128 gives 3."""
    return max(0, int(np.log(feature_map_size) // np.log(2)) - 3)


def group_norm_groups(channels: int) -> int:
    """Number of GroupNorm groups the official `ConvBlock` uses for `channels` (model §1.1)."""
    return 4 if channels % 4 == 0 else 5


@dataclass
class DLPv2Config(ConfigBase):
    """Architecture of a DLPv2 model (Daniel & Tamar, "DDLP", TMLR 2024; the single-image `ObjectDLP`).

    Defaults are the official constructor defaults. Every particle carries a position, a scale, a depth, a
    transparency and D visual features; the background is a separate small VAE with Dbg features.
    `to_dict` / `from_dict` / `replace` / `diff` come from `ConfigBase`.

    >>> cfg = DLPv2Config(image_size=64, enc_channels=(32, 32, 64, 64), prior_channels=(32, 32, 64), patch_size=8,
    ...                   n_kp_enc=10, n_kp_prior=64, learned_feature_dim=6, filtering_heuristic="none")
    >>> cfg.glimpse_size, cfg.feature_map_size, cfg.num_patches
    (16, 8, 64)
    """

    image_size: int = option(64, "image size (the model is built for it)")
    in_channels: int = option(3, "image channels")
    enc_channels: tuple[int, ...] = option((16, 16, 32), "background-encoder CNN channels (one stage each)")
    prior_channels: tuple[int, ...] = option((16, 16, 32), "prior patch CNN and glimpse CNN channels")
    n_kp_enc: int = option(20, "number of foreground particles K")
    n_kp_prior: int = option(20, "number of prior proposals kept (at most the number of patches)")
    patch_size: int = option(16, "prior patch size")
    learned_feature_dim: int = option(16, "visual feature dimension D of each particle")
    bg_learned_feature_dim: int | None = option(None, "background feature dimension Dbg (default D)")
    anchor_s: float = option(0.25, "glimpse size as a fraction of the image")
    pad_mode: str = option("replicate", "convolution padding", choices=PAD_MODES)
    sigma: float = option(1.0, "std of the prior proposals in the Chamfer-KL")
    scale_std: float = option(0.3, "prior std of the glimpse-scale logits")
    offset_std: float = option(0.2, "prior std of the position offsets")
    obj_on_alpha: float = option(0.1, "transparency Beta prior alpha")
    obj_on_beta: float = option(0.1, "transparency Beta prior beta")
    use_correlation_heatmaps: bool = option(False, "attribute encoder reads an extra correlation channel (zeros on "
                                                   "single images, as officially)")
    filtering_heuristic: str = option("variance", "how proposals become anchors: variance (lowest first), distance "
                                                  "(farthest from the patch centre first) or none (particle-filter "
                                                  "mixer over all patches)", choices=FILTERING_HEURISTICS)

    def __post_init__(self) -> None:
        if isinstance(self.bg_learned_feature_dim, str) and self.bg_learned_feature_dim.strip().lower() in (
                "", "none", "null"):  # YAML/CLI spelling of "same as learned_feature_dim"
            self.bg_learned_feature_dim = None
        self._normalise()
        self.enc_channels = tuple(int(c) for c in self.enc_channels)
        self.prior_channels = tuple(int(c) for c in self.prior_channels)
        self._validate()

    # ----------------------------------------------------------------------------------------------------------
    # Derived sizes
    @property
    def glimpse_size(self) -> int:
        """S (P in the spec): glimpse side in pixels, `round(anchor_s * (image_size - 1))` (half to even, §2.1)."""
        return round_half_even(self.anchor_s * (self.image_size - 1))

    @property
    def feature_map_size(self) -> int:
        """F: side of the background encoder's heat-maps, `image_size / 2^(len(enc_channels) - 1)`."""
        return self.image_size // 2 ** (len(self.enc_channels) - 1)

    @property
    def num_patches(self) -> int:
        """NP: number of prior patches, `(image_size / patch_size)^2`."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_prior_kp(self) -> int:
        """Kp: proposals the prior keeps, `min(n_kp_prior, NP)` (all NP with the mixer)."""
        return min(self.n_kp_prior, self.num_patches)

    @property
    def bg_feature_dim(self) -> int:
        """Dbg: the background latent size (`bg_learned_feature_dim`, or D when that is None)."""
        return self.learned_feature_dim if self.bg_learned_feature_dim is None else self.bg_learned_feature_dim

    @property
    def glimpse_map_size(self) -> int:
        """Side of the glimpse CNNs' heat-maps, `S / 2^(len(prior_channels) - 1)`."""
        return self.glimpse_size // 2 ** (len(self.prior_channels) - 1)

    # ----------------------------------------------------------------------------------------------------------
    def _validate(self) -> None:
        def fail(msg: str) -> None:
            raise ConfigError(msg)

        for name in ("image_size", "in_channels", "n_kp_enc", "n_kp_prior", "patch_size"):
            if int(getattr(self, name)) < 1:
                fail(f"{name} must be a positive integer, got {getattr(self, name)}.")
        if self.learned_feature_dim < 1:
            fail("learned_feature_dim must be at least 1: every particle carries a visual feature vector.")
        if self.bg_learned_feature_dim is not None and self.bg_learned_feature_dim < 1:
            fail("bg_learned_feature_dim must be at least 1 (or None to use learned_feature_dim).")
        if len(self.enc_channels) < 2:
            fail("enc_channels needs at least two entries: the background decoder upsamples once per extra entry "
                 "and would otherwise produce an image twice too large.")
        if len(self.prior_channels) < 1:
            fail("prior_channels needs at least one entry.")
        if any(c < 1 for c in self.enc_channels + self.prior_channels):
            fail("every entry of enc_channels and prior_channels must be a positive integer.")
        for c in sorted(set(self.enc_channels + self.prior_channels)):
            if c % 4 and c % 5:
                fail(f"channel count {c} is divisible by neither 4 nor 5, but the official GroupNorm uses 4 groups "
                     f"(or 5 when not divisible by 4); use a multiple of 4 in enc_channels/prior_channels.")
        if not 0 < self.anchor_s <= 1:
            fail(f"anchor_s must lie in (0, 1], got {self.anchor_s}.")
        for name in ("sigma", "scale_std", "offset_std", "obj_on_alpha", "obj_on_beta"):
            if not getattr(self, name) > 0:
                fail(f"{name} must be positive, got {getattr(self, name)}.")

        down = 2 ** (len(self.enc_channels) - 1)
        if self.image_size % down:
            fail(f"image_size {self.image_size} is not divisible by {down} (2^(len(enc_channels) - 1)); pick an "
                 "image size the background encoder halves evenly or use fewer enc_channels.")
        fmap = self.feature_map_size
        if fmap < 8 or not _is_power_of_two(fmap):
            fail(f"the background feature map F = image_size / 2^(len(enc_channels) - 1) = {fmap} must be a power "
                 "of two >= 8 (the background decoder starts from 8x8 and doubles); change image_size or the number "
                 "of enc_channels.")
        if background_upsamplings(fmap) != fmap.bit_length() - 4:
            fail(f"the background feature map F = {fmap} hits the official float-log rounding of FCToCNN "
                 f"(int(log(F) // log(2)) - 3 = {background_upsamplings(fmap)} upsamplings instead of "
                 f"{fmap.bit_length() - 4}, spec §8 item 22), which decodes a wrongly sized background; use F = 8, 16 "
                 "or 32 by changing image_size or the number of enc_channels.")
        if self.image_size % self.patch_size:
            fail(f"patch_size {self.patch_size} does not divide image_size {self.image_size}; choose a divisor.")
        prior_down = 2 ** (len(self.prior_channels) - 1)
        if self.patch_size % prior_down:
            fail(f"patch_size {self.patch_size} is not divisible by {prior_down} (2^(len(prior_channels) - 1)), so "
                 "the prior CNN cannot halve it evenly; raise patch_size or shorten prior_channels.")
        glimpse = self.glimpse_size
        if glimpse < 8 or not _is_power_of_two(glimpse):
            fail(f"the glimpse size round(anchor_s * (image_size - 1)) = {glimpse} must be 8 * 2^n (the glimpse "
                 "decoder starts from 8x8 and doubles); change anchor_s (e.g. 0.25 or 0.125) or image_size.")
        if glimpse % prior_down:
            fail(f"the glimpse size {glimpse} is not divisible by {prior_down} (2^(len(prior_channels) - 1)), so the "
                 "glimpse CNNs cannot halve it evenly; raise anchor_s or shorten prior_channels.")
        if self.n_kp_prior < self.n_kp_enc:
            fail(f"n_kp_prior={self.n_kp_prior} is smaller than n_kp_enc={self.n_kp_enc}, but every particle is "
                 "anchored on a prior proposal; raise n_kp_prior to at least n_kp_enc.")
        if self.filtering_heuristic == "none":
            if self.n_kp_prior < self.num_patches:
                fail(f"filtering_heuristic='none' mixes all {self.num_patches} patch proposals (the official mixer "
                     f"asserts NP == n_kp_prior), but n_kp_prior={self.n_kp_prior}; set n_kp_prior to "
                     f"{self.num_patches} or use filtering_heuristic='variance'.")
        elif self.num_patches < self.n_kp_enc:
            fail(f"only {self.num_patches} patch proposals ((image_size / patch_size)^2) for n_kp_enc={self.n_kp_enc} "
                 "particles; lower patch_size or n_kp_enc.")


@dataclass
class DLPv2TrainConfig(TrainConfig):
    """The official DLPv2 training recipe (`train_dlp.py` of taldatech/ddlp, spec §3.3): one Adam (betas (0.9, 0.999),
    no weight decay), StepLR stepped once per epoch, `warmup_epoch` warm-up epochs then one noisy epoch."""

    lr: float = option(2e-4, "learning rate", flags=("-l",))
    batch_size: int = option(32, "batch size (per process)", flags=("-b",))
    num_epochs: int = option(150, "number of epochs", flags=("-n",))
    beta_rec: float = option(1.0, "weight of the reconstruction term", flags=("-r",))
    beta_kl: float = option(0.05, "weight of the KL terms", flags=("-k",))
    kl_balance: float = option(1e-3, "weight of the feature, depth and Chamfer KLs relative to the others",
                               flags=("-c",))
    rec_loss_function: str = option("mse", "reconstruction loss: mse, or vgg (the total is then scaled by 1e-3)",
                                    flags=("-v", "--recon_loss_type"), choices=("mse", "vgg"))
    warmup_epoch: int = option(1, "warm-up epochs (glimpse reconstruction); one noisy epoch follows them")
    scheduler_gamma: float = option(0.95, "learning-rate factor after every epoch")
    adam_eps: float = option(1e-4, "Adam epsilon")
    topk: int = option(10, "particles shown in the top-k figure")
    iou_thresh: float = option(0.2, "NMS overlap threshold of the bounding-box figures")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.warmup_epoch < 0:
            raise ConfigError(f"warmup_epoch must be >= 0, got {self.warmup_epoch}.")
        if not 0 < self.scheduler_gamma <= 1:
            raise ConfigError(f"scheduler_gamma must lie in (0, 1], got {self.scheduler_gamma}.")
