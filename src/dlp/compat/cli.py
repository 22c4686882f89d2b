"""`dlp convert-official` and `dlp export-official`: official state dicts <-> self-describing dlp checkpoints.

The key mapping of each family lives in its compat module (`COMPAT_MODULES`): `from_official_state_dict(model,
state_dict)` and `to_official_state_dict(model)`.
"""

from __future__ import annotations

from pathlib import Path

import importlib

import torch
import yaml

from dlp.checkpoint import load_checkpoint, save_checkpoint
from dlp.compat.official import OfficialCheckpointError
from dlp.registry import family_of, get_family, get_preset

# model family -> the module that maps its parameters to the official keys
COMPAT_MODULES = {"dlp": "dlp.compat.official", "dlpv2": "dlp.compat.ddlp", "ddlp": "dlp.compat.ddlp"}


def compat_module(family: str):
    if family not in COMPAT_MODULES:
        raise OfficialCheckpointError(f"the {family!r} family has no official checkpoint layout.")
    return importlib.import_module(COMPAT_MODULES[family])


def parse_assignments(items: list[str]) -> dict:
    """`["n_kp_enc=15", "anchor_s=0.25"]` -> typed dict (values parsed as YAML scalars/lists)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {item!r}.")
        out[key.strip()] = yaml.safe_load(value)
    return out


def convert_official(src: str | Path, preset: str, out: str | Path, overrides: dict | None = None) -> Path:
    src = Path(src)
    if not src.is_file():
        raise OfficialCheckpointError(f"{src} does not exist; pass the official .pth file.")
    try:
        state = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise OfficialCheckpointError(f"{src} is not a readable torch file ({type(exc).__name__}).") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise OfficialCheckpointError(f"{src} does not hold a state dict.")
    chosen = get_preset(preset)
    model = get_family(chosen.family).build_model(chosen.model_config(**(overrides or {})))
    model.load_state_dict(compat_module(chosen.family).from_official_state_dict(model, state), strict=True)
    # The preset's training settings come along, so that `dlp eval` knows the dataset and the objective's weights.
    return save_checkpoint(out, model, converted_from=src.name, preset=preset,
                           train_config=chosen.train_config().to_dict())


def export_official(checkpoint: str | Path, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = load_checkpoint(checkpoint)
    torch.save(compat_module(family_of(model).name).to_official_state_dict(model), out)
    return out


def configure_parser(subparsers, argv: list[str] | None = None) -> None:
    p = subparsers.add_parser("convert-official", help="convert an official state dict into a dlp checkpoint",
                              description="Convert an official state dict (DLP's KeyPointVAE, e.g. "
                              "dlp_celeba_gauss_pointnetpp_feat.pth, or DDLP's ObjectDLP / ObjectDynamicsDLP) into a "
                              "self-describing dlp checkpoint that records the preset's dataset and training settings. "
                              "Keys are checked strictly; every missing or unexpected key is named.")
    p.add_argument("src", help="official .pth file")
    p.add_argument("--preset", required=True, help="the preset the checkpoint was trained with (celeba, traffic, ...); "
                   "it decides the model family")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model config field of the preset (repeatable)")
    p.add_argument("-o", "--output", required=True, help="output .pt checkpoint")
    p.set_defaults(func=lambda a: print(
        f"wrote {convert_official(a.src, a.preset, a.output, parse_assignments(a.overrides))}"))

    e = subparsers.add_parser("export-official", help="export a dlp checkpoint to the official state-dict layout")
    e.add_argument("checkpoint")
    e.add_argument("-o", "--output", required=True, help="output .pth (loadable by the official KeyPointVAE)")
    e.set_defaults(func=lambda a: print(f"wrote {export_official(a.checkpoint, a.output)}"))
