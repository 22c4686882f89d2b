"""DLPConfig / DLPTrainConfig validation, serialisation, older checkpoints' keys and the preset registry."""

from __future__ import annotations

import math

import pytest
import yaml

from dlp.config import ConfigError
from dlp.models.dlp_v1.config import DLPConfig, DLPTrainConfig
from dlp.registry import get_family, get_preset, list_presets
from tests.conftest import tiny_config


# ----------------------------------------------------------------------------------------------------------------
# One test per invalid DLPConfig
def test_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_glimpse_size_not_power_of_two():
    with pytest.raises(ConfigError, match=r"glimpse size .* = 6 is not a power of two >= 8"):
        tiny_config("masked", anchor_s=0.2)  # round(0.2 * 31) = 6


def test_glimpse_size_below_eight():
    with pytest.raises(ConfigError, match=r"= 4 is not a power of two >= 8"):
        tiny_config("masked", anchor_s=0.125)  # round(0.125 * 31) = 4


def test_object_decoder_glimpse_below_16():
    with pytest.raises(ConfigError, match=r"glimpse size must be >= 16, got 8"):
        tiny_config("object", anchor_s=0.25)  # round(0.25 * 31) = 8: fine for masked models, not for objects
    tiny_config("masked", anchor_s=0.25)


def test_image_size_not_divisible_by_patch_size():
    with pytest.raises(ConfigError, match=r"patch_size 12 does not divide image_size 32"):
        tiny_config("masked", patch_size=12)


def test_n_kp_prior_larger_than_number_of_patches():
    with pytest.raises(ConfigError, match=r"n_kp_prior=17 is larger than the 16 prior proposals"):
        tiny_config("masked", n_kp_prior=17)
    assert tiny_config("masked", n_kp_prior=16).n_kp_prior == 16


def test_unknown_dec_bone():
    with pytest.raises(ConfigError, match=r"dec_bone must be one of gauss_pointnetpp_feat, masked, .*, got 'gauss'"):
        tiny_config("masked", dec_bone="gauss")


@pytest.mark.parametrize("alias,official", [("masked", "gauss_pointnetpp_feat"), ("object", "gauss_pointnetpp"),
                                            ("gauss_pointnetpp_feat", "gauss_pointnetpp_feat"),
                                            ("gauss_pointnetpp", "gauss_pointnetpp")])
def test_dec_bone_aliases_map_to_official_names(alias, official):
    kind = "masked" if official.endswith("feat") else "object"
    cfg = tiny_config(kind, dec_bone=alias)
    assert cfg.dec_bone == official
    assert cfg.to_dict()["dec_bone"] == official


def test_feature_map_not_power_of_two():
    with pytest.raises(ConfigError, match=r"feature map is 24x24.*power of two >= 8"):
        tiny_config("masked", image_size=48)


def test_feature_map_smaller_than_eight():
    with pytest.raises(ConfigError, match=r"feature map is 4x4.*power of two >= 8"):
        tiny_config("masked", enc_channels=(8, 8, 8, 8))


def test_image_size_not_divisible_by_encoder_stride():
    with pytest.raises(ConfigError, match=r"image_size 36 is not divisible by 8"):
        tiny_config("masked", image_size=36, enc_channels=(8, 8, 8, 8))


def test_single_value_fields_are_not_public_but_older_checkpoints_load():
    # kp_range and kp_activation only ever accepted one value: they left the config, and the configs saved in older
    # checkpoints (which hold them, and `prior_anchored_positions`) still load.
    assert not {"kp_range", "kp_activation", "prior_anchored_positions"} & DLPConfig.field_names()
    legacy = {**tiny_config("object").to_dict(), "kp_range": [-1, 1], "kp_activation": "tanh",
              "prior_anchored_positions": True}
    del legacy["position_encoder"]
    assert DLPConfig.from_dict(legacy) == tiny_config("anchored")
    with pytest.raises(ConfigError, match=r"kp_range must be \(-1, 1\)"):
        DLPConfig.from_dict({**legacy, "kp_range": [0, 1]})
    with pytest.raises(ConfigError, match=r"kp_activation must be 'tanh'"):
        DLPConfig.from_dict({**legacy, "kp_activation": "sigmoid"})


