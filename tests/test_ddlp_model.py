"""DDLP on tiny CPU configs: forward/backward, encode/decode, rollouts and "what if" rollouts, PINT's causality, the
objective and the discount schedule, config validation, and the official key layout of every preset."""

from __future__ import annotations

import pytest
import torch

from dlp.compat.ddlp import (
    config_from_official_hparams,
    official_hparams,
    to_official_state_dict,
)
from dlp.config import ConfigError
from dlp.models.ddlp import (
    DDLP,
    PRESET_VALUES,
    DDLPConfig,
    DDLPParticles,
    ddlp_loss,
    dynamic_discount,
)
from tests.parity_v2 import SPEC, parse_state_dict_listing

pytestmark = pytest.mark.usefixtures("single_thread")  # many small per-frame ops: one thread is fastest


def tiny(**overrides) -> DDLPConfig:
    """32x32 frames, 16 patches, 8x8 glimpses, PINT over 3 frames: a DDLP that runs in milliseconds."""
    base = dict(image_size=32, enc_channels=(8, 8), prior_channels=(8, 8), patch_size=8, n_kp_enc=4, n_kp_prior=6,
                learned_feature_dim=3, bg_learned_feature_dim=2, anchor_s=0.25, timestep_horizon=3,
                num_static_frames=2, pint_layers=1, pint_heads=2, pint_dim=16)
    base.update(overrides)
    return DDLPConfig(**base)


def clips(b: int = 2, t: int = 4, size: int = 32) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(b, t, 3, size, size)


def randomised(model: DDLP) -> DDLP:
    # The official initialisation decodes nearly flat glimpses and barely moving particles; larger weights make every
    # attribute visible, and PINT weights of unit gain make the particles' interactions visible.
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            gain = 1.5 if name.startswith("dynamics.") else 0.3
            p.normal_(0, gain / max(1, p[0].numel()) ** 0.5 if p.dim() > 1 else 0.1)
    return model


LOSS_ARGS = dict(beta_rec=1.0, beta_kl=0.1, beta_dyn=0.1, beta_dyn_rec=1.0, kl_balance=1e-3, num_static_frames=2)


# ------------------------------------------------------------------------------------------------------------------
# Forward, backward, phases
def test_forward_backward_without_nans():
    cfg = tiny()
    torch.manual_seed(0)
    model = DDLP(cfg)
    x = clips()
    s = cfg.glimpse_size
    for deterministic, warmup, noisy in ((False, False, False), (True, False, False), (False, True, True),
                                         (False, False, True)):
        model.zero_grad()
        out = model(x, deterministic=deterministic, warmup=warmup, noisy=noisy)
        assert out.kp_prior.shape == (2, 4, cfg.num_prior_kp, 2)
        assert out.z.shape == out.anchors.shape == out.z_scale.shape == (2, 4, 4, 2)
        assert out.z_depth.shape == (2, 4, 4, 1) and out.obj_on.shape == (2, 4, 4)
        assert out.z_features.shape == (2, 4, 4, 3) and out.z_bg.shape == (2, 4, 2)
        assert out.glimpses.shape == (2, 4, 4, 3, s, s) and out.dec_glimpses.shape == (2, 4, 4, 4, s, s)
        assert out.alpha_masks.shape == (2, 4, 4, 1, 32, 32) and out.rec.shape == out.bg.shape == x.shape
        pred = out.dynamics
        assert pred.mu.shape == pred.logvar.shape == (2, 3, 4, 2) and pred.mu_depth.shape == (2, 3, 4, 1)
        assert pred.obj_on_a.shape == (2, 3, 4) and pred.mu_features.shape == (2, 3, 4, 3)
        assert pred.mu_bg.shape == (2, 3, 2)
        # Official bug §8 item 1: the depth's log-variance is the predicted depth change.
        torch.testing.assert_close(pred.logvar_depth, pred.mu_depth - out.z_depth[:, :-1], rtol=0, atol=1e-5)
        assert torch.equal(out.kp_prior[:, 2], out.kp_prior[:, 1])  # frames >= tau repeat the last proposals
        terms = ddlp_loss(out, x, warmup=warmup, noisy=noisy, config=cfg, **LOSS_ARGS)
        assert all(torch.isfinite(v).all() for v in vars(terms).values())
        terms.loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        assert grads and all(torch.isfinite(g).all() for g in grads.values())
        assert model.dynamics.particle_transformer.blocks[0].attn.time_bias.grad.abs().sum() > 0
        if warmup:  # the warm-up reconstruction compares glimpses; the official psnr is then 0
            assert terms.psnr.item() == 0.0


