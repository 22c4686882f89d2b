"""DDLP as a family of the library: presets, `dlp train` on generated bouncing balls / resume / `dlp eval` through the
shared engine, and official checkpoints through `dlp convert-official` / `dlp export-official`."""

from __future__ import annotations

import json

import pytest
import yaml

import dlp
from dlp.checkpoint import load_checkpoint, read_checkpoint
from dlp.cli import main
from dlp.models.ddlp import DDLP, DDLPConfig
from tests.conftest import SHARED
from tests.parity_v2 import convert_and_export_through_the_cli

FIXTURE = SHARED / "fixtures" / "parity-v2" / "ddlp_tiny.pt"
TINY = dict(image_size=32, enc_channels=[8, 8], prior_channels=[8, 8], patch_size=8, n_kp_enc=4, n_kp_prior=8,
            learned_feature_dim=3, anchor_s=0.25, timestep_horizon=4, num_static_frames=2, pint_layers=1,
            pint_heads=2, pint_dim=16, num_train_images=8, batch_size=4, cond_steps=2, rollout_horizon=3,
            eval_freq=1)

pytestmark = pytest.mark.usefixtures("single_thread")


def test_presets_belong_to_the_family():
    names = dlp.list_presets("ddlp")
    assert {"ddlp-balls", "ddlp-obj3d", "ddlp-obj3d128", "ddlp-traffic", "ddlp-clevrer", "ddlp-phyre",
            "ddlp-balls-quick"} <= set(names)
    for name in names:
        preset = dlp.get_preset(name)
        assert isinstance(preset.model_config(), DDLPConfig)
    assert dlp.get_preset("ddlp-balls-quick").train_config().dataset == "balls"


def test_train_resume_and_evaluate_on_bouncing_balls(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    common = ["--config", str(config), "--output-dir", str(tmp_path), "--device", "cpu", "--no-progress"]
    assert main(["train", "--preset", "ddlp-balls", "--name", "ddlp", "-n", "3", "--max-steps", "3", *common]) == 0
    run = tmp_path / "ddlp"
    payload = read_checkpoint(run / "checkpoints" / "last.pt")
    assert payload["arch"] == "ddlp" and payload["step"] == 3
    assert (run / "figures" / "latest.png").is_file()
    assert main(["train", "--resume", str(run), "--device", "cpu", "--no-progress"]) == 0
    assert read_checkpoint(run / "checkpoints" / "last.pt")["step"] == 6
    model = load_checkpoint(run)
    assert isinstance(model, DDLP)
    capsys.readouterr()
    out = tmp_path / "eval.json"
    assert main(["eval", str(run), "--metrics", "elbo", "--num-images", "4", "--batch-size", "2", "--device", "cpu",
                 "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert {"elbo/deterministic/elbo", "elbo/deterministic/kl_dyn", "elbo/deterministic/psnr"} <= set(metrics)


def test_a_still_image_dataset_is_refused_before_anything_is_written(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    assert main(["train", "--preset", "ddlp-balls", "-d", "shapes", "--config", str(config), "--output-dir",
                 str(tmp_path / "runs")]) == 2
    assert "holds still images, but this model trains on video clips" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(not FIXTURE.is_file(), reason="parity-v2 fixtures not found next to the repository")
def test_official_state_dict_converts_and_exports_back_bit_identically(tmp_path):
    _, model, config = convert_and_export_through_the_cli(FIXTURE, "ddlp-balls", tmp_path)
    assert model.config == config
