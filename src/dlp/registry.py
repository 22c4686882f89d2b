"""Model families and presets, timm-style: a family registers its config, model and objective once.

>>> import dlp
>>> dlp.list_models()                       # families
['ddlp', 'dlp', 'dlpv2']
>>> dlp.list_presets()[:3]                  # presets, each belonging to a family
>>> model = dlp.create_model("shapes", n_kp_enc=8)   # a preset (or a family name), any config field overridden

The model and objective classes are named by import path and imported on first use, so listing families and presets
(and `dlp --help`) needs no torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from dlp.config import ConfigError


@dataclass(frozen=True)
class ModelFamily:
    """A model family: its architecture config, training config, model and objective (see `dlp.engine.objective`)."""

    name: str
    description: str
    config_class: type
    train_config_class: type
    model_path: str  # "package.module:Class"
    objective_path: str

    @staticmethod
    def _load(path: str) -> type:
        module, _, name = path.partition(":")
        return getattr(importlib.import_module(module), name)

    @property
    def model_class(self) -> type:
        return self._load(self.model_path)

    @property
    def objective_class(self) -> type:
        return self._load(self.objective_path)

    def build_model(self, config: Any):
        """The model for `config` (an instance of `config_class` or a dict of its fields)."""
        if isinstance(config, dict):
            config = self.config_class.from_dict(config)
        return self.model_class(config)


@dataclass(frozen=True)
class Preset:
    """A named configuration: the family, its model config values and its training values (defaults fill the rest)."""

    name: str
    family: str
    description: str
    model: dict[str, Any]
    train: dict[str, Any] = field(default_factory=dict)

    def model_config(self, **overrides: Any):
        return get_family(self.family).config_class.from_dict({**self.model, **overrides})

    def train_config(self, **overrides: Any):
        return get_family(self.family).train_config_class.from_dict({**self.train, **overrides})


_FAMILIES: dict[str, ModelFamily] = {}
_PRESETS: dict[str, Preset] = {}
_BUILTIN_LOADED = False


def _load_builtin() -> None:
    """Import the built-in families (they register themselves and their presets)."""
    global _BUILTIN_LOADED
    if not _BUILTIN_LOADED:
        _BUILTIN_LOADED = True
        importlib.import_module("dlp.models")


def register_family(name: str, *, description: str, config_class: type, train_config_class: type, model: str,
                    objective: str) -> ModelFamily:
    """Register a model family; `model` and `objective` are import paths "package.module:Class"."""
    if name in _FAMILIES:
        raise ConfigError(f"a model family named {name!r} is already registered.")
    family = ModelFamily(name, description, config_class, train_config_class, model, objective)
    _FAMILIES[name] = family
    return family


def register_preset(preset: Preset) -> Preset:
    if preset.name in _PRESETS:
        raise ConfigError(f"a preset named {preset.name!r} is already registered.")
    if preset.family not in _FAMILIES:
        raise ConfigError(f"preset {preset.name!r} names the unknown family {preset.family!r}; register it first.")
    _PRESETS[preset.name] = preset
    return preset


def list_models() -> list[str]:
    """The registered model families ('dlp' = DLP v1, 'dlpv2', 'ddlp', and any registered by the user)."""
    _load_builtin()
    return sorted(_FAMILIES)


def get_family(name: str) -> ModelFamily:
    _load_builtin()
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ConfigError(f"unknown model family {name!r}; available families: {', '.join(sorted(_FAMILIES))}.") from None


def family_of(model: Any) -> ModelFamily:
    """The family whose model class built `model`."""
    _load_builtin()
    path = f"{type(model).__module__}:{type(model).__qualname__}"
    for family in _FAMILIES.values():
        if family.model_path == path:
            return family
    raise ConfigError(f"{type(model).__name__} belongs to no registered model family; register it with "
                      "dlp.register_family first.")


def family_for_config(config: Any) -> ModelFamily:
    """The family whose architecture config class `config` is an instance of."""
    _load_builtin()
    for family in _FAMILIES.values():
        if type(config) is family.config_class:
            return family
    raise ConfigError(f"{type(config).__name__} is the config of no registered model family; register it with "
                      "dlp.register_family first.")


def list_presets(family: str | None = None) -> list[str]:
    """The preset names (of one family, if given)."""
    _load_builtin()
    return sorted(name for name, preset in _PRESETS.items() if family is None or preset.family == family)


def get_preset(name: str) -> Preset:
    _load_builtin()
    try:
        return _PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; available presets: {', '.join(sorted(_PRESETS))}.") from None


def create_model(name: str, **overrides: Any):
    """Build a model from a preset or a family name (the family's default config), overriding any config field.

    >>> model = create_model("celeba", n_kp_enc=50)
    >>> model.config.n_kp_enc
    50
    """
    _load_builtin()
    if name in _PRESETS:
        preset = _PRESETS[name]
        return get_family(preset.family).build_model(preset.model_config(**overrides))
    if name in _FAMILIES:
        family = _FAMILIES[name]
        return family.build_model(family.config_class.from_dict(overrides))
    raise ConfigError(f"{name!r} is neither a preset nor a model family; presets: {', '.join(sorted(_PRESETS))}; "
                      f"families: {', '.join(sorted(_FAMILIES))}.")
