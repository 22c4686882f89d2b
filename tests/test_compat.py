"""Official state dicts <-> our checkpoints (`dlp convert-official` / `dlp export-official`), on the parity fixtures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dlp.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from dlp.cli import main
from dlp.compat.official import (
    OfficialCheckpointError,
    config_from_official_hparams,
    from_official_state_dict,
    official_param_names,
    official_state_dict_names,
)
from dlp.models.dlp_v1.model import DLP
from dlp.registry import get_preset
from tests.conftest import PARITY_DIR, tiny_config

FIXTURES = sorted(PARITY_DIR.glob("*.pt")) if PARITY_DIR.is_dir() else []
pytestmark = pytest.mark.skipif(not FIXTURES, reason="parity fixtures not found next to the repository")

# DLPConfig fields that differ between the fixtures and the presets we start from.
SET_KEYS = ("image_size", "enc_channels", "prior_channels", "n_kp_enc", "n_kp_prior", "patch_size",
            "learned_feature_dim", "anchor_s", "exclusive_patches")


def preset_and_overrides(hparams: dict) -> tuple[str, list[str]]:
    preset = "shapes" if hparams["use_object_dec"] else "celeba64"
    sets = []
    for key in SET_KEYS:
        value = hparams[key]
        if isinstance(value, (tuple, list)):
            value = "[" + ",".join(str(v) for v in value) + "]"
        sets += ["--set", f"{key}={value}"]
    return preset, sets


@pytest.fixture(scope="module", params=FIXTURES, ids=lambda p: p.stem)
def fixture(request):
    fx = torch.load(request.param, weights_only=True)
    return {"hparams": fx["hparams"], "state_dict": fx["state_dict"], "grads": fx["train"]["grads"]}


@pytest.fixture(scope="module")
def converted(fixture, tmp_path_factory):
    """The fixture's state dict saved as an official .pth, converted with the CLI: (checkpoint path, tmp dir)."""
    tmp = tmp_path_factory.mktemp("compat")
    src = tmp / "official.pth"
    torch.save(fixture["state_dict"], src)
    preset, sets = preset_and_overrides(fixture["hparams"])
    out = tmp / "ours.pt"
    assert main(["convert-official", str(src), "--preset", preset, *sets, "-o", str(out)]) == 0
    return out, tmp


def run_cli(argv, capsys):
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.err


def test_convert_official_restores_config_and_weights(fixture, converted):
    path, _ = converted
    model = load_checkpoint(path)
    hp = fixture["hparams"]
    cfg = model.config
    assert cfg.is_object_model == hp["use_object_dec"]
    assert cfg.dec_bone == hp["dec_bone"]
    for key in SET_KEYS:
        value = getattr(cfg, key)
        assert (list(value) if isinstance(value, tuple) else value) == \
            (list(hp[key]) if isinstance(hp[key], tuple) else hp[key]), key
    payload = read_checkpoint(path)
    assert payload["converted_from"] == "official.pth"
    names = official_state_dict_names(model)
    state = model.state_dict()
    for ours, off in names.items():
        assert torch.equal(state[ours], fixture["state_dict"][off]), ours


def test_export_official_round_trip_is_exact(fixture, converted, capsys):
    path, tmp = converted
    exported = tmp / "exported.pth"
    rc, err = run_cli(["export-official", str(path), "-o", str(exported)], capsys)
    assert rc == 0, err
    state = torch.load(exported, weights_only=True)
    original = fixture["state_dict"]
    assert set(state) == set(original)
    for key, tensor in original.items():
        assert state[key].dtype == tensor.dtype, key
        assert torch.equal(state[key], tensor), key
    aliases = [k for k in original if k.startswith("object_dec.decode.")]
    assert bool(aliases) == fixture["hparams"]["use_object_dec"]
    for key in aliases:
        assert torch.equal(state[key], state[key.replace("object_dec.decode.", "object_dec.main.")])