def test_frames_after_the_first_are_anchored_on_the_previous_frame():
    """Tracking (§4.2): frame t >= 1 is anchored at frame t - 1's final positions, detached; only frame 0's anchors
    (proposals + first-pass offsets) carry gradient into the prior."""
    model = DDLP(tiny())
    out = model(clips(), deterministic=True)
    assert torch.equal(out.anchors[:, 1:], out.z[:, :-1].detach())
    prior = model.foreground.prior.cnn.keymap.weight
    (all_frames,) = torch.autograd.grad(out.anchors.sum(), prior, retain_graph=True)
    (first_frame,) = torch.autograd.grad(out.anchors[:, 0].sum(), prior)
    assert first_frame.abs().max() > 0 and torch.equal(all_frames, first_frame)


def test_seeded_forward_reproduces_and_dropout_acts_in_train_mode():
    model = DDLP(tiny())
    x = clips()
    torch.manual_seed(5)
    a = model(x, noisy=True)
    torch.manual_seed(5)
    b = model(x, noisy=True)
    assert torch.equal(a.rec, b.rec) and torch.equal(a.dynamics.mu, b.dynamics.mu)
    model.eval()
    with torch.no_grad():
        first, second = model(x, deterministic=True), model(x, deterministic=True)
        model.train()
        dropped = model(x, deterministic=True)
    assert torch.equal(first.dynamics.mu_features, second.dynamics.mu_features)
    assert torch.equal(dropped.z, first.z)  # only PINT has dropout (fixed at 0.1, official)
    assert not torch.equal(dropped.dynamics.mu_features, first.dynamics.mu_features)


def test_pint_is_causal():
    """A prediction from frame t reads frames <= t only, every particle and the background included."""
    model = randomised(DDLP(tiny())).eval()
    with torch.no_grad():
        particles = model.encode(clips())
        base = model.dynamics(particles.frames(slice(0, 3)))
        late = particles.frames(slice(0, 3))
        late.features = late.features.clone()
        late.features[:, 2] += 1.0  # change frame 2 only
        late.bg_features = late.bg_features.clone()
        late.bg_features[:, 2] += 1.0
        changed = model.dynamics(late)
    for name, value in base.to_dict().items():
        torch.testing.assert_close(getattr(changed, name)[:, :2], value[:, :2], rtol=0, atol=1e-6)
    assert not torch.allclose(changed.mu[:, 2], base.mu[:, 2])


# ------------------------------------------------------------------------------------------------------------------
# Encode, decode, rollouts
def test_encode_decode_equals_deterministic_forward():
    model = DDLP(tiny()).eval()
    x = clips()
    with torch.no_grad():
        out = model(x, deterministic=True)
        particles = model.encode(x)
        decoded = model.decode(particles)
    assert torch.equal(particles.position, out.z) and torch.equal(particles.bg_features, out.mu_bg)
    assert torch.equal(particles.scale, out.z_scale) and torch.equal(particles.obj_on, out.obj_on)
    assert torch.equal(particles.kp_prior, out.kp_prior) and torch.equal(particles.anchors, out.anchors)
    torch.testing.assert_close(decoded.rec, out.rec, rtol=0, atol=1e-6)
    torch.testing.assert_close(decoded.alpha_masks, out.alpha_masks, rtol=0, atol=1e-6)
    assert set(out.to_dict()) >= {"rec", "z", "dyn_mu", "dyn_logvar_bg"}


