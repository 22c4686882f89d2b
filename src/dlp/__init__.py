"""Deep Latent Particles in plain PyTorch: DLP v1 (Daniel & Tamar, ICML 2022), DLPv2 and DDLP (TMLR 2024).

>>> import dlp
>>> dlp.list_models()                                # model families
>>> model = dlp.create_model("shapes")               # a paper preset (or a family name)
>>> particles = model.encode(images)                 # the posterior particles
>>> dlp.save_checkpoint("model.pt", model); model = dlp.load_checkpoint("model.pt")
>>> model.save_pretrained("my-dlp"); model = dlp.from_pretrained("my-dlp")   # or a Hub repository id "org/name"

Names are imported on first use, so `import dlp` (and the `dlp` command's help) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_EXPORTS = {
    "list_models": "dlp.registry",
    "list_presets": "dlp.registry",
    "get_preset": "dlp.registry",
    "get_family": "dlp.registry",
    "create_model": "dlp.registry",
    "register_family": "dlp.registry",
    "register_preset": "dlp.registry",
    "Preset": "dlp.registry",
    "load_checkpoint": "dlp.checkpoint",
    "save_checkpoint": "dlp.checkpoint",
    "from_pretrained": "dlp.pretrained",
    "save_pretrained": "dlp.pretrained",
    "push_to_hub": "dlp.pretrained",
    "ConfigError": "dlp.config",
    "TrainConfig": "dlp.config",
    "resolve_config": "dlp.config",
    "ParticleView": "dlp.models.base",
    "predict": "dlp.predict",
    "evaluate_checkpoint": "dlp.evaluation.runner",
    "DLP": "dlp.models.dlp_v1.model",
    "DLPOutput": "dlp.models.dlp_v1.model",
    "Decoded": "dlp.models.dlp_v1.model",
    "Particles": "dlp.models.dlp_v1.model",
    "DLPConfig": "dlp.models.dlp_v1.config",
    "DLPTrainConfig": "dlp.models.dlp_v1.config",
    "DLPv2": "dlp.models.dlpv2.model",
    "DLPv2Config": "dlp.models.dlpv2.config",
    "DLPv2TrainConfig": "dlp.models.dlpv2.config",
    "DDLP": "dlp.models.ddlp.model",
    "DDLPConfig": "dlp.models.ddlp.config",
    "DDLPTrainConfig": "dlp.models.ddlp.config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dlp' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
