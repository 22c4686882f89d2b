"""Datasets of the DLP library: generated shapes, real data (CelebA/MAFL, landmark folders, CLEVRER, Traffic, image
folders and videos), TPS warps, frame preparation and `build_dataset`, the single entry point used by training.

Every dataset yields dict items with "image" ([3, S, S] float in [0, 1]) and, as available, "image_prior",
"landmarks" and "index". Names are imported lazily, so `import dlp.data.shapes` does not load PIL or PyAV.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ShapesDataset": "dlp.data.shapes",
    "CelebADataset": "dlp.data.celeba",
    "DatasetError": "dlp.data.common",
    "DatasetNotFoundError": "dlp.data.common",
    "ImageFolderDataset": "dlp.data.folder",
    "LandmarkFolderDataset": "dlp.data.landmarks",
    "build_dataset": "dlp.data.registry",
    "DatasetInfo": "dlp.data.registry",
    "dataset_info": "dlp.data.registry",
    "list_datasets": "dlp.data.registry",
    "register_dataset": "dlp.data.registry",
    "Warper": "dlp.data.tps",
    "WarperSingle": "dlp.data.tps",
    "dlp_warper": "dlp.data.tps",
    "FrameArrayDataset": "dlp.data.video",
    "prepare_clevrer": "dlp.data.video",
    "prepare_traffic": "dlp.data.video",
    "prepare_video": "dlp.data.video",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dlp.data' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
