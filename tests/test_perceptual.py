"""VGGPerceptual: torchvision key layout, weight loading and errors, and the official VGGDistance values."""

import pytest
import torch
import torch.nn.functional as F

import dlp.perceptual as P
from dlp.perceptual import VGGPerceptual, VGGWeightsError, glimpse_vgg_distance, load_vgg16_features, vgg_distance

# torchvision.models.vgg16().features state-dict keys (configuration "D"), hard-coded
TORCHVISION_KEYS = [
    f"features.{i}.{p}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28) for p in ("weight", "bias")
]
CONV_CHANNELS = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(0)
    return VGGPerceptual(weights=None, allow_random=True)


@pytest.fixture(scope="module")
def weights_file(vgg, tmp_path_factory):
    """A torchvision-style full VGG16 file: features plus (small, fake) classifier keys."""
    state = dict(vgg.state_dict())
    state["classifier.0.weight"] = torch.zeros(2, 2)
    state["classifier.0.bias"] = torch.zeros(2)
    path = tmp_path_factory.mktemp("vgg") / "vgg16-397923af.pth"
    torch.save(state, path)
    return path


@pytest.fixture
def no_weights(monkeypatch, tmp_path):
    """Empty hub cache, no env var, and a download that fails as it does offline."""
    monkeypatch.delenv("DLP_VGG_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)


def test_keys_match_torchvision_layout(vgg):
    state = vgg.state_dict()
    assert list(state) == TORCHVISION_KEYS == P.vgg16_feature_keys()
    for i, c in zip((0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28), CONV_CHANNELS):
        assert state[f"features.{i}.weight"].shape[:1] == (c,) and state[f"features.{i}.weight"].shape[2:] == (3, 3)
    assert state["features.0.weight"].shape == (64, 3, 3, 3)
    assert [type(vgg.features[i]).__name__ for i in P.FEATURE_LAYERS] == ["ReLU"] * 4 + ["MaxPool2d"]
    assert len(vgg.features) == 31


def test_frozen(vgg):
    assert all(not p.requires_grad for p in vgg.parameters())
    x = torch.rand(1, 3, 32, 32)
    y = torch.rand(1, 3, 32, 32, requires_grad=True)
    vgg(x, y).backward()
    assert y.grad is not None and all(p.grad is None for p in vgg.parameters())


def test_state_dict_round_trip(vgg, tmp_path):
    path = tmp_path / "ours.pth"
    torch.save(vgg.state_dict(), path)
    reloaded = VGGPerceptual(weights=path)
    for k, v in vgg.state_dict().items():
        assert torch.equal(reloaded.state_dict()[k], v)


def test_load_explicit_file_drops_classifier(weights_file, vgg):
    state = load_vgg16_features(weights_file)
    assert list(state) == TORCHVISION_KEYS
    assert torch.equal(state["features.28.bias"], vgg.state_dict()["features.28.bias"])
    from_dict = VGGPerceptual(weights=torch.load(weights_file, weights_only=True))
    assert from_dict.weights_source == "state dict"


def test_load_from_env_and_hub_cache(weights_file, no_weights, monkeypatch, tmp_path):
    monkeypatch.setenv("DLP_VGG_WEIGHTS", str(weights_file))
    assert list(load_vgg16_features()) == TORCHVISION_KEYS
    monkeypatch.delenv("DLP_VGG_WEIGHTS")
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "vgg16-397923af.pth").write_bytes(weights_file.read_bytes())
    assert VGGPerceptual().weights_source == "imagenet"
    monkeypatch.setattr(P, "_DEFAULT_VGG", {})
    x, y = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    assert vgg_distance(x, y) > 0 and len(P._DEFAULT_VGG) == 1  # built once from the cache, then reused
    vgg_distance(x, y)
    assert len(P._DEFAULT_VGG) == 1


