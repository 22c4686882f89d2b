"""DLPv2 (the official `ObjectDLP` of taldatech/ddlp), the family "dlpv2": `DLPv2Config`, `DLPv2`, `DLPv2Objective`
and the presets of the official configs.

Importing this package registers the family and its presets; the model and the objective (torch) load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from dlp.models.dlpv2.config import DLPv2Config, DLPv2TrainConfig
from dlp.registry import register_family

register_family(
    "dlpv2",
    description="DLPv2: particles with position, scale, depth, transparency and features, and a background VAE "
                "(TMLR 2024)",
    config_class=DLPv2Config,
    train_config_class=DLPv2TrainConfig,
    model="dlp.models.dlpv2.model:DLPv2",
    objective="dlp.models.dlpv2.objective:DLPv2Objective",
)

from dlp.models.dlpv2.presets import PRESET_VALUES  # noqa: E402  (importing it registers the presets)

_LAZY = {
    "DLPv2": "model", "DLPv2Decoded": "model", "DLPv2Foreground": "model", "DLPv2Output": "model",
    "DLPv2Particles": "model", "ForegroundPosterior": "model", "DLPv2Objective": "objective",
    "DLPv2LossTerms": "losses", "DLPv2Priors": "losses", "dlpv2_loss": "losses", "prior_constants": "losses",
}
__all__ = ["DLPv2Config", "DLPv2TrainConfig", "PRESET_VALUES", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"dlp.models.dlpv2.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'dlp.models.dlpv2' has no attribute {name!r}")
