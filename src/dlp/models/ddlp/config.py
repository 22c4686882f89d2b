"""`DDLPConfig`: the architecture of a DDLP model (the official `ObjectDynamicsDLP`), validated.

DDLP is DLPv2's particle encoder/decoder (every `DLPv2Config` field, same meaning) plus PINT, the particle
interaction transformer that predicts the particles of the next frame (spec §4). The extra fields are the official
constructor arguments `timestep_horizon`, `pint_layers`, `pint_heads`, `pint_dim`, `predict_delta`, and the
official config's `num_static_frames` (a forward/objective parameter that the official training script passes to
both; kept here because it belongs to the model's recipe, as in the official config).

PINT's dropout is hard-wired to 0.1 officially (the model's `dropout` argument is not passed on, spec §8 item 9); it is
the constant `PINT_DROPOUT`, not a field.

Shape vocabulary: B batch, T frames of a clip (T = timestep_horizon + 1 in training), Tm = timestep_horizon (PINT's
block size), K = `n_kp_enc` particles, D / Dbg features, E = `pint_dim`, nh = `pint_heads`.
"""

from __future__ import annotations

from dataclasses import dataclass

from dlp.config import ConfigError, option
from dlp.models.dlpv2.config import DLPv2Config, DLPv2TrainConfig

PINT_DROPOUT = 0.1  # official `DynamicsDLP(dropout=0.1)` default, never overridden (spec §4.1, §8 item 9)


@dataclass
class DDLPConfig(DLPv2Config):
    """Architecture of a DDLP model (Daniel & Tamar, "DDLP", TMLR 2024; the video model `ObjectDynamicsDLP`).

    Defaults are the official constructor defaults (so `use_correlation_heatmaps` defaults to True: frames t >= 1
    correlate each particle's glimpse with its previous crop). `filtering_heuristic='none'` (the particle-filter
    mixer) is refused: the official DDLP crashes with it (spec §8 item 3).

    >>> cfg = DDLPConfig(image_size=64, enc_channels=(32, 64, 128), prior_channels=(16, 32, 64), patch_size=8,
    ...                  n_kp_enc=6, n_kp_prior=12, learned_feature_dim=3, timestep_horizon=10)
    >>> cfg.glimpse_size, cfg.feature_map_size, cfg.clip_length, cfg.pint_head_size
    (16, 16, 11, 32)
    """

    use_correlation_heatmaps: bool = option(True, "attribute encoder reads a correlation channel: frames t >= 1 "
                                                  "correlate each glimpse with the particle's previous crop")
    timestep_horizon: int = option(10, "PINT's context length Tm; training clips have Tm + 1 frames")
    num_static_frames: int = option(4, "frames at the start of a clip encoded from prior proposals and regularised "
                                       "by the static priors; later frames are predicted by PINT (tau)")
    pint_layers: int = option(6, "PINT transformer blocks")
    pint_heads: int = option(8, "PINT attention heads")
    pint_dim: int = option(256, "PINT token width E (a multiple of pint_heads)")
    predict_delta: bool = option(True, "PINT predicts changes of the particles' attributes (the only official "
                                       "setting)")

    def _validate(self) -> None:
        super()._validate()

        def fail(msg: str) -> None:
            raise ConfigError(msg)

        if self.filtering_heuristic == "none":
            fail("filtering_heuristic='none' (the particle-filter mixer) is impossible for DDLP, whose tracking "
                 "encoder anchors frame 0 on the filtered proposals (the official DDLP crashes with it, spec §8 item "
                 "3); use 'variance'.")
        if self.timestep_horizon < 1:
            fail(f"timestep_horizon must be at least 1 (PINT predicts frame t + 1 from frames up to t), got "
                 f"{self.timestep_horizon}.")
        if not 1 <= self.num_static_frames <= self.timestep_horizon:
            fail(f"num_static_frames must lie between 1 and timestep_horizon={self.timestep_horizon} so that a "
                 f"training clip of {self.timestep_horizon + 1} frames has at least one predicted frame, got "
                 f"{self.num_static_frames}.")
        for name in ("pint_layers", "pint_heads", "pint_dim"):
            if getattr(self, name) < 1:
                fail(f"{name} must be a positive integer, got {getattr(self, name)}.")
        if self.pint_dim % self.pint_heads:
            fail(f"pint_dim={self.pint_dim} is not divisible by pint_heads={self.pint_heads}, so the attention "
                 "heads cannot split the token width evenly; choose a multiple of pint_heads.")
        if not self.predict_delta:
            fail("predict_delta=False is not supported: every official configuration predicts attribute changes "
                 "and the absolute-prediction variant is not specified; set predict_delta=True.")

    # ----------------------------------------------------------------------------------------------------------
    @property
    def clip_length(self) -> int:
        """T of a training clip: `timestep_horizon + 1` (the objective needs exactly this many frames, §4.6)."""
        return self.timestep_horizon + 1

    @property
    def pint_head_size(self) -> int:
        """Width of one attention head, `pint_dim / pint_heads`."""
        return self.pint_dim // self.pint_heads

    @property
    def num_tokens(self) -> int:
        """Tokens per frame in PINT: K particles plus the background token (official `max_particles`)."""
        return self.n_kp_enc + 1


@dataclass
class DDLPTrainConfig(DLPv2TrainConfig):
    """The official DDLP training recipe (`train_ddlp.py`, spec §4.7): DLPv2's, on clips of `timestep_horizon + 1`
    frames, plus the dynamics KL (`beta_dyn`) phased in by the official discount, and the rollout used by evaluation
    and figures (`cond_steps` conditioning frames, then `rollout_horizon` predicted ones)."""

    beta_kl: float = option(0.1, "weight of the static KL terms (first num_static_frames frames)", flags=("-k",))
    beta_dyn: float = option(0.1, "weight of the dynamics KL against PINT's predictions")
    beta_dyn_rec: float = option(1.0, "extra weight of the reconstruction of the frames after num_static_frames")
    discount_steps: int = option(10000, "the dynamics KL of future frame i is phased in over (i + 1) / timestep_horizon "
                                        "x max(discount_steps, steps per epoch) x max(warmup_epoch, 1) steps "
                                        "(official: 10000)")
    cond_steps: int = option(10, "conditioning frames of the rollouts of evaluation and figures")
    rollout_horizon: int = option(10, "predicted frames of the rollouts of evaluation and figures")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.discount_steps < 1:
            raise ConfigError(f"discount_steps must be a positive number of steps, got {self.discount_steps}.")
        if self.cond_steps < 1 or self.rollout_horizon < 1:
            raise ConfigError(f"cond_steps and rollout_horizon must be positive, got {self.cond_steps} and "
                              f"{self.rollout_horizon}.")
