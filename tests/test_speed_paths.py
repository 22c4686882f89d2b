"""The speed paths (`dlp.models.kernels`): same numbers as the plain formulation, and the GPU-oriented paths
(`--compile`, bf16 autocast) exercised on the CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlp.models.dlp_v1.layers import ConvBlock
from dlp.models.dlp_v1.model import DLP
from dlp.models.dlp_v1.modules import EdgeConv
from dlp.models.kernels import (
    _replicate_pad_slices,
    adam,
    conv_activation,
    fold_conv_batch_norm,
    fold_linear_batch_norm,
    match_weight_layout,
)
from tests.conftest import tiny_config

pytestmark = pytest.mark.usefixtures("single_thread")


def scale_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30)).item()


def _with_running_statistics(model: nn.Module, x: torch.Tensor, **kwargs) -> nn.Module:
    """Non-trivial BatchNorm statistics and affines (a fresh model's are 0/1, which folding would not test)."""
    torch.manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average
            nn.init.normal_(m.weight, 1.0, 0.2)
            nn.init.normal_(m.bias, 0.0, 0.2)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(x, **kwargs)
    return model.eval()


# ------------------------------------------------------------------------------------------------------------------
# Replicate padding under torch.compile, layouts
@pytest.mark.parametrize("pad", [1, 3])
@pytest.mark.parametrize("channels_last", [False, True])
def test_slice_padding_equals_replicate_padding_with_gradients(pad, channels_last):
    x = torch.randn(2, 5, 7, 6)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    grad = torch.randn(2, 5, 7 + 2 * pad, 6 + 2 * pad)
    ref = F.pad(x, (pad,) * 4, mode="replicate")
    ours = _replicate_pad_slices(x, pad)
    assert torch.equal(ours, ref)
    (g_ref,) = torch.autograd.grad(ref, x, grad)
    (g_ours,) = torch.autograd.grad(ours, x, grad)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-6, atol=1e-6)  # border sums in another order


