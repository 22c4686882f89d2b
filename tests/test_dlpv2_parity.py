"""Numerical parity of DLPv2 with the official `ObjectDLP` (taldatech/ddlp), on ../shared/fixtures/parity-v2/.

Every record of `dlpv2_tiny.pt` (eval, train, noisy, warmup) is checked with the fixture README's measures and
tolerances, `max(calibrated, floor)`: outputs `max|ours - ref| / max|ref|`; losses relative (psnr absolute, dB); extra
loss terms relative to `max(|ref|, 1e-3 * max(|loss_kl_kp|, |loss_kl_feat|, |kl|))`; gradients per parameter
`max|delta| <= t_max * max|g|` and per group `||delta|| / ||g|| <= t_group`, structurally zero ones `<= 1e-5 max|g|`.
The DDLP fixture checks that the DLPv2 building blocks reproduce DDLP's per-frame encoder, decoder and background.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dlp.compat.ddlp import (
    OfficialCheckpointError,
    config_from_official_hparams,
    from_official_state_dict,
    load_official,
    official_hparams,
    official_param_names,
    to_official_state_dict,
)
from dlp.models.dlpv2.layers import correlation_maps
from dlp.models.dlpv2.modules import background_encoder_mask
from tests.parity_v2 import FLOORS, check_losses_and_gradients, check_outputs, scale_error

FIXTURE_DIR = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "parity-v2"
DLPV2_FIXTURE = FIXTURE_DIR / "dlpv2_tiny.pt"
DDLP_FIXTURE = FIXTURE_DIR / "ddlp_tiny.pt"
RECORDS = ("eval", "train", "noisy", "warmup")
DDLP_KEYS = ("predict_delta", "timestep_horizon", "pint_layers", "pint_heads", "pint_dim")

pytestmark = [pytest.mark.skipif(not DLPV2_FIXTURE.is_file(), reason="parity-v2 fixtures not found next to the repo"),
              pytest.mark.usefixtures("single_thread")]


@pytest.fixture(scope="module")
def fx():
    return torch.load(DLPV2_FIXTURE, weights_only=True)





# ------------------------------------------------------------------------------------------------------------------
def test_state_dict_round_trip_is_bit_identical(fx):
    model = load_official(fx["state_dict"], fx["hparams"])
    back = to_official_state_dict(model)
    ref = fx["state_dict"]
    assert list(back) == list(ref)  # same keys, same (official) order
    for key, value in ref.items():
        assert back[key].dtype == value.dtype, key
        assert torch.equal(back[key], value), key
    assert back["mu_scale_prior"].dtype == torch.float64
    # The aliases share storage with their first-registered keys, as in the official state dict.
    assert back["fg_module.object_dec.decode.final_conv.main.conv_32_to_4.bias"].data_ptr() == \
        back["fg_module.object_dec.main.final_conv.main.conv_32_to_4.bias"].data_ptr()
    assert back["fg_module.particle_mixer.mixer.0.fn.0.weight"].data_ptr() == \
        back["fg_module.particle_mixer.conv.0.weight"].data_ptr()


def test_hparams_round_trip(fx):
    config = config_from_official_hparams(fx["hparams"])
    assert official_hparams(config) == fx["hparams"]
    assert (config.glimpse_size, config.feature_map_size, config.num_patches, config.num_prior_kp) == (16, 8, 16, 16)


def test_official_param_names_cover_every_parameter(fx):
    model = load_official(fx["state_dict"], fx["hparams"])
    names = official_param_names(model)
    assert set(names) == {name for name, _ in model.named_parameters()}
    record = fx["train"]
    assert sorted(names.values()) == sorted(set(record["grads"]) | set(record["grads_factored"]))


def test_strict_loading_names_the_problem(fx):
    model = load_official(fx["state_dict"], fx["hparams"])
    sd = dict(fx["state_dict"])
    missing = sd.pop("fg_module.prior.enc.keymap.bias")
    with pytest.raises(OfficialCheckpointError, match=r"missing keys fg_module\.prior\.enc\.keymap\.bias"):
        from_official_state_dict(model, sd)
    sd["fg_module.prior.enc.keymap.bias"] = missing
    sd["fg_module.extra.weight"] = missing
    with pytest.raises(OfficialCheckpointError, match=r"unexpected keys fg_module\.extra\.weight"):
        from_official_state_dict(model, sd)
    del sd["fg_module.extra.weight"]
    sd["bg_module.bg_enc.4.bias"] = torch.zeros(3)
    with pytest.raises(OfficialCheckpointError, match=r"bg_module\.bg_enc\.4\.bias has shape \[3\]"):
        from_official_state_dict(model, sd)
    sd = dict(fx["state_dict"])
    sd["fg_module.particle_mixer.mixer.1.fn.0.bias"] = sd["fg_module.particle_mixer.dense.0.bias"] + 1
    with pytest.raises(OfficialCheckpointError, match=r"mixer\.1\.fn\.0\.bias differs from"):
        from_official_state_dict(model, sd)
    # DDLP hyper-parameters with the mixer: the official DDLP itself cannot run them (spec §8 item 3)
    with pytest.raises(OfficialCheckpointError, match=r"filtering_heuristic='none' .* is impossible for DDLP"):
        load_official(fx["state_dict"], {**fx["hparams"], "timestep_horizon": 5})
    with pytest.raises(OfficialCheckpointError, match="not supported"):
        config_from_official_hparams({**fx["hparams"], "n_kp": 2})


@pytest.mark.parametrize("record", RECORDS)
def test_outputs(fx, record):
    check_outputs(fx, record)


@pytest.mark.parametrize("record", RECORDS)
def test_losses_and_gradients(fx, record):
    check_losses_and_gradients(fx, record)


def test_prior_and_attribute_passes_match_the_extras(fx):
    """The diagnostics: all prior proposals and variances, and each attribute-encoder pass at the stored anchors."""
    model = load_official(fx["state_dict"], fx["hparams"]).eval()
    x, extras = fx["x"], fx["eval"]["extras"]
    with torch.no_grad():
        kp, var = model.foreground.prior(x)
        assert scale_error(kp, extras["prior_kp_all"].squeeze(2)) <= 1e-5
        assert scale_error(var, extras["prior_var_all"].squeeze(2)) <= 1e-4
        scale = None
        for i, anchors in enumerate(extras["attr_kp"]):
            attrs = model.foreground.attribute_encoder(x, anchors, scale)
            assert scale_error(attrs.cnn_input, extras["attr_cnn_inputs"][i]) <= 1e-4, i
            assert scale_error(attrs.mu_offset, extras["attr_offsets"][i]) <= 1e-4, i
            scale = attrs.mu_scale  # the second pass crops at the first pass's scales


@pytest.mark.skipif(not DDLP_FIXTURE.is_file(), reason="ddlp_tiny.pt not found")
def test_building_blocks_reproduce_ddlp_frames():
    """DDLP's tracking encoder calls the DLPv2 encoder per frame: frame 0 with the prior and two passes, frames t >= 1
    with one pass at the previous positions, scales and crops (correlation maps). Fed the reference's previous
    frame, our blocks reproduce every frame, the joint decoding and the background."""
    fx = torch.load(DDLP_FIXTURE, weights_only=True)
    hparams = {k: v for k, v in fx["hparams"].items() if k not in DDLP_KEYS}
    state = {k: v for k, v in fx["state_dict"].items() if not k.startswith("dyn_module.")}
    model = load_official(state, hparams).eval()
    fg = model.foreground
    out, tol, extras = fx["eval"]["outputs"], fx["tolerances"]["eval"]["outputs"], fx["eval"]["extras"]
    x = fx["x"]
    b, t_len = x.shape[:2]
    k, s = hparams["n_kp_enc"], extras["attr_cnn_inputs"][0].shape[-1]

    def frames(key):
        return out[key].view(b, t_len, *out[key].shape[1:])

    def check(key, ours, t):
        err = scale_error(ours, frames(key)[:, t])
        assert err <= max(tol[key], FLOORS["outputs"]), f"frame {t} {key}: e = {err:.2e}"

    with torch.no_grad():
        kp_prior = fg.prior_keypoints(x[:, 0])
        check("kp_p", kp_prior, 0)
        for t in range(t_len):
            if t == 0:
                post = fg.encode(x[:, 0], kp_prior, deterministic=True)
            else:
                previous = frames("cropped_objects_original")[:, t - 1].reshape(b * k, -1, s, s)
                post = fg.encode(x[:, t], frames("z")[:, t - 1], deterministic=True, refine=False,
                                 previous_scale=frames("z_scale")[:, t - 1], previous_objects=previous)
                corr = correlation_maps(x[:, t], extras["attr_kp"][t + 1], torch.sigmoid(frames("z_scale")[:, t - 1]),
                                        s, previous)
                assert scale_error(corr, extras["attr_cnn_inputs"][t + 1]) <= 1e-4
            for key, value in (("mu", post.anchors), ("z", post.z), ("mu_offset", post.mu_offset),
                               ("mu_scale", post.mu_scale), ("mu_depth", post.mu_depth), ("obj_on", post.obj_on),
                               ("mu_features", post.mu_features), ("cropped_objects_original", post.glimpses)):
                check(key, value, t)
        dec_glimpses, blend = fg.decode(out["z"], out["z_scale"], out["z_depth"], out["obj_on"], out["z_features"])
        assert scale_error(dec_glimpses, out["dec_objects_original"]) <= tol["dec_objects_original"]
        assert scale_error(blend.dec_objects, out["dec_objects"]) <= tol["dec_objects"]
        mask = background_encoder_mask(out["z"], out["obj_on"], hparams["anchor_s"], hparams["image_size"])
        mu_bg, _ = model.background.encode(x.flatten(0, 1), mask)
        assert scale_error(mu_bg, out["mu_bg"]) <= tol["mu_bg"]
        bg = model.background.decode(out["z_bg"])
        assert scale_error(bg, out["bg"]) <= tol["bg"]
        assert scale_error(blend.bg_mask * bg + blend.dec_objects, out["rec"]) <= tol["rec"]
