"""Compatibility with the official implementation (taldatech/deep-latent-particles-pytorch, `KeyPointVAE`).

* Official state dicts <-> our models: the official key of every parameter and buffer is generated from the model's
  structure by the official naming rules (ConvBlock `conv_{cin}_to_{cout}` / `bathcnorm_{cout}` -- the typo is
  theirs --, size-dependent block names, the duplicated `object_dec.decode.*` keys), so conversion checks keys
  strictly and names every missing or unexpected one.
* The parity contract used by our tests against the official fixtures: `load_official`, `official_outputs`,
  `official_loss`, `official_param_names`.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import torch

from dlp.models.dlp_v1.config import DLPConfig
from dlp.models.dlp_v1.layers import ConvBlock, KeypointCNN
from dlp.models.dlp_v1.model import DLP
from dlp.models.dlp_v1.objective import dlp_loss

_BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


class OfficialCheckpointError(ValueError):
    """An official state dict that does not match the model configuration."""


# ------------------------------------------------------------------------------------------------------------------
# Key mapping
def _conv_block(ours: str, off: str, block: ConvBlock) -> Iterator[tuple[str, str]]:
    cin, cout = block.conv.in_channels, block.conv.out_channels
    yield f"{ours}.conv.weight", f"{off}.main.conv_{cin}_to_{cout}.weight"
    for key in _BN_KEYS:
        yield f"{ours}.norm.{key}", f"{off}.main.bathcnorm_{cout}.{key}"


def _keypoint_cnn(ours: str, off: str, cnn: KeypointCNN, input_size: int) -> Iterator[tuple[str, str]]:
    names = ["in_block_1", "in_block_2"]
    size = input_size
    for i in range(2, len(cnn.blocks), 2):
        names += [f"conv_in_{size}_0", f"conv_in_{cnn.blocks[i].conv.out_channels}_1"]
        size //= 2
    for i, name in enumerate(names):
        yield from _conv_block(f"{ours}.blocks.{i}", f"{off}.main.{name}", cnn.blocks[i])
    for key in ("weight", "bias"):
        yield f"{ours}.keymap.{key}", f"{off}.keymap.{key}"


def _linear_stack(ours: str, off: str, indices=(0, 2, 4)) -> Iterator[tuple[str, str]]:
    for i in indices:
        for key in ("weight", "bias"):
            yield f"{ours}.{i}.{key}", f"{off}.{i}.{key}"


def _final_conv(ours: str, off: str, conv: torch.nn.Conv2d) -> Iterator[tuple[str, str]]:
    for key in ("weight", "bias"):
        yield f"{ours}.{key}", f"{off}.main.conv_{conv.in_channels}_to_{conv.out_channels}.{key}"


def _upsampling_decoder(ours: str, off: str, blocks, first_name: int) -> Iterator[tuple[str, str]]:
    # The official names count resolutions from an assumed start (8 for `dec`, 16 for `object_dec`), not real sizes.
    for i, block in enumerate(blocks):
        name = "depth_up" if i == 0 else f"conv_to_{first_name * 2 ** (i - 1)}"
        yield from _conv_block(f"{ours}.{i}", f"{off}.{name}", block)


def _key_pairs(model: DLP) -> Iterator[tuple[str, str]]:
    cfg = model.config
    yield from _keypoint_cnn("encoder", "enc", model.encoder, cfg.image_size)
    yield from _linear_stack("position_encoder.to_normal_stats", "to_normal_stats")
    if model.position_encoder.obj_on_head is not None:
        yield from _linear_stack("position_encoder.obj_on_head", "aux_enc")
    yield from _linear_stack("bg_encoder", "object_enc")
    if model.glimpse_encoder is not None:
        if model.glimpse_encoder.cnn is not None:
            yield from _keypoint_cnn("glimpse_encoder.cnn", "object_enc_sep.cnn", model.glimpse_encoder.cnn,
                                     cfg.glimpse_size)
        yield from _linear_stack("glimpse_encoder.fc", "object_enc_sep.fc")
    yield from _keypoint_cnn("prior.cnn", "prior.enc", model.prior.cnn, cfg.patch_size)
    for i in range(len(model.pointnet.layers)):
        for j, kind in ((0, "linear"), (1, "bn"), (3, "linear"), (4, "bn")):
            keys = ("weight", "bias") if kind == "linear" else _BN_KEYS
            for key in keys:
                yield f"pointnet.layers.{i}.mlp.{j}.{key}", f"pointnet.conv{i + 1}.mlp.{j}.{key}"
    yield from _linear_stack("pointnet.fc", "pointnet.fc", indices=(0,))
    for i, block in enumerate(model.pointnet.upsample):
        yield from _conv_block(f"pointnet.upsample.{i}", f"pointnet.cnn.depth_up_{i}", block)
    yield from _upsampling_decoder("decoder.blocks", "dec.main", model.decoder.blocks, 8)
    yield from _final_conv("decoder.final", "dec.final_conv", model.decoder.final)
    if model.config.is_object_model:
        yield from _linear_stack("glimpse_decoder.fc", "object_dec.fc", indices=(0, 2))
        yield from _upsampling_decoder("glimpse_decoder.blocks", "object_dec.main", model.glimpse_decoder.blocks, 16)
        yield from _final_conv("glimpse_decoder.final", "object_dec.main.final_conv", model.glimpse_decoder.final)


def official_state_dict_names(model: DLP) -> dict[str, str]:
    """Map every key of `model.state_dict()` to its official key (official order, no `object_dec.decode` aliases)."""
    if model.config.position_encoder != "heatmap":
        raise OfficialCheckpointError(
            f"position_encoder={model.config.position_encoder!r} is this library's extension and has no official "
            "weights layout; only models with the official 'heatmap' encoder convert to or from official checkpoints."
        )
    mapping = dict(_key_pairs(model))
    ours = set(model.state_dict())
    if set(mapping) != ours:  # a structural change in the model that this table does not know about
        raise RuntimeError(f"official key table out of date: {sorted(ours ^ set(mapping))}")
    return mapping


def official_param_names(model: DLP) -> dict[str, str]:
    """Map each of the model's parameter names to its official key."""
    mapping = official_state_dict_names(model)
    return {name: mapping[name] for name, _ in model.named_parameters()}


