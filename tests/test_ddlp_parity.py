"""Numerical parity of DDLP with the official `ObjectDynamicsDLP` (taldatech/ddlp), on ../shared/fixtures/parity-v2/.

Every record of `ddlp_tiny.pt` (eval, train with every gradient, noisy, warmup, the seeded train-mode record with PINT
dropout, and the rollout) is checked with the fixture README's measures and tolerances, `max(calibrated, floor)`:
outputs and rollout `max|ours - ref| / max|ref|`; losses relative (psnr absolute, dB); extra loss terms relative to
`max(|ref|, 1e-3 * max(|loss_kl_kp|, |loss_kl_feat|, |kl|))`; gradients per parameter `max|delta| <= t_max * max|g|`
and per group `||delta|| / ||g|| <= t_group`, structurally zero ones `<= 1e-5 max|g|`.
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
    official_rollout,
    to_official_state_dict,
)
from dlp.models.ddlp import DDLP, DDLPConfig
from tests.parity_v2 import check_losses_and_gradients, check_outputs, parameter_groups, scale_error, tolerance

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "parity-v2" / "ddlp_tiny.pt"
RECORDS = ("eval", "train", "noisy", "warmup", "train_dropout")

# The tracking encoder is a chain of small per-frame ops: one intra-op thread is much faster (and it is how the
# fixture was made).
pytestmark = [pytest.mark.skipif(not FIXTURE.is_file(), reason="parity-v2 fixtures not found next to the repo"),
              pytest.mark.usefixtures("single_thread")]


@pytest.fixture(scope="module")
def fx():
    return torch.load(FIXTURE, weights_only=True)





# ------------------------------------------------------------------------------------------------------------------
def test_load_official_builds_a_ddlp(fx):
    model = load_official(fx["state_dict"], fx["hparams"])
    assert isinstance(model, DDLP) and model.training
    cfg = model.config
    assert isinstance(cfg, DDLPConfig)
    assert (cfg.timestep_horizon, cfg.pint_layers, cfg.pint_heads, cfg.pint_dim, cfg.num_tokens) == (5, 2, 2, 32, 7)


def test_state_dict_round_trip_is_bit_identical(fx):
    model = load_official(fx["state_dict"], fx["hparams"])
    back = to_official_state_dict(model)
    ref = fx["state_dict"]
    assert list(back) == list(ref)  # same keys, same (official) order
    for key, value in ref.items():
        assert back[key].dtype == value.dtype, key
        assert torch.equal(back[key], value), key
    assert back["mu_scale_prior"].dtype == torch.float64
    mask = back["dyn_module.particle_transformer.blocks.1.attn.mask"]
    assert mask.shape == (1, 1, 1, 5, 1, 5) and torch.equal(mask.view(5, 5), torch.tril(torch.ones(5, 5)))
    assert back["fg_module.object_dec.decode.final_conv.main.conv_32_to_4.bias"].data_ptr() == \
        back["fg_module.object_dec.main.final_conv.main.conv_32_to_4.bias"].data_ptr()


def test_hparams_round_trip(fx):
    config = config_from_official_hparams(fx["hparams"], num_static_frames=2)
    assert official_hparams(config) == fx["hparams"]
    assert config.num_static_frames == 2 and config.use_correlation_heatmaps
    assert config_from_official_hparams({"timestep_horizon": 5, "patch_size": 8}).use_correlation_heatmaps  # default


def test_official_param_names_cover_every_parameter(fx):
    model = load_official(fx["state_dict"], fx["hparams"])
    names = official_param_names(model)
    assert set(names) == {name for name, _ in model.named_parameters()}
    record = fx["train"]
    assert sorted(names.values()) == sorted(set(record["grads"]) | set(record["grads_factored"]))


def test_strict_loading_names_the_problem(fx):
    model = load_official(fx["state_dict"], fx["hparams"])
    sd = dict(fx["state_dict"])
    mask = sd.pop("dyn_module.particle_transformer.blocks.0.attn.mask")
    with pytest.raises(OfficialCheckpointError, match=r"missing keys dyn_module\.particle_transformer\.blocks\.0"):
        from_official_state_dict(model, sd)
    sd["dyn_module.particle_transformer.blocks.0.attn.mask"] = mask
    sd["dyn_module.particle_decoder.bg_features_head.bias"] = torch.zeros(4)
    with pytest.raises(OfficialCheckpointError, match=r"bg_features_head\.bias has shape \[4\]"):
        from_official_state_dict(model, sd)
    dlpv2_only = {k: v for k, v in fx["state_dict"].items() if not k.startswith("dyn_module.")}
    with pytest.raises(OfficialCheckpointError, match="DLPv2 .* but the model is a DDLP"):
        from_official_state_dict(model, dlpv2_only)
    with pytest.raises(OfficialCheckpointError, match="impossible for DDLP"):
        config_from_official_hparams({**fx["hparams"], "filtering_heuristic": "none"})
    with pytest.raises(OfficialCheckpointError, match=r"unknown official ObjectDynamicsDLP hyper-parameters "
                                                      r"\['use_tracking'\]"):
        config_from_official_hparams({**fx["hparams"], "use_tracking": False})


@pytest.mark.parametrize("record", RECORDS)
def test_outputs(fx, record):
    check_outputs(fx, record)


@pytest.mark.parametrize("record", RECORDS)
def test_losses_and_gradients(fx, record):
    checked = check_losses_and_gradients(fx, record)
    if checked is None:
        return
    grads, expected = checked
    assert {g for g in parameter_groups(expected) if g.startswith("dyn_module.")} == {
        "dyn_module.particle_projection", "dyn_module.particle_transformer", "dyn_module.particle_decoder"}
    # The official depth head's second column is never read by the dynamics (logvar_depth_dyn = the mean head, spec
    # §8 item 1): its gradient is exactly zero in the reference and here.
    unused = expected["dyn_module.particle_decoder.depth_head.weight"][1]
    assert unused.abs().max().item() == 0.0
    assert grads["dyn_module.particle_decoder.depth_head.weight"][1].abs().max().item() == 0.0


def test_rollout(fx):
    ro = fx["rollout"]
    model = load_official(fx["state_dict"], fx["hparams"]).eval()
    frames = official_rollout(model, fx["x_rollout"], ro["cond_steps"], ro["horizon"])
    assert frames.shape == ro["frames"].shape
    err = scale_error(frames, ro["frames"])
    assert err <= tolerance(fx, "rollout", "rollout"), f"rollout: e = {err:.2e}"
    # The latent trajectories (diagnostics of the fixture) agree too.
    result = model.rollout(fx["x_rollout"], ro["cond_steps"], ro["horizon"])
    lat, p = ro["latents"], result.particles
    for ours, key in ((p.position, "z_pos"), (p.scale, "z_scale"), (p.obj_on, "z_obj_on"), (p.depth, "z_depth"),
                      (p.features, "z_features"), (p.bg_features, "z_bg_features")):
        assert scale_error(ours, lat[key]) <= tolerance(fx, "rollout", "rollout"), key
    with pytest.raises(ValueError, match="cond_steps \\+ horizon = 7"):
        official_rollout(model, fx["x_rollout"][:, :6], ro["cond_steps"], ro["horizon"])
