"""Video prediction (`dlp.predict`, `dlp predict`), video files (`dlp.video_io`) and the DDLP "what if" demo
(`dlp.demo.clip_state`, `dlp demo` on a DDLP checkpoint), on a tiny DDLP and clips of ../shared/data/clevrer-mini."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import dlp
from dlp.checkpoint import read_checkpoint
from dlp.cli import main
from dlp.demo.clip_state import ClipDemoState, ClipDemoWindow
from dlp.demo.state import EditError, parse_edit
from dlp.models.ddlp import DDLP, DDLPConfig
from dlp.predict import PredictError, load_clip, predict
from dlp.video_io import Panel, render_panels, write_gif, write_mp4
from tests.conftest import DATA_DIR, tiny_config

pytestmark = pytest.mark.usefixtures("single_thread")  # many small per-frame ops: one thread is fastest

CLEVRER_VIDEOS = DATA_DIR / "clevrer-mini" / "videos"
COND, HORIZON = 2, 3
needs_clevrer = pytest.mark.skipif(not CLEVRER_VIDEOS.is_dir(), reason="../shared/data/clevrer-mini is missing")


def tiny_ddlp() -> DDLP:
    """A 32x32 DDLP with 4 particles whose weights are scaled up: the official initialisation barely moves the
    particles, larger weights make the dynamics (and so the effect of an edit) visible."""
    cfg = DDLPConfig(image_size=32, enc_channels=(8, 8), prior_channels=(8, 8), patch_size=8, n_kp_enc=4,
                     n_kp_prior=6, learned_feature_dim=3, bg_learned_feature_dim=2, anchor_s=0.25,
                     timestep_horizon=3, num_static_frames=2, pint_layers=1, pint_heads=2, pint_dim=16)
    torch.manual_seed(3)
    model = DDLP(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            gain = 1.5 if name.startswith("dynamics.") else 0.3
            p.normal_(0, gain / max(1, p[0].numel()) ** 0.5 if p.dim() > 1 else 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The tiny DDLP's checkpoint (trained on 'clevrer', rollout 2 + 3 frames) and a DLP v1 checkpoint."""
    root = tmp_path_factory.mktemp("predict")
    model = tiny_ddlp()
    ddlp_ckpt = dlp.save_checkpoint(root / "ddlp.pt", model, train_config={
        "dataset": "clevrer", "cond_steps": COND, "rollout_horizon": HORIZON})
    image_model = dlp.get_family("dlp").build_model(tiny_config())
    dlp_ckpt = dlp.save_checkpoint(root / "dlp.pt", image_model, train_config={"dataset": "clevrer"})
    return {"root": root, "model": model, "ddlp": ddlp_ckpt, "dlp": dlp_ckpt}


