"""Video evaluation: LPIPS-VGG (weights from files, variables and caches, offline), piqa's PSNR/SSIM, per-step video
prediction metrics with their baselines, ball tracking, `dlp eval` on a DDLP checkpoint and the training evaluation.
Everything runs offline on fake weights and a tiny DDLP at 32 px."""

from __future__ import annotations

import json
import math
import re
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from dlp.checkpoint import save_checkpoint
from dlp.cli import main
from dlp.data.registry import build_dataset
from dlp.evaluation import lpips as lpips_module
from dlp.evaluation.image_metrics import ssim
from dlp.evaluation.lpips import LPIPS, LPIPS_CHANNELS, LPIPSWeightsError, load_lpips_weights
from dlp.evaluation.runner import default_metrics, format_table
from dlp.evaluation.video import (
    evaluate_video,
    psnr_piqa,
    save_metric_plot,
    track_balls,
    tracking_metrics,
    tracking_scores,
    video_prediction_metrics,
)
from dlp.models.ddlp import DDLP, DDLPConfig
from dlp.perceptual import VGG16_CFG, VGGWeightsError, _build_features

pytestmark = pytest.mark.usefixtures("single_thread")

COND, HORIZON = 2, 3
PACKAGE_COPIES = lpips_module._package_copies


def tiny_ddlp() -> DDLP:
    torch.manual_seed(0)
    return DDLP(DDLPConfig(image_size=32, enc_channels=(8, 8), prior_channels=(8, 8), patch_size=8, n_kp_enc=4,
                           n_kp_prior=6, learned_feature_dim=3, bg_learned_feature_dim=2, anchor_s=0.25,
                           timestep_horizon=3, num_static_frames=2, pint_layers=1, pint_heads=2, pint_dim=16))


def balls(num_clips: int = 3, clip_length: int = COND + HORIZON):
    return build_dataset("balls", data_root=None, image_size=32, split="test", num_images=num_clips,
                         clip_length=clip_length)


# ---------------------------------------------------------------------------------------------------------------------
# Fake weights
def fake_vgg_state() -> dict[str, torch.Tensor]:
    """A random VGG16 `features` state dict with torchvision's key names (features.{i}.weight / .bias)."""
    torch.manual_seed(5)
    features = _build_features(VGG16_CFG)
    for m in features:
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            torch.nn.init.uniform_(m.bias, -0.1, 0.1)
    return {f"features.{k}": v for k, v in features.state_dict().items()}


def fake_linear(layout: str = "lpips") -> dict[str, torch.Tensor] | list[torch.Tensor]:
    """Non-negative LPIPS linear weights [1, C, 1, 1] in the lpips package's layout, piqa's, plain, or a list."""
    gen = torch.Generator().manual_seed(7)
    weights = [torch.rand(1, c, 1, 1, generator=gen) for c in LPIPS_CHANNELS]
    if layout == "lpips":
        return {f"lin{i}.model.1.weight": w for i, w in enumerate(weights)}
    if layout == "piqa":
        return {f"{i}.1.weight": w for i, w in enumerate(weights)}
    if layout == "plain":
        return {f"lin{i}": w.flatten() for i, w in enumerate(weights)}
    return weights


@pytest.fixture(scope="module")
def vgg_state():
    return fake_vgg_state()


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory, vgg_state):
    folder = tmp_path_factory.mktemp("weights")
    torch.save({k: v.half() for k, v in vgg_state.items()}, folder / "vgg16.pth")  # half: a 30 MB file
    torch.save(fake_linear("lpips"), folder / "vgg.pth")
    return SimpleNamespace(vgg=folder / "vgg16.pth", lpips=folder / "vgg.pth")


