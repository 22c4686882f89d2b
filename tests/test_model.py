"""The DLP v1 model (src/dlp/models/dlp_v1/) on tiny configs, checkpoints, and every preset."""

from __future__ import annotations

import pathlib
from dataclasses import replace

import pytest
import torch

from dlp import create_model, list_presets
from dlp.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from dlp.models.dlp_v1.config import DLPConfig
from dlp.models.dlp_v1.extensions import PriorAnchoredPositionEncoder
from dlp.models.dlp_v1.model import DLP, DLPOutput
from dlp.models.dlp_v1.objective import dlp_loss
from tests.conftest import tiny_config

KINDS = ["object", "anchored", "masked"]
B = 2


@pytest.fixture(scope="module", autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def make(kind: str, **overrides) -> DLP:
    """A tiny model with He-scaled conv weights: the official init (std 0.01 convs) makes an untrained eval-mode
    model output ~1e-7 images, too small for "this edit changes the reconstruction" to mean anything."""
    torch.manual_seed(0)
    model = DLP(tiny_config(kind, **overrides))
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return model


def images(b: int = B, size: int = 32, seed: int = 1) -> torch.Tensor:
    """Textured images (smooth blobs + noise), so that no prior patch is flat (no top-k ties)."""
    gen = torch.Generator().manual_seed(seed)
    lin = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    centres = torch.rand(b, 3, 2, generator=gen) * 2 - 1
    blobs = torch.exp(-((yy - centres[..., 0, None, None]) ** 2 + (xx - centres[..., 1, None, None]) ** 2) / 0.1)
    return (0.7 * blobs + 0.3 * torch.rand(b, 3, size, size, generator=gen)).clamp(0, 1)


def loss_of(model: DLP, out: DLPOutput, x: torch.Tensor, warmup: bool = False):
    return dlp_loss(out, x, beta_rec=1.0, beta_kl=1.0, kl_balance=1e-3, logvar_prior=model.config.logvar_prior,
                    warmup=warmup)


def expected_shapes(cfg: DLPConfig, b: int) -> dict:
    k, d, f, s, hw = cfg.n_kp_enc, cfg.learned_feature_dim, cfg.feature_map_size, cfg.glimpse_size, cfg.image_size
    shapes = {
        "kp_prior": (b, cfg.n_kp_prior, 2),
        "mu": (b, k + 1, 2), "logvar": (b, k + 1, 2), "z": (b, k + 1, 2),
        "mu_features": (b, k + 1, d), "logvar_features": (b, k + 1, d), "z_features": (b, k + 1, d),
        "heatmap": (b, k, f, f),
        "rec": (b, cfg.in_channels, hw, hw),
    }
    if cfg.is_object_model:
        c = cfg.in_channels
        shapes.update(obj_on=(b, k), glimpses=(b, k, c, s, s), dec_glimpses=(b, k, 1 + c, s, s),
                      dec_objects=(b, c, hw, hw), gmap=(b, 2 * k, f, f))
    else:
        fs = cfg.feature_glimpse_size
        shapes.update(glimpses=(b, k, k, fs, fs), gmap=(b, 3 * k, f, f))
    return shapes


def assert_output_shapes(out: DLPOutput, cfg: DLPConfig, b: int):
    shapes = expected_shapes(cfg, b)
    got = {name: tuple(t.shape) for name, t in out.to_dict().items()}
    assert got == shapes
    for name, t in out.to_dict().items():
        assert torch.isfinite(t).all(), name
    assert (out.mu.abs() <= 1).all()
    assert torch.equal(out.mu[:, -1], torch.zeros(b, 2))  # background particle last, at the centre
    torch.testing.assert_close(out.logvar[:, -1], torch.full((b, 2), cfg.logvar_prior))
    assert (out.kp_prior.abs() <= 1).all()
    if out.obj_on is not None:
        assert ((out.obj_on > 0) & (out.obj_on < 1)).all()
        assert ((out.dec_glimpses >= 0) & (out.dec_glimpses <= 1)).all()


# ----------------------------------------------------------------------------------------------------------------
# Training step
# Parameters whose gradient is structurally zero (present, but 0 up to rounding): the Linear biases that feed a
# train-mode BatchNorm1d (the mean subtraction cancels them) and the prior's keymap bias (the spatial softmax is
# shift invariant). The same list as the official fixtures' `grads_structurally_zero`.
STRUCTURALLY_ZERO = {f"pointnet.layers.{i}.mlp.{j}.bias" for i in range(4) for j in (0, 3)} | {"prior.cnn.keymap.bias"}


@pytest.mark.parametrize("kind", KINDS)
def test_forward_backward_train_mode(kind):
    model = make(kind).train()
    x = images()
    out = model(x)
    assert_output_shapes(out, model.config, B)
    terms = loss_of(model, out, x)
    assert all(torch.isfinite(v) for v in vars(terms).values())
    terms.loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    missing = [name for name, g in grads.items() if g is None]
    assert missing == [], f"parameters without gradient: {missing}"
    scale = max(g.abs().max().item() for g in grads.values())
    for name, g in grads.items():
        assert torch.isfinite(g).all(), name
        if name in STRUCTURALLY_ZERO:
            assert g.abs().max().item() <= 1e-5 * scale, name
        else:
            assert g.abs().max().item() > 0, f"{name} gets an all-zero gradient"


def test_encoder_trains_only_through_positions():
    """obj_on's head sees detached heat-maps and the glimpse encoder cuts at detached mu: a loss on obj_on or on
    the features alone gives the heat-map encoder no gradient."""
    model = make("object").train()
    out = model(images(), deterministic=True)
    (out.obj_on.sum() + out.mu_features.sum()).backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.position_encoder.obj_on_head.parameters())


