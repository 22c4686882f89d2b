"""Compatibility with the official DLPv2/DDLP implementation (taldatech/ddlp: `ObjectDLP`, `ObjectDynamicsDLP`).

* Official hyper-parameters <-> `DLPv2Config` / `DDLPConfig` (`config_from_official_hparams`, `official_hparams`).
* Official state dicts <-> our models: every official key is generated from the model's structure by the official
  naming rules (ConvBlock `conv_{cin}_to_{cout}` / `grouupnorm_{cout}` -- the typo is theirs --, the executed
  `KeyPointCNNOriginal` block names after the `add_module` collision, `conv_to_{n}` decoder names, the aliased
  `fg_module.object_dec.decode.*` and `fg_module.particle_mixer.mixer.{0,1}.fn.*` keys), in the official key order;
  conversion checks keys and shapes strictly and names every missing or unexpected key.
* The parity contract (spec §0) used by `tools/parity_check_v2.py` and our tests: `load_official`,
  `official_outputs`, `official_loss`, `official_param_names`, `official_rollout`.

A DDLP (`ObjectDynamicsDLP`) is recognised by a `dyn_module.` key or a DDLP-only hyper-parameter (`timestep_horizon`,
...): its state dict is DLPv2's fg/bg keys followed by `dyn_module.*` (PINT, with the causal-mask buffers), and its
per-frame outputs are flattened to the official `[B*T, ...]` (row b * T + t).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Iterator, Mapping, NamedTuple

import torch
from torch import nn

from dlp.compat.official import OfficialCheckpointError
from dlp.config import ConfigError
from dlp.models.ddlp.config import DDLPConfig
from dlp.models.ddlp.losses import ddlp_loss
from dlp.models.ddlp.model import DDLP
from dlp.models.dlpv2.config import DLPv2Config
from dlp.models.dlpv2.layers import ConvBlock, KeypointCNN
from dlp.models.dlpv2.losses import dlpv2_loss
from dlp.models.dlpv2.model import DLPv2

__all__ = [
    "OfficialCheckpointError",
    "UnsupportedOfficialConfiguration",
    "config_from_official_hparams",
    "from_official_state_dict",
    "load_official",
    "official_hparams",
    "official_loss",
    "official_outputs",
    "official_param_names",
    "official_rollout",
    "official_state_dict_entries",
    "to_official_state_dict",
]

# ------------------------------------------------------------------------------------------------------------------
# Official hyper-parameters
# `ObjectDLP.__init__` keyword arguments and their defaults (spec §2.1).
OFFICIAL_DLPV2_DEFAULTS: dict[str, Any] = {
    "cdim": 3, "enc_channels": (16, 16, 32), "prior_channels": (16, 16, 32), "image_size": 64, "n_kp": 1,
    "pad_mode": "replicate", "sigma": 1.0, "dropout": 0.0, "patch_size": 16, "n_kp_enc": 20, "n_kp_prior": 20,
    "learned_feature_dim": 16, "bg_learned_feature_dim": None, "kp_range": (-1, 1), "kp_activation": "tanh",
    "anchor_s": 0.25, "use_tracking": False, "use_resblock": False, "scale_std": 0.3, "offset_std": 0.2,
    "obj_on_alpha": 0.1, "obj_on_beta": 0.1, "use_correlation_heatmaps": False, "enable_enc_attn": False,
    "filtering_heuristic": "variance",
}
# Official options that accept a single value here (the official code has no other working value, or we do not
# implement it).
_FIXED = {"n_kp": 1, "kp_range": (-1, 1), "kp_activation": "tanh", "use_resblock": False, "enable_enc_attn": False}
# Keys that only `ObjectDynamicsDLP` takes, and its defaults (spec §4.1): `ObjectDLP`'s without `use_tracking`, with
# correlation maps on.
_DDLP_KEYS = {"timestep_horizon", "predict_delta", "pint_layers", "pint_heads", "pint_dim"}
OFFICIAL_DDLP_DEFAULTS: dict[str, Any] = {
    **{k: v for k, v in OFFICIAL_DLPV2_DEFAULTS.items() if k != "use_tracking"},
    "use_correlation_heatmaps": True, "predict_delta": True, "timestep_horizon": 10, "pint_layers": 6,
    "pint_heads": 8, "pint_dim": 256,
}


class UnsupportedOfficialConfiguration(OfficialCheckpointError):
    """Official hyper-parameters that the official code itself cannot run (a DDLP with the particle-filter mixer,
    spec §8 item 3), so there is nothing to be compatible with."""


def _is_ddlp(hparams: Mapping[str, Any] | None = None, state_dict: Mapping[str, Any] | None = None) -> bool:
    return bool(hparams and _DDLP_KEYS & set(hparams)) or bool(
        state_dict and any(key.startswith("dyn_module.") for key in state_dict))


def config_from_official_hparams(hparams: Mapping[str, Any], *, num_static_frames: int = 4) -> DLPv2Config:
    """A `DLPv2Config` from the official `ObjectDLP` keyword arguments, or a `DDLPConfig` from the
    `ObjectDynamicsDLP` ones (recognised by a DDLP-only argument such as `timestep_horizon`); missing arguments take
    the official defaults.

    `dropout` is accepted and ignored (the official model stores it but never uses it; PINT's dropout is fixed at 0.1),
    and so is `use_tracking` (it only changes the handling of 5-D video input, which `DLPv2` does not take; the weights
    are the same). Any `pad_mode` other than 'zeros' means replication padding, as officially.
    num_static_frames: DDLP's, not a constructor argument officially (it comes from the training config; default 4).
    """
    ddlp = _is_ddlp(hparams)
    defaults, cls = (OFFICIAL_DDLP_DEFAULTS, "ObjectDynamicsDLP") if ddlp else (OFFICIAL_DLPV2_DEFAULTS, "ObjectDLP")
    if ddlp and hparams.get("filtering_heuristic", defaults["filtering_heuristic"]) == "none":
        raise UnsupportedOfficialConfiguration(
            "filtering_heuristic='none' (the particle-filter mixer) is impossible for DDLP (ObjectDynamicsDLP): the "
            "official DDLP has no mixer and crashes with it (spec §8 item 3).")
    unknown = sorted(set(hparams) - set(defaults))
    if unknown:
        raise OfficialCheckpointError(f"unknown official {cls} hyper-parameters {unknown}; the valid ones are "
                                      f"{sorted(defaults)}.")
    h = {**defaults, **hparams}
    for key, supported in _FIXED.items():
        value = tuple(h[key]) if isinstance(h[key], (list, tuple)) else h[key]
        if value != supported:
            raise OfficialCheckpointError(f"official option {key}={h[key]!r} is not supported (only {supported!r}).")
    dynamics = dict(
        timestep_horizon=int(h["timestep_horizon"]), num_static_frames=num_static_frames,
        pint_layers=int(h["pint_layers"]), pint_heads=int(h["pint_heads"]), pint_dim=int(h["pint_dim"]),
        predict_delta=bool(h["predict_delta"]),
    ) if ddlp else {}
    try:
        return (DDLPConfig if ddlp else DLPv2Config)(
            **dynamics,
            image_size=int(h["image_size"]),
            in_channels=int(h["cdim"]),
            enc_channels=tuple(int(c) for c in h["enc_channels"]),
            prior_channels=tuple(int(c) for c in h["prior_channels"]),
            n_kp_enc=int(h["n_kp_enc"]),
            n_kp_prior=int(h["n_kp_prior"]),
            patch_size=int(h["patch_size"]),
            learned_feature_dim=int(h["learned_feature_dim"]),
            bg_learned_feature_dim=None if h["bg_learned_feature_dim"] is None else int(h["bg_learned_feature_dim"]),
            anchor_s=float(h["anchor_s"]),
            pad_mode="zeros" if h["pad_mode"] == "zeros" else "replicate",
            sigma=float(h["sigma"]),
            scale_std=float(h["scale_std"]),
            offset_std=float(h["offset_std"]),
            obj_on_alpha=float(h["obj_on_alpha"]),
            obj_on_beta=float(h["obj_on_beta"]),
            use_correlation_heatmaps=bool(h["use_correlation_heatmaps"]),
            filtering_heuristic=str(h["filtering_heuristic"]),
        )
    except ConfigError as err:
        family = "DDLP" if ddlp else "DLPv2"
        raise OfficialCheckpointError(f"the official hyper-parameters are not a valid {family} model: {err}") from err


def official_hparams(config: DLPv2Config) -> dict[str, Any]:
    """The official `ObjectDLP` (or, for a `DDLPConfig`, `ObjectDynamicsDLP`) keyword arguments of a config (the
    inverse of `config_from_official_hparams`; DDLP's `num_static_frames` is not among them)."""
    if isinstance(config, DDLPConfig):
        hparams = _official_dlpv2_hparams(config)
        del hparams["use_tracking"]
        return hparams | {
            "predict_delta": config.predict_delta, "timestep_horizon": config.timestep_horizon,
            "pint_layers": config.pint_layers, "pint_heads": config.pint_heads, "pint_dim": config.pint_dim,
        }
    return _official_dlpv2_hparams(config)


def _official_dlpv2_hparams(config: DLPv2Config) -> dict[str, Any]:
    return {
        "cdim": config.in_channels, "n_kp": 1, "pad_mode": config.pad_mode, "sigma": config.sigma, "dropout": 0.0,
        "kp_range": (-1, 1), "kp_activation": "tanh", "use_resblock": False, "scale_std": config.scale_std,
        "offset_std": config.offset_std, "obj_on_alpha": config.obj_on_alpha, "obj_on_beta": config.obj_on_beta,
        "enable_enc_attn": False, "image_size": config.image_size, "enc_channels": tuple(config.enc_channels),
        "prior_channels": tuple(config.prior_channels), "patch_size": config.patch_size,
        "n_kp_enc": config.n_kp_enc, "n_kp_prior": config.n_kp_prior,
        "learned_feature_dim": config.learned_feature_dim, "bg_learned_feature_dim": config.bg_learned_feature_dim,
        "anchor_s": config.anchor_s, "use_tracking": False,
        "use_correlation_heatmaps": config.use_correlation_heatmaps,
        "filtering_heuristic": config.filtering_heuristic,
    }


# ------------------------------------------------------------------------------------------------------------------
# Key mapping
class Entry(NamedTuple):
    """One official state-dict key: the official name, our name, and whether it is an alias of an earlier key."""

    official: str
    ours: str
    alias: bool = False


def _params(ours: str, off: str, module: nn.Module, alias: bool = False) -> Iterator[Entry]:
    for key, _ in module.named_parameters(recurse=False):
        yield Entry(f"{off}.{key}", f"{ours}.{key}", alias)


def _conv_block(ours: str, off: str, block: ConvBlock, alias: bool = False) -> Iterator[Entry]:
    cin, cout = block.conv.in_channels, block.conv.out_channels
    yield from _params(f"{ours}.conv", f"{off}.main.conv_{cin}_to_{cout}", block.conv, alias)
    if block.norm is not None:
        yield from _params(f"{ours}.norm", f"{off}.main.grouupnorm_{cout}", block.norm, alias)


def _final_conv(ours: str, off: str, conv: nn.Conv2d, alias: bool = False) -> Iterator[Entry]:
    # The official 1x1 output convs are bias-only ConvBlocks: `{off}.main.conv_{cin}_to_{cout}`.
    yield from _params(ours, f"{off}.main.conv_{conv.in_channels}_to_{conv.out_channels}", conv, alias)


def _keypoint_cnn(ours: str, off: str, cnn: KeypointCNN) -> Iterator[Entry]:
    for i, name in enumerate(cnn.stage_names):  # the executed blocks, after the add_module collision (§1.2)
        yield from _conv_block(f"{ours}.blocks.{i}", f"{off}.main.{name}", cnn.blocks[i])
    yield from _params(f"{ours}.keymap", f"{off}.keymap", cnn.keymap)


def _sequential(ours: str, off: str, seq: nn.Sequential, alias: bool = False) -> Iterator[Entry]:
    for i, layer in enumerate(seq):
        yield from _params(f"{ours}.{i}", f"{off}.{i}", layer, alias)


def _decoder_blocks(ours: str, off: str, blocks: nn.Sequential, start: int, alias: bool = False) -> Iterator[Entry]:
    # Official names: `depth_up`, then `conv_to_{n}` counting sizes from an assumed start (4 for the background
    # decoder, 8 for the glimpse decoder), not the real sizes.
    for i, block in enumerate(blocks):
        upsamples = i == 0 and block.upsample
        name = "depth_up" if upsamples else f"conv_to_{start * 2 ** i}"
        yield from _conv_block(f"{ours}.{i}", f"{off}.{name}", block, alias)


def _glimpse_decoder_main(off: str, model: DLPv2, alias: bool) -> Iterator[Entry]:
    dec = model.foreground.glimpse_decoder
    yield from _decoder_blocks("foreground.glimpse_decoder.blocks", off, dec.blocks, 8, alias)
    yield from _final_conv("foreground.glimpse_decoder.final", f"{off}.final_conv", dec.final, alias)


def _dlpv2_entries(model: DLPv2) -> Iterator[Entry]:
    """The official `ObjectDLP` state dict, key by key in the official order (the DDLP layout starts the same)."""
    for ours, off in (("kp_prior_logvar", "logvar_kp"), ("scale_prior_mu", "mu_scale_prior"),
                      ("scale_prior_logvar", "logvar_scale_p"), ("offset_prior_logvar", "logvar_offset_p"),
                      ("obj_on_prior_a", "obj_on_a_p"), ("obj_on_prior_b", "obj_on_b_p")):
        yield Entry(off, ours)
    fg = model.foreground
    yield from _keypoint_cnn("foreground.prior.cnn", "fg_module.prior.enc", fg.prior.cnn)
    if fg.mixer is not None:
        o, p = "foreground.mixer", "fg_module.particle_mixer"
        yield from _keypoint_cnn(f"{o}.cnn", f"{p}.cnn", fg.mixer.cnn)
        yield from _sequential(f"{o}.token_mixing", f"{p}.conv", fg.mixer.token_mixing)
        yield from _sequential(f"{o}.channel_mixing", f"{p}.dense", fg.mixer.channel_mixing)
        yield from _params(f"{o}.position_projection", f"{p}.pos_projection", fg.mixer.position_projection)
        yield from _params(f"{o}.projection", f"{p}.conv_projection", fg.mixer.projection)
        # `mixer` = [PreNorm(conv), PreNorm(dense), LayerNorm, Linear]; PreNorm registers `fn` (the same modules as
        # `conv` / `dense`: alias keys) before `norm`.
        yield from _sequential(f"{o}.token_mixing", f"{p}.mixer.0.fn", fg.mixer.token_mixing, alias=True)
        yield from _params(f"{o}.token_norm", f"{p}.mixer.0.norm", fg.mixer.token_norm)
        yield from _sequential(f"{o}.channel_mixing", f"{p}.mixer.1.fn", fg.mixer.channel_mixing, alias=True)
        yield from _params(f"{o}.channel_norm", f"{p}.mixer.1.norm", fg.mixer.channel_norm)
        yield from _params(f"{o}.out_norm", f"{p}.mixer.2", fg.mixer.out_norm)
        yield from _params(f"{o}.to_weights", f"{p}.mixer.3", fg.mixer.to_weights)
    o, p, enc = "foreground.attribute_encoder", "fg_module.particle_attribute_enc", fg.attribute_encoder
    yield from _keypoint_cnn(f"{o}.cnn", f"{p}.cnn", enc.cnn)
    yield from _params(f"{o}.projection", f"{p}.projection", enc.projection)
    yield from _sequential(f"{o}.backbone", f"{p}.backbone", enc.backbone)
    # Official `x_head` predicts coordinate 0 (y) and `y_head` coordinate 1 (x) (§1.8).
    for ours, off in (("offset_y_head", "x_head"), ("offset_x_head", "y_head"), ("scale_head", "scale_xy_head"),
                      ("obj_on_head", "obj_on_head"), ("depth_head", "depth_head")):
        yield from _params(f"{o}.{ours}", f"{p}.{off}", getattr(enc, ours))
    o, p, enc = "foreground.features_encoder", "fg_module.particle_features_enc", fg.features_encoder
    yield from _keypoint_cnn(f"{o}.cnn", f"{p}.cnn", enc.cnn)
    yield from _params(f"{o}.projection", f"{p}.projection", enc.projection)
    yield from _sequential(f"{o}.backbone", f"{p}.backbone", enc.backbone)
    yield from _params(f"{o}.head", f"{p}.features_head", enc.head)
    yield from _sequential("foreground.glimpse_decoder.fc", "fg_module.object_dec.fc", fg.glimpse_decoder.fc)
    yield from _glimpse_decoder_main("fg_module.object_dec.main", model, alias=False)
    yield from _glimpse_decoder_main("fg_module.object_dec.decode", model, alias=True)  # same Sequential, twice

    bg = model.background
    yield from _keypoint_cnn("background.encoder_cnn", "bg_module.bg_cnn_enc", bg.encoder_cnn)
    yield from _sequential("background.encoder_mlp", "bg_module.bg_enc", bg.encoder_mlp)
    yield from _sequential("background.latent_mlp", "bg_module.latent_to_feat_map.mlp", bg.latent_mlp)
    for i, block in enumerate(bg.latent_upsample):
        yield from _conv_block(f"background.latent_upsample.{i}", f"bg_module.latent_to_feat_map.cnn.depth_up_{i}",
                               block)
    yield from _decoder_blocks("background.decoder", "bg_module.dec.main", bg.decoder, 4)
    yield from _final_conv("background.final", "bg_module.dec.final_conv", bg.final)


def _dynamics_entries(model: DDLP) -> Iterator[Entry]:
    """PINT's official keys (`dyn_module.*`, spec §9), after the DLPv2 ones."""
    dyn = model.dynamics
    o, p = "dynamics.particle_projection", "dyn_module.particle_projection"
    for name in ("xy_projection", "scale_projection", "obj_on_projection", "depth_projection", "features_projection",
                 "particle_projection", "bg_features_projection"):
        yield from _sequential(f"{o}.{name}", f"{p}.{name}", getattr(dyn.particle_projection, name))
    o, p = "dynamics.particle_transformer", "dyn_module.particle_transformer"
    for i, block in enumerate(dyn.particle_transformer.blocks):
        ob, pb = f"{o}.blocks.{i}", f"{p}.blocks.{i}"
        yield from _params(f"{ob}.ln1", f"{pb}.ln1", block.ln1)
        yield from _params(f"{ob}.ln2", f"{pb}.ln2", block.ln2)
        yield Entry(f"{pb}.attn.mask", f"{ob}.attn.mask")  # the causal-mask buffer tril(ones(Tm, Tm))
        for name in ("key", "query", "value", "proj"):
            yield from _params(f"{ob}.attn.{name}", f"{pb}.attn.{name}", getattr(block.attn, name))
        yield Entry(f"{pb}.attn.rel_pos_bias.rel_pos_bias", f"{ob}.attn.time_bias")
        yield Entry(f"{pb}.attn.rel_pos_bias.particle_rel_pos_bias", f"{ob}.attn.token_bias")
        yield from _params(f"{ob}.fc", f"{pb}.mlp.fc_1", block.fc)
        yield from _params(f"{ob}.proj", f"{pb}.mlp.proj", block.proj)
    yield from _params(f"{o}.ln_f", f"{p}.ln_f", dyn.particle_transformer.ln_f)
    yield from _params(f"{o}.head", f"{p}.head", dyn.particle_transformer.head)
    o, p, dec = "dynamics.particle_decoder", "dyn_module.particle_decoder", dyn.particle_decoder
    yield from _sequential(f"{o}.backbone", f"{p}.backbone", dec.backbone)
    # As in the encoder, official `x_head` predicts coordinate 0 (y) and `y_head` coordinate 1 (x).
    for ours, off in (("offset_y_head", "x_head"), ("offset_x_head", "y_head"), ("scale_head", "scale_xy_head"),
                      ("obj_on_head", "obj_on_head"), ("depth_head", "depth_head"),
                      ("features_head", "features_head"), ("bg_features_head", "bg_features_head")):
        yield from _params(f"{o}.{ours}", f"{p}.{off}", getattr(dec, ours))


def official_state_dict_entries(model: DLPv2 | DDLP) -> list[Entry]:
    """Every official state-dict key of `model` in the official order, with our key (aliases included)."""
    if not isinstance(model, (DLPv2, DDLP)):
        raise TypeError(f"expected a DLPv2 or DDLP model, got {type(model).__name__}.")
    entries = list(_dlpv2_entries(model))
    if isinstance(model, DDLP):
        entries += list(_dynamics_entries(model))
    ours = set(model.state_dict())
    covered = {e.ours for e in entries}
    if covered != ours:  # a structural change in the model that this table does not know about
        raise RuntimeError(f"official key table out of date: {sorted(ours ^ covered)}")
    return entries


def official_state_dict_names(model: DLPv2 | DDLP) -> dict[str, str]:
    """Map every key of `model.state_dict()` to its (first-registered) official key."""
    return {e.ours: e.official for e in official_state_dict_entries(model) if not e.alias}


def official_param_names(model: DLPv2 | DDLP) -> dict[str, str]:
    """Map each of the model's parameter names to its official key (aliases: the first-registered name, e.g.
    `fg_module.object_dec.main.*`, `fg_module.particle_mixer.conv.*`)."""
    names = official_state_dict_names(model)
    return {name: names[name] for name, _ in model.named_parameters()}


def _plural(items: list[str]) -> str:
    return ", ".join(items[:12]) + (f" and {len(items) - 12} more" if len(items) > 12 else "")


def from_official_state_dict(model: DLPv2 | DDLP, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Translate an official state dict into ours, checking keys, shapes and aliases strictly."""
    if _is_ddlp(state_dict=state_dict) and isinstance(model, DLPv2):
        raise OfficialCheckpointError("the state dict is a DDLP (ObjectDynamicsDLP) checkpoint (it has dyn_module.* "
                                      "keys) but the model is a DLPv2; build a DDLP from its hyper-parameters.")
    if isinstance(model, DDLP) and not _is_ddlp(state_dict=state_dict):
        raise OfficialCheckpointError("the state dict is a DLPv2 (ObjectDLP) checkpoint (no dyn_module.* keys) but "
                                      "the model is a DDLP; build a DLPv2 from its hyper-parameters.")
    entries = official_state_dict_entries(model)
    expected = [e.official for e in entries]
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in set(expected)]
    if missing or unexpected:
        parts = ([f"missing keys {_plural(missing)}"] if missing else []) + (
            [f"unexpected keys {_plural(unexpected)}"] if unexpected else [])
        raise OfficialCheckpointError(
            "the official state dict does not match this configuration (" + "; ".join(parts) + "); build the model "
            "from the hyper-parameters the checkpoint was trained with (hparams.json).")
    ours_state = model.state_dict()
    primary = {e.ours: e.official for e in entries if not e.alias}
    converted: dict[str, torch.Tensor] = {}
    for entry in entries:
        tensor = state_dict[entry.official]
        if tuple(tensor.shape) != tuple(ours_state[entry.ours].shape):
            raise OfficialCheckpointError(
                f"official key {entry.official} has shape {list(tensor.shape)} but this configuration expects "
                f"{list(ours_state[entry.ours].shape)}; check the hyper-parameters against the checkpoint's.")
        if entry.alias:
            if not torch.equal(tensor, state_dict[primary[entry.ours]]):
                raise OfficialCheckpointError(f"{entry.official} differs from {primary[entry.ours]}, which the "
                                              "official model stores as the same tensor; the checkpoint is corrupt.")
        else:
            converted[entry.ours] = tensor
    return converted


def to_official_state_dict(model: DLPv2 | DDLP) -> dict[str, torch.Tensor]:
    """Our weights under the official keys, in the official order, aliases included (sharing storage)."""
    state = model.state_dict()
    return {e.official: state[e.ours] for e in official_state_dict_entries(model)}


# ------------------------------------------------------------------------------------------------------------------
# Parity contract (spec §0)
def load_official(state_dict: Mapping[str, torch.Tensor], hparams: Mapping[str, Any]) -> DLPv2 | DDLP:
    """Build our model from the official constructor keyword arguments (`ObjectDLP(**hparams)` -> `DLPv2`,
    `ObjectDynamicsDLP(**hparams)` -> `DDLP`) and load an official state dict strictly. Returns the model in train
    mode."""
    config = config_from_official_hparams(hparams)
    model = DDLP(config) if isinstance(config, DDLPConfig) else DLPv2(config)
    model.load_state_dict(from_official_state_dict(model, state_dict), strict=True)
    return model.train()


def _outputs_dict(out, warmup: bool) -> dict[str, torch.Tensor]:
    b = out.z.shape[0]
    return {
        "kp_p": out.kp_prior, "mu": out.anchors, "logvar": torch.zeros_like(out.anchors),
        "z_base": out.anchors.detach() if warmup else out.anchors,  # official: detached in warm-up, `mu` is not
        "z": out.z, "mu_offset": out.mu_offset, "logvar_offset": out.logvar_offset,
        "mu_scale": out.mu_scale, "logvar_scale": out.logvar_scale, "z_scale": out.z_scale,
        "mu_depth": out.mu_depth, "logvar_depth": out.logvar_depth, "z_depth": out.z_depth,
        "obj_on_a": out.obj_on_a, "obj_on_b": out.obj_on_b, "obj_on": out.obj_on,
        "mu_features": out.mu_features, "logvar_features": out.logvar_features, "z_features": out.z_features,
        "mu_bg": out.mu_bg, "logvar_bg": out.logvar_bg, "z_bg": out.z_bg,
        "z_kp_bg": torch.zeros(b, 1, 2, device=out.z.device, dtype=out.z.dtype),
        "cropped_objects_original": out.glimpses, "dec_objects_original": out.dec_glimpses,
        "dec_objects": out.dec_objects, "alpha_masks": out.alpha_masks, "bg": out.bg, "rec": out.rec,
    }


def _ddlp_outputs_dict(out, warmup: bool) -> dict[str, torch.Tensor]:
    """DDLP's official keys: the per-frame outputs flattened to [B*T, ...] (row b * T + t), PINT's as [B, T-1, ...]."""
    per_frame = {
        name: value.flatten(0, 1) for name, value in vars(out).items() if name != "dynamics"
    }
    pred = out.dynamics
    return _outputs_dict(SimpleNamespace(**per_frame), warmup) | {
        "mu_dyn": pred.mu, "logvar_dyn": pred.logvar, "mu_scale_dyn": pred.mu_scale,
        "logvar_scale_dyn": pred.logvar_scale, "mu_depth_dyn": pred.mu_depth, "logvar_depth_dyn": pred.logvar_depth,
        "obj_on_a_dyn": pred.obj_on_a, "obj_on_b_dyn": pred.obj_on_b, "mu_features_dyn": pred.mu_features,
        "logvar_features_dyn": pred.logvar_features, "mu_bg_dyn": pred.mu_bg, "logvar_bg_dyn": pred.logvar_bg,
    }


def official_outputs(model: DLPv2 | DDLP, x: torch.Tensor, *, warmup: bool = False, noisy: bool = False,
                     num_static_frames: int = 4) -> dict[str, torch.Tensor]:
    """The official deterministic forward (`deterministic=True`, no background masks from the foreground, the prior
    trained; DDLP: `forward_dyn=True` and `num_static_frames`) under the official output keys, in the model's current
    mode (a DDLP in train mode applies PINT's dropout). `num_static_frames` is ignored for DLPv2."""
    if isinstance(model, DDLP):
        out = model(x, deterministic=True, warmup=warmup, noisy=noisy, num_static_frames=num_static_frames)
        return _ddlp_outputs_dict(out, warmup)
    return _outputs_dict(model(x, deterministic=True, warmup=warmup, noisy=noisy), warmup)


def _loss_dict(terms) -> dict[str, torch.Tensor]:
    names = {
        "loss": terms.loss, "loss_rec": terms.rec, "kl": terms.kl, "loss_kl_kp": terms.kl_kp,
        "loss_kl_feat": terms.kl_feat, "loss_kl_obj_on": terms.kl_obj_on, "loss_kl_scale": terms.kl_scale,
        "loss_kl_depth": terms.kl_depth, "obj_on_l1": terms.obj_on_l1, "psnr": terms.psnr,
        "loss_kl_kp_base": terms.kl_kp_base, "loss_kl_kp_offset": terms.kl_kp_offset,
        "loss_kl_feat_obj": terms.kl_feat_obj, "loss_kl_feat_bg": terms.kl_feat_bg,
    }
    if hasattr(terms, "kl_dyn"):  # DDLP
        names |= {
            "kl_dyn": terms.kl_dyn, "loss_kl_kp_dyn": terms.kl_kp_dyn, "loss_kl_obj_on_dyn": terms.kl_obj_on_dyn,
            "loss_kl_scale_dyn": terms.kl_scale_dyn, "loss_kl_depth_dyn": terms.kl_depth_dyn,
            "loss_kl_features_dyn": terms.kl_features_dyn, "loss_kl_bg_dyn": terms.kl_bg_dyn,
        }
    return names


def official_loss(model: DLPv2 | DDLP, x: torch.Tensor, *, warmup: bool = False, noisy: bool = False,
                  beta_rec: float, beta_kl: float, kl_balance: float, beta_dyn: float | None = None,
                  beta_dyn_rec: float | None = None, num_static_frames: int = 4,
                  dynamic_discount: list[float] | None = None) -> dict[str, torch.Tensor]:
    """The official deterministic forward followed by `calc_elbo` with the MSE reconstruction loss (§3, §4.6), as
    0-dim tensors under the official names (plus the extra terms `loss_kl_kp_base`, ...). `loss` is differentiable.

    DDLP: `num_static_frames` goes to both the forward and the objective (as `train_ddlp.py` does); `beta_dyn` is
    required, `beta_dyn_rec` defaults to the official function default 0.1, `dynamic_discount` to all ones. The DDLP
    arguments are ignored for DLPv2."""
    if isinstance(model, DDLP):
        if beta_dyn is None:
            raise ValueError("official_loss of a DDLP needs beta_dyn (the weight of the dynamics KL).")
        out = model(x, deterministic=True, warmup=warmup, noisy=noisy, num_static_frames=num_static_frames)
        terms = ddlp_loss(out, x, warmup=warmup, noisy=noisy, beta_rec=beta_rec, beta_kl=beta_kl, beta_dyn=beta_dyn,
                          beta_dyn_rec=0.1 if beta_dyn_rec is None else beta_dyn_rec, kl_balance=kl_balance,
                          num_static_frames=num_static_frames, dynamic_discount=dynamic_discount,
                          priors=model.priors())
        return _loss_dict(terms)
    out = model(x, deterministic=True, warmup=warmup, noisy=noisy)
    terms = dlpv2_loss(out, x, warmup=warmup, noisy=noisy, beta_rec=beta_rec, beta_kl=beta_kl,
                       kl_balance=kl_balance, priors=model.priors())
    return _loss_dict(terms)


def official_rollout(model: DDLP, x: torch.Tensor, cond_steps: int, horizon: int) -> torch.Tensor:
    """DDLP's deterministic video rollout (`sample(x, num_steps=horizon, cond_steps=cond_steps,
    deterministic=True)`, §4.8) on x [B, cond_steps + horizon, C, H, W] (only the first cond_steps frames are read):
    [B, cond_steps + horizon, C, H, W], the conditioning frames' reconstructions followed by the predictions,
    unclamped. DLPv2 has none."""
    if not isinstance(model, DDLP):
        raise TypeError("official_rollout is DDLP's video prediction; DLPv2 models have no dynamics.")
    if x.shape[1] != cond_steps + horizon:  # the official `sample` asserts it
        raise ValueError(f"x must have cond_steps + horizon = {cond_steps + horizon} frames, got {x.shape[1]}.")
    return model.rollout(x, cond_steps, horizon, deterministic=True).frames
