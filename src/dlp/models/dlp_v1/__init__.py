"""DLP v1 (Daniel & Tamar, ICML 2022), the family "dlp": `DLPConfig`, `DLP`, `DLPObjective` and the paper's presets.

Importing this package registers the family and its presets; the model and the objective (torch) load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from dlp.models.dlp_v1.config import DLPConfig, DLPTrainConfig, ObjectSparsity
from dlp.registry import register_family

register_family(
    "dlp",
    description="DLP v1: particles with position and features, masked or object decoder (ICML 2022)",
    config_class=DLPConfig,
    train_config_class=DLPTrainConfig,
    model="dlp.models.dlp_v1.model:DLP",
    objective="dlp.models.dlp_v1.objective:DLPObjective",
)

from dlp.models.dlp_v1 import presets  # noqa: E402,F401  (registers the presets)

_LAZY = {"DLP": "model", "DLPOutput": "model", "Decoded": "model", "Particles": "model", "DLPObjective": "objective"}
__all__ = ["DLPConfig", "DLPTrainConfig", "ObjectSparsity", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"dlp.models.dlp_v1.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'dlp.models.dlp_v1' has no attribute {name!r}")