def test_prior_anchored_particles_sit_within_half_a_glimpse_of_the_top_proposals():
    model = make("anchored").eval()
    k, reach = model.config.n_kp_enc, model.config.anchor_s
    x = images()
    with torch.no_grad():
        out = model(x, deterministic=True)
        anchors, _ = model.prior(x)
    assert isinstance(model.position_encoder, PriorAnchoredPositionEncoder)  # chosen once, in the constructor
    offsets = (out.mu[:, :k] - anchors[:, :k]).abs()
    assert offsets.max() <= reach + 1e-6 and offsets.max() > 0
    # The anchors are detached: positions train the offsets, and the prior learns only from the Chamfer-KL.
    model.train()
    model(x, deterministic=True).mu.sum().backward()
    assert all(p.grad is None for p in model.prior.parameters())
    assert all(p.grad is not None for p in model.position_encoder.parameters())


def test_noisy_phase_gives_obj_on_a_zero_gradient():
    model = make("object").train()
    x = images()
    loss_of(model, model(x, noisy_masks=True), x).loss.backward()
    for p in model.position_encoder.obj_on_head.parameters():
        assert p.grad is not None and p.grad.abs().max() == 0  # 0 * obj_on + U(0, 1)


# ----------------------------------------------------------------------------------------------------------------
# Sampling
@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_uses_the_means(kind):
    model = make(kind).eval()
    with torch.no_grad():
        out = model(images(), deterministic=True)
    assert torch.equal(out.z, out.mu)
    assert torch.equal(out.z_features, out.mu_features)


