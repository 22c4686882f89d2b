"""`dlp train` on the real mini datasets in ../shared/data: a few steps each, from the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dlp.checkpoint import read_checkpoint
from dlp.cli import main
from tests.conftest import DATA_DIR

TINY_OBJECT = dict(enc_channels=[8, 8], prior_channels=[8, 8], glimpse_channels=[8, 8], n_kp_enc=4, n_kp_prior=6,
                   learned_feature_dim=3, anchor_s=0.5, patch_size=8, rec_loss_function="mse")


def run_steps(tmp_path: Path, *argv: str, steps: int = 2) -> dict:
    code = main(["train", *argv, "-b", "4", "--max-steps", str(steps), "--output-dir", str(tmp_path / "runs"),
                 "--name", "run", "--device", "cpu", "--no-progress"])
    assert code == 0
    return read_checkpoint(tmp_path / "runs" / "run" / "checkpoints" / "last.pt")


@pytest.mark.skipif(not (DATA_DIR / "celeba-mini").is_dir(), reason="no shared celeba-mini")
def test_landmarks_celeba_mini_with_the_celeba64_preset(tmp_path):
    state = run_steps(tmp_path, "-d", "landmarks", "--data-root", str(DATA_DIR / "celeba-mini"), "--preset",
                      "celeba64")
    assert state["step"] == 2 and state["config"]["image_size"] == 64 and state["config"]["n_kp_enc"] == 30


def _tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_OBJECT))
    return path


@pytest.mark.skipif(not (DATA_DIR / "clevrer-mini").is_dir(), reason="no shared clevrer-mini")
def test_clevrer_prepared_from_videos(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("video_00000.mp4", "video_10000.mp4"):
        (videos / name).symlink_to(DATA_DIR / "clevrer-mini" / "videos" / name)
    array = tmp_path / "clevrer.npy"
    assert main(["prepare", "clevrer", str(videos), str(array), "--image-size", "32"]) == 0
    state = run_steps(tmp_path, "-d", "clevrer", "--data-root", str(array), "--image-size", "32", "--config",
                      str(_tiny_config(tmp_path)))
    assert state["step"] == 2 and state["train_config"]["dataset"] == "clevrer"


@pytest.mark.skipif(not (DATA_DIR / "traffic-mini").is_dir(), reason="no shared traffic-mini")
def test_traffic_prepared_from_frames(tmp_path):
    array = tmp_path / "traffic.npy"
    assert main(["prepare", "traffic", str(DATA_DIR / "traffic-mini" / "frames"), str(array), "--image-size", "32",
                 "--frameskip", "1"]) == 0
    state = run_steps(tmp_path, "-d", "traffic", "--data-root", str(array), "--image-size", "32", "--config",
                      str(_tiny_config(tmp_path)))
    assert state["step"] == 2 and state["train_config"]["dataset"] == "traffic"


def test_folder_dataset_trains(tmp_path):
    from PIL import Image
    import numpy as np

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    state = run_steps(tmp_path, "-d", "folder", "--data-root", str(folder), "--preset", "shapes", "--image-size",
                      "32", "--config", str(_tiny_config(tmp_path)))
    assert state["step"] == 2
