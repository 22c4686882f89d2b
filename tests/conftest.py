"""Shared test fixtures: tiny configs and the locations of the shared data next to the repository."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dlp.models.dlp_v1.config import DLPConfig

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA_DIR = SHARED / "data"
PARITY_DIR = SHARED / "fixtures" / "parity"


def tiny_config(kind: str = "object", **overrides) -> DLPConfig:
    """A 32x32 model small enough for CPU unit tests: kind "object", "anchored" (object, prior-anchored) or "masked"."""
    base = dict(
        image_size=32,
        enc_channels=(8, 8),
        prior_channels=(8, 8),
        glimpse_channels=(8, 8),
        n_kp_enc=4,
        n_kp_prior=6,
        patch_size=8,
        learned_feature_dim=3,
        anchor_s=0.25,
    )
    if kind in ("object", "anchored"):
        base.update(dec_bone="object", use_object_enc=True, use_object_dec=True, exclusive_patches=True, anchor_s=0.5,
                    position_encoder="prior_anchored" if kind == "anchored" else "heatmap")
    else:
        base.update(dec_bone="masked", use_object_enc=True, use_object_dec=False, anchor_s=0.25)
    base.update(overrides)
    return DLPConfig(**base)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def single_thread():
    """Data transforms are many tiny tensor ops: intra-op threads only add overhead (as in DataLoader workers)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
