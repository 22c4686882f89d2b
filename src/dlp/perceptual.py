"""VGG16 perceptual distance, as the official DLP `VGGDistance` (utils/loss_functions.py).

`VGGPerceptual` holds its own VGG16 `features` stack (configuration "D"), laid out and named exactly as torchvision's
``vgg16().features`` (``features.0.weight`` ... ``features.28.bias``), so the ImageNet file ``vgg16-397923af.pth``
loads as is, without torchvision. The distance between two image batches is, per image,

    sum over pixels of (x - y)^2  +  sum over l of  sum (phi_l(x) - phi_l(y))^2,

with phi_l the post-ReLU activations relu1_2, relu2_2, relu3_2, relu4_3 and pool5 (`features` indices 3, 8, 13, 22,
30). The official code collects indices 2, 7, 12, 21, 30, but torchvision's in-place ReLUs overwrite those conv outputs,
so what it really compares are these post-ReLU tensors. Images enter raw, in [0, 1], with no ImageNet normalisation;
1-channel images are repeated to 3 channels (the pixel term is taken before that).

DLPv2/DDLP's `VGGDistance` (taldatech/ddlp, spec §3.4) is the same network and layers with two differences, both
options of `VGGPerceptual`: the images are ImageNet-normalised before the VGG (`imagenet_normalize=True`) and the
feature terms are weighted by 0.12151 (`feature_weight=DDLP_FEATURE_WEIGHT`).

Weights are never silently random: `VGGPerceptual()` (or `weights=None`) loads the ImageNet weights through
`load_vgg16_features` or raises `VGGWeightsError`; a randomly initialised network needs
``VGGPerceptual(weights=None, allow_random=True)`` (or ``weights="random", allow_random=True``). All parameters are
frozen; keep the module outside the model and its optimisers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "VGG16_URL",
    "VGG16_FILENAME",
    "VGG16_CFG",
    "FEATURE_LAYERS",
    "VGGWeightsError",
    "VGGPerceptual",
    "load_vgg16_features",
    "vgg16_feature_keys",
    "vgg_distance",
    "glimpse_vgg_distance",
    "reconstruction_loss",
    "ReconstructionObjectiveMixin",
    "DDLP_FEATURE_WEIGHT",
]

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
VGG16_FILENAME = "vgg16-397923af.pth"
ENV_VAR = "DLP_VGG_WEIGHTS"
# torchvision's VGG configuration "D": channels of each 3x3 conv, "M" = 2x2 max-pool
VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip
# `features` indices whose outputs are compared: relu1_2, relu2_2, relu3_2, relu4_3, pool5
FEATURE_LAYERS: tuple[int, ...] = (3, 8, 13, 22, 30)
MIN_IMAGE_SIZE = 32  # five 2x2 pools need at least 32 pixels
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DDLP_FEATURE_WEIGHT = 0.12151  # DLPv2/DDLP's weight of every feature term (spec §3.4)

WeightsArg = Union[str, os.PathLike, Mapping[str, torch.Tensor], None]


class VGGWeightsError(ValueError, FileNotFoundError):
    """The ImageNet VGG16 weights could not be found, downloaded or read."""


def _how_to_provide() -> str:
    hub = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILENAME
    return (
        f"download {VGG16_URL} and pass it with --vgg-weights PATH (or set the environment variable {ENV_VAR}=PATH, "
        f"or put it at {hub})"
    )


def _build_features(cfg: tuple[int | str, ...] = VGG16_CFG, in_channels: int = 3) -> nn.Sequential:
    """torchvision's `make_layers(cfg, batch_norm=False)`: conv3x3(pad 1) + ReLU per number, MaxPool(2, 2) per "M"."""
    layers: list[nn.Module] = []
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_channels, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_channels = int(v)
    return nn.Sequential(*layers)


def vgg16_feature_keys() -> list[str]:
    """State-dict keys of torchvision's `vgg16().features`, prefixed with `features.` (26 keys)."""
    convs = [i for i, m in enumerate(_build_features()) if isinstance(m, nn.Conv2d)]
    return [f"features.{i}.{p}" for i in convs for p in ("weight", "bias")]


