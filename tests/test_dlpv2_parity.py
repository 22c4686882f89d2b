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
    official_loss,
    official_outputs,
    official_param_names,
    to_official_state_dict,
)
from dlp.models.dlpv2.layers import correlation_maps
from dlp.models.dlpv2.modules import background_encoder_mask

FIXTURE_DIR = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "parity-v2"
DLPV2_FIXTURE = FIXTURE_DIR / "dlpv2_tiny.pt"
DDLP_FIXTURE = FIXTURE_DIR / "ddlp_tiny.pt"
FLOORS = {"outputs": 1e-4, "losses": 1e-4, "loss_terms_extra": 1e-3, "grad_max": 1e-2, "grad_group": 1e-2}
RECORDS = ("eval", "train", "noisy", "warmup")
DDLP_KEYS = ("predict_delta", "timestep_horizon", "pint_layers", "pint_heads", "pint_dim")

pytestmark = [pytest.mark.skipif(not DLPV2_FIXTURE.is_file(), reason="parity-v2 fixtures not found next to the repo"),
              pytest.mark.usefixtures("single_thread")]


@pytest.fixture(scope="module")
def fx():
    return torch.load(DLPV2_FIXTURE, weights_only=True)


def scale_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30)).item()


def tolerance(fx, record: str, kind: str, key: str | None = None) -> float:
    table = fx["tolerances"][record][kind]
    return max(table if key is None else table[key], FLOORS[kind])


def fresh_model(fx, record: str):
    model = load_official(fx["state_dict"], fx["hparams"])
    model.train(fx[record]["mode"] == "train")
    if fx[record]["seed"] is not None:
        torch.manual_seed(fx[record]["seed"])
    return model


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
    model = fresh_model(fx, record)
    with torch.no_grad():
        ours = official_outputs(model, fx["x"], **fx[record]["call_kwargs"])
    ref = fx[record]["outputs"]
    assert set(ref) <= set(ours)
    for key, value in ref.items():
        assert ours[key].shape == value.shape, key
        err = scale_error(ours[key], value)
        assert err <= tolerance(fx, record, "outputs", key), f"{record} {key}: e = {err:.2e}"


@pytest.mark.parametrize("record", RECORDS)
def test_losses_and_gradients(fx, record):
    rec = fx[record]
    model = fresh_model(fx, record)
    losses = official_loss(model, fx["x"], **rec["loss_kwargs"])
    for key, value in rec["losses"].items():
        diff = abs(losses[key].item() - value.item())
        err = diff if key == "psnr" else diff / abs(value.item())
        assert err <= tolerance(fx, record, "losses", key), f"{record} {key}: {err:.2e}"
    ref = rec["losses"]
    scale = 1e-3 * max(abs(ref["loss_kl_kp"].item()), abs(ref["loss_kl_feat"].item()), abs(ref["kl"].item()))
    for key, value in rec["loss_terms_extra"].items():
        err = abs(losses[key].item() - value.item()) / max(abs(value.item()), scale)
        assert err <= tolerance(fx, record, "loss_terms_extra", key), f"{record} {key}: {err:.2e}"
    if "grads" not in rec or not rec["grads"]:
        return
    losses["loss"].backward()
    names = official_param_names(model)
    grads = {names[n]: p.grad for n, p in model.named_parameters()}
    assert [k for k, g in grads.items() if g is None] == list(rec["params_without_grad"])
    expected = {k: v.double() for k, v in rec["grads"].items()}
    for key, factors in rec["grads_factored"].items():  # dL/dW = delta^T @ input over every call of the layer
        expected[key] = factors["delta"].double().T @ factors["input"].double()
    assert set(expected) == set(grads)
    g_max = max(g.abs().max().item() for g in expected.values())
    zero = set(fx["meta"]["grads_structurally_zero"])
    for key in zero:
        assert grads[key].abs().max().item() <= 1e-5 * g_max, key
    t_max = tolerance(fx, record, "grad_max")
    for key, value in expected.items():
        if key not in zero:
            worst = (grads[key].double() - value).abs().max().item()
            assert worst <= t_max * g_max, f"{key}: max|delta| = {worst / g_max:.2e} max|g|"
    groups: dict[str, list[str]] = {}
    for key in expected:
        groups.setdefault(".".join(key.split(".")[:2]), []).append(key)
    for group, keys in groups.items():
        delta = torch.cat([(grads[k].double() - expected[k]).flatten() for k in keys]).norm()
        norm = torch.cat([expected[k].flatten() for k in keys]).norm()
        rel = (delta / norm).item()
        assert rel <= tolerance(fx, record, "grad_group", group), f"{group}: ||delta||/||g|| = {rel:.2e}"


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
