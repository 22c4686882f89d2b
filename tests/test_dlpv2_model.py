"""DLPv2 on tiny CPU configs: forward/backward, encode/decode and editing, config validation, presets' layouts."""

from __future__ import annotations

import pytest
import torch

from dlp.config import ConfigError
from dlp.models.dlpv2 import PRESET_VALUES, DLPv2, DLPv2Config, dlpv2_loss
from dlp.models.dlpv2.layers import crop_glimpses, keypoint_cnn_layout, paste_glimpses, square_masks
from tests.parity_v2 import SPEC, parse_state_dict_listing

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny(**overrides) -> DLPv2Config:
    """32x32 images, 16 patches, 8x8 glimpses: a DLPv2 that runs in milliseconds."""
    base = dict(image_size=32, enc_channels=(8, 8), prior_channels=(8, 8), patch_size=8, n_kp_enc=4, n_kp_prior=6,
                learned_feature_dim=3, bg_learned_feature_dim=2, anchor_s=0.25)
    base.update(overrides)
    return DLPv2Config(**base)


def images(b: int = 2, size: int = 32) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(b, 3, size, size)


# ------------------------------------------------------------------------------------------------------------------
# Forward, backward, phases
@pytest.mark.parametrize("heuristic, corr", [("variance", False), ("variance", True), ("distance", False),
                                             ("none", False), ("none", True)])
def test_forward_backward_without_nans(heuristic, corr):
    cfg = tiny(filtering_heuristic=heuristic, use_correlation_heatmaps=corr,
               n_kp_prior=16 if heuristic == "none" else 6)
    torch.manual_seed(0)
    model = DLPv2(cfg)
    x = images()
    for deterministic, warmup, noisy in ((False, False, False), (True, False, False), (False, True, True),
                                         (False, False, True)):
        model.zero_grad()
        out = model(x, deterministic=deterministic, warmup=warmup, noisy=noisy)
        s = cfg.glimpse_size
        assert out.kp_prior.shape == (2, cfg.num_prior_kp, 2)
        assert out.z.shape == out.anchors.shape == out.z_scale.shape == (2, 4, 2)
        assert out.z_depth.shape == (2, 4, 1) and out.obj_on.shape == (2, 4)
        assert out.z_features.shape == (2, 4, 3) and out.z_bg.shape == (2, 2)
        assert out.glimpses.shape == (2, 4, 3, s, s) and out.dec_glimpses.shape == (2, 4, 4, s, s)
        assert out.alpha_masks.shape == (2, 4, 1, 32, 32) and out.rec.shape == out.bg.shape == x.shape
        terms = dlpv2_loss(out, x, warmup=warmup, noisy=noisy, beta_rec=1.0, beta_kl=0.1, kl_balance=1e-3,
                           config=cfg)
        assert all(torch.isfinite(v).all() for v in vars(terms).values())
        terms.loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        if warmup:  # the warm-up reconstruction compares glimpses; the official psnr is then 0
            assert terms.psnr.item() == 0.0


def test_seeded_stochastic_forward_reproduces():
    model = DLPv2(tiny())
    x = images()
    torch.manual_seed(5)
    a = model(x, noisy=True)
    torch.manual_seed(5)
    b = model(x, noisy=True)
    assert torch.equal(a.rec, b.rec) and torch.equal(a.obj_on, b.obj_on) and torch.equal(a.z_scale, b.z_scale)
    c = model(x, noisy=True)
    assert not torch.equal(a.rec, c.rec)


