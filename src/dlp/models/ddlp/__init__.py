"""DDLP (the official `ObjectDynamicsDLP` of taldatech/ddlp), the family "ddlp": `DDLPConfig`, `DDLP` with PINT
dynamics, `DDLPObjective` and the presets of the official configs.

Importing this package registers the family and its presets; the model and the objective (torch) load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from dlp.models.ddlp.config import PINT_DROPOUT, DDLPConfig, DDLPTrainConfig
from dlp.registry import register_family

register_family(
    "ddlp",
    description="DDLP: DLPv2 particles tracked through video frames, a transformer dynamics prior (PINT) and video "
                "prediction (TMLR 2024)",
    config_class=DDLPConfig,
    train_config_class=DDLPTrainConfig,
    model="dlp.models.ddlp.model:DDLP",
    objective="dlp.models.ddlp.objective:DDLPObjective",
)

from dlp.models.ddlp.presets import PRESET_VALUES  # noqa: E402  (importing it registers the presets)

_LAZY = {
    "DDLP": "model", "DDLPDecoded": "model", "DDLPOutput": "model", "RolloutResult": "model",
    "DDLPParticles": "modules", "DynamicsDLP": "modules", "DynamicsPrediction": "modules",
    "DDLPLossTerms": "losses", "ddlp_loss": "losses", "dynamic_discount": "losses", "DDLPObjective": "objective",
}
__all__ = ["DDLPConfig", "DDLPTrainConfig", "PINT_DROPOUT", "PRESET_VALUES", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"dlp.models.ddlp.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'dlp.models.ddlp' has no attribute {name!r}")