def test_missing_key_is_named(fixture, tmp_path, capsys):
    state = dict(fixture["state_dict"])
    dropped = "to_normal_stats.2.weight"
    del state[dropped]
    src = tmp_path / "missing.pth"
    torch.save(state, src)
    preset, sets = preset_and_overrides(fixture["hparams"])
    rc, err = run_cli(["convert-official", str(src), "--preset", preset, *sets, "-o", str(tmp_path / "o.pt")], capsys)
    assert rc == 2
    assert "missing keys" in err and dropped in err
    assert not (tmp_path / "o.pt").exists()


def test_unexpected_key_is_named(fixture, tmp_path, capsys):
    state = {**fixture["state_dict"], "enc.extra_head.weight": torch.zeros(3)}
    src = tmp_path / "unexpected.pth"
    torch.save(state, src)
    preset, sets = preset_and_overrides(fixture["hparams"])
    rc, err = run_cli(["convert-official", str(src), "--preset", preset, *sets, "-o", str(tmp_path / "o.pt")], capsys)
    assert rc == 2
    assert "unexpected keys" in err and "enc.extra_head.weight" in err


def test_wrong_preset_lists_the_mismatching_keys(fixture, tmp_path, capsys):
    """Without the --set overrides the preset's architecture differs: keys or shapes are reported, never a traceback."""
    src = tmp_path / "official.pth"
    torch.save(fixture["state_dict"], src)
    preset, _ = preset_and_overrides(fixture["hparams"])
    rc, err = run_cli(["convert-official", str(src), "--preset", preset, "-o", str(tmp_path / "o.pt")], capsys)
    assert rc == 2
    assert err.startswith("dlp convert-official: error:") and "Traceback" not in err
    assert "missing keys" in err and "unexpected keys" in err


def test_wrong_shape_is_named_by_the_cli(fixture, tmp_path, capsys):
    """learned_feature_dim changes shapes but no key names: the first mismatching key is named with both shapes."""
    src = tmp_path / "official.pth"
    torch.save(fixture["state_dict"], src)
    preset, sets = preset_and_overrides(fixture["hparams"])
    sets += ["--set", f"learned_feature_dim={fixture['hparams']['learned_feature_dim'] + 1}"]
    rc, err = run_cli(["convert-official", str(src), "--preset", preset, *sets, "-o", str(tmp_path / "o.pt")], capsys)
    assert rc == 2
    assert "official key object_enc.4.weight has shape [8, 128] but this configuration expects [10, 128]" in err


def test_wrong_shape_is_named(fixture):
    model = DLP(config_from_official_hparams(fixture["hparams"]))
    key = "to_normal_stats.4.bias"
    state = {**fixture["state_dict"], key: torch.zeros(3)}
    with pytest.raises(OfficialCheckpointError, match=rf"official key {key} has shape \[3\]"):
        from_official_state_dict(model, state)


def test_inconsistent_decode_alias_is_rejected(fixture):
    if not fixture["hparams"]["use_object_dec"]:
        pytest.skip("only object models have the object_dec.decode.* aliases")
    model = DLP(config_from_official_hparams(fixture["hparams"]))
    key = "object_dec.decode.final_conv.main.conv_32_to_4.bias"
    assert key in fixture["state_dict"]
    state = {**fixture["state_dict"], key: fixture["state_dict"][key] + 1}
    with pytest.raises(OfficialCheckpointError, match=r"object_dec.decode.* differs from its alias"):
        from_official_state_dict(model, state)


def test_prior_anchored_models_have_no_official_layout():
    message = r"position_encoder=.prior_anchored. is this library.s extension and has no official weights layout"
    with pytest.raises(OfficialCheckpointError, match=message):
        official_state_dict_names(DLP(tiny_config("anchored")))


def test_official_param_names_cover_every_parameter_once(fixture):
    model = DLP(config_from_official_hparams(fixture["hparams"]))
    names = official_param_names(model)
    assert list(names) == [n for n, _ in model.named_parameters()]
    assert len(set(names.values())) == len(names)
    assert set(names.values()) == set(fixture["grads"])  # the official `named_parameters()`
    full = official_state_dict_names(model)
    assert len(set(full.values())) == len(full)
    aliases = {k for k in fixture["state_dict"] if k.startswith("object_dec.decode.")}
    assert set(full.values()) | aliases == set(fixture["state_dict"])


