"""`dlp presets [NAME]`: the model families and presets as a table, or every value of one preset."""

from __future__ import annotations

from typing import Any

from dlp.registry import get_family, get_preset, list_models, list_presets

# (heading, config field): the model config's or, failing that, the training config's value ("-" when neither has it)
COLUMNS = (
    ("image", "image_size"),
    ("K", "n_kp_enc"),
    ("prior", "n_kp_prior"),
    ("D", "learned_feature_dim"),
    ("rec", "rec_loss_function"),
    ("beta_kl", "beta_kl"),
    ("lr", "lr"),
    ("batch", "batch_size"),
    ("epochs", "num_epochs"),
    ("dataset", "dataset"),
)


def _value(model: Any, train: Any, name: str) -> str:
    for config in (model, train):
        if name in config.field_names():
            return str(getattr(config, name))
    return "-"


def presets_table() -> str:
    header = ["preset", "family", *(title for title, _ in COLUMNS), "description"]
    rows = []
    for name in list_presets():
        preset = get_preset(name)
        model, train = preset.model_config(), preset.train_config()
        rows.append([name, preset.family, *(_value(model, train, f) for _, f in COLUMNS), preset.description])
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    families = "families: " + ", ".join(f"{n} ({get_family(n).description})" for n in list_models())
    lines = [families, "", fmt.format(*header).rstrip(), fmt.format(*("-" * w for w in widths)).rstrip()]
    lines += [fmt.format(*r).rstrip() for r in rows]
    return "\n".join(lines)


def preset_details(name: str) -> str:
    preset = get_preset(name)
    model, train = preset.model_config(), preset.train_config()
    lines = [f"{preset.name} ({preset.family}): {preset.description}", "", "model:"]
    lines += [f"  {k}: {v}" for k, v in model.to_dict().items()]
    lines += ["train:"] + [f"  {k}: {v}" for k, v in train.to_dict().items()]
    return "\n".join(lines)


def configure_parser(subparsers, argv: list[str] | None = None) -> None:
    p = subparsers.add_parser("presets", help="list the model families and presets with their hyper-parameters")
    p.add_argument("name", nargs="?", default=None, help="show every value of this preset")
    p.set_defaults(func=lambda args: print(preset_details(args.name) if args.name else presets_table()))