def test_channels_last_blocks_convert_other_inputs_with_the_same_values():
    block = ConvBlock(3, 8, 3).eval()
    x = torch.rand(2, 3, 9, 9)
    ref = block(x)
    block = block.to(memory_format=torch.channels_last)
    assert match_weight_layout(x, block.conv.weight).is_contiguous(memory_format=torch.channels_last)
    assert match_weight_layout(x, torch.randn(8, 3, 3, 3)) is x  # NCHW weights: left alone
    out = block(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------------------------
# Inference forms: BatchNorm folded, activation fused
def test_folded_conv_and_linear_equal_batch_norm_of_the_layer():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    nn.init.normal_(bn.weight)
    nn.init.normal_(bn.bias)
    bn.eval()
    x = torch.randn(3, 4, 8, 8)
    torch.testing.assert_close(fold_conv_batch_norm(conv, bn)(x), bn(conv(x)), rtol=1e-5, atol=1e-5)
    linear, bn1 = nn.Linear(5, 7), nn.BatchNorm1d(7)
    bn1.running_mean.normal_()
    bn1.running_var.uniform_(0.5, 2.0)
    bn1.eval()
    h = torch.randn(10, 5)
    torch.testing.assert_close(fold_linear_batch_norm(linear, bn1)(h), bn1(linear(h)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("act", [nn.LeakyReLU(0.01), nn.ReLU()])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_convolution_activation_equals_conv_then_activation(act, channels_last):
    conv = nn.Conv2d(5, 7, 3, stride=2, padding=1)
    x = torch.randn(2, 5, 9, 9)
    if channels_last:
        conv, x = conv.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(conv_activation(x, conv, act), act(conv(x)), rtol=1e-5, atol=1e-6)
    # With gradients it is the differentiable conv -> activation
    x.requires_grad_(True)
    conv_activation(x, conv, act).sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("kind", ["object", "masked", "anchored"])
def test_fused_inference_equals_the_eval_mode_model(kind):
    model = DLP(tiny_config(kind))
    x = torch.rand(3, 3, 32, 32)
    model = _with_running_statistics(model, x)
    fused = model.fuse_for_inference()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())  # the original is intact
    with torch.no_grad():
        ref = model(x, deterministic=True).to_dict()
        ours = fused(x, deterministic=True).to_dict()
    assert set(ours) == set(ref)
    for key, value in ref.items():
        assert scale_error(ours[key], value) <= 1e-5, key


def test_fused_inference_of_a_preset_sized_channels_last_model():
    from dlp.registry import create_model

    model = create_model("shapes")
    x = torch.rand(2, 3, 64, 64)
    model = _with_running_statistics(model, x).to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    fused = model.fuse_for_inference()
    with torch.no_grad():
        ref = model(x, deterministic=True).to_dict()
        ours = fused(x, deterministic=True).to_dict()
        particles = fused.encode(x)  # the API beyond forward runs on the fused copy too
    for key, value in ref.items():
        assert scale_error(ours[key], value) <= 1e-4, key
    assert torch.isfinite(fused.decode(particles).rec).all()


def test_fused_model_cannot_train_and_leaves_the_original_trainable():
    model = DLP(tiny_config("object"))
    fused = model.fuse_for_inference()
    with pytest.raises(RuntimeError, match="fused for inference"):
        fused.train()
    assert not any(p.requires_grad for p in fused.parameters())
    model.train()
    out = model(torch.rand(2, 3, 32, 32))
    out.rec.sum().backward()
    assert all(p.grad is not None for p in model.encoder.parameters())
    with pytest.raises(RuntimeError, match="eval-mode"):
        ConvBlock(3, 4).fold_batch_norm()
    with pytest.raises(RuntimeError, match="eval-mode"):
        EdgeConv(4, 8).fold_batch_norm()


# ------------------------------------------------------------------------------------------------------------------
# The optimiser
def test_adam_is_fused_on_cpu_and_matches_the_plain_step():
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(5, 3)), nn.Parameter(torch.randn(7))]
    plain = [nn.Parameter(p.detach().clone()) for p in params]
    opt = adam(params, lr=1e-2, eps=1e-4)
    ref = torch.optim.Adam(plain, lr=1e-2, eps=1e-4)
    assert opt.param_groups[0]["fused"] is True
    for _ in range(5):
        grads = [torch.randn_like(p) for p in params]
        for p, q, g in zip(params, plain, grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    for p, q in zip(params, plain):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_fused_adam_resumes_bit_identically():
    """What `test_train.py::test_stop_and_resume_equals_uninterrupted` relies on, at the optimiser level."""
    grads = [torch.randn(4, 4, generator=torch.Generator().manual_seed(i)) for i in range(6)]

    def run(first, last, weights, state=None):
        p = nn.Parameter(weights.clone())
        opt = adam([p], lr=1e-2)
        if state is not None:
            opt.load_state_dict(state)
        for g in grads[first:last]:
            p.grad = g.clone()
            opt.step()
        return p.detach(), opt.state_dict()

    start = torch.randn(4, 4)
    full, _ = run(0, 6, start)
    half, state = run(0, 3, start)
    resumed, _ = run(3, 6, half, state)
    assert torch.equal(resumed, full)


def test_the_families_optimisers_are_fused_on_cpu():
    from dlp.models.dlp_v1.config import DLPTrainConfig
    from dlp.models.dlp_v1.objective import DLPObjective
    from dlp.models.dlpv2.config import DLPv2Config, DLPv2TrainConfig
    from dlp.models.dlpv2.model import DLPv2
    from dlp.models.dlpv2.objective import DLPv2Objective

    cfg = tiny_config("object")
    optimizers, _ = DLPObjective(cfg, DLPTrainConfig(rec_loss_function="mse")).configure_optimizers(DLP(cfg))
    assert len(optimizers) == 2 and all(o.param_groups[0]["fused"] for o in optimizers)
    cfg2 = DLPv2Config(image_size=32, enc_channels=(8, 8), prior_channels=(8, 8), patch_size=8, n_kp_enc=4,
                       n_kp_prior=6, learned_feature_dim=3, bg_learned_feature_dim=2, anchor_s=0.25)
    optimizers, _ = DLPv2Objective(cfg2, DLPv2TrainConfig(rec_loss_function="mse")).configure_optimizers(DLPv2(cfg2))
    assert optimizers[0].param_groups[0]["fused"]


# ------------------------------------------------------------------------------------------------------------------
# The GPU-oriented paths, on the CPU: bf16 autocast and torch.compile
def _family_models():
    from dlp.models.ddlp.config import DDLPConfig
    from dlp.models.ddlp.model import DDLP
    from dlp.models.dlpv2.config import DLPv2Config
    from dlp.models.dlpv2.model import DLPv2

    v2 = dict(image_size=32, enc_channels=(8, 8), prior_channels=(8, 8), patch_size=8, n_kp_enc=4, n_kp_prior=6,
              learned_feature_dim=3, bg_learned_feature_dim=2, anchor_s=0.25)
    return {
        "dlp-object": (DLP(tiny_config("object")), torch.rand(2, 3, 32, 32)),
        "dlp-masked": (DLP(tiny_config("masked")), torch.rand(2, 3, 32, 32)),
        "dlpv2": (DLPv2(DLPv2Config(**v2)), torch.rand(2, 3, 32, 32)),
        "ddlp": (DDLP(DDLPConfig(**v2, timestep_horizon=3, num_static_frames=2, pint_layers=1, pint_heads=2,
                                 pint_dim=16)), torch.rand(2, 4, 3, 32, 32)),
    }


@pytest.mark.parametrize("name", ["dlp-object", "dlp-masked", "dlpv2", "ddlp"])
def test_bf16_autocast_forward_runs_on_cpu_without_nans(name):
    model, x = _family_models()[name]
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, deterministic=True)
    tensors = [v for v in vars(out).values() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    assert tensors and all(torch.isfinite(t.float()).all() for t in tensors)
    if name.startswith("dlp-"):  # the fused copy falls back to conv -> activation under autocast
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.isfinite(model.fuse_for_inference()(x, deterministic=True).rec.float()).all()


@pytest.mark.slow
def test_compiled_training_step_runs_on_cpu(tmp_path, capsys):
    """`Trainer(..., compile=True)` compiles the model (inductor's CPU backend, a C++ compiler) and trains; without a
    working compiler it falls back to eager mode with one message. Either way the step is the same training step."""
    from dlp.engine.trainer import RunOptions, Trainer
    from dlp.models.dlp_v1.config import DLPTrainConfig

    cfg = tiny_config("object", enc_channels=(4, 4), prior_channels=(4, 4), glimpse_channels=(4, 4))
    train = DLPTrainConfig(dataset="shapes", batch_size=2, rec_loss_function="mse", warmup_epoch=0)
    data = [{"image": torch.rand(3, 32, 32)} for _ in range(2)]
    trainer = Trainer(cfg, train, RunOptions(output_dir=str(tmp_path), name="compiled", device="cpu", compile=True,
                                             progress=False), train_dataset=data, eval_fn=lambda *a, **k: {})
    batch = {"image": torch.rand(2, 3, 32, 32)}
    terms = trainer.train_step(batch, "normal")
    terms = trainer.train_step(batch, "normal")
    assert torch.isfinite(terms).all()
    messages = [line for line in capsys.readouterr().out.splitlines() if "torch.compile" in line]
    if trainer.forward_model is trainer.model:  # fell back: said so once
        assert len(messages) == 1
    else:
        assert trainer._compiled_ok and not messages


def test_windowed_correlation_maps_equal_the_full_correlation_cut_to_the_centre():
    """`correlation_maps` correlates only the input window its central s x s offsets read (official: all (2s+1)^2
    offsets, then the cut): the same sums (bit for bit with oneDNN on the machine this was written on; the tolerance
    leaves room for a backend that orders them differently for another input size)."""
    from dlp.models.dlpv2.layers import correlation_maps, crop_glimpses

    torch.manual_seed(0)
    b, k, s = 2, 3, 8
    image, position = torch.rand(b, 3, 32, 32), torch.rand(b, k, 2) * 1.6 - 0.8
    previous = torch.rand(b * k, 3, s, s)
    ours = correlation_maps(image, position, 0.25, s, previous)
    # The official formulation
    n = b * k
    crops = crop_glimpses(image.clamp(0, 1), position, 0.25, s).reshape(n, 3, s, s)
    padded = F.pad(crops.reshape(1, n * 3, s, s), (s,) * 4, mode="replicate")
    templates = previous.clamp(0, 1)
    corr = F.conv2d(padded, templates, groups=n)
    norm = torch.sqrt((templates**2).sum() * F.conv2d(padded**2, torch.ones_like(templates), groups=n) + 1e-10)
    corr = (corr / (norm + 1e-5)).view(n, 1, 2 * s + 1, 2 * s + 1)
    lo, hi = s // 2 + 1, 2 * s + 1 - s // 2
    corr = corr[:, :, lo:hi, lo:hi]
    corr = (corr - corr.amin(dim=(-2, -1), keepdim=True)) / (
        corr.amax(dim=(-2, -1), keepdim=True) - corr.amin(dim=(-2, -1), keepdim=True) + 1e-5)
    torch.testing.assert_close(ours, torch.cat([crops, corr], dim=1), rtol=1e-6, atol=1e-6)