def test_perceptual_loss_is_scaled_and_warmup_compares_glimpses():
    cfg = tiny()
    model = DLPv2(cfg)
    x = images()
    out = model(x, deterministic=True)
    mse = dlpv2_loss(out, x, warmup=False, noisy=False, beta_rec=1.0, beta_kl=0.1, kl_balance=1e-3, config=cfg)
    same = dlpv2_loss(out, x, warmup=False, noisy=False, beta_rec=1.0, beta_kl=0.1, kl_balance=1e-3, config=cfg,
                      rec_loss=lambda a, b: ((a - b) ** 2).flatten(1).sum(-1))
    torch.testing.assert_close(same.loss, 1e-3 * mse.loss)
    warm = dlpv2_loss(out, x, warmup=True, noisy=True, beta_rec=1.0, beta_kl=0.1, kl_balance=1e-3, config=cfg)
    glimpse_sse = ((out.dec_glimpses[:, :, 1:] - out.glimpses) ** 2).sum((2, 3, 4)).mean()
    torch.testing.assert_close(warm.rec, glimpse_sse)
    assert warm.kl_kp_offset.item() != mse.kl_kp_offset.item()  # the warm priors differ


def test_warmup_gradients():
    """Warm-up (§2.3 step 8): final positions and scales are detached, so the reconstruction does not move
    particles; the anchors keep their gradient, so the Chamfer term still trains the prior."""
    cfg = tiny()
    model = DLPv2(cfg)
    x = images()
    out = model(x, warmup=True, noisy=True)
    assert not out.z.requires_grad and not out.z_scale.requires_grad and out.anchors.requires_grad
    terms = dlpv2_loss(out, x, warmup=True, noisy=True, beta_rec=1.0, beta_kl=0.1, kl_balance=1e-3, config=cfg)
    terms.loss.backward()
    prior_grad = model.foreground.prior.cnn.keymap.weight.grad
    assert prior_grad is not None and prior_grad.abs().sum().item() > 0
    assert model.background.final.weight.grad.abs().max().item() == 0.0  # only the 0 * mean(rec) term reaches it


# ------------------------------------------------------------------------------------------------------------------
# Encode, decode, edit
def test_encode_decode_equals_deterministic_forward():
    model = DLPv2(tiny(use_correlation_heatmaps=True))
    x = images()
    with torch.no_grad():
        out = model(x, deterministic=True)
        particles = model.encode(x)
        decoded = model.decode(particles)
    assert torch.equal(particles.position, out.z) and torch.equal(particles.bg_features, out.mu_bg)
    assert torch.equal(decoded.rec, out.rec)
    assert torch.equal(decoded.alpha_masks, out.alpha_masks) and torch.equal(decoded.bg, out.bg)


def _randomised(model: DLPv2) -> DLPv2:
    # The official initialisation (conv weights N(0, 0.01^2)) decodes nearly flat glimpses; larger weights make every
    # attribute visible in the decoded image.
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3 / max(1, p[0].numel()) ** 0.5 if p.dim() > 1 else 0.1)
    return model


def test_editing_each_attribute_changes_the_decoding():
    model = _randomised(DLPv2(tiny()))
    x = images()
    with torch.no_grad():
        particles = model.encode(x)
        base = model.decode(particles)
        edits = {
            "position": particles.position.clone().index_fill_(1, torch.tensor([0]), 0.3),
            "scale": particles.scale + torch.tensor([1.0, 0, 0, 0])[None, :, None],
            "depth": particles.depth + torch.tensor([-3.0, 0, 0, 0])[None, :, None],
            "obj_on": particles.obj_on.clone().index_fill_(1, torch.tensor([0]), 0.0),
            "features": particles.features + torch.tensor([2.0, 0, 0, 0])[None, :, None],
            "bg_features": particles.bg_features + 1.0,
        }
        for name, value in edits.items():
            decoded = model.decode(particles.replace(**{name: value}))
            assert not torch.allclose(decoded.rec, base.rec), name
        # Switching particle 0 off removes it from the blend entirely.
        off = model.decode(particles.replace(obj_on=edits["obj_on"]))
        assert off.alpha_masks[:, 0].abs().max().item() == 0.0
        moved = model.decode(particles.replace(bg_features=edits["bg_features"]))
        assert torch.equal(moved.dec_objects, base.dec_objects)  # the background latent leaves the objects alone