def test_missing_weights_error(no_weights, tmp_path):
    with pytest.raises(VGGWeightsError) as info:
        load_vgg16_features()
    msg = str(info.value)
    for part in ("https://download.pytorch.org/models/vgg16-397923af.pth", "--vgg-weights PATH", "DLP_VGG_WEIGHTS"):
        assert part in msg
    assert isinstance(info.value, ValueError) and isinstance(info.value, FileNotFoundError)
    with pytest.raises(VGGWeightsError, match="vgg-weights"):
        VGGPerceptual(download=False)
    with pytest.raises(VGGWeightsError, match="does not exist"):
        load_vgg16_features(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(VGGWeightsError, match="not a VGG16 state dict"):
        load_vgg16_features(bad)
    with pytest.raises(VGGWeightsError, match="DLP_VGG_WEIGHTS"):
        VGGPerceptual(weights=None)  # None = the default lookup (what the trainer passes without --vgg-weights)
    with pytest.raises(VGGWeightsError, match="allow_random=True"):
        VGGPerceptual(weights="random")
    assert VGGPerceptual(weights="random", allow_random=True).weights_source == "random"


def _hand_distance(state, x, y):
    """Reference: run VGG16 layer by layer with functional ops and sum squared differences image by image."""
    def feats(img):
        out, h, idx = [], img, 0  # idx = torchvision `features` index of the current layer
        for v in P.VGG16_CFG:
            if v == "M":
                h = F.max_pool2d(h, 2, 2)
                if idx == 30:
                    out.append(h)
                idx += 1
            else:
                h = F.relu(F.conv2d(h, state[f"features.{idx}.weight"], state[f"features.{idx}.bias"], padding=1))
                if idx + 1 in (3, 8, 13, 22):
                    out.append(h)
                idx += 2
        return out

    pixel = [((x[b] - y[b]) ** 2).sum() for b in range(x.shape[0])]
    if x.shape[1] == 1:
        x, y = x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1)
    fxs, fys = feats(x), feats(y)
    result = []
    for b in range(x.shape[0]):
        total = pixel[b]
        for fx, fy in zip(fxs, fys):
            total = total + ((fx[b] - fy[b]) ** 2).sum()
        result.append(total)
    return torch.stack(result)


@pytest.mark.parametrize("channels", [3, 1])
def test_distance_matches_hand_loop(vgg, channels):
    torch.manual_seed(1)
    b = 2 if channels == 3 else 1
    x, y = torch.rand(b, channels, 32, 32), torch.rand(b, channels, 32, 32)
    expected = _hand_distance(vgg.state_dict(), x, y)
    per_image = vgg(x, y, reduction="none")
    assert (expected > 1.2 * ((x - y) ** 2).flatten(1).sum(1)).all()  # the feature terms matter, not just pixels
    assert per_image.shape == (b,)
    torch.testing.assert_close(per_image, expected, rtol=1e-4, atol=1e-3)
    if channels == 3:
        torch.testing.assert_close(vgg_distance(x, y, "mean", vgg=vgg), expected.mean(), rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(vgg_distance(x, y, "sum", vgg=vgg), expected.sum(), rtol=1e-4, atol=1e-3)


def test_zero_for_identical_positive_otherwise(vgg):
    x = torch.rand(3, 3, 32, 32)
    assert vgg(x, x.clone(), "none").abs().max() == 0
    y = x.clone()
    y[1, :, 5, 5] += 0.5
    d = vgg(x, y, "none")
    assert d[0] == 0 and d[2] == 0 and d[1] > 0.25  # pixel term alone is 3 * 0.25
    with pytest.raises(ValueError, match="at least 32"):
        vgg(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="reduction"):
        vgg(x, y, "avg")


def test_glimpse_distance_upsamples(vgg):
    torch.manual_seed(2)
    g1, g2 = torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8)
    up = lambda t: F.interpolate(t, size=32, mode="bilinear", align_corners=False)  # noqa: E731
    torch.testing.assert_close(glimpse_vgg_distance(g1, g2, vgg=vgg), vgg(up(g1), up(g2)))
    big1, big2 = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)  # already 32: compared as is
    torch.testing.assert_close(
        glimpse_vgg_distance(big1, big2, "none", vgg=vgg),
        _hand_distance(vgg.state_dict(), big1, big2),
        rtol=1e-4,
        atol=1e-3,
    )