def _decode_alias(official_key: str) -> str | None:
    prefix = "object_dec.main."
    return "object_dec.decode." + official_key[len(prefix):] if official_key.startswith(prefix) else None


def from_official_state_dict(model: DLP, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Translate an official state dict into ours, checking keys and shapes strictly."""
    mapping = official_state_dict_names(model)
    expected = set(mapping.values())
    aliases = {alias: key for key in expected if (alias := _decode_alias(key))}
    given = set(state_dict)
    missing = sorted(expected - given)
    unexpected = sorted(given - expected - set(aliases))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        raise OfficialCheckpointError(
            "the official state dict does not match this configuration: " + "; ".join(parts)
            + ". Pick the preset the checkpoint was trained with or fix the hyper-parameters with --set key=value."
        )
    ours_state = model.state_dict()
    converted = {}
    for ours, off in mapping.items():
        tensor = state_dict[off]
        if tensor.shape != ours_state[ours].shape:
            raise OfficialCheckpointError(
                f"official key {off} has shape {list(tensor.shape)} but this configuration expects "
                f"{list(ours_state[ours].shape)}; check n_kp_enc, learned_feature_dim, anchor_s and image_size."
            )
        alias = _decode_alias(off)
        if alias in state_dict and not torch.equal(state_dict[alias], tensor):
            raise OfficialCheckpointError(f"{alias} differs from its alias {off}; the checkpoint is inconsistent.")
        converted[ours] = tensor
    return converted


def to_official_state_dict(model: DLP) -> dict[str, torch.Tensor]:
    """Our weights under the official keys, including the duplicated `object_dec.decode.*` entries."""
    mapping = official_state_dict_names(model)
    state = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for ours, off in mapping.items():
        out[off] = state[ours]
    for ours, off in mapping.items():  # the official module registers the same Sequential twice
        if alias := _decode_alias(off):
            out[alias] = state[ours]
    return out


# ------------------------------------------------------------------------------------------------------------------
# Official hyper-parameters
# Official options that accept one value only (they are not part of `DLPConfig`).
_UNSUPPORTED = {"n_kp": 1, "use_logsoftmax": False, "dropout": 0.0, "learn_order": False, "kp_activation": "tanh"}


def config_from_official_hparams(hparams: Mapping[str, Any]) -> DLPConfig:
    """A `DLPConfig` from the official `KeyPointVAE` keyword arguments."""
    for key, supported in _UNSUPPORTED.items():
        if key in hparams and hparams[key] != supported:
            raise OfficialCheckpointError(f"official option {key}={hparams[key]!r} is not supported (only {supported!r}).")
    if tuple(float(v) for v in hparams.get("kp_range", (-1, 1))) != (-1.0, 1.0):
        raise OfficialCheckpointError(f"official option kp_range={hparams['kp_range']!r} is not supported (only (-1, 1)).")
    image_size = int(hparams.get("image_size", 128))
    patch_size = int(hparams.get("patch_size", 16))
    num_patches = (image_size // patch_size) ** 2
    use_object_dec = bool(hparams.get("use_object_dec", False))
    return DLPConfig(
        image_size=image_size,
        in_channels=int(hparams.get("cdim", 3)),
        enc_channels=tuple(hparams.get("enc_channels", (32, 64, 128, 256))),
        prior_channels=tuple(hparams.get("prior_channels", (16, 32, 64))),
        n_kp_enc=int(hparams.get("n_kp_enc", 10)),
        n_kp_prior=min(int(hparams.get("n_kp_prior", 20)), num_patches),  # the official model clamps silently
        patch_size=patch_size,
        learned_feature_dim=int(hparams.get("learned_feature_dim", 16)),
        anchor_s=float(hparams.get("anchor_s", 0.25)),
        sigma=float(hparams.get("sigma", 1.0)),
        dec_bone=str(hparams.get("dec_bone", "gauss_pointnetpp")),
        use_object_enc=use_object_dec or bool(hparams.get("use_object_enc", False)),
        use_object_dec=use_object_dec,
        exclusive_patches=bool(hparams.get("exclusive_patches", False)),
        mask_threshold=float(hparams.get("mask_threshold", 0.2)),
        pad_mode=str(hparams.get("pad_mode", "replicate")),
    )


# ------------------------------------------------------------------------------------------------------------------
# Parity contract
def load_official(state_dict: Mapping[str, torch.Tensor], hparams: Mapping[str, Any]) -> DLP:
    """Build our model from official `KeyPointVAE` keyword arguments and load an official state dict strictly."""
    model = DLP(config_from_official_hparams(hparams))
    model.load_state_dict(from_official_state_dict(model, state_dict), strict=True)
    return model


def official_outputs(model: DLP, x: torch.Tensor, warmup: bool = False, noisy_masks: bool = False
                     ) -> dict[str, torch.Tensor]:
    """The deterministic forward pass under the official output keys (absent ones omitted), in the current mode."""
    out = model(x, deterministic=True, warmup=warmup, noisy_masks=noisy_masks)
    official = {
        "kp_p": out.kp_prior,
        "rec": out.rec,
        "mu": out.mu,
        "logvar": out.logvar,
        "mu_features": out.mu_features,
        "logvar_features": out.logvar_features,
        "obj_on": out.obj_on,
        "dec_objects_original": out.dec_glimpses,
        "dec_objects": out.dec_objects,
        "cropped_objects_original": out.glimpses,
        # The official forward returns the decoder input only for object models.
        "gmap": out.gmap if model.config.is_object_model else None,
    }
    return {key: value for key, value in official.items() if value is not None}


def official_loss(model: DLP, x: torch.Tensor, beta_rec: float, beta_kl: float, kl_balance: float,
                  warmup: bool = False) -> dict[str, torch.Tensor]:
    """The official training loss (MSE reconstruction) of the deterministic forward pass, differentiable."""
    out = model(x, deterministic=True, warmup=warmup)
    terms = dlp_loss(out, x, beta_rec=beta_rec, beta_kl=beta_kl, kl_balance=kl_balance,
                     logvar_prior=model.config.logvar_prior, warmup=warmup)
    return {"loss": terms.loss, "loss_rec": terms.rec, "loss_kl_kp": terms.kl_kp, "loss_kl_feat": terms.kl_feat,
            "loss_kl": terms.kl}
