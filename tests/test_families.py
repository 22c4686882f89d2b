"""The model-family seam: the registry, self-describing checkpoints, and a toy family that goes through the unchanged
engine and CLI (train, checkpoint, resume, `dlp eval`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import dlp
from dlp.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from dlp.cli import main
from dlp.config import ConfigError
from dlp.registry import Preset, get_family, register_family, register_preset
from tests.conftest import tiny_config
from tests.toy_family import ToyAutoencoder, ToyConfig, ToyTrainConfig

ENGINE = Path(__file__).resolve().parents[1] / "src" / "dlp" / "engine"


@pytest.fixture(scope="module")
def toy_family():
    if "toy" not in dlp.list_models():
        register_family("toy", description="two-layer conv autoencoder (test)", config_class=ToyConfig,
                        train_config_class=ToyTrainConfig, model="tests.toy_family:ToyAutoencoder",
                        objective="tests.toy_family:ToyObjective")
        register_preset(Preset("toy-shapes", "toy", "toy autoencoder on 32-px shapes", model={"image_size": 32},
                               train={"dataset": "shapes", "batch_size": 4, "num_epochs": 2, "eval_freq": 1,
                                      "num_train_images": 8, "lr": 0.1}))
    return get_family("toy")


def test_registry_lists_families_and_presets_with_their_family():
    assert {"dlp"} <= set(dlp.list_models())
    for name in dlp.list_presets():
        assert dlp.get_preset(name).family in dlp.list_models()
    assert dlp.list_presets("dlp") == ["celeba", "celeba64", "clevrer", "shapes", "shapes-quick", "traffic"]
    assert type(dlp.create_model("shapes-quick")).__name__ == "DLP"
    family_default = dlp.create_model("dlp", image_size=64, enc_channels=(16, 32, 64))  # a family name works too
    assert family_default.config.n_kp_enc == dlp.DLPConfig().n_kp_enc
    with pytest.raises(ConfigError, match=r"'nope' is neither a preset nor a model family"):
        dlp.create_model("nope")


def test_checkpoints_record_the_family_and_older_ones_load_as_v1(tmp_path):
    model = dlp.DLP(tiny_config("anchored"))
    path = save_checkpoint(tmp_path / "m.pt", model)
    payload = read_checkpoint(path)
    assert payload["arch"] == "dlp" and payload["config"]["position_encoder"] == "prior_anchored"
    # A checkpoint written before families existed: no "arch", the old config keys, the old parameter names.
    legacy = dict(payload)
    del legacy["arch"]
    config = {**legacy["config"], "kp_range": [-1.0, 1.0], "kp_activation": "tanh", "prior_anchored_positions": True}
    del config["position_encoder"]
    legacy["config"] = config
    legacy["model"] = {k.replace("position_encoder.", "anchor_offsets.", 1): v for k, v in payload["model"].items()}
    torch.save(legacy, tmp_path / "old.pt")
    old = load_checkpoint(tmp_path / "old.pt")
    assert old.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(old.state_dict()[key], value), key


def test_checkpoints_honour_the_umask(tmp_path):
    import os

    previous = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "m.pt", dlp.DLP(tiny_config("masked")))
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o644  # like any new file (the temporary file's 0600 is not kept)


def test_no_engine_file_mentions_a_family():
    forbidden = re.compile(r"dlp_v1|DLPConfig|DLPTrainConfig|DLPObjective|dlp_loss|chamfer|warm-?up|noisy|obj_on|"
                           r"Particles|position_encoder|glimpse|optimizer_[ed]|ENCODER_SIDE|dlpv2|ddlp", re.IGNORECASE)
    for path in sorted(ENGINE.glob("*.py")):
        hits = [line for line in path.read_text().splitlines() if forbidden.search(line)]
        assert not hits, f"{path.name} knows a model family: {hits}"


def test_toy_family_trains_resumes_and_evaluates_through_the_cli(toy_family, tmp_path, capsys):
    runs = tmp_path / "runs"
    common = ["--output-dir", str(runs), "--device", "cpu", "--no-progress"]
    # The family's own flags appear in `dlp train --help` for its preset.
    with pytest.raises(SystemExit):
        main(["train", "--preset", "toy-shapes", "--help"])
    help_text = capsys.readouterr().out
    assert "--code_weight" in help_text and "--code-weight" in help_text and "--n_kp_enc" not in help_text

    assert main(["train", "--preset", "toy-shapes", "--code_weight", "0.5", "--name", "toy", "--max-steps", "3",
                 *common]) == 0
    run = runs / "toy"
    first = read_checkpoint(run / "checkpoints" / "last.pt")
    assert first["arch"] == "toy" and first["step"] == 3 and first["train_config"]["code_weight"] == 0.5
    assert len(first["train_state"]["optimizers"]) == 1  # the toy's single parameter group
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in records] == ["burn-in", "main"] and set(records[0]) >= {"loss", "rec", "code"}
    assert (run / "figures" / "latest.png").is_file()

    assert main(["train", "--resume", str(run), *common]) == 0
    resumed = read_checkpoint(run / "checkpoints" / "last.pt")
    assert resumed["step"] == 4 and resumed["epoch"] == 2
    assert isinstance(load_checkpoint(run / "checkpoints" / "last.pt"), ToyAutoencoder)

    capsys.readouterr()
    out = tmp_path / "toy.json"
    assert main(["eval", str(run), "--num-images", "4", "--batch-size", "4", "--device", "cpu", "--out",
                 str(out)]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert {"elbo/deterministic/elbo", "elbo/deterministic/psnr"} <= set(metrics)  # no particles: no discovery


@pytest.mark.parametrize("name", [n for n in dlp.list_presets() if dlp.get_preset(n).family != "dlp"])
def test_every_preset_of_the_new_families_runs_a_forward_pass(name):
    """(DLP v1's presets: tests/test_model.py.) One image, or a clip of two frames for video models."""
    torch.manual_seed(0)
    model = dlp.create_model(name).eval()
    cfg = model.config
    shape = (1, 3, cfg.image_size, cfg.image_size)
    if dlp.get_preset(name).family == "ddlp":
        shape = (1, 2, *shape[1:])
    with torch.no_grad():
        out = model(torch.rand(shape), deterministic=True)
    assert out.rec.shape == shape and torch.isfinite(out.rec).all()