@pytest.mark.parametrize("kind", KINDS)
def test_sampling_is_seeded(kind):
    model = make(kind).eval()
    x = images()
    runs = {}
    with torch.no_grad():
        for seed in (1, 1, 2):
            torch.manual_seed(seed)
            runs.setdefault(seed, []).append(model(x))
    (a, b), (c,) = runs[1], runs[2]
    for name in ("z", "z_features", "rec"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
        assert not torch.allclose(getattr(a, name), getattr(c, name)), name
    assert not torch.equal(a.z, a.mu)
    # the background particle is jittered too (with its fixed sigma)
    assert not torch.equal(a.z[:, -1], a.mu[:, -1])
    assert (a.z[:, -1] - a.mu[:, -1]).abs().max() < 0.6


# ----------------------------------------------------------------------------------------------------------------
# Phases
def test_warmup_reconstructs_objects_over_black_without_background_decoder():
    model = make("object").train()
    x = images()
    out = model(x, warmup=True)
    assert out.gmap is None
    assert torch.equal(out.rec, out.dec_objects)
    loss_of(model, out, x, warmup=True).loss.backward()
    assert all(p.grad is None for p in model.decoder.parameters())
    assert all(p.grad is None for p in model.pointnet.parameters())
    assert all(p.grad is not None for p in model.glimpse_decoder.parameters())
    assert all(p.grad is not None for p in model.glimpse_encoder.parameters())


def test_warmup_is_ignored_by_masked_models():
    model = make("masked").eval()
    x = images()
    with torch.no_grad():
        a = model(x, deterministic=True, warmup=True)
        b = model(x, deterministic=True)
    assert a.gmap is not None
    assert torch.equal(a.rec, b.rec)


def test_noisy_masks_draw_noise_in_object_models():
    model = make("object").eval()  # exclusive patches: the encoder glimpses are scaled by the noisy obj_on too
    x = images()
    with torch.no_grad():
        a = model(x, deterministic=True, noisy_masks=True)
        b = model(x, deterministic=True, noisy_masks=True)
        c = model(x, deterministic=True)
        d = model(x, deterministic=True)
    assert not torch.allclose(a.rec, b.rec)
    assert not torch.allclose(a.glimpses, b.glimpses)
    assert torch.equal(a.obj_on, b.obj_on)  # the output keeps the learned obj_on, never the noise
    assert torch.equal(a.obj_on, c.obj_on)
    assert torch.equal(c.rec, d.rec)


def test_noisy_masks_is_a_no_op_for_masked_models():
    model = make("masked").eval()
    x = images()
    with torch.no_grad():
        state = torch.get_rng_state()
        a = model(x, deterministic=True, noisy_masks=True)
        assert torch.equal(torch.get_rng_state(), state)  # nothing random was drawn
        b = model(x, deterministic=True)
    for name, value in a.to_dict().items():
        assert torch.equal(value, getattr(b, name)), name


# ----------------------------------------------------------------------------------------------------------------
# encode / decode
@pytest.mark.parametrize("kind,overrides", [("object", {"exclusive_patches": False}),
                                            ("anchored", {"exclusive_patches": False}), ("masked", {})],
                         ids=["object", "anchored", "masked"])
def test_encode_decode_reproduce_deterministic_forward(kind, overrides):
    model = make(kind, **overrides).eval()
    x = images()
    particles = model.encode(x)
    assert not particles.mu.requires_grad
    with torch.no_grad():
        out = model(x, deterministic=True)
        decoded = model.decode(particles)
    for name in ("mu", "logvar", "mu_features", "logvar_features", "heatmap"):
        assert torch.equal(getattr(particles, name), getattr(out, name)), name
    if kind != "masked":
        assert torch.equal(particles.obj_on, out.obj_on)
        torch.testing.assert_close(decoded.dec_glimpses, out.dec_glimpses, rtol=0, atol=1e-6)
        torch.testing.assert_close(decoded.dec_objects, out.dec_objects, rtol=0, atol=1e-6)
    else:
        assert particles.obj_on is None and decoded.dec_glimpses is None and decoded.dec_objects is None
    torch.testing.assert_close(decoded.rec, out.rec, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_decode_edited_particles_changes_rec(kind):
    model = make(kind).eval()
    p = model.encode(images())
    with torch.no_grad():
        base = model.decode(p).rec
        z = p.mu.clone()
        z[:, 0] = -z[:, 0] if kind == "masked" else torch.tensor([0.8, -0.8])
        moved = model.decode(replace(p, mu=z)).rec
        features = p.mu_features.clone()
        features[:, :-1] += 3.0  # every foreground particle (the masked model sees features through PointNet only)
        restyled = model.decode(replace(p, mu_features=features)).rec
    scale = base.abs().max()
    assert scale > 1e-2
    assert (moved - base).abs().max() > 1e-3 * scale
    # (at init PointNet's maps are ~30x weaker than the Gaussian maps, so feature edits move the masked rec less)
    assert (restyled - base).abs().max() > 1e-4 * scale


def test_decode_obj_on_switches_objects():
    model = make("object").eval()
    p = model.encode(images())
    with torch.no_grad():
        default = model.decode(replace(p, obj_on=None))
        ones = model.decode(replace(p, obj_on=torch.ones(B, model.config.n_kp_enc)))
        off = model.decode(replace(p, obj_on=torch.zeros(B, model.config.n_kp_enc)))
    assert torch.equal(default.rec, ones.rec)  # default: every object on
    assert off.dec_objects.abs().max() == 0
    assert not torch.allclose(off.rec, ones.rec)


def test_masked_decode_requires_the_heatmap():
    model = make("masked").eval()
    p = model.encode(images())
    with pytest.raises(ValueError, match="heatmap"):
        model.decode(replace(p, heatmap=None))


def test_masked_model_without_glimpse_encoder():
    model = make("masked", use_object_enc=False).train()
    x = images()
    out = model(x)
    assert out.glimpses is None and model.glimpse_encoder is None
    assert out.mu_features.shape == (B, model.config.n_kp_enc + 1, model.config.learned_feature_dim)
    loss_of(model, out, x).loss.backward()
    assert all(p.grad is not None for p in model.bg_encoder.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_grayscale_model_reconstructs_grayscale(kind):
    model = make(kind, in_channels=1).train()
    x = images()[:, :1]
    out = model(x)
    assert_output_shapes(out, model.config, B)  # glimpses, decoded glimpses (alpha + C) and objects follow C = 1
    loss_of(model, out, x).loss.backward()


@pytest.mark.parametrize("shape", [(1, 3, 31, 31), (1, 3, 64, 64), (1, 1, 32, 32), (3, 32, 32)])
def test_wrong_input_size_raises(shape):
    model = make("masked").eval()
    with pytest.raises(ValueError, match=r"expected images of shape \[B, 3, 32, 32\]"):
        model(torch.rand(*shape))
    with pytest.raises(ValueError, match=r"expected images of shape \[B, 3, 32, 32\]"):
        model.encode(torch.rand(*shape))


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints
@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_round_trip(kind, tmp_path):
    model = make(kind, n_kp_enc=5).train()
    x = images()
    model(x)  # non-trivial BatchNorm running statistics must travel too
    model.eval()
    path = save_checkpoint(tmp_path / "sub" / "model.pt", model, epoch=3)
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left
    payload = read_checkpoint(path)
    assert payload["epoch"] == 3 and payload["format"].startswith("deep-latent-particles")
    loaded = load_checkpoint(path)
    assert not loaded.training
    assert loaded.config == model.config and loaded.config.n_kp_enc == 5
    with torch.no_grad():
        a = model(x, deterministic=True)
        b = loaded(x, deterministic=True)
    for name, value in a.to_dict().items():
        assert torch.equal(value, getattr(b, name)), name


def test_checkpoint_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_checkpoint_corrupt_file(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01not a torch file" * 10)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(garbage)
    good = save_checkpoint(tmp_path / "good.pt", make("masked"))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(truncated)


def test_checkpoint_foreign_torch_file(tmp_path):
    foreign = tmp_path / "foreign.pth"
    torch.save({"state_dict": make("masked").state_dict()}, foreign)
    with pytest.raises(CheckpointError, match="not a deep-latent-particles checkpoint"):
        load_checkpoint(foreign)
    torch.save([1, 2, 3], foreign)
    with pytest.raises(CheckpointError, match="not a deep-latent-particles checkpoint"):
        read_checkpoint(foreign)


def test_checkpoint_weights_not_matching_config(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", make("masked"))
    payload = read_checkpoint(path)
    payload["config"]["n_kp_enc"] = 3
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="do not match its config"):
        load_checkpoint(path)


def test_checkpoint_extra_state_must_be_weights_only_loadable(tmp_path):
    """Extras are stored as plain values (paths as strings); what torch.load(weights_only=True) could not read back
    is refused at save time rather than discovered when loading."""
    model = make("masked")
    path = save_checkpoint(tmp_path / "m.pt", model, data_root=pathlib.Path("/data"), metrics={"psnr": [20.5]})
    payload = read_checkpoint(path)
    assert payload["data_root"] == "/data" and payload["metrics"] == {"psnr": [20.5]}
    with pytest.raises(CheckpointError, match=r"metrics\.fn is a function"):
        save_checkpoint(tmp_path / "bad.pt", model, metrics={"fn": lambda: 0})
    assert not (tmp_path / "bad.pt").exists()


# ----------------------------------------------------------------------------------------------------------------
# Presets
@pytest.mark.parametrize("name", list_presets("dlp"))
def test_every_preset_runs_a_forward_pass(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    cfg = model.config
    with torch.no_grad():
        out = model(images(1, cfg.image_size), deterministic=True)
    assert_output_shapes(out, cfg, 1)
