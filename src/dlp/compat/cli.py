"""`dlp convert-official` and `dlp export-official`."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from dlp.checkpoint import load_checkpoint, save_checkpoint
from dlp.compat.official import OfficialCheckpointError, from_official_state_dict, to_official_state_dict
from dlp.model import DLP
from dlp.presets import get_preset


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
    model = DLP(get_preset(preset).model_config(**(overrides or {})))
    model.load_state_dict(from_official_state_dict(model, state), strict=True)
    return save_checkpoint(out, model, converted_from=src.name, preset=preset)


def export_official(checkpoint: str | Path, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(to_official_state_dict(load_checkpoint(checkpoint)), out)
    return out


def configure_parser(subparsers) -> None:
    p = subparsers.add_parser("convert-official", help="convert an official DLP state dict into a dlp checkpoint",
                              description="Convert an official KeyPointVAE state dict (e.g. "
                              "dlp_celeba_gauss_pointnetpp_feat.pth) into a self-describing dlp checkpoint. "
                              "Keys are checked strictly; every missing or unexpected key is named.")
    p.add_argument("src", help="official .pth file")
    p.add_argument("--preset", required=True, help="the preset the checkpoint was trained with (celeba, traffic, ...)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a DLPConfig field of the preset (repeatable)")
    p.add_argument("-o", "--output", required=True, help="output .pt checkpoint")
    p.set_defaults(func=lambda a: print(f"wrote {convert_official(a.src, a.preset, a.output, parse_assignments(a.overrides))}"))

    e = subparsers.add_parser("export-official", help="export a dlp checkpoint to the official state-dict layout")
    e.add_argument("checkpoint")
    e.add_argument("-o", "--output", required=True, help="output .pth (loadable by the official KeyPointVAE)")
    e.set_defaults(func=lambda a: print(f"wrote {export_official(a.checkpoint, a.output)}"))