@pytest.fixture
def no_caches(monkeypatch, tmp_path):
    """Empty torch hub cache, no weight variables, no installed lpips/torchmetrics copies."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("DLP_LPIPS_WEIGHTS", raising=False)
    monkeypatch.delenv("DLP_VGG_WEIGHTS", raising=False)
    monkeypatch.setattr(lpips_module, "_package_copies", list)
    return tmp_path


# ---------------------------------------------------------------------------------------------------------------------
# LPIPS weights
def test_lpips_weights_from_an_explicit_file_in_every_layout(no_caches):
    expected = fake_linear("list")
    for layout in ("lpips", "piqa", "plain", "list"):
        path = no_caches / f"{layout}.pth"
        torch.save(fake_linear(layout), path)
        weights, source = load_lpips_weights(path, download=False)
        assert source == str(path)
        assert [w.shape for w in weights] == [(1, c, 1, 1) for c in LPIPS_CHANNELS]
        assert all(torch.equal(a, b) for a, b in zip(weights, expected)), layout


def test_lpips_weights_from_the_variable_the_hub_cache_and_an_installed_package(no_caches, monkeypatch):
    env_file = no_caches / "env.pth"
    torch.save(fake_linear(), env_file)
    monkeypatch.setenv("DLP_LPIPS_WEIGHTS", str(env_file))
    assert load_lpips_weights(download=False)[1] == str(env_file)
    monkeypatch.delenv("DLP_LPIPS_WEIGHTS")

    hub = no_caches / "torch-home" / "hub" / "checkpoints"  # where piqa's download lands
    hub.mkdir(parents=True)
    torch.save(fake_linear("piqa"), hub / "vgg.pth")
    assert load_lpips_weights(download=False)[1] == str(hub / "vgg.pth")
    (hub / "vgg.pth").unlink()

    # the copy shipped inside the lpips package, found without importing the package
    monkeypatch.setattr(lpips_module, "_package_copies", PACKAGE_COPIES)
    package = no_caches / "site" / "lpips"
    (package / "weights" / "v0.1").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    torch.save(fake_linear(), package / "weights" / "v0.1" / "vgg.pth")
    monkeypatch.syspath_prepend(str(no_caches / "site"))
    _, source = load_lpips_weights(download=False)
    assert source == str(package / "weights" / "v0.1" / "vgg.pth") and "lpips" not in sys.modules


def test_lpips_weights_errors_are_one_clear_sentence(no_caches):
    with pytest.raises(LPIPSWeightsError) as info:
        load_lpips_weights(download=False)
    message = str(info.value)
    assert message.count(". ") == 0 and message.endswith(".")
    assert "--lpips-weights" in message and "DLP_LPIPS_WEIGHTS" in message and "vgg.pth" in message
    with pytest.raises(LPIPSWeightsError, match="does not exist"):
        load_lpips_weights(no_caches / "missing.pth", download=False)
    wrong = no_caches / "wrong.pth"
    torch.save({"lin0.model.1.weight": torch.ones(1, 3, 1, 1)}, wrong)
    with pytest.raises(LPIPSWeightsError, match="layer 0 needs 64 weights"):
        load_lpips_weights(wrong)
    assert issubclass(LPIPSWeightsError, VGGWeightsError)  # one `except` covers both missing-weights cases
    with pytest.raises(VGGWeightsError):  # the VGG16 is missing too
        LPIPS(fake_linear(), download=False)


def test_lpips_module_loads_the_vgg_from_the_variable(no_caches, monkeypatch, weight_files, vgg_state):
    monkeypatch.setenv("DLP_VGG_WEIGHTS", str(weight_files.vgg))
    monkeypatch.setenv("DLP_LPIPS_WEIGHTS", str(weight_files.lpips))
    metric = LPIPS(download=False)
    assert metric.weights_source == {"vgg": "imagenet", "linear": str(weight_files.lpips)}
    assert torch.equal(metric.features[28].weight, vgg_state["features.28.weight"].half().float())
    assert len(metric.features) == 30  # up to relu5_3


# ---------------------------------------------------------------------------------------------------------------------
# LPIPS values
@pytest.fixture(scope="module")
def metric(vgg_state):
    return LPIPS(fake_linear(), vgg_state)


def reference_lpips(x, y, vgg_state, linear):
    """LPIPS written out plainly: ImageNet normalisation, the VGG16 convs, ReLUs and pools, layers 3, 8, 15, 22, 29."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def feats(img):
        h, out, index = (img - mean) / std, [], 0
        for v in VGG16_CFG:
            if v == "M":
                h = F.max_pool2d(h, 2)
                index += 1
            else:
                h = F.relu(F.conv2d(h, vgg_state[f"features.{index}.weight"], vgg_state[f"features.{index}.bias"],
                                    padding=1))
                index += 2
                if index - 1 in (3, 8, 15, 22, 29):
                    out.append(h / (h.norm(dim=1, keepdim=True) + 1e-10))
        return out

    total = 0
    for a, b, w in zip(feats(x), feats(y), linear):
        total = total + F.conv2d((a - b) ** 2, w).mean((-2, -1)).flatten()
    return total


