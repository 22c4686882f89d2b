"""LPIPS with the VGG16 network, as `piqa.LPIPS(network='vgg')` (piqa 1.3.1), the perceptual metric of DDLP's official
evaluation (spec §6), without torchvision.

For images x, y [B, 3, H, W] in [0, 1] (H, W >= 16):

    LPIPS(x, y) = sum over l of  mean over (h, w) of  sum over c of  w_l[c] * (f_l(x) - f_l(y))[c, h, w] ** 2

with f_l the VGG16 `features` activations at indices 3, 8, 15, 22, 29 (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3)
of the ImageNet-normalised images, each divided by its L2 norm over channels (+ 1e-10), and w_l >= 0 the official
LPIPS v0.1 linear weights (`vgg.pth` of richzhang/PerceptualSimilarity: one 1x1 convolution without bias per layer,
shapes [1, 64 | 128 | 256 | 512 | 512, 1, 1]). 1-channel images are repeated to 3 channels.

Weights. The VGG16 `features` network and its ImageNet weights come from `dlp.perceptual` (`load_vgg16_features`: an
explicit file, $DLP_VGG_WEIGHTS, the torch hub cache, a download). The linear weights (`load_lpips_weights`) come from,
in order: an explicit file (`lpips_weights=`), the file named by $DLP_LPIPS_WEIGHTS, the torch hub cache
`torch.hub.get_dir()/checkpoints/vgg.pth` (where piqa's download lands), the copy shipped inside an installed `lpips`
or `torchmetrics` package (found without importing them), and finally a download of piqa's URL into the hub cache.
Both key layouts are read: the lpips package's (`lin0.model.1.weight` ... `lin4.model.1.weight`) and plain ones
(`lin0.weight`, `0.1.weight` as piqa renames them, `lins.0.1.weight` of a piqa state dict, `0` ... `4`), or a list of
five tensors. Nothing found raises `LPIPSWeightsError` with one sentence saying where to put the file.

>>> from dlp.evaluation.lpips import LPIPS
>>> metric = LPIPS()                                    # ImageNet VGG16 + LPIPS v0.1 weights  # doctest: +SKIP
>>> metric(torch.rand(4, 3, 64, 64), torch.rand(4, 3, 64, 64), reduction="none").shape  # doctest: +SKIP
torch.Size([4])
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Union

import torch
from torch import nn

from dlp.perceptual import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VGGWeightsError,
    _build_features,
    _select_features,
    load_vgg16_features,
)

__all__ = [
    "LPIPS",
    "LPIPS_CHANNELS",
    "LPIPS_LAYERS",
    "LPIPS_URL",
    "LPIPSWeightsError",
    "load_lpips_weights",
]

LPIPS_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth"
LPIPS_FILENAME = "vgg.pth"  # the URL's basename: where torch.hub (and so piqa) caches the download
ENV_VAR = "DLP_LPIPS_WEIGHTS"
# `features` indices compared by LPIPS-VGG: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (piqa's `targets`)
LPIPS_LAYERS: tuple[int, ...] = (3, 8, 15, 22, 29)
LPIPS_CHANNELS: tuple[int, ...] = (64, 128, 256, 512, 512)
MIN_IMAGE_SIZE = 16  # four 2x2 max-pools lie before relu5_3
NORM_EPS = 1e-10  # the official `normalize_tensor` epsilon
# Where installed packages ship the same file (paths relative to the package directory).
PACKAGE_COPIES = (("lpips", ("weights", "v0.1", LPIPS_FILENAME)),
                  ("torchmetrics", ("functional", "image", "lpips_models", LPIPS_FILENAME)))
# lin0.model.1.weight (lpips), lins.0.1.weight (piqa module), 0.1.weight (piqa get_weights), lin0.weight, lin0, 0
_KEY = re.compile(r"^(?:lins?\.?)?([0-4])(?:\.model)?(?:\.1)?(?:\.weight)?$")

WeightsArg = Union[str, os.PathLike, Mapping[str, torch.Tensor], Sequence[torch.Tensor], None]


class LPIPSWeightsError(VGGWeightsError):
    """The LPIPS linear weights could not be found, downloaded or read (a `VGGWeightsError`, so one `except` catches
    both missing-weights cases of the metric)."""


def _how_to_provide() -> str:
    hub = Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_FILENAME
    return (f"download {LPIPS_URL} and pass it with --lpips-weights PATH (or set the environment variable "
            f"{ENV_VAR}=PATH, or put it at {hub})")


def _package_copies() -> list[Path]:
    """The weight files shipped inside installed `lpips` / `torchmetrics` packages (located, never imported: both
    import torchvision)."""
    found = []
    for package, parts in PACKAGE_COPIES:
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin:
            candidate = Path(spec.origin).parent.joinpath(*parts)
            if candidate.is_file():
                found.append(candidate)
    return found


def _select_linear(state: object, source: str) -> list[torch.Tensor]:
    """The five linear weights [1, C_l, 1, 1] of a state dict in either layout (or of a list of five tensors)."""
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if isinstance(state, Sequence) and not isinstance(state, (str, bytes)):
        found = dict(enumerate(state))
    elif isinstance(state, Mapping):
        found = {}
        for key, value in state.items():
            match = _KEY.match(str(key))
            if match and isinstance(value, torch.Tensor):
                found.setdefault(int(match.group(1)), value)
    else:
        raise LPIPSWeightsError(f"{source} does not hold the LPIPS linear weights; {_how_to_provide()}.")
    weights = []
    for layer, channels in enumerate(LPIPS_CHANNELS):
        value = found.get(layer)
        if not isinstance(value, torch.Tensor) or value.numel() != channels:
            got = "nothing" if value is None else f"shape {list(getattr(value, 'shape', []))}"
            raise LPIPSWeightsError(
                f"{source} is not an LPIPS-VGG v0.1 weight file (layer {layer} needs {channels} weights, found {got}, "
                f"keys like lin{layer}.model.1.weight); {_how_to_provide()}."
            )
        weights.append(value.detach().to(torch.float32).reshape(1, channels, 1, 1).cpu())
    return weights


def _read(file: Path, what: str) -> list[torch.Tensor]:
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise LPIPSWeightsError(
            f"{what} could not be read ({type(err).__name__}: {err}); {_how_to_provide()}."
        ) from err
    return _select_linear(state, what)


def load_lpips_weights(path: str | os.PathLike | None = None, *, download: bool = True
                       ) -> tuple[list[torch.Tensor], str]:
    """The official LPIPS-VGG v0.1 linear weights, [1, C_l, 1, 1] for C_l in (64, 128, 256, 512, 512), and where
    they came from.

    Looks, in order, at: `path`; the file named by $DLP_LPIPS_WEIGHTS; `torch.hub.get_dir()/checkpoints/vgg.pth`;
    the copy inside an installed `lpips` or `torchmetrics` package; and downloads piqa's URL into the hub cache when
    `download` is True. An explicit path or variable that does not exist is an error, not a fallback.

    Raises:
        LPIPSWeightsError: no source worked; the message says how to provide the file.
    """
    explicit = path if path is not None else os.environ.get(ENV_VAR) or None
    if explicit is not None:
        file = Path(explicit).expanduser()
        what = f"LPIPS weights file {str(file)!r}" + ("" if path is not None else f" (from {ENV_VAR})")
        if not file.is_file():
            raise LPIPSWeightsError(f"{what} does not exist; {_how_to_provide()}.")
        return _read(file, what), str(file)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_FILENAME
    for file in (cached, *_package_copies()):
        if file.is_file():
            return _read(file, f"LPIPS weights file {str(file)!r}"), str(file)
    if download:
        try:
            state = torch.hub.load_state_dict_from_url(LPIPS_URL, map_location="cpu", progress=False,
                                                       weights_only=True)
        except Exception as err:  # no network, proxy, full disk ...
            raise LPIPSWeightsError(
                f"the LPIPS weights are not cached and downloading them failed ({type(err).__name__}: {err}); "
                f"{_how_to_provide()}."
            ) from err
        return _select_linear(state, f"downloaded {LPIPS_URL}"), LPIPS_URL
    raise LPIPSWeightsError(f"the LPIPS weights were not found; {_how_to_provide()}.")


class LPIPS(nn.Module):
    """LPIPS-VGG v0.1 (see the module docstring); frozen, in eval mode. Keep it outside models and optimisers.

    Args:
        lpips_weights: the linear weights: a file, a state dict in either layout, a list of five tensors, or None
            (`load_lpips_weights`: $DLP_LPIPS_WEIGHTS, caches, download).
        vgg_weights: the VGG16 `features` weights: "imagenet" / None (`dlp.perceptual.load_vgg16_features`), a
            torchvision VGG16 file, a state dict, or "random" (tests only; needs `allow_random=True`).
        download: let the lookups download missing files.
        allow_random: permit `vgg_weights="random"`.

    Attributes: `weights_source` says where the VGG and linear weights came from.
    """

    def __init__(self, lpips_weights: WeightsArg = None, vgg_weights: WeightsArg = "imagenet", *,
                 download: bool = True, allow_random: bool = False) -> None:
        super().__init__()
        # the small linear weights first: when they are missing, the 528 MB VGG16 is not downloaded for nothing
        if isinstance(lpips_weights, (Mapping, list, tuple)):
            linear, lin_source = _select_linear(lpips_weights, "the given LPIPS weights"), "given weights"
        else:
            linear, lin_source = load_lpips_weights(lpips_weights, download=download)
        # relu5_3 is the last layer read: the final max-pool is never run
        self.features = _build_features()[: LPIPS_LAYERS[-1] + 1]
        if isinstance(vgg_weights, str) and vgg_weights == "random":
            if not allow_random:
                raise VGGWeightsError("LPIPS(vgg_weights='random') needs allow_random=True; LPIPS is defined with "
                                      "the ImageNet VGG16 weights.")
            for m in self.features:
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(m.bias)
            vgg_source = "random"
        else:
            if isinstance(vgg_weights, Mapping):
                state, vgg_source = _select_features(vgg_weights, "the given VGG16 state dict"), "state dict"
            elif vgg_weights is None or vgg_weights == "imagenet":
                state, vgg_source = load_vgg16_features(download=download), "imagenet"
            else:
                state, vgg_source = load_vgg16_features(vgg_weights), str(vgg_weights)
            kept = {k[len("features."):]: v for k, v in state.items()
                    if int(k.split(".")[1]) <= LPIPS_LAYERS[-1]}
            self.features.load_state_dict(kept, strict=True)
        for layer, weight in enumerate(linear):
            self.register_buffer(f"lin{layer}", weight)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.weights_source = {"vgg": vgg_source, "linear": lin_source}
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)  # a metric: never in train mode

    def linear_weights(self) -> list[torch.Tensor]:
        """The five weights [1, C_l, 1, 1]."""
        return [getattr(self, f"lin{layer}") for layer in range(len(LPIPS_LAYERS))]

    def embed(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised activations of images x [B, C, H, W] in [0, 1] (C in {1, 3}, H, W >= 16):
        [B, 64, H, W], [B, 128, H/2, W/2], [B, 256, H/4, W/4], [B, 512, H/8, W/8], [B, 512, H/16, W/16].

        Comparing several predictions with one truth, embed the truth once and use `distance`."""
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"LPIPS expects images [B, 1 or 3, H, W], got shape {tuple(x.shape)}.")
        if min(x.shape[-2:]) < MIN_IMAGE_SIZE:
            raise ValueError(f"LPIPS-VGG needs images of at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}, got "
                             f"{tuple(x.shape[-2:])}.")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x.to(self.mean.dtype) - self.mean) / self.std
        out = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in LPIPS_LAYERS:
                out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + NORM_EPS))
        return out

    def distance(self, fx: Sequence[torch.Tensor], fy: Sequence[torch.Tensor]) -> torch.Tensor:
        """LPIPS [B] between two outputs of `embed`: sum_l mean_hw sum_c w_l[c] (fx_l - fy_l)^2."""
        total = fx[0].new_zeros(fx[0].shape[0])
        for a, b, weight in zip(fx, fy, self.linear_weights()):
            total = total + ((a - b).pow(2) * weight).sum(1).mean((-2, -1))
        return total

    def forward(self, x: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """LPIPS between x and y [B, C, H, W] in [0, 1]: [B] for reduction "none", else its mean or sum."""
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")
        if x.shape != y.shape:
            raise ValueError(f"expected two batches of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}.")
        b = x.shape[0]
        both = self.embed(torch.cat([x, y]))  # one pass over both batches
        values = self.distance([f[:b] for f in both], [f[b:] for f in both])
        if reduction == "mean":
            return values.mean()
        if reduction == "sum":
            return values.sum()
        return values