def test_crop_and_paste_are_inverse_geometries():
    # align_corners=True: on 33 pixels, y = 0.125 is row 18 and x = -0.25 column 12; a crop of scale 0.5 spans
    # 0.5 * 32 = 16 pixels, so 17 samples land on pixel centres: rows 10..26, columns 4..20.
    torch.manual_seed(0)
    image = torch.rand(1, 3, 33, 33)
    position = torch.tensor([[[0.125, -0.25]]])
    scale = torch.tensor([[[0.5, 0.5]]])
    crop = crop_glimpses(image, position, scale, 17)[0, 0]
    torch.testing.assert_close(crop, image[0, :, 10:27, 4:21], atol=1e-5, rtol=0)
    pasted = paste_glimpses(crop[None, None], position, scale, 33)[0, 0]
    torch.testing.assert_close(pasted[:, 10:27, 4:21], crop, atol=1e-5, rtol=0)
    outside = pasted.clone()
    outside[:, 10:27, 4:21] = 0
    assert outside.abs().max().item() < 1e-5
    masks = square_masks(torch.zeros(2, 3, 2), 0.25, 64)  # 16 x 16 squares (round(0.25 * 63) = 16), centred
    assert masks.shape == (2, 3, 1, 64, 64) and masks.sum().item() == 6 * 16 * 16
    assert masks[0, 0, 0, 24:40, 24:40].min().item() == 1.0


# ------------------------------------------------------------------------------------------------------------------
# Config
def test_config_round_trip_and_derived_sizes():
    cfg = tiny(filtering_heuristic="none", n_kp_prior=16)
    data = cfg.to_dict()
    assert data["enc_channels"] == [8, 8]
    assert DLPv2Config.from_dict(data) == cfg
    assert cfg.replace(n_kp_enc=5).n_kp_enc == 5
    assert (cfg.glimpse_size, cfg.feature_map_size, cfg.num_patches, cfg.num_prior_kp, cfg.bg_feature_dim) == (
        8, 16, 16, 16, 2)
    assert DLPv2Config(**{**data, "image_size": "32", "anchor_s": "0.25", "bg_learned_feature_dim": "none"}) == \
        cfg.replace(bg_learned_feature_dim=None)
    with pytest.raises(ConfigError, match=r"unknown DLPv2Config keys \['n_kp'\]"):
        DLPv2Config.from_dict({**data, "n_kp": 1})


@pytest.mark.parametrize("changes, message", [
    (dict(n_kp_prior=3), r"n_kp_prior=3 is smaller than n_kp_enc=4"),
    (dict(anchor_s=0.3), r"glimpse size round\(anchor_s \* \(image_size - 1\)\) = 9 must be 8 \* 2\^n"),
    (dict(image_size=36, patch_size=6), r"F = image_size / 2\^\(len\(enc_channels\) - 1\) = 18 must be a power"),
    (dict(image_size=34, enc_channels=(8, 8, 8)), r"image_size 34 is not divisible by 4"),
    (dict(enc_channels=(8, 8, 8, 8)), r"F = image_size / 2\^\(len\(enc_channels\) - 1\) = 4 must be a power"),
    (dict(image_size=128, anchor_s=0.0625), r"F = 64 hits the official float-log rounding"),
    (dict(filtering_heuristic="none"), r"filtering_heuristic='none' mixes all 16 patch proposals"),
    (dict(filtering_heuristic="random"), r"filtering_heuristic must be one of"),
    (dict(n_kp_enc=20, n_kp_prior=20), r"only 16 patch proposals"),
    (dict(enc_channels=(6, 8)), r"channel count 6 is divisible by neither 4 nor 5"),
    (dict(patch_size=5), r"patch_size 5 does not divide image_size 32"),
    (dict(prior_channels=(8, 8, 8, 8, 8)), r"patch_size 8 is not divisible by 16"),
    (dict(prior_channels=(8, 8, 8, 8, 8), patch_size=16, n_kp_prior=4),
     r"the glimpse size 8 is not divisible by 16 \(2\^\(len\(prior_channels\) - 1\)\)"),
    (dict(enc_channels=(8,)), r"enc_channels needs at least two entries"),
    (dict(pad_mode="reflect"), r"pad_mode must be one of"),
    (dict(learned_feature_dim=0), r"learned_feature_dim must be at least 1"),
    (dict(bg_learned_feature_dim=0), r"bg_learned_feature_dim must be at least 1"),
    (dict(scale_std=0.0), r"scale_std must be positive"),
    (dict(anchor_s=1.5), r"anchor_s must lie in \(0, 1\]"),
    (dict(n_kp_enc="many"), r"n_kp_enc must be an integer"),
])
def test_config_rejects_impossible_combinations(changes, message):
    with pytest.raises(ConfigError, match=message):
        tiny(**changes)


