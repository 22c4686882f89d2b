"""DLPv2 as a family of the library: presets, `dlp train` / resume / `dlp eval` through the shared engine, official
checkpoints through `dlp convert-official` / `dlp export-official`, and `dlp demo` edits of every attribute."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import dlp
from dlp.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from dlp.cli import main
from dlp.compat.ddlp import official_hparams, to_official_state_dict
from dlp.models.dlpv2 import DLPv2, DLPv2Config
from tests.conftest import SHARED
from tests.parity_v2 import convert_and_export_through_the_cli

FIXTURE = SHARED / "fixtures" / "parity-v2" / "dlpv2_tiny.pt"
SAMPLES = SHARED / "data" / "samples"
TINY = dict(image_size=32, enc_channels=[8, 8], prior_channels=[8, 8], patch_size=8, n_kp_enc=4, n_kp_prior=16,
            learned_feature_dim=3, anchor_s=0.25, num_train_images=16, batch_size=4, eval_freq=1)

pytestmark = pytest.mark.usefixtures("single_thread")


def test_presets_belong_to_the_family():
    assert "dlpv2" in dlp.list_models()
    names = dlp.list_presets("dlpv2")
    assert {"dlpv2-shapes", "dlpv2-traffic", "dlpv2-obj3d", "dlpv2-obj3d128", "dlpv2-shapes-quick"} <= set(names)
    for name in names:
        preset = dlp.get_preset(name)
        assert isinstance(preset.model_config(), DLPv2Config)
        assert preset.train_config().rec_loss_function in ("mse", "vgg")
    quick = dlp.get_preset("dlpv2-shapes-quick").train_config()
    assert quick.dataset == "shapes"


def test_train_resume_and_evaluate_through_the_engine(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    common = ["--config", str(config), "--output-dir", str(tmp_path), "--device", "cpu", "--no-progress"]
    # 16 images at batch 4: warm-up epoch (4 steps), noisy epoch, then normal; stop mid-way through the noisy epoch
    assert main(["train", "--preset", "dlpv2-shapes", "--name", "v2", "-n", "3", "--max-steps", "6", *common]) == 0
    run = tmp_path / "v2"
    payload = read_checkpoint(run / "checkpoints" / "last.pt")
    assert payload["arch"] == "dlpv2" and payload["step"] == 6 and len(payload["train_state"]["optimizers"]) == 1
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in records] == ["warm-up", "noisy"]
    assert "eval/discovery/box_f1@0.5" in records[0]  # discovery with the boxes of the glimpse scales
    for figure in ("latest.png", "glimpses_latest.png", "loss_curves.png"):
        assert (run / "figures" / figure).is_file()
    assert main(["train", "--resume", str(run), "--device", "cpu", "--no-progress"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["phase"] == "normal" and records[-1]["step"] == 12
    assert isinstance(load_checkpoint(run), DLPv2)

    capsys.readouterr()
    out = tmp_path / "eval.json"
    assert main(["eval", str(run), "--num-images", "8", "--batch-size", "4", "--device", "cpu", "--out",
                 str(out)]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    for key in ("discovery/recall@4", "discovery/box_recall@0.5", "discovery/box_iou/mean", "elbo/official/elbo",
                "elbo/deterministic/kl_scale", "elbo/deterministic/psnr"):
        assert key in metrics, key


@pytest.mark.skipif(not FIXTURE.is_file(), reason="parity-v2 fixtures not found next to the repository")
def test_official_state_dict_converts_and_exports_back_bit_identically(tmp_path):
    fx, model, config = convert_and_export_through_the_cli(FIXTURE, "dlpv2-shapes", tmp_path)
    assert model.config == config and official_hparams(model.config) == fx["hparams"]


def test_each_preset_exports_exactly_its_official_layout():
    # the key counts of spec §9 (shapes, traffic) and of the official naming rules (obj3d, obj3d128)
    expected = {"dlpv2-shapes": 207, "dlpv2-traffic": 171, "dlpv2-obj3d": 156, "dlpv2-obj3d128": 174}
    for name, count in expected.items():
        assert len(to_official_state_dict(dlp.create_model(name))) == count, name


@pytest.mark.skipif(not (SAMPLES / "clevrer").is_dir(), reason="the official sample images are not next to the repo")
def test_demo_edits_every_attribute_headless(tmp_path, capsys):
    torch.manual_seed(0)
    model = dlp.create_model("dlpv2-shapes", image_size=128, enc_channels=(8, 8, 8, 8, 8), prior_channels=(8, 8),
                             patch_size=16, n_kp_enc=4, n_kp_prior=64, learned_feature_dim=3)
    checkpoint = save_checkpoint(tmp_path / "v2.pt", model)
    png = tmp_path / "edited.png"
    argv = ["demo", "--checkpoint", str(checkpoint), "-d", "clevrer", "-i", "1", "--samples-dir", str(SAMPLES),
            "--device", "cpu", "--save", str(png)]
    edits = ["--edit", "0:dx=0.1,scale=0.4,depth=-1,obj_on=0.7", "--edit", "1:scale1=0.1,on=0", "--edit", "bg:f1=2"]
    assert main([*argv, *edits]) == 0
    table = json.loads(png.with_suffix(".json").read_text())
    first, second = table["particles"][0], table["particles"][1]
    assert first["scale"] == pytest.approx([0.4, 0.4]) and first["depth"] == pytest.approx([-1.0])
    assert first["obj_on"] == pytest.approx(0.7) and first["edited"]
    assert second["scale"][1] == pytest.approx(0.1) and second["on"] is False
    assert table["background"]["features"][1] == 2.0
    capsys.readouterr()
    assert main([*argv, "--edit", "0:size=2"]) == 2
    err = capsys.readouterr().err
    assert "unknown edit key 'size'" in err and "scale, scale0..scale1" in err and "depth" in err