def test_rollout_shapes_and_it_reads_only_the_conditioning_frames():
    cfg = tiny()
    model = randomised(DDLP(cfg)).eval()
    x = clips(t=3)
    future = torch.full((2, 4, 3, 32, 32), float("nan"))  # never read
    result = model.rollout(torch.cat([x, future], dim=1), cond_steps=3, horizon=5)  # 5 > timestep_horizon: sliding
    assert result.frames.shape == (2, 8, 3, 32, 32) and result.cond_steps == 3
    assert torch.isfinite(result.frames).all()
    p = result.particles
    assert p.position.shape == (2, 8, 4, 2) and p.depth.shape == (2, 8, 4, 1) and p.obj_on.shape == (2, 8, 4)
    assert p.features.shape == (2, 8, 4, 3) and p.bg_features.shape == (2, 8, 2)
    assert result.decoded.dec_glimpses.shape == (2, 8, 4, 4, 8, 8)
    # The conditioning part is the encoder's reconstruction; the rest are predictions.
    conditioning = model.encode(x)
    torch.testing.assert_close(result.frames[:, :3], model.decode(conditioning).rec, rtol=0, atol=1e-6)
    assert torch.equal(p.position[:, :3], conditioning.position)
    again = model.rollout(x, cond_steps=3, horizon=5)
    torch.testing.assert_close(again.frames, result.frames, rtol=0, atol=1e-6)
    # A prediction step reads the last timestep_horizon frames of the trajectory.
    step = model.dynamics.step(p.frames(slice(0, 6)))
    torch.testing.assert_close(step.position, p.position[:, 6:7], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="cond_steps must lie between 1 and"):
        model.rollout(x, cond_steps=4, horizon=1)


def test_stochastic_rollout_samples():
    model = randomised(DDLP(tiny())).eval()
    x = clips(t=2)
    torch.manual_seed(0)
    a = model.rollout(x, cond_steps=2, horizon=3, deterministic=False)
    torch.manual_seed(0)
    b = model.rollout(x, cond_steps=2, horizon=3, deterministic=False)
    mean = model.rollout(x, cond_steps=2, horizon=3)
    assert torch.equal(a.frames, b.frames) and not torch.allclose(a.frames, mean.frames)


def test_what_if_rollout_from_edited_particles_changes_the_future():
    model = randomised(DDLP(tiny())).eval()
    x = clips(t=3)
    particles = model.encode(x)
    base = model.rollout_from(particles, horizon=4)
    torch.testing.assert_close(base.frames, model.rollout(x, cond_steps=3, horizon=4).frames, rtol=0, atol=1e-6)
    # Move particle 0 in every conditioning frame.
    moved_position = particles.position.clone()
    moved_position[:, :, 0] += torch.tensor([0.3, -0.2])
    what_if = model.rollout_from(particles.replace(position=moved_position), horizon=4)
    assert not torch.allclose(what_if.frames[:, 3:], base.frames[:, 3:], atol=1e-4)
    # The other particles' futures change too: PINT lets particles interact.
    interaction = (what_if.particles.position[:, 3:, 1:] - base.particles.position[:, 3:, 1:]).abs().max().item()
    assert interaction > 1e-5
    # Switching particle 0 off removes it from the predicted frames' blend.
    off = particles.obj_on.clone()
    off[:, :, 0] = 0.0
    hidden = model.rollout_from(particles.replace(obj_on=off), horizon=4)
    assert not torch.allclose(hidden.frames[:, 3:], base.frames[:, 3:], atol=1e-4)


def test_particles_helpers():
    model = DDLP(tiny()).eval()
    p = model.encode(clips())
    assert p.frames(-1).position.shape == (2, 1, 4, 2) and p.frames(1).bg_features.shape == (2, 1, 2)
    assert DDLPParticles.cat([p.frames(slice(0, 2)), p.frames(slice(2, None))]).num_frames == 4


