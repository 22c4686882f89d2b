"""The DLP model: `DLP(config)` and its typed outputs."""

from dlp.model.dlp import DLP, Decoded, DLPOutput, Particles

__all__ = ["DLP", "DLPOutput", "Decoded", "Particles"]