def test_learned_feature_dim_zero():
    with pytest.raises(ConfigError, match=r"learned_feature_dim must be at least 1"):
        tiny_config("masked", learned_feature_dim=0)


def test_object_decoder_without_object_encoder():
    with pytest.raises(ConfigError, match=r"use_object_dec=True needs use_object_enc=True"):
        tiny_config("object", use_object_enc=False)


def test_prior_anchored_positions_need_an_object_model():
    with pytest.raises(ConfigError, match=r"position_encoder='prior_anchored' needs the object model"):
        tiny_config("masked", position_encoder="prior_anchored")


def test_prior_anchored_positions_need_a_proposal_per_particle():
    with pytest.raises(ConfigError, match=r"anchors each of the n_kp_enc=8 particles .* raise n_kp_prior"):
        tiny_config("anchored", n_kp_enc=8, n_kp_prior=6)


def test_feature_glimpse_with_odd_margin():
    # 128 px, F = 16: round(0.0625 * 127) = 8 (fine), but round(0.0625 * 15) = 1 cannot be centred on 16 cells
    with pytest.raises(ConfigError, match=r"feature-map glimpses of side 1 cannot be centred"):
        DLPConfig(image_size=128, enc_channels=(8, 8, 8, 8), anchor_s=0.0625, n_kp_prior=20)


def test_anchor_out_of_range():
    with pytest.raises(ConfigError, match=r"anchor_s must lie in \(0, 1\]"):
        tiny_config("masked", anchor_s=1.5)


def test_non_positive_integer_field():
    with pytest.raises(ConfigError, match=r"n_kp_enc must be a positive integer"):
        tiny_config("masked", n_kp_enc=0)


def test_unknown_keys_in_from_dict():
    data = {**tiny_config("masked").to_dict(), "n_particles": 5, "zzz": 1}
    with pytest.raises(ConfigError, match=r"unknown DLPConfig keys \['n_particles', 'zzz'\]"):
        DLPConfig.from_dict(data)


# ----------------------------------------------------------------------------------------------------------------
# Serialisation and derived sizes
@pytest.mark.parametrize("kind", ["object", "masked"])
def test_to_dict_from_dict_round_trip(kind):
    cfg = tiny_config(kind)
    data = cfg.to_dict()
    assert isinstance(data["enc_channels"], list) and "extra" not in data
    assert DLPConfig.from_dict(data) == cfg
    assert DLPConfig.from_dict(yaml.safe_load(yaml.safe_dump(data))) == cfg  # plain YAML types only
    assert cfg.replace(n_kp_enc=5).n_kp_enc == 5
    assert cfg.diff(cfg.replace(n_kp_enc=5)) == {"n_kp_enc": (4, 5)}


def test_derived_sizes():
    cfg = tiny_config("object")
    assert (cfg.feature_map_size, cfg.glimpse_size, cfg.feature_glimpse_size, cfg.num_patches) == (16, 16, 8, 16)
    assert cfg.is_object_model and not tiny_config("masked").is_object_model
    assert cfg.logvar_prior == pytest.approx(math.log(0.1**2))


# (object model, F, S, feature glimpse) as in dlp-v1-model.md §2.1
PRESET_SIZES = {
    "celeba": (False, 16, 16, 2),
    "celeba64": (False, 16, 8, 2),
    "clevrer": (True, 16, 32, 4),
    "traffic": (True, 16, 32, 4),
    "shapes": (True, 16, 16, 4),
}


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_builds_a_valid_config(name):
    preset = get_preset(name)
    family = get_family(preset.family)
    cfg = preset.model_config()
    assert isinstance(cfg, family.config_class)
    assert family.config_class.from_dict(cfg.to_dict()) == cfg
    train = preset.train_config()
    assert isinstance(train, family.train_config_class) and train.lr > 0
    assert family.train_config_class.from_dict(train.to_dict()) == train
    if name in PRESET_SIZES:
        assert (cfg.is_object_model, cfg.feature_map_size, cfg.glimpse_size, cfg.feature_glimpse_size) == \
            PRESET_SIZES[name]
    assert preset.model_config(n_kp_enc=7).n_kp_enc == 7