@pytest.fixture(scope="module")
def prepared(files):
    """Two clevrer-mini videos prepared by `dlp prepare clevrer` at 32 px: 34 frames each, one per split."""
    if not CLEVRER_VIDEOS.is_dir():
        pytest.skip("../shared/data/clevrer-mini is missing")
    source = files["root"] / "videos"
    source.mkdir()
    for name in ("video_00000.mp4", "video_01000.mp4"):
        (source / name).symlink_to(CLEVRER_VIDEOS / name)
    out = files["root"] / "clevrer.npy"
    assert main(["prepare", "clevrer", str(source), str(out), "--image-size", "32", "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def trained_run(files, prepared):
    """A tiny DDLP trained for 2 steps on the prepared clevrer-mini array by `dlp train` (its run directory)."""
    config = files["root"] / "tiny.yaml"
    config.write_text(yaml.safe_dump(dict(
        image_size=32, enc_channels=[8, 8], prior_channels=[8, 8], patch_size=8, n_kp_enc=4, n_kp_prior=8,
        learned_feature_dim=3, anchor_s=0.25, timestep_horizon=4, num_static_frames=2, pint_layers=1, pint_heads=2,
        pint_dim=16, num_train_images=4, batch_size=2, rec_loss_function="mse", cond_steps=COND,
        rollout_horizon=HORIZON)))
    assert main(["train", "--preset", "ddlp-clevrer", "-d", "clevrer", "--data-root", str(prepared), "--config",
                 str(config), "--max-steps", "2", "--eval-freq", "1000", "--num-workers", "0", "--output-dir",
                 str(files["root"]), "--name", "trained", "--device", "cpu", "--no-progress"]) == 0
    return files["root"] / "trained"


def clip(t: int = 6) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(t, 3, 32, 32)


def gif_frames(path: Path) -> tuple[int, tuple[int, int]]:
    from PIL import Image

    with Image.open(path) as image:
        return image.n_frames, image.size


def mp4_frames(path: Path) -> tuple[int, tuple[int, int]]:
    import av

    with av.open(str(path)) as container:
        frames = [(f.width, f.height) for f in container.decode(video=0)]
    return len(frames), frames[0]


# ------------------------------------------------------------------------------------------------------------------
# the Python API
def test_predict_returns_frames_ground_truth_and_trajectories(files):
    model = files["model"]
    x = clip()
    result = predict(model, x, COND, HORIZON)
    k = model.config.n_kp_enc
    assert result.frames.shape == (1, 5, 3, 32, 32) and result.num_frames == 5 and result.horizon == HORIZON
    assert result.frames.min() >= 0 and result.frames.max() <= 1
    torch.testing.assert_close(result.ground_truth, x[None, :5])
    assert result.trajectories.shape == result.pixels.shape == (1, 5, k, 2) and result.obj_on.shape == (1, 5, k)
    torch.testing.assert_close(result.pixels, (result.trajectories + 1) / 2 * 31)
    reference = model.rollout(x[None, :COND], COND, HORIZON)
    torch.testing.assert_close(result.frames, reference.frames.clamp(0, 1))
    torch.testing.assert_close(result.trajectories, reference.particles.position)
    # a batch, and a clip of only the conditioning frames (no ground truth)
    batch = predict(model, torch.stack([x, x.flip(0)]), COND, HORIZON)
    assert batch.frames.shape == (2, 5, 3, 32, 32)
    assert predict(model, x[:COND], COND, HORIZON).ground_truth is None
    assert result.video().shape[0] == 5 and result.to_dict()["clips"][0]["obj_on"][0] == result.obj_on[0, 0].tolist()


def test_predict_errors_are_one_sentence(files):
    model = files["model"]
    with pytest.raises(PredictError, match="needs a video model"):
        predict(dlp.get_family("dlp").build_model(tiny_config()), clip(), COND, HORIZON)
    with pytest.raises(PredictError, match="fewer than the 4 conditioning frames"):
        predict(model, clip(3), 4, HORIZON)
    with pytest.raises(PredictError, match=r"frames of shape \[3, 32, 32\]"):
        predict(model, torch.rand(6, 3, 16, 16), COND, HORIZON)


# ------------------------------------------------------------------------------------------------------------------
# video files
def test_video_files_keep_every_frame_and_even_sizes(tmp_path):
    frames = torch.full((4, 3, 15, 21), 0.5)  # identical frames, odd sizes
    assert gif_frames(write_gif(frames, tmp_path / "a.gif"))[0] == 1  # (PIL merges identical frames ...)
    rendered = render_panels([Panel(frames)], cond_frames=2, scale=1)  # ... the timeline keeps them apart
    assert rendered.shape[1] % 2 == 0 and rendered.shape[2] % 2 == 0
    assert gif_frames(write_gif(rendered, tmp_path / "b.gif")) == (4, (rendered.shape[2], rendered.shape[1]))
    assert mp4_frames(write_mp4(frames, tmp_path / "c.mp4")) == (4, (22, 16))  # padded for yuv420p
    with pytest.raises(ValueError, match="must end in .mp4"):
        write_mp4(frames, tmp_path / "c.avi")


# ------------------------------------------------------------------------------------------------------------------
# dlp predict
@needs_clevrer
def test_predict_cli_on_a_clevrer_video_writes_gif_and_mp4(trained_run, tmp_path, capsys):
    video = CLEVRER_VIDEOS / "video_10000.mp4"
    capsys.readouterr()
    assert main(["predict", str(trained_run), "--video", str(video), "-o", str(tmp_path / "pred.gif")]) == 0
    out = capsys.readouterr().out
    # the rollout lengths of the training config; CLEVRER frames squashed whole, every 3rd frame (the sidecar's)
    assert "2 conditioning + 3 predicted" in out and "crop none, frameskip 3" in out
    payload = read_checkpoint(trained_run)
    frames = load_clip(image_size=32, num_frames=5, video=video, train_config=payload["train_config"]).frames
    expected = predict(dlp.load_checkpoint(trained_run), frames, COND, HORIZON).video()  # [5, H', W', 3]
    size = (expected.shape[2], expected.shape[1])
    assert gif_frames(tmp_path / "pred.gif") == (5, size)
    assert mp4_frames(tmp_path / "pred.mp4") == (5, size)
    table = json.loads((tmp_path / "pred.json").read_text())
    assert np.asarray(table["clips"][0]["positions"]).shape == (5, 4, 2)


@needs_clevrer
def test_predict_cli_on_a_prepared_array(files, prepared, tmp_path):
    out = tmp_path / "from_array"
    rc = main(["predict", str(files["ddlp"]), "--data-root", str(prepared), "--index", "0", "--cond-frames", "3",
               "--horizon", "4", "--format", "mp4", "-o", str(out)])
    assert rc == 0 and not out.with_suffix(".gif").exists()
    assert mp4_frames(out.with_suffix(".mp4"))[0] == 7


@needs_clevrer
def test_predict_cli_errors(files, prepared, tmp_path, capsys):
    def error(*args: str) -> str:
        assert main(["predict", *args, "-o", str(tmp_path / "x")]) == 2
        return capsys.readouterr().err

    video = str(CLEVRER_VIDEOS / "video_00000.mp4")
    assert "needs a video model (DDLP)" in error(str(files["dlp"]), "--video", video)
    message = error(str(files["ddlp"]), "--data-root", str(prepared), "--horizon", "40")
    assert "fewer than the 42 needed" in message and message.count("\n") == 1
    frames = tmp_path / "frames"  # a folder of 3 frames is too short for 2 + 3
    frames.mkdir()
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (48, 40), (i * 60, 0, 0)).save(frames / f"{i}.png")
    assert "has 3 frame(s), fewer than the 5 needed" in error(str(files["ddlp"]), "--video", str(frames),
                                                              "--frameskip", "1")
    assert "out of range" in error(str(files["ddlp"]), "--data-root", str(prepared), "--index", "7")
    assert not list(tmp_path.glob("x.*"))  # nothing written by a failed run


# ------------------------------------------------------------------------------------------------------------------
# the "what if" demo
def test_clip_demo_edit_moves_the_particle_and_changes_the_rollout(files):
    model = files["model"]
    x = clip()
    state = ClipDemoState(model, x, COND, HORIZON)
    base = state.rollout()
    torch.testing.assert_close(base.frames, model.rollout(x[None], COND, HORIZON).frames)
    before = state.positions.clone()
    state.apply(parse_edit("1:dx=0.2,dy=-0.1"))
    moved = state.rollout().particles.position[0]  # [5, K, 2]
    delta = torch.tensor([-0.1, 0.2])
    # every conditioning frame is shifted by the same delta (as long as it stays inside the image) ...
    torch.testing.assert_close(moved[:COND, 1], (before[:, 1] + delta).clamp(-1, 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(moved[:COND, [0, 2, 3]], before[:, [0, 2, 3]])
    # ... and the predicted frames follow
    assert not torch.allclose(moved[COND:, 1], base.particles.position[0, COND:, 1], atol=1e-4)
    assert not torch.allclose(state.frames()[COND:], state.original_frames()[COND:], atol=1e-4)
    assert state.edited_particles().tolist() == [False, True, False, False]
    # x, y place the particle in the first conditioning frame; the velocity over the conditioning frames is kept
    velocity = state.positions[1, 2] - state.positions[0, 2]
    state.apply(parse_edit("2:x=10,y=20,on=0,scale=0.3,f1=2"))
    torch.testing.assert_close(state.pixels(0)[2], torch.tensor([20.0, 10.0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(state.positions[1, 2] - state.positions[0, 2], velocity, atol=1e-5, rtol=0)
    assert (state.obj_on[:, 2] == 0).all() and (state.features[:, 2, 1] == 2).all()
    assert torch.allclose(state.attributes["scale"][:, 2], torch.tensor(0.3))
    state.reset()
    assert not state.edited and state.rollout() is state.original_rollout()


def test_clip_demo_unknown_key_names_the_valid_ones(files):
    state = ClipDemoState(files["model"], clip(), COND, HORIZON)
    with pytest.raises(EditError, match=r"unknown edit key 'speed'.*valid keys for this model: dx, dy, x, y, f0..f2"):
        state.apply(parse_edit("0:dx=0.1,speed=3"))
    assert not state.edited  # checked before anything changes
    with pytest.raises(EditError, match="out of range"):
        state.apply(parse_edit("9:dx=0.1"))
    with pytest.raises(EditError, match="video model"):
        ClipDemoState(dlp.get_family("dlp").build_model(tiny_config()), clip(), COND, HORIZON)


def test_clip_demo_window_drags_and_plays_headless(files):
    state = ClipDemoState(files["model"], clip(), COND, HORIZON)
    window = ClipDemoWindow(state, headless=True)
    row, col = (float(v) for v in state.pixels(0)[0])
    assert window.on_press(col, row) and window.selected == 0
    assert window.on_motion(col + 3, row) and window.on_release()
    torch.testing.assert_close(state.pixels(0)[0], torch.tensor([row, col + 3]), atol=1e-4, rtol=0)
    assert len(window.play()) == COND + HORIZON


@needs_clevrer
def test_demo_cli_on_a_ddlp_writes_the_edited_rollout(files, prepared, tmp_path, capsys):
    out = tmp_path / "what_if.mp4"
    rc = main(["demo", "--checkpoint", str(files["ddlp"]), "--data-root", str(prepared), "--index", "0",
               "--edit", "1:dx=0.2", "--edit", "2:on=0", "--save", str(out)])
    assert rc == 0, capsys.readouterr().err
    frames, (width, height) = mp4_frames(out)
    assert frames == COND + HORIZON and width > 2 * height  # ground truth | prediction | what if
    table = json.loads(out.with_suffix(".json").read_text())
    assert table["edited"] and [p["edited"] for p in table["particles"]] == [False, True, True, False]
    rc = main(["demo", "--checkpoint", str(files["ddlp"]), "--data-root", str(prepared), "--edit", "1:spin=1",
               "--save", str(tmp_path / "bad.gif")])
    assert rc == 2 and "unknown edit key 'spin'" in capsys.readouterr().err
    assert not (tmp_path / "bad.gif").exists()
