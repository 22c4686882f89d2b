"""The DLPv2 presets: the four official configurations (taldatech/ddlp
`configs/{shapes,traffic_img,obj3d_img,obj3d128_img}.json`, spec §7) and a CPU quick-start one.

Training values common to the official four: Adam(lr 2e-4, betas (0.9, 0.999), eps 1e-4, no weight decay), StepLR
gamma 0.95 stepped once per epoch, 150 epochs, batch 32, beta_rec 1, kl_balance 1e-3, one warm-up epoch followed by
one noisy epoch, the prior trained by the reconstruction (train_enc_prior; the only value the configs use, so not a
setting here). 'vgg' is the perceptual reconstruction loss (the official total is then scaled by 1e-3).
"""

from __future__ import annotations

from typing import Any

from dlp.registry import Preset, register_preset

_COMMON_MODEL: dict[str, Any] = {
    "in_channels": 3,
    "anchor_s": 0.25,
    "pad_mode": "replicate",
    "sigma": 1.0,
    "obj_on_alpha": 0.1,
    "obj_on_beta": 0.1,
}
_COMMON_TRAIN: dict[str, Any] = {
    "lr": 2e-4,
    "batch_size": 32,
    "num_epochs": 150,
    "beta_rec": 1.0,
    "kl_balance": 0.001,
    "warmup_epoch": 1,
    "adam_eps": 1e-4,
    "scheduler_gamma": 0.95,
}

PRESET_VALUES: dict[str, dict[str, Any]] = {
    "dlpv2-shapes": {
        "description": "DLPv2 on the generated 64x64 shapes (configs/shapes.json): 10 particles anchored by the "
                       "particle-filter mixer over all 64 patch proposals, MSE loss.",
        "model": {
            **_COMMON_MODEL,
            "image_size": 64,
            "enc_channels": (32, 32, 64, 64),
            "prior_channels": (32, 32, 64),
            "patch_size": 8,
            "n_kp_enc": 10,
            "n_kp_prior": 64,
            "learned_feature_dim": 6,
            "bg_learned_feature_dim": None,
            "scale_std": 0.3,
            "offset_std": 0.2,
            "use_correlation_heatmaps": False,
            "filtering_heuristic": "none",
        },
        "train": {**_COMMON_TRAIN, "dataset": "shapes", "rec_loss_function": "mse", "beta_kl": 0.05},
    },
    "dlpv2-traffic": {
        "description": "DLPv2 on 128x128 Traffic frames (configs/traffic_img.json): 25 particles from the 64 "
                       "lowest-variance proposals, VGG loss.",
        "model": {
            **_COMMON_MODEL,
            "image_size": 128,
            "enc_channels": (32, 64, 64, 128, 128),
            "prior_channels": (32, 32, 64),
            "patch_size": 16,
            "n_kp_enc": 25,
            "n_kp_prior": 64,
            "learned_feature_dim": 8,
            "bg_learned_feature_dim": None,
            "scale_std": 1.0,
            "offset_std": 1.0,
            "use_correlation_heatmaps": True,
            "filtering_heuristic": "variance",
        },
        "train": {**_COMMON_TRAIN, "dataset": "traffic", "rec_loss_function": "vgg", "beta_kl": 40.0},
    },
    "dlpv2-obj3d": {
        "description": "DLPv2 on 64x64 OBJ3D frames (configs/obj3d_img.json): 12 particles from the 16 patch "
                       "proposals, VGG loss.",
        "model": {
            **_COMMON_MODEL,
            "image_size": 64,
            "enc_channels": (32, 64, 128),
            "prior_channels": (16, 32, 64),
            "patch_size": 16,
            "n_kp_enc": 12,
            "n_kp_prior": 16,
            "learned_feature_dim": 8,
            "bg_learned_feature_dim": None,
            "scale_std": 0.3,
            "offset_std": 0.2,
            "use_correlation_heatmaps": True,
            "filtering_heuristic": "variance",
        },
        "train": {**_COMMON_TRAIN, "dataset": "obj3d", "rec_loss_function": "vgg", "beta_kl": 40.0},
    },
    "dlpv2-obj3d128": {
        "description": "DLPv2 on 128x128 OBJ3D frames (configs/obj3d128_img.json): 12 particles from the 64 "
                       "lowest-variance proposals, VGG loss.",
        "model": {
            **_COMMON_MODEL,
            "image_size": 128,
            "enc_channels": (16, 32, 64, 64, 128),
            "prior_channels": (16, 32, 64),
            "patch_size": 16,
            "n_kp_enc": 12,
            "n_kp_prior": 64,
            "learned_feature_dim": 8,
            "bg_learned_feature_dim": None,
            "scale_std": 1.0,
            "offset_std": 1.0,
            "use_correlation_heatmaps": False,
            "filtering_heuristic": "variance",
        },
        "train": {**_COMMON_TRAIN, "dataset": "obj3d128", "rec_loss_function": "vgg", "beta_kl": 40.0},
    },
}


for _name, _values in PRESET_VALUES.items():
    register_preset(Preset(_name, "dlpv2", _values["description"], model=dict(_values["model"]),
                           train=dict(_values["train"])))


register_preset(Preset(
    "dlpv2-shapes-quick", "dlpv2",
    "DLPv2 on generated 64x64 shapes in under 10 minutes on 2 CPU cores: half-width CNNs, particles on the 20 "
    "lowest-variance proposals, a transparency prior that favours 'off', batch 16, epochs of 1000 images.",
    model={**PRESET_VALUES["dlpv2-shapes"]["model"], "enc_channels": (16, 16, 32, 32), "prior_channels": (16, 16, 32),
           "filtering_heuristic": "variance", "n_kp_prior": 20, "obj_on_beta": 1.0},
    train={**PRESET_VALUES["dlpv2-shapes"]["train"], "lr": 1e-3, "beta_kl": 1.0, "batch_size": 16, "num_epochs": 25,
           "num_train_images": 1000, "eval_freq": 2},
))
