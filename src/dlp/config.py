"""Configuration dataclasses shared by every model family, and config resolution (preset < file < flags).

A family has two config dataclasses: its architecture config (kept on the model, saved in every checkpoint) and its
training config, a subclass of `TrainConfig` that adds the family's objective (loss weights, phases, learning-rate
schedule). Fields are declared with `option(default, help, group=...)`, so that `dlp train` builds its flags (and
their `--help` headings) from the dataclasses themselves. This module imports no torch: `dlp --help` stays fast.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

C = TypeVar("C", bound="ConfigBase")

# `dlp train --help` headings, in display order.
GROUPS = {
    "data": "data",
    "model": "model (architecture)",
    "objective": "objective and optimisation",
    "extensions": "extensions (not in the papers; off by default)",
}


class ConfigError(ValueError):
    """An impossible or unsupported combination of hyper-parameters."""


def round_half_even(value: float) -> int:
    """numpy-style rounding (Python's `round` is half-to-even too); the official glimpse sizes depend on it."""
    return int(round(value))


def option(default: Any, help: str = "", *, group: str | None = None, flags: tuple[str, ...] = (),
           choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field with its command-line description.

    group: the `dlp train --help` heading (default: the class's `default_group`); flags: extra spellings, e.g. the
    official short option ("-l", ...); choices: the accepted values of a string field.
    """
    metadata = {"help": help, "group": group, "flags": flags, "choices": choices}
    return field(default=default, metadata=metadata)


def _coerce_fields(obj: Any) -> None:
    """Turn values given as strings (YAML reads `1e-3` as a string) into the field's declared scalar type."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        kind = {"int": int, "float": float, "bool": bool}.get(str(f.type).replace(" | None", ""))
        if kind is None or value is None or isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            continue
        try:
            if kind is bool:
                if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                    value = value.lower() in ("true", "1", "yes")
                elif not isinstance(value, (int, float)):
                    raise ValueError
                coerced = bool(value)
            elif kind is int:
                coerced = int(float(value)) if float(value).is_integer() else None
                if coerced is None:
                    raise ValueError
            else:
                coerced = float(value)
        except (TypeError, ValueError):
            noun = {"int": "an integer", "float": "a number", "bool": "true or false"}[kind.__name__]
            raise ConfigError(f"{f.name} must be {noun}, got {value!r}.") from None
        setattr(obj, f.name, coerced)


def _check_choices(obj: Any) -> None:
    for f in dataclasses.fields(obj):
        choices = f.metadata.get("choices")
        if choices and getattr(obj, f.name) not in choices:
            raise ConfigError(f"{f.name} must be one of {', '.join(map(str, choices))}, got {getattr(obj, f.name)!r}.")


class ConfigBase:
    """to_dict / from_dict / replace / diff for the config dataclasses (tuples are stored as lists)."""

    default_group: ClassVar[str] = "model"
    # Keys that old checkpoints or configs may hold and that `from_dict` translates (see `_upgrade`).
    legacy_keys: ClassVar[frozenset[str]] = frozenset()

    def _normalise(self) -> None:
        """Coerce strings to the declared scalar types and lists to tuples; check `choices`."""
        _coerce_fields(self)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                setattr(self, f.name, tuple(value))
        _check_choices(self)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key, value in data.items():
            if isinstance(value, tuple):
                data[key] = list(value)
        return data

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def _upgrade(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Translate the keys of older versions (`legacy_keys`); the default knows none."""
        return data

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        data = cls._upgrade(dict(data))
        unknown = set(data) - cls.field_names()
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} keys {sorted(unknown)}; `dlp train --help` lists the valid ones.")
        return cls(**data)

    def replace(self: C, **changes: Any) -> C:
        return type(self).from_dict({**self.to_dict(), **changes})

    def diff(self, other: "ConfigBase") -> dict[str, tuple[Any, Any]]:
        """Keys whose values differ, as `{key: (self_value, other_value)}`."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a.get(k), b.get(k)) for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


@dataclass
class TrainConfig(ConfigBase):
    """The settings of a training run that every family shares: data, batch, epochs, evaluation, seed.

    Each family subclasses it with its objective (loss weights, phases, learning-rate schedule).
    """

    default_group: ClassVar[str] = "objective"

    dataset: str = option("shapes", "dataset name (`dlp datasets` lists them)", group="data")
    data_root: str | None = option(None, "dataset location (not needed for generated data)", group="data")
    num_train_images: int | None = option(None, "use only the first N training items (generated data: generate N)",
                                          group="data")
    use_tps: bool = option(False, "thin-plate-spline warps (face datasets)", group="data")
    use_pairs: bool = option(False, "(strong warp -> prior, light warp -> posterior) pairs", group="data")
    seed: int = option(0, "random seed (data order, initialisation, sampling)", group="data")
    lr: float = option(2e-4, "learning rate", flags=("-l",))
    batch_size: int = option(64, "batch size (per process)", flags=("-b",))
    num_epochs: int = option(100, "number of epochs", flags=("-n",))
    eval_freq: int = option(2, "evaluate, draw figures and pick best.pt every N epochs", flags=("-e",))

    def __post_init__(self) -> None:
        self._normalise()
        if self.lr <= 0:
            raise ConfigError(f"the learning rate must be positive, got {self.lr}.")
        if self.batch_size < 1:
            raise ConfigError(f"the batch size must be a positive integer, got {self.batch_size}.")
        if self.num_epochs < 1:
            raise ConfigError(f"the number of epochs must be a positive integer, got {self.num_epochs}.")
        if self.eval_freq < 1:
            raise ConfigError(f"eval_freq must be a positive integer, got {self.eval_freq}.")
        if self.num_train_images is not None and self.num_train_images < 1:
            raise ConfigError(f"num_train_images must be a positive integer, got {self.num_train_images}.")


# ---------------------------------------------------------------------------------------------------------------------
# Config resolution
@dataclass
class ResolvedConfig:
    """What a run is made of: the preset it started from, its model family and the two configs."""

    preset: str | None
    family: str
    model: Any
    train: TrainConfig


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON mapping of field (or flag) names to values; a run's own config.yaml is accepted too."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {path} does not exist.")
    text = file.read_text()
    data = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of flag names to values.")
    if data and set(data) <= {"model", "train", "run", "family", "preset"}:  # {model: ..., train: ..., run: ...}
        return {k: v for k, v in (("family", data.get("family")), ("preset", data.get("preset"))) if v} | {
            **data.get("model", {}), **data.get("train", {})}
    return {k.replace("-", "_"): v for k, v in data.items()}


def supported_image_sizes(config_class: type, values: dict[str, Any]) -> list[int]:
    """The image sizes (multiples of 16 up to 1024) for which `config_class(**values)` is valid."""
    sizes = []
    for size in range(16, 1025, 16):
        try:
            config_class.from_dict({**values, "image_size": size})
        except ConfigError:
            continue
        sizes.append(size)
    return sizes


def resolve_config(*, preset: str | None = None, dataset: str | None = None, config_file: str | Path | None = None,
                   overrides: dict[str, Any] | None = None, resume: dict[str, Any] | None = None) -> ResolvedConfig:
    """The model and training configs of a run, from preset < config file < `overrides` (typed flags).

    preset: a preset name (`dlp.list_presets()`); without one, the dataset's default preset is used.
    dataset: the dataset to train on (overrides the preset's).
    overrides: field values of the model config or the training config (unknown names raise `ConfigError`).
    resume: a checkpoint dict (`dlp.checkpoint.read_checkpoint`) whose architecture and settings the run continues;
        overrides then change only training settings (a different architecture cannot be resumed).
    """
    from dlp.registry import get_family, get_preset

    file_values = read_config_file(config_file) if config_file else {}
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    preset_name = preset or file_values.pop("preset", None)
    file_values.pop("preset", None)
    family_name = file_values.pop("family", None)
    chosen_dataset = dataset or overrides.pop("dataset", None) or file_values.get("dataset")
    if resume is not None:
        family_name = resume.get("arch", "dlp")
        model_values = dict(resume["config"])
        train_values = dict(resume.get("train_config") or {})
    else:
        if preset_name is None:
            from dlp.data.registry import dataset_info

            preset_name = dataset_info(chosen_dataset or "shapes").default_preset
            if preset_name is None:
                raise ConfigError(f"dataset {chosen_dataset!r} has no default preset; choose one with --preset "
                                  "(`dlp presets` lists them).")
        chosen = get_preset(preset_name)
        family_name = chosen.family
        model_values, train_values = dict(chosen.model), dict(chosen.train)
    family = get_family(family_name)
    model_fields = family.config_class.field_names() | family.config_class.legacy_keys
    train_fields = family.train_config_class.field_names() | family.train_config_class.legacy_keys
    for source, values in (("config file", file_values), ("flags", overrides)):
        unknown = set(values) - model_fields - train_fields
        if unknown:
            raise ConfigError(f"{source}: unknown settings {sorted(unknown)} for the {family_name!r} family; "
                              "`dlp train --help` lists the valid ones.")
        for key, value in values.items():
            (model_values if key in model_fields else train_values)[key] = value
    if chosen_dataset is not None:
        train_values["dataset"] = chosen_dataset
    try:
        model_config = family.config_class.from_dict(model_values)
    except ConfigError as exc:
        typed = overrides.get("image_size", file_values.get("image_size"))
        if typed is None:
            raise
        sizes = supported_image_sizes(family.config_class, model_values)
        listed = ", ".join(map(str, sizes)) if sizes else "none between 16 and 1024"
        raise ConfigError(f"image size {typed} is not supported by this model: {str(exc).rstrip('.')}; valid sizes "
                          f"with the other settings unchanged: {listed}.") from None
    train_config = family.train_config_class.from_dict(train_values)
    if resume is not None:
        stored = family.config_class.from_dict(resume["config"])
        changed = stored.diff(model_config)
        if changed:
            details = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in sorted(changed.items()))
            raise ConfigError(f"cannot resume with a different architecture ({details}); drop the changed flags.")
    return ResolvedConfig(preset_name, family_name, model_config, train_config)