# ------------------------------------------------------------------------------------------------------------------
# Objective and schedule
def test_objective_structure():
    cfg = tiny()
    model = DDLP(cfg).eval()
    x = clips()
    with torch.no_grad():
        out = model(x, deterministic=True)
        ones = ddlp_loss(out, x, warmup=False, noisy=False, config=cfg, **LOSS_ARGS)
        same = ddlp_loss(out, x, warmup=False, noisy=False, config=cfg, dynamic_discount=[1.0, 1.0, 1.0, 0.5],
                         **LOSS_ARGS)
        zero = ddlp_loss(out, x, warmup=False, noisy=False, config=cfg, dynamic_discount=[0.0, 0.0], **LOSS_ARGS)
    assert torch.equal(ones.loss, same.loss)  # only the first T - tau entries are used
    assert zero.kl_dyn.item() == 0.0
    per_frame = ((out.rec - x) ** 2).flatten(2).sum(-1)  # [B, T]
    torch.testing.assert_close(zero.rec, per_frame[:, :2].sum(1).mean())
    torch.testing.assert_close(ones.rec, per_frame.sum(1).mean())
    expected = (ones.rec + 0.1 * ones.kl + 0.1 * ones.kl_dyn) / 4  # divided by the clip length T = Tm + 1
    torch.testing.assert_close(ones.loss, expected)
    # Official bug §8 item 2: the static background KL sums over frames and averages over batch and features.
    mu, lv = out.mu_bg[:, :2], out.logvar_bg[:, :2]
    torch.testing.assert_close(ones.kl_feat_bg, (-0.5 * (1 + lv - mu**2 - lv.exp())).sum(1).mean())
    perceptual = ddlp_loss(out, x, warmup=False, noisy=False, config=cfg,
                           rec_loss=lambda a, b: ((a - b) ** 2).flatten(1).sum(-1), **LOSS_ARGS)
    torch.testing.assert_close(perceptual.loss, 1e-3 * ones.loss)


def test_dynamic_discount_schedule():
    assert dynamic_discount(0, 500, 1, 10) == [0.0] * 10
    per_step = 10000 // 10
    d = dynamic_discount(1500, 500, 1, 10)
    assert d[0] == 1.0 and d[1] == pytest.approx(1500 / (2 * per_step)) and d[9] == pytest.approx(0.15)
    assert dynamic_discount(10**6, 500, 1, 10) == [1.0] * 10
    # More iterations per epoch or more warm-up epochs stretch the ramp: W = max(warmup, 1) * max(10000, iters).
    assert dynamic_discount(2500, 20000, 3, 10)[0] == pytest.approx(2500 / 6000)


# ------------------------------------------------------------------------------------------------------------------
# Config
def test_config_round_trip_and_derived_sizes():
    cfg = tiny()
    data = cfg.to_dict()
    assert DDLPConfig.from_dict(data) == cfg
    assert cfg.replace(pint_heads=4).pint_head_size == 4
    assert (cfg.clip_length, cfg.pint_head_size, cfg.num_tokens, cfg.glimpse_size) == (4, 8, 5, 8)
    assert DDLPConfig.__dataclass_fields__["use_correlation_heatmaps"].default is True  # the official default
    assert DDLPConfig(**{**data, "timestep_horizon": "3", "predict_delta": "true"}) == cfg
    with pytest.raises(ConfigError, match=r"unknown DDLPConfig keys \['dropout'\]"):
        DDLPConfig.from_dict({**data, "dropout": 0.1})
    hparams = official_hparams(cfg)
    assert "num_static_frames" not in hparams and "use_tracking" not in hparams
    assert config_from_official_hparams(hparams, num_static_frames=2) == cfg