def test_presets_registry():
    assert set(PRESET_SIZES) <= set(list_presets())
    assert list_presets() == sorted(list_presets())
    with pytest.raises(ConfigError, match=r"unknown preset 'nope'; available presets: celeba"):
        get_preset("nope")
    with pytest.raises(ConfigError, match=r"unknown DLPConfig keys \['bogus'\]"):
        get_preset("shapes").model_config(bogus=1)


# ----------------------------------------------------------------------------------------------------------------
# TrainConfig
def test_train_config_negative_lr():
    with pytest.raises(ConfigError, match=r"learning rate must be positive, got -0.001"):
        DLPTrainConfig(lr=-1e-3)


def test_train_config_zero_lr():
    with pytest.raises(ConfigError, match=r"learning rate must be positive"):
        DLPTrainConfig(lr=0.0)


def test_train_config_zero_batch_size():
    with pytest.raises(ConfigError, match=r"batch size must be a positive integer, got 0"):
        DLPTrainConfig(batch_size=0)


def test_train_config_zero_epochs():
    with pytest.raises(ConfigError, match=r"number of epochs must be a positive integer, got 0"):
        DLPTrainConfig(num_epochs=0)


def test_train_config_unknown_key():
    with pytest.raises(ConfigError, match=r"unknown DLPTrainConfig keys \['learning_rate'\]"):
        DLPTrainConfig.from_dict({"learning_rate": 1e-3})


def test_train_config_unknown_loss():
    with pytest.raises(ConfigError, match=r"rec_loss_function must be one of mse, vgg, got 'l1'"):
        DLPTrainConfig(rec_loss_function="l1")


def test_train_config_round_trip():
    cfg = get_preset("celeba").train_config(batch_size=8)
    data = cfg.to_dict()
    assert isinstance(data["lr_milestones"], list)
    assert DLPTrainConfig.from_dict(yaml.safe_load(yaml.safe_dump(data))) == cfg
    assert cfg.batch_size == 8 and cfg.rec_loss_function == "vgg"


# ----------------------------------------------------------------------------------------------------------------
# Numbers that arrive as strings: PyYAML (YAML 1.1) reads `1e-3` -- no dot -- as the string '1e-3', which is what
# `--set sigma=1e-1` and a `dlp train --config` file with `lr: 1e-3` produce. They are coerced to the field's type;
# anything else is a ConfigError (a bare TypeError would escape the CLIs' ValueError handler).
def test_dlp_config_coerces_numeric_strings():
    cfg = tiny_config("masked", sigma="1e-1", n_kp_enc="5", exclusive_patches="false")
    assert cfg.sigma == 0.1 and isinstance(cfg.sigma, float)
    assert cfg.n_kp_enc == 5 and isinstance(cfg.n_kp_enc, int)
    assert cfg.exclusive_patches is False
    assert cfg == tiny_config("masked", sigma=0.1, n_kp_enc=5)


def test_dlp_config_rejects_non_numeric_strings():
    with pytest.raises(ConfigError, match=r"sigma must be a number, got 'wide'"):
        tiny_config("masked", sigma="wide")
    with pytest.raises(ConfigError, match=r"n_kp_enc must be an integer, got 4.5"):
        tiny_config("masked", n_kp_enc=4.5)


def test_train_config_coerces_numeric_strings():
    cfg = DLPTrainConfig(lr="1e-3", batch_size="8")
    assert cfg.lr == 1e-3 and cfg.batch_size == 8
    with pytest.raises(ConfigError, match=r"lr must be a number, got 'fast'"):
        DLPTrainConfig(lr="fast")