def test_lpips_identity_positivity_and_reference(metric, vgg_state):
    torch.manual_seed(0)
    x, y = torch.rand(3, 3, 32, 32), torch.rand(3, 3, 32, 32)
    assert torch.equal(metric(x, x, reduction="none"), torch.zeros(3))
    values = metric(x, y, reduction="none")
    assert values.shape == (3,) and (values > 0).all()
    assert torch.allclose(values, reference_lpips(x, y, vgg_state, fake_linear("list")), rtol=1e-4, atol=1e-6)
    assert torch.allclose(metric(x, y), values.mean()) and torch.allclose(metric(x, y, "sum"), values.sum())
    gray = torch.rand(2, 1, 16, 16)  # 1 channel: repeated to 3; 16 px: the smallest size
    assert torch.allclose(metric(gray, gray.flip(-1), "none"), metric(gray.expand(-1, 3, -1, -1),
                                                                    gray.flip(-1).expand(-1, 3, -1, -1), "none"))
    with pytest.raises(ValueError, match="at least 16x16"):
        metric(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


def test_lpips_distance_by_hand(metric):
    # one pixel, features (3, 4, 0, ...) and (1, 0, 0, ...): unit vectors (0.6, 0.8) and (1, 0), squared differences
    # (0.16, 0.64); weights (1, 0.5) -> 0.16 + 0.32 = 0.48 for layer 0, every other layer equal in both -> 0.
    fx = [torch.zeros(1, c, 1, 1) for c in LPIPS_CHANNELS]
    fy = [torch.zeros(1, c, 1, 1) for c in LPIPS_CHANNELS]
    fx[0][0, :2, 0, 0] = torch.tensor([0.6, 0.8])
    fy[0][0, 0, 0, 0] = 1.0
    hand = LPIPS(fake_linear(), "random", allow_random=True)
    hand.lin0.zero_()
    hand.lin0[0, :2, 0, 0] = torch.tensor([1.0, 0.5])
    assert hand.distance(fx, fy).item() == pytest.approx(0.48)
    # and the normalisation of `embed` is the channel L2 norm: every embedded pixel is a unit vector (or zero)
    norms = [f.norm(dim=1) for f in hand.embed(torch.rand(1, 3, 16, 16))]
    assert all(((n - 1).abs() < 1e-4).logical_or(n < 1e-6).all() for n in norms)


# ---------------------------------------------------------------------------------------------------------------------
# PSNR / SSIM as piqa
def piqa_ssim(x, y):
    """piqa 1.3.1's SSIM: separable 11-tap Gaussian (sigma 1.5) per channel, valid, float32."""
    k = torch.exp(-((torch.arange(11, dtype=torch.float32) - 5) ** 2) / (2 * 1.5**2))
    k = k / k.sum()
    c = x.shape[1]

    def filt(t):
        t = F.conv2d(t, k.view(1, 1, 1, 11).expand(c, 1, 1, 11), groups=c)
        return F.conv2d(t, k.view(1, 1, 11, 1).expand(c, 1, 11, 1), groups=c)

    mx, my = filt(x), filt(y)
    sxx, syy, sxy = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    return ((2 * mx * my + c1) / (mx**2 + my**2 + c1) * cs).flatten(2).mean(-1).mean(-1)


def test_psnr_and_ssim_follow_piqa():
    x = torch.zeros(2, 3, 16, 16)
    assert psnr_piqa(x, x).tolist() == pytest.approx([80.0, 80.0])  # the +1e-8: finite for a perfect copy
    assert psnr_piqa(x, x + 0.1).tolist() == pytest.approx([10 * math.log10(1 / (0.01 + 1e-8))] * 2, rel=1e-5)
    torch.manual_seed(0)
    a, b = torch.rand(3, 3, 24, 24), torch.rand(3, 3, 24, 24)
    b = (0.7 * a + 0.3 * b)
    assert torch.allclose(ssim(a, b).float(), piqa_ssim(a, b), atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# Video prediction metrics
class RepeatLastFrame(torch.nn.Module):
    """A stub video model: it predicts the last conditioning frame forever and reconstructs every frame exactly."""

    def __init__(self):
        super().__init__()
        self.seen = None

    def rollout(self, x, cond_steps, horizon, deterministic=True):
        frames = torch.cat([x, x[:, -1:].expand(-1, horizon, -1, -1, -1)], 1)
        t = frames.shape[1]
        particles = SimpleNamespace(position=torch.zeros(x.shape[0], t, 1, 2), obj_on=torch.ones(x.shape[0], t, 1))
        return SimpleNamespace(frames=frames, particles=particles)

    def encode(self, x):
        self.seen = x.shape
        return SimpleNamespace(frames=x)

    def decode(self, particles):
        return SimpleNamespace(rec=particles.frames)


def test_baselines_of_a_stub_model_on_moving_and_static_clips():
    torch.manual_seed(0)
    moving = torch.rand(3, COND + HORIZON + 1, 3, 16, 16)  # longer clips: the first cond + horizon frames are used
    stub = RepeatLastFrame()
    res = video_prediction_metrics(stub, moving, cond_frames=COND, horizon=HORIZON, batch_size=2)
    assert stub.seen[1:] == (COND + HORIZON, 3, 16, 16)  # the reconstruction encodes the whole evaluated clip
    assert res["num_clips"] == 3 and res["horizon"] == HORIZON and "lpips" not in res
    for metric in ("psnr", "ssim"):
        assert set(res[metric]) == {"model", "last_frame", "reconstruction"}
        assert all(len(v) == HORIZON for v in res[metric].values())
        assert res[metric]["model"] == pytest.approx(res[metric]["last_frame"])
    assert res["psnr"]["reconstruction"] == pytest.approx([80.0] * HORIZON)  # a perfect copy: 80 dB, not inf
    assert res["ssim"]["reconstruction"] == pytest.approx([1.0] * HORIZON)
    assert max(res["psnr"]["model"]) < 20 and res["mean"]["psnr"]["reconstruction"] == pytest.approx(80.0)

    static = moving[:, :1].expand(-1, COND + HORIZON, -1, -1, -1).contiguous()
    res = video_prediction_metrics(stub, static, cond_frames=COND, horizon=HORIZON, batch_size=4)
    assert res["psnr"]["last_frame"] == pytest.approx([80.0] * HORIZON)
    with pytest.raises(ValueError, match="needs clips"):
        video_prediction_metrics(stub, moving[:, :3], cond_frames=COND, horizon=HORIZON)


def test_ddlp_video_metrics_with_lpips_and_tracking_on_balls(metric, tmp_path):
    model = tiny_ddlp().train()
    res = evaluate_video(model, balls(3), cond_frames=COND, horizon=HORIZON, batch_size=2, lpips=metric,
                         tracking=True)
    assert model.training  # put back in train mode
    video, tracked = res["video"], res["tracking"]
    assert video["num_clips"] == 3
    for name in ("psnr", "ssim", "lpips"):
        assert all(len(video[name][m]) == HORIZON and all(math.isfinite(v) for v in video[name][m])
                   for m in ("model", "last_frame", "reconstruction"))
        assert video["mean"][name]["model"] == pytest.approx(sum(video[name]["model"]) / HORIZON)
    assert all(v >= 0 for values in video["lpips"].values() for v in values)
    for key in ("posterior", "posterior_future", "rollout", "assigned"):
        assert 0.0 <= tracked[key] <= 1.0, key
    assert tracked["num_balls"] == 9
    # tracking alone gives the same numbers
    alone = tracking_metrics(model, balls(3), cond_frames=COND, horizon=HORIZON, batch_size=3)
    assert alone == pytest.approx(tracked)
    png = save_metric_plot(video, tmp_path / "video.png")
    assert png.is_file() and png.stat().st_size > 1000


# ---------------------------------------------------------------------------------------------------------------------
# Tracking definition
def to_kp(pixels, size=32):
    return pixels / (size - 1) * 2 - 1


def test_track_balls_perfect_tracker_and_failures():
    b, t = 2, 5
    start = torch.tensor([[6.0, 6.0], [16.0, 26.0], [26.0, 10.0]])  # balls >= 10 px apart, moving 1 px per frame
    balls_px = (start + torch.arange(t).view(t, 1, 1) * torch.tensor([0.0, 1.0])).expand(b, t, 3, 2)
    far = torch.full((b, t, 2, 2), -1.0)  # two distractor particles in the corner (switched on)
    particles = torch.cat([far[:, :, :1], to_kp(balls_px + 1.0), far[:, :, 1:]], 2)  # 1 px off every ball
    hits, assigned = track_balls(particles, None, balls_px, image_size=32, radius=4.0)
    assert hits.all() and assigned.tolist() == [[1, 2, 3]] * b
    scores = tracking_scores(hits, hits, cond_frames=2)
    assert scores == {"posterior": 1.0, "posterior_future": 1.0, "rollout": 1.0, "num_balls": 6}

    # ball 0's particle switches off in frames 3-4 and ball 1's drifts away from frame 2 on
    presence = torch.ones(b, t, 5)
    presence[:, 3:, 1] = 0.2
    moved = particles.clone()
    moved[:, 2:, 2] = to_kp(balls_px[:, 2:, 1] + 6.0)
    hits, _ = track_balls(moved, presence, balls_px, image_size=32, radius=4.0)
    assert hits[:, :, 0].tolist() == [[True, True, True, False, False]] * b
    assert hits[:, :, 1].tolist() == [[True, True, False, False, False]] * b
    assert hits[:, :, 2].all()
    assert tracking_scores(hits, hits, 2)["posterior"] == pytest.approx((1 + 2 + 4) / 12)

    # swapped identities after frame 0 are misses; one particle never serves two balls
    swapped = particles.clone()
    swapped[:, 1:, 1], swapped[:, 1:, 2] = particles[:, 1:, 2], particles[:, 1:, 1]
    hits, _ = track_balls(swapped, None, balls_px, image_size=32, radius=4.0)
    assert not hits[:, 1:, :2].any() and hits[:, :, 2].all()
    shared = to_kp(balls_px[:, :, :1] + 0.5).expand(-1, -1, 2, -1)  # two particles on ball 0 only
    hits, assigned = track_balls(shared, None, balls_px, image_size=32, radius=4.0)
    assert (assigned[:, 1:] == -1).all() and not hits[:, :, 1:].any()


# ---------------------------------------------------------------------------------------------------------------------
# dlp eval and the training evaluation
def test_default_metrics_and_table_of_per_step_lists():
    assert default_metrics("balls", videos=True) == ["video", "elbo", "tracking"]
    assert default_metrics("obj3d", videos=True) == ["video", "elbo"]
    assert default_metrics("balls", torch.nn.Linear(1, 1), videos=True) == ["elbo"]  # no rollout
    table = format_table({"dataset": "balls", "video": {"cond_frames": 2, "horizon": 3},
                          "metrics": {"video.psnr.model": [20.0, 18.0, 16.0], "video/num_clips": 4}})
    assert "video: cond_frames 2, horizon 3" in table
    assert "18.0000 (mean), 16.0000 (step 3)" in table and re.search(r"video/num_clips +4$", table, re.MULTILINE)


def test_dlp_eval_writes_per_step_video_metrics_and_the_plot(tmp_path, monkeypatch, weight_files, capsys):
    ckpt = save_checkpoint(tmp_path / "ddlp.pt", tiny_ddlp(),
                           train_config={"dataset": "balls", "cond_steps": 3, "rollout_horizon": 2,
                                         "rec_loss_function": "mse"})
    monkeypatch.setenv("DLP_VGG_WEIGHTS", str(weight_files.vgg))
    out = tmp_path / "results.json"
    argv = ["eval", str(ckpt), "--num-images", "2", "--batch-size", "2", "--device", "cpu", "--out", str(out)]
    assert main([*argv, "--cond-frames", str(COND), "--horizon", str(HORIZON), "--lpips-weights",
                 str(weight_files.lpips)]) == 0
    results = json.loads(out.read_text())
    metrics = results["metrics"]
    for name in ("psnr", "ssim", "lpips"):
        for method in ("model", "last_frame", "reconstruction"):
            values = metrics[f"video.{name}.{method}"]
            assert isinstance(values, list) and len(values) == HORIZON
    for key in ("tracking/posterior", "tracking/rollout", "elbo/deterministic/elbo"):
        assert key in metrics, key
    assert results["video"]["cond_frames"] == COND and results["video"]["lpips"].endswith(str(weight_files.lpips))
    assert results["figures"]["video"] == str(tmp_path / "results_video.png")
    assert (tmp_path / "results_video.png").is_file()
    assert "video.psnr.model" in capsys.readouterr().out

    # no LPIPS weights: skipped with a warning, said in the JSON; PSNR/SSIM still there; defaults from the run
    with pytest.warns(UserWarning, match="LPIPS skipped"):
        assert main([*argv, "--metrics", "video", "--lpips-weights", str(tmp_path / "missing.pth")]) == 0
    results = json.loads(out.read_text())
    assert results["video"]["lpips"].startswith("skipped: ") and "missing.pth" in results["video"]["lpips"]
    assert not any(k.startswith("video.lpips") for k in results["metrics"])
    assert len(results["metrics"]["video.psnr.model"]) == 2 and results["video"]["cond_frames"] == 3


def test_training_evaluation_scores_rollout_psnr(monkeypatch):
    from dlp.evaluation import training
    from dlp.models.ddlp import DDLPTrainConfig
    from dlp.models.ddlp.objective import DDLPObjective

    monkeypatch.setattr(training, "TRAINING_ELBO_CLIPS", 2)
    monkeypatch.setattr(training, "TRAINING_VIDEO_CLIPS", 2)
    model = tiny_ddlp()
    tcfg = DDLPTrainConfig.from_dict({"dataset": "balls", "cond_steps": COND, "rollout_horizon": HORIZON,
                                      "rec_loss_function": "mse"})
    found = training.evaluate_during_training(model, DDLPObjective(model.config, tcfg))
    assert found["score"] == -found["eval/video/psnr/model"]
    for key in ("eval/video/psnr/last_frame", "eval/video/psnr/reconstruction", "eval/tracking/posterior",
                "eval/elbo/deterministic/elbo"):
        assert key in found, key
    assert not any("ssim" in k or "lpips" in k for k in found if k.startswith("eval/video"))