@pytest.mark.parametrize("changes, message", [
    (dict(filtering_heuristic="none", n_kp_prior=16), r"filtering_heuristic='none' .* is impossible for DDLP"),
    (dict(timestep_horizon=0, num_static_frames=1), r"timestep_horizon must be at least 1"),
    (dict(num_static_frames=0), r"num_static_frames must lie between 1 and timestep_horizon=3"),
    (dict(num_static_frames=4), r"num_static_frames must lie between 1 and timestep_horizon=3"),
    (dict(pint_dim=18, pint_heads=4), r"pint_dim=18 is not divisible by pint_heads=4"),
    (dict(pint_layers=0), r"pint_layers must be a positive integer"),
    (dict(pint_heads=0), r"pint_heads must be a positive integer"),
    (dict(predict_delta=False), r"predict_delta=False is not supported"),
    (dict(n_kp_prior=3), r"n_kp_prior=3 is smaller than n_kp_enc=4"),  # DLPv2's rules still apply
])
def test_config_rejects_impossible_combinations(changes, message):
    with pytest.raises(ConfigError, match=message) as info:
        tiny(**changes)
    text = str(info.value)
    assert text.endswith(".") and text.count(". ") == 0  # one sentence


def test_forward_checks_the_clip():
    model = DDLP(tiny())
    with pytest.raises(ValueError, match=r"expected clips of shape \[B, T, 3, 32, 32\]"):
        model(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="clips of 2 to timestep_horizon \\+ 1 = 4 frames"):
        model(torch.rand(1, 5, 3, 32, 32))


# ------------------------------------------------------------------------------------------------------------------
# The official configurations


@pytest.mark.parametrize("preset", sorted(PRESET_VALUES))
def test_official_configs_export_the_official_layout(preset):
    values = PRESET_VALUES[preset]
    assert set(values) == {"description", "model", "train"}
    cfg = DDLPConfig(**values["model"])
    assert config_from_official_hparams(official_hparams(cfg), num_static_frames=cfg.num_static_frames) == cfg
    torch.manual_seed(0)
    model = DDLP(cfg)  # constructing is cheap even at 128 px; no forward pass here
    state = to_official_state_dict(model)
    assert state["mu_scale_prior"].dtype == torch.float64
    tm, k, e, heads = cfg.timestep_horizon, cfg.n_kp_enc, cfg.pint_dim, cfg.pint_heads
    for i in range(cfg.pint_layers):
        block = f"dyn_module.particle_transformer.blocks.{i}"
        assert torch.equal(state[f"{block}.attn.mask"], torch.tril(torch.ones(tm, tm)).view(1, 1, 1, tm, 1, tm))
        assert state[f"{block}.attn.rel_pos_bias.rel_pos_bias"].shape == (2 * tm - 1, heads)
        assert state[f"{block}.attn.rel_pos_bias.particle_rel_pos_bias"].shape == (2 * k + 1, heads)
    assert state["dyn_module.particle_projection.particle_projection.0.weight"].shape == (
        e, 6 + cfg.learned_feature_dim)
    assert state["dyn_module.particle_decoder.bg_features_head.weight"].shape == (2 * cfg.bg_feature_dim, e)
    if preset == "ddlp-clevrer" and SPEC.is_file():
        listing = parse_state_dict_listing("clevrer (ObjectDynamicsDLP)")
        assert len(listing) == len(state) == 310
        assert {key: tuple(v.shape) for key, v in state.items()} == listing
        assert sum(p.numel() for p in model.parameters()) == 11717614


def test_official_initialisation_of_pint():
    model = DDLP(tiny(pint_dim=64))
    block = model.dynamics.particle_transformer.blocks[0]
    assert abs(block.attn.key.weight.std().item() - 0.02) < 0.004 and block.fc.bias.abs().max().item() == 0.0
    assert abs(block.attn.time_bias.std().item() - 0.02) < 0.02 and torch.equal(block.ln1.weight, torch.ones(64))
    conv = model.background.encoder_cnn.blocks[0].conv.weight  # DLPv2's init for the CNNs
    assert abs(conv.std().item() - 0.01) < 0.003