def _select_features(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Keep the `features.*` entries of a torchvision VGG16 state dict (a bare `features` dict also works)."""
    if not isinstance(state, Mapping):
        raise VGGWeightsError(f"{source} does not hold a state dict; {_how_to_provide()}.")
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    expected = vgg16_feature_keys()
    selected = {k: v for k, v in state.items() if k.startswith("features.")}
    if not selected:
        selected = {f"features.{k}": v for k, v in state.items() if f"features.{k}" in expected}
    missing = [k for k in expected if k not in selected]
    if missing:
        raise VGGWeightsError(
            f"{source} is not a VGG16 state dict (missing {missing[:3]}{'...' if len(missing) > 3 else ''}); "
            f"{_how_to_provide()}."
        )
    return {k: selected[k] for k in expected}


def load_vgg16_features(path: str | os.PathLike | None = None, *, download: bool = True) -> dict[str, torch.Tensor]:
    """Return the ImageNet VGG16 `features.*` weights (classifier keys dropped) as a CPU state dict.

    Looks, in order, at: `path` if given; the file named by the environment variable ``DLP_VGG_WEIGHTS``; the torch hub
    cache ``torch.hub.get_dir()/checkpoints/vgg16-397923af.pth``; and finally downloads it from
    https://download.pytorch.org/models/vgg16-397923af.pth with `torch.hub.load_state_dict_from_url` (hash checked)
    when `download` is True. An explicit path or variable that does not exist is an error, not a fallback.

    Raises:
        VGGWeightsError: no source worked; the message says how to provide the file.
    """
    explicit = path if path is not None else os.environ.get(ENV_VAR) or None
    if explicit is not None:
        file = Path(explicit).expanduser()
        what = f"VGG16 weights file {str(file)!r}" + ("" if path is not None else f" (from {ENV_VAR})")
        if not file.is_file():
            raise VGGWeightsError(f"{what} does not exist; {_how_to_provide()}.")
        return _load_file(file, what)

    cached = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILENAME
    if cached.is_file():
        return _load_file(cached, f"cached VGG16 weights {str(cached)!r}")
    if download:
        try:
            state = torch.hub.load_state_dict_from_url(
                VGG16_URL, map_location="cpu", check_hash=True, weights_only=True
            )
        except Exception as err:  # no network, proxy, bad hash, full disk ...
            raise VGGWeightsError(
                f"the ImageNet VGG16 weights are not cached and downloading them failed ({type(err).__name__}: {err}); "
                f"{_how_to_provide()}."
            ) from err
        return _select_features(state, f"downloaded {VGG16_URL}")
    raise VGGWeightsError(f"the ImageNet VGG16 weights were not found; {_how_to_provide()}.")


def _load_file(file: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise VGGWeightsError(f"{what} could not be read ({type(err).__name__}: {err}); {_how_to_provide()}.") from err
    return _select_features(state, what)


class VGGPerceptual(nn.Module):
    """Frozen VGG16 `features` and the official VGGDistance (see the module docstring).

    Args:
        weights: "imagenet" or None (default: the ImageNet file found by `load_vgg16_features`), a path to a
            torchvision VGG16 file, a `features` state dict, or "random".
        allow_random: the only way to get random weights (e.g. in tests): `weights="random"` needs it, and
            `weights=None, allow_random=True` means random too. Missing ImageNet weights are always an error.
        download: let the ImageNet lookup download the file when it is not cached.
        imagenet_normalize: ImageNet-normalise the images before the VGG (DLPv2/DDLP; the pixel term stays raw).
        feature_weight: weight of every feature term (DLPv2/DDLP: `DDLP_FEATURE_WEIGHT`).

    The state dict of this module has exactly the keys of torchvision's `vgg16().features` (``features.0.weight`` ...).
    """

    def __init__(self, weights: WeightsArg = "imagenet", *, allow_random: bool = False, download: bool = True,
                 imagenet_normalize: bool = False, feature_weight: float = 1.0) -> None:
        super().__init__()
        self.features = _build_features()
        self.layer_ids = FEATURE_LAYERS
        self.imagenet_normalize, self.feature_weight = imagenet_normalize, feature_weight
        self.weights_source: str
        if weights == "random" or (weights is None and allow_random):
            if not allow_random:
                raise VGGWeightsError(
                    "VGGPerceptual(weights='random') needs allow_random=True; for the perceptual loss use the ImageNet "
                    f"weights: {_how_to_provide()}."
                )
            self._init_random()
            self.weights_source = "random"
        else:
            if isinstance(weights, Mapping):
                state, self.weights_source = _select_features(weights, "the given state dict"), "state dict"
            elif weights is None or (isinstance(weights, str) and weights == "imagenet"):
                state, self.weights_source = load_vgg16_features(download=download), "imagenet"
            else:
                state, self.weights_source = load_vgg16_features(weights), str(weights)
            self.load_state_dict(state, strict=True)
        self.requires_grad_(False)
        self.eval()

    def _init_random(self) -> None:
        """torchvision's VGG initialisation (kaiming normal, fan_out, zero bias)."""
        for m in self.features:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def extract(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Activations at `self.layer_ids` for x [B, 3, H, W] (H, W >= 32).

        Returns [relu1_2 [B, 64, H, W], relu2_2, relu3_2, relu4_3, pool5 [B, 512, H/32, W/32]].
        """
        feats = []
        last = max(self.layer_ids)
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.layer_ids:
                feats.append(x)
            if i == last:
                break
        return feats

    def forward(self, x: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Perceptual distance between x and y [B, C, H, W] (C in {1, 3}): 0-dim for "mean"/"sum", [B] for "none"."""
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(
                f"expected two [B, 1 or 3, H, W] batches of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}."
            )
        if min(x.shape[-2:]) < MIN_IMAGE_SIZE:
            raise ValueError(
                f"VGG16 needs images of at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}, got {tuple(x.shape[-2:])}; "
                "upsample first (glimpse_vgg_distance does)."
            )
        b = x.shape[0]
        loss = (x - y).pow(2).reshape(b, -1).sum(1)  # [B]
        if x.shape[1] == 1:
            x, y = x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1)
        both = torch.cat([x, y], dim=0)  # one pass over both batches
        if self.imagenet_normalize:
            mean = both.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
            both = (both - mean) / both.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        for f in self.extract(both):
            fx, fy = f[:b], f[b:]
            loss = loss + self.feature_weight * (fx - fy).pow(2).reshape(b, -1).sum(1)
        if reduction == "mean":
            return loss.mean()
        if reduction == "sum":
            return loss.sum()
        return loss


_DEFAULT_VGG: dict[tuple[str, torch.dtype], VGGPerceptual] = {}


def _default_vgg(like: torch.Tensor) -> VGGPerceptual:
    """One ImageNet `VGGPerceptual` per (device, dtype), built on first use."""
    key = (str(like.device), like.dtype)
    if key not in _DEFAULT_VGG:
        _DEFAULT_VGG[key] = VGGPerceptual().to(device=like.device, dtype=like.dtype)
    return _DEFAULT_VGG[key]


def vgg_distance(
    x: torch.Tensor, y: torch.Tensor, reduction: str = "mean", *, vgg: VGGPerceptual | None = None
) -> torch.Tensor:
    """The official VGGDistance(x, y, reduction); uses `vgg`, or a cached ImageNet `VGGPerceptual` when None."""
    return (vgg if vgg is not None else _default_vgg(x))(x, y, reduction)


def glimpse_vgg_distance(
    x: torch.Tensor,
    y: torch.Tensor,
    reduction: str = "mean",
    *,
    vgg: VGGPerceptual | None = None,
    min_size: int = MIN_IMAGE_SIZE,
) -> torch.Tensor:
    """Warm-up glimpse loss: x, y [B*K, C, S, S] are bilinearly resized to `min_size` (align_corners=False) when
    S < `min_size`, as the official trainer does, then compared with `vgg_distance`."""
    if min(x.shape[-2:]) < min_size:
        x = F.interpolate(x, size=min_size, mode="bilinear", align_corners=False)
        y = F.interpolate(y, size=min_size, mode="bilinear", align_corners=False)
    return vgg_distance(x, y, reduction, vgg=vgg)


def reconstruction_loss(name: str, *, device: str | torch.device = "cpu", weights: WeightsArg = "imagenet",
                        fallback_to_mse: bool = False, **vgg_options):
    """The per-image reconstruction loss called `name` and the name of what is actually used.

    'mse' -> (None, 'mse'): the callers' default, the summed squared error. 'vgg' -> (`(x, rec) -> [B]` with the
    official VGG distance, 'vgg'); without reachable ImageNet weights it raises `VGGWeightsError`, or with
    `fallback_to_mse` warns and returns (None, 'mse (vgg weights unavailable)'). `vgg_options` go to `VGGPerceptual`
    (DLPv2/DDLP: `imagenet_normalize=True, feature_weight=DDLP_FEATURE_WEIGHT`).
    """
    if name != "vgg":
        return None, "mse"
    try:
        vgg = VGGPerceptual(weights=weights, **vgg_options).to(device)
    except VGGWeightsError as exc:
        if not fallback_to_mse:
            raise
        import warnings

        warnings.warn(f"using MSE instead of the run's VGG loss: {exc}", stacklevel=2)
        return None, "mse (vgg weights unavailable)"
    return (lambda x, rec: vgg(x, rec, reduction="none")), "vgg"


class ReconstructionObjectiveMixin:
    """For a family's `Objective` whose train config has `rec_loss_function`: `rec_loss` (the per-image loss
    `(x, rec) -> [B]`, None for the summed squared error), built on first use -- a perceptual network -- from the
    objective's `device`, `vgg_weights` and `fallback_rec_loss`, and `setup()` that builds it before the run starts so
    that missing VGG weights fail then. `reconstruction_options` are passed on to `reconstruction_loss`."""

    reconstruction_options: ClassVar[Mapping[str, Any]] = {}

    @cached_property
    def _reconstruction(self):
        return reconstruction_loss(self.train_config.rec_loss_function, device=self.device, weights=self.vgg_weights,
                                   fallback_to_mse=self.fallback_rec_loss, **self.reconstruction_options)

    @cached_property
    def rec_loss(self):
        return self._reconstruction[0]

    @property
    def rec_loss_name(self) -> str:
        return self._reconstruction[1]

    def setup(self) -> None:
        self.rec_loss  # noqa: B018

