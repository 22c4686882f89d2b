"""Building blocks (src/dlp/model/layers.py): spatial softmax, Gaussian maps, ConvBlock, KeypointCNN, init."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dlp.models.dlp_v1.layers import MLP, ConvBlock, KeypointCNN, gaussian_maps, init_official, spatial_softmax


# ----------------------------------------------------------------------------------------------------------------
# spatial_softmax
@pytest.mark.parametrize("r,c", [(0, 0), (3, 7), (7, 11), (5, 0)])
def test_spatial_softmax_delta_gives_linspace_coordinates(r, c):
    h, w = 8, 12  # non-square, so a swapped (y, x) order or axis fails
    hm = torch.zeros(2, 1, h, w)
    hm[:, :, r, c] = 1e4
    out = spatial_softmax(hm)
    assert out.shape == (2, 1, 2)
    expected = torch.tensor([torch.linspace(-1, 1, h)[r], torch.linspace(-1, 1, w)[c]])
    torch.testing.assert_close(out[0, 0], expected)


@pytest.mark.parametrize("size", [2, 4, 8, 16])
def test_spatial_softmax_flat_map_gives_origin(size):
    """A flat heat-map (a flat image patch) gives (0, 0) up to the summation's last ulp -- below float32 resolution
    once shifted to the patch frame (local + 1), so its distance from the patch centre is exactly 0 (prior ties)."""
    for value in (0.0, 3.7, -12.0):
        out = spatial_softmax(torch.full((3, 2, size, size), value))
        assert out.abs().max() <= 2e-8, value
        assert torch.equal(out + 1.0, torch.ones_like(out)), value


def test_spatial_softmax_is_two_marginal_softmaxes_not_a_2d_softmax():
    hm = torch.randn(2, 3, 6, 5) * 3
    out = spatial_softmax(hm)
    p_y = hm.mean(-1).softmax(-1)
    p_x = hm.mean(-2).softmax(-1)
    ref = torch.stack([(p_y * torch.linspace(-1, 1, 6)).sum(-1), (p_x * torch.linspace(-1, 1, 5)).sum(-1)], -1)
    torch.testing.assert_close(out, ref)
    p2d = hm.flatten(-2).softmax(-1).view_as(hm)
    y2d = (p2d.sum(-1) * torch.linspace(-1, 1, 6)).sum(-1)
    assert not torch.allclose(out[..., 0], y2d, atol=1e-3)


# ----------------------------------------------------------------------------------------------------------------
# gaussian_maps
@pytest.mark.parametrize("size", [8, 16])
def test_gaussian_maps_peak_one_at_keypoint_pixel(size):
    lin = torch.linspace(-1, 1, size)
    r, c = 2, size - 3
    g = gaussian_maps(torch.tensor([[[lin[r], lin[c]]]]), size, 0.1)
    assert g.shape == (1, 1, size, size)
    assert g[0, 0, r, c] == 1.0
    assert g.flatten().argmax().item() == r * size + c
    assert (g >= 0).all() and (g <= 1).all()


def test_gaussian_maps_symmetric_and_sigma_width():
    size, sigma = 15, 0.2
    lin = torch.linspace(-1, 1, size)
    g = gaussian_maps(torch.zeros(1, 1, 2), size, sigma)[0, 0]  # centred on the middle pixel (7, 7)
    torch.testing.assert_close(g, g.flip(0))
    torch.testing.assert_close(g, g.flip(1))
    torch.testing.assert_close(g, g.t())
    for step in (1, 2, 3):
        d = lin[7 + step].item()
        torch.testing.assert_close(g[7, 7 + step], torch.tensor(math.exp(-0.5 * d**2 / sigma**2)))
        torch.testing.assert_close(g[7 + step, 7 + step], torch.tensor(math.exp(-(d**2) / sigma**2)))
    # mirrored keypoints give mirrored maps; y moves rows, x moves columns
    kp = torch.tensor([[[0.3, -0.55], [-0.3, 0.55]]])
    maps = gaussian_maps(kp, size, sigma)[0]
    torch.testing.assert_close(maps[1], maps[0].flip(0).flip(1))
    assert maps[0].sum(1).argmax() > 7 and maps[0].sum(0).argmax() < 7


def test_gaussian_maps_width_scales_with_sigma():
    kp = torch.zeros(1, 1, 2)
    narrow = gaussian_maps(kp, 16, 0.1)
    wide = gaussian_maps(kp, 16, 0.3)
    assert wide.sum() > 5 * narrow.sum()


# ----------------------------------------------------------------------------------------------------------------
# ConvBlock
@pytest.mark.parametrize("pad_mode", ["replicate", "zeros"])
@pytest.mark.parametrize("kernel,stride,upsample,out_hw", [(3, 1, False, 12), (7, 1, False, 12), (3, 2, False, 6),
                                                            (3, 1, True, 24)])
def test_conv_block_shapes(pad_mode, kernel, stride, upsample, out_hw):
    block = ConvBlock(5, 7, kernel, stride=stride, pad_mode=pad_mode, upsample=upsample)
    assert block(torch.rand(2, 5, 12, 12)).shape == (2, 7, out_hw, out_hw)
    assert block.conv.bias is None
    assert block.conv.padding == ((0, 0) if pad_mode == "replicate" else (kernel // 2, kernel // 2))


def test_conv_block_replicate_vs_zeros_padding_at_the_border():
    torch.manual_seed(0)
    rep = ConvBlock(2, 3, 3, pad_mode="replicate").eval()
    zer = ConvBlock(2, 3, 3, pad_mode="zeros").eval()
    zer.load_state_dict(rep.state_dict())
    x = torch.ones(1, 2, 6, 6)
    a, b = rep(x), zer(x)
    assert torch.allclose(a, a[..., :1, :1].expand_as(a))  # replicate: a constant image stays constant
    torch.testing.assert_close(a[..., 1:-1, 1:-1], b[..., 1:-1, 1:-1])  # identical away from the border
    assert not torch.allclose(a[..., 0, :], b[..., 0, :])


def test_conv_block_activation_and_upsample_order():
    block = ConvBlock(1, 1, 1, activation="relu", upsample=True).eval()
    with torch.no_grad():
        block.conv.weight.fill_(1.0)
    x = torch.tensor([[[[-1.0, 2.0], [3.0, -4.0]]]])
    out = block(x)
    # activation first (negatives clipped to exactly 0 before upsampling), then bilinear x2, align_corners=False
    ref = nn.functional.interpolate(torch.relu(block.norm(x)), scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, ref)
    leaky = ConvBlock(1, 1, 1).eval()
    assert isinstance(leaky.act, nn.LeakyReLU) and leaky.act.negative_slope == 0.01


# ----------------------------------------------------------------------------------------------------------------
# KeypointCNN, MLP, init
@pytest.mark.parametrize("channels,size,out", [((8, 8), 32, 16), ((8, 8, 16), 32, 8), ((4, 8, 8, 8), 64, 8),
                                               ((16, 16, 32), 16, 4)])
def test_keypoint_cnn_output_size(channels, size, out):
    cnn = KeypointCNN(3, channels, 5, first_kernel_size=7)
    assert cnn(torch.rand(2, 3, size, size)).shape == (2, 5, out, out)
    assert cnn.keymap.bias is not None
    assert cnn.blocks[0].conv.kernel_size == (7, 7)
    assert len(cnn.blocks) == 2 * len(channels)
    assert all(isinstance(b.act, nn.ReLU) for b in cnn.blocks)


def test_mlp_layout():
    mlp = MLP(10, 4)
    assert [type(m) for m in mlp] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert (mlp[0].in_features, mlp[0].out_features, mlp[2].out_features, mlp[4].out_features) == (10, 256, 128, 4)
    assert mlp(torch.rand(3, 2, 10)).shape == (3, 2, 4)


def test_init_official():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(16, 64, 3), nn.BatchNorm2d(64), nn.Linear(8, 8))
    with torch.no_grad():
        net[1].weight.fill_(3.0)
    linear_before = net[2].weight.clone()
    init_official(net)
    assert abs(net[0].weight.std().item() - 0.01) < 1e-3
    assert torch.equal(net[0].bias, torch.zeros(64))
    assert torch.equal(net[1].weight, torch.ones(64)) and torch.equal(net[1].bias, torch.zeros(64))
    assert torch.equal(net[2].weight, linear_before)  # Linear keeps PyTorch's default
