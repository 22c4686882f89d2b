"""Deep Latent Particles (Daniel & Tamar, ICML 2022) in plain PyTorch.

>>> import dlp
>>> model = dlp.create_model("shapes")            # a paper preset
>>> particles = model.encode(images)              # positions, uncertainties, features
>>> dlp.save_checkpoint("model.pt", model); model = dlp.load_checkpoint("model.pt")
"""

__version__ = "0.1.0"

from dlp.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from dlp.config import DLPConfig, TrainConfig  # noqa: E402
from dlp.model import DLP, Decoded, DLPOutput, Particles  # noqa: E402
from dlp.presets import create_model, get_preset, list_presets  # noqa: E402

__all__ = [
    "DLP",
    "DLPConfig",
    "DLPOutput",
    "Decoded",
    "Particles",
    "TrainConfig",
    "create_model",
    "get_preset",
    "list_presets",
    "load_checkpoint",
    "save_checkpoint",
]