def test_set_accepts_exponent_floats(fixture, tmp_path, capsys):
    """YAML 1.1 reads `1e-1` (no dot) as a string; the config coerces it."""
    src = tmp_path / "official.pth"
    torch.save(fixture["state_dict"], src)
    preset, sets = preset_and_overrides(fixture["hparams"])
    rc, err = run_cli(["convert-official", str(src), "--preset", preset, *sets, "--set", "sigma=1e-1",
                       "-o", str(tmp_path / "o.pt")], capsys)
    assert rc == 0, err
    assert load_checkpoint(tmp_path / "o.pt").config.sigma == pytest.approx(0.1)


REFERENCE = PARITY_DIR.parents[1] / "reference" / "dlp-v1-behaviour.md"


def _official_listings() -> dict[str, dict[str, tuple[int, ...]]]:
    """The official state-dict key listings (§8.6 of the reference): {preset: {key: shape}}."""
    import re

    text = REFERENCE.read_text()
    section = text[text.index("### 8.6"):text.index("## 9.")]
    parts = re.split(r"#### (\w+)\n", section)[1:]
    listings = {}
    for name, body in zip(parts[::2], parts[1::2]):
        keys: dict[str, tuple[int, ...]] = {}
        for key, rest in re.findall(r"^([\w.]+): (.*)$", body, flags=re.M):
            if rest.startswith("BN("):
                size = (int(rest[3:].split(",")[0]),)
                for stat in ("weight", "bias", "running_mean", "running_var"):
                    keys[f"{key}.{stat}"] = size
                keys[f"{key}.num_batches_tracked"] = ()
            for param, shape in re.findall(r"(weight|bias)\(([\d, ]+)\)", rest):
                keys[f"{key}.{param}"] = tuple(int(s) for s in shape.split(",") if s.strip())
        listings[name] = keys
    return listings


@pytest.mark.skipif(not REFERENCE.is_file(), reason="reference listing not found next to the repository")
@pytest.mark.parametrize("preset", ["celeba", "clevrer", "traffic", "shapes"])
def test_presets_export_exactly_the_official_key_layout(preset):
    from dlp.compat.official import to_official_state_dict
    from dlp.registry import create_model

    expected = _official_listings()[preset]
    ours = {key: tuple(value.shape) for key, value in to_official_state_dict(create_model(preset)).items()}
    assert ours == expected


def test_dlp_eval_takes_a_converted_checkpoint(fixture, converted, tmp_path, capsys):
    """`convert-official --preset` records the preset's dataset (and weights), so `dlp eval` knows what to run."""
    path, _ = converted
    payload = read_checkpoint(path)
    preset, _ = preset_and_overrides(fixture["hparams"])
    assert payload["preset"] == preset
    assert payload["train_config"]["dataset"] == get_preset(preset).train_config().dataset
    out = tmp_path / "eval.json"
    argv = ["eval", str(path), "--metrics", "elbo", "--num-images", "4", "--batch-size", "4", "--device", "cpu",
            "--out", str(out)]
    if payload["train_config"]["dataset"] != "shapes":  # real data: point it at a folder of images instead
        images = tmp_path / "images"
        images.mkdir()
        for i in range(4):
            Image.fromarray((np.random.rand(40, 40, 3) * 255).astype(np.uint8)).save(images / f"{i}.png")
        argv += ["-d", "folder", "--data-root", str(images)]
    assert main(argv) == 0, capsys.readouterr().err
    assert "elbo/deterministic/elbo" in json.loads(out.read_text())["metrics"]


def test_dlp_eval_asks_for_a_dataset_when_the_checkpoint_records_none(tmp_path, capsys):
    path = save_checkpoint(tmp_path / "bare.pt", DLP(tiny_config("object")))
    assert main(["eval", str(path), "--device", "cpu"]) == 2
    assert "records no training dataset; pass the one to evaluate on with -d/--dataset" in capsys.readouterr().err
    assert main(["eval", str(path), "-d", "shapes", "--metrics", "discovery", "--num-images", "4", "--device",
                 "cpu"]) == 0