def test_config_messages_are_one_sentence():
    with pytest.raises(ConfigError) as info:
        tiny(n_kp_prior=3)
    text = str(info.value)
    assert text.endswith(".") and text.count(". ") == 0


# ------------------------------------------------------------------------------------------------------------------
# The official configurations
# (official state-dict entries incl. buffers and aliases, parameters): shapes and traffic_img from the spec's
# listings (§9); obj3d_img and obj3d128_img derived from the same rules (no listing in the spec).
OFFICIAL_SIZES = {
    "dlpv2-shapes": (207, 2989238),
    "dlpv2-traffic": (171, 4228564),
    "dlpv2-obj3d": (156, 4581684),
    "dlpv2-obj3d128": (174, 3906020),
}
LISTINGS = {"dlpv2-shapes": "shapes (ObjectDLP)", "dlpv2-traffic": "traffic_img (ObjectDLP)"}


@pytest.mark.parametrize("preset", sorted(PRESET_VALUES))
def test_official_configs_export_the_official_layout(preset):
    from dlp.compat.ddlp import (
        config_from_official_hparams,
        official_hparams,
        to_official_state_dict,
    )

    cfg = DLPv2Config(**PRESET_VALUES[preset]["model"])
    assert config_from_official_hparams(official_hparams(cfg)) == cfg
    model = DLPv2(cfg)
    state = to_official_state_dict(model)
    entries, params = OFFICIAL_SIZES[preset]
    assert len(state) == entries
    assert sum(p.numel() for p in model.parameters()) == params
    assert state["mu_scale_prior"].dtype == torch.float64
    if preset in LISTINGS and SPEC.is_file():
        listing = parse_state_dict_listing(LISTINGS[preset])
        assert len(listing) == entries
        assert {k: tuple(v.shape) for k, v in state.items()} == listing


def test_add_module_collision_is_replayed():
    # shapes.json's background encoder (§1.2): 7 blocks, the repeated conv_in_{ch}_1 sits at the earlier position.
    names = [s.official_name for s in keypoint_cnn_layout(3, (32, 32, 64, 64), 64, 7)]
    assert names == ["in_block_1", "in_block_2", "conv_in_64_0", "conv_in_32_1", "conv_in_32_0", "conv_in_64_1",
                     "conv_in_16_0"]
    strides = [s.stride for s in keypoint_cnn_layout(3, (32, 32, 64, 64), 64, 7)]
    assert strides == [1, 1, 2, 1, 2, 1, 2]


def test_official_initialisation():
    model = DLPv2(tiny())
    conv = model.background.encoder_cnn.blocks[0].conv.weight
    assert abs(conv.std().item() - 0.01) < 0.003
    norm = model.background.encoder_cnn.blocks[0].norm
    assert torch.equal(norm.weight, torch.ones_like(norm.weight)) and norm.eps == 1e-4
