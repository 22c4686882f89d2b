"""The training engine and `dlp train`: tiny configs, a few steps each."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from dlp.checkpoint import read_checkpoint, save_checkpoint
from dlp.cli import build_parser, main
from dlp.config import ConfigError
from dlp.models.dlp_v1.config import DLPTrainConfig
from dlp.data.shapes import ShapesDataset
from dlp.engine.cli import resolve_args
from dlp.engine.trainer import RunOptions, Trainer
from dlp.models.dlp_v1.objective import DLPObjective, parameter_groups
from dlp.models.dlp_v1.model import DLP
from tests.conftest import tiny_config

TINY = dict(image_size=32, enc_channels=[8, 8], prior_channels=[8, 8], glimpse_channels=[8, 8], n_kp_enc=4,
            n_kp_prior=6, learned_feature_dim=3, anchor_s=0.5, num_train_images=32)


@pytest.fixture
def tiny_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def train_cli(tmp_path: Path, tiny_yaml: Path, *extra: str) -> int:
    return main(["train", "-d", "shapes", "--config", str(tiny_yaml), "-b", "8", "-n", "2", "-e", "1",
                 "--output-dir", str(tmp_path / "runs"), "--name", "run", "--device", "cpu", "--no-progress",
                 *extra])


def test_cli_run_writes_config_metrics_figures_and_checkpoints(tmp_path, tiny_yaml):
    assert train_cli(tmp_path, tiny_yaml) == 0
    run = tmp_path / "runs" / "run"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["n_kp_enc"] == 4 and config["train"]["batch_size"] == 8
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert [r["phase"] for r in records] == ["warm-up", "noisy"]  # the shapes preset: warmup_epoch = 1
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    assert (run / "figures" / "latest.png").is_file() and (run / "figures" / "loss_curves.png").is_file()
    last = read_checkpoint(run / "checkpoints" / "last.pt")
    assert last["epoch"] == 2 and last["step"] == 8 and last["config"]["n_kp_enc"] == 4
    assert {"optimizers", "schedulers", "rng"} <= set(last["train_state"])
    assert len(last["train_state"]["optimizers"]) == 2  # DLP v1's two Adams (encoders, decoders)
    assert last["arch"] == "dlp"
    assert (run / "checkpoints" / "best.pt").is_file()


def test_stop_and_resume_equals_uninterrupted(tmp_path, tiny_yaml):
    assert train_cli(tmp_path, tiny_yaml, "--name", "full") == 0
    # 6 steps = one epoch and a half: stops mid-epoch, then resumes from the recorded position.
    assert train_cli(tmp_path, tiny_yaml, "--name", "split", "--max-steps", "6") == 0
    assert read_checkpoint(tmp_path / "runs" / "split" / "checkpoints" / "last.pt")["step"] == 6
    assert main(["train", "--resume", str(tmp_path / "runs" / "split"), "--device", "cpu", "--no-progress"]) == 0
    full = read_checkpoint(tmp_path / "runs" / "full" / "checkpoints" / "last.pt")
    resumed = read_checkpoint(tmp_path / "runs" / "split" / "checkpoints" / "last.pt")
    assert resumed["step"] == full["step"] == 8
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key


def _resolve(*argv: str):
    """(preset, model config, train config) of a `dlp train` command line."""
    args = build_parser(["train", *argv]).parse_args(["train", *argv])
    resolved = resolve_args(args)
    return resolved.preset, resolved.model, resolved.train


def test_resume_keeps_the_runs_dataset_and_settings(tmp_path):
    model = DLP(tiny_config("masked"))
    train = DLPTrainConfig(dataset="landmarks", data_root="faces", batch_size=4, beta_kl=7.0)
    save_checkpoint(tmp_path / "last.pt", model, train_config=train.to_dict())
    _, model_config, resumed = _resolve("--resume", str(tmp_path / "last.pt"))
    assert model_config == model.config
    assert (resumed.dataset, resumed.data_root, resumed.batch_size, resumed.beta_kl) == ("landmarks", "faces", 4, 7.0)
    _, _, moved = _resolve("--resume", str(tmp_path / "last.pt"), "--data-root", "elsewhere")
    assert (moved.dataset, moved.data_root) == ("landmarks", "elsewhere")


def test_typed_flags_override_only_themselves():
    preset, model, train = _resolve("-d", "shapes", "--n_kp_enc", "8", "-k", "0.5")
    assert preset == "shapes"
    assert model.n_kp_enc == 8 and train.beta_kl == 0.5
    _, base_model, base_train = _resolve("-d", "shapes")
    assert model.replace(n_kp_enc=10) == base_model
    assert train.lr == base_train.lr == 1e-3 and train.batch_size == base_train.batch_size
    # The official -o replaced every value with argparse defaults; ours changes nothing by itself.
    assert _resolve("-d", "shapes", "-o")[1:] == _resolve("-d", "shapes")[1:]
    assert _resolve("-d", "clevrer")[0] == "clevrer" and _resolve("-d", "landmarks")[0] == "celeba64"
    _, model, _ = _resolve("-d", "shapes", "--no-exclusive_patches")
    assert model.exclusive_patches is False
    assert _resolve("-d", "shapes", "--position_encoder", "prior_anchored")[1].position_encoder == "prior_anchored"
    assert _resolve("--preset", "shapes-quick", "--position-encoder", "heatmap")[1].position_encoder == "heatmap"
    # every flag in both spellings, the official underscore one and the dashed one
    dashed, underscored = _resolve("-d", "shapes", "--batch-size", "8"), _resolve("-d", "shapes", "--batch_size", "8")
    assert dashed[2].batch_size == underscored[2].batch_size == 8
    assert _resolve("-d", "shapes", "--image_size", "128")[1].image_size == 128
    # the extension costs: flat flags, one group of the objective
    assert _resolve("-d", "shapes", "--beta_obj_on", "2")[2].extensions.beta_obj_on == 2.0


def test_config_file_then_typed_flags(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"n_kp_enc": 6, "lr": 0.01, "beta_kl": 2.0}))
    _, model, train = _resolve("-d", "shapes", "--config", str(path), "-l", "0.02")
    assert model.n_kp_enc == 6 and train.beta_kl == 2.0 and train.lr == 0.02


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["-d", "folder"], "has no default preset"),
        (["-d", "shapes", "-b", "0"], "batch size must be a positive integer"),
        (["-d", "shapes", "-l", "-1"], "learning rate must be positive"),
        (["-d", "shapes", "-n", "0"], "number of epochs must be a positive integer"),
        (["-d", "shapes", "--anchor_s", "0.3"], "not a power of two"),
        (["-d", "celeba", "--position_encoder", "prior_anchored"], "needs the object model"),
    ],
)
def test_bad_configuration_is_refused_with_one_sentence(argv, message, capsys, tmp_path):
    assert main(["train", *argv, "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not any(tmp_path.iterdir()), "nothing is written before the configuration is valid"


def test_unknown_dataset_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit):
        main(["train", "-d", "imagenet"])
    assert "invalid choice: 'imagenet'" in capsys.readouterr().err


def test_config_file_with_unknown_key(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("n_kp_enc: 4\nlearning_rate: 0.1\n")
    assert main(["train", "--config", str(path)]) == 2
    assert "unknown settings ['learning_rate']" in capsys.readouterr().err


def test_missing_data_root(tmp_path, capsys):
    code = main(["train", "-d", "clevrer", "--data-root", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "r")])
    assert code == 2
    assert "missing" in capsys.readouterr().err


def test_resume_refuses_corrupt_foreign_and_mismatched_checkpoints(tmp_path, tiny_yaml, capsys):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    assert main(["train", "--resume", str(corrupt)]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    assert main(["train", "--resume", str(foreign)]) == 2
    assert "not a deep-latent-particles checkpoint" in capsys.readouterr().err
    weights_only = tmp_path / "weights.pt"
    save_checkpoint(weights_only, DLP(tiny_config("object")))
    assert main(["train", "--resume", str(weights_only)]) == 2
    assert "cannot be resumed" in capsys.readouterr().err

    assert train_cli(tmp_path, tiny_yaml, "--max-steps", "2") == 0
    assert main(["train", "--resume", str(tmp_path / "runs" / "run"), "--n_kp_enc", "5"]) == 2
    assert "n_kp_enc: checkpoint 4 vs now 5" in capsys.readouterr().err


def test_images_of_the_wrong_size_are_refused(tmp_path):
    model_config = tiny_config("object")
    dataset = ShapesDataset(16, image_size=64)
    with pytest.raises(ValueError, match=r"pass --image-size 64"):
        Trainer(model_config, DLPTrainConfig(batch_size=4), RunOptions(output_dir=str(tmp_path), device="cpu"),
                train_dataset=dataset)


class _InterruptAfter(torch.utils.data.Dataset):
    """Interrupts on the n-th item fetched, as a Ctrl-C (or a `kill`) in the middle of an epoch would."""

    def __init__(self, dataset, calls, how):
        self.dataset, self.calls, self.how = dataset, calls, how

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        self.calls -= 1
        if self.calls == 0:
            if self.how == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
            else:
                raise KeyboardInterrupt
        return self.dataset[i]


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_interrupt_saves_last_checkpoint(tmp_path, how):
    dataset = ShapesDataset(32, image_size=32, min_size=5, max_size=7)
    trainer = Trainer(tiny_config("object"), DLPTrainConfig(batch_size=4, num_epochs=3, warmup_epoch=0),
                      RunOptions(output_dir=str(tmp_path), name="run", device="cpu", progress=False),
                      train_dataset=_InterruptAfter(dataset, calls=1 + 8 + 2, how=how), eval_fn=lambda *a, **k: {})
    result = trainer.fit()
    assert result.interrupted
    state = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    # Accelerate's loader fetches one batch ahead, so the interrupt lands after one or two completed steps.
    assert state["step"] in (1, 2) and state["train_state"]["batch_in_epoch"] == state["step"]
    resumed = Trainer(tiny_config("object"), DLPTrainConfig(batch_size=4, num_epochs=3, warmup_epoch=0),
                      RunOptions(output_dir=str(tmp_path), resume=str(tmp_path / "run"), device="cpu", progress=False),
                      train_dataset=dataset, eval_fn=lambda *a, **k: {}).fit()
    assert not resumed.interrupted and resumed.step == 3 * 8


def _tiny_object_trainer(tmp_path, **train_settings) -> Trainer:
    tcfg = DLPTrainConfig.from_dict(dict(batch_size=4, warmup_epoch=1, beta_kl=0.5, **train_settings))
    return Trainer(tiny_config("object"), tcfg, RunOptions(output_dir=str(tmp_path), device="cpu", progress=False),
                   train_dataset=ShapesDataset(8, image_size=32, min_size=5, max_size=7), eval_fn=lambda *a, **k: {})


def test_object_costs_apply_only_in_the_phases_where_they_make_sense(tmp_path):
    # While obj_on is replaced by noise it gets no reconstruction gradient: a sparsity penalty would only switch every
    # particle off. In the warm-up nothing reconstructs through alpha: a spread cost would only erase it.
    trainer = _tiny_object_trainer(tmp_path, beta_obj_on=100.0, beta_spread=3.0)
    batch = next(iter(trainer.loader))
    for phase, obj_on_weight, spread_weight in (("warm-up", 0.0, 0.0), ("noisy", 0.0, 3.0), ("normal", 100.0, 3.0)):
        loss, rec, kl, _, _, active, spread = trainer.train_step(batch, phase).tolist()
        assert active > 0 and spread > 0
        assert loss == pytest.approx(rec + 0.5 * kl + obj_on_weight * active + spread_weight * spread, rel=1e-5)


def test_obj_on_cost_ramps_up_over_the_first_normal_epochs(tmp_path):
    # warm-up epoch 0, noisy epochs 1-4, normal from epoch 5: the weight reaches 8 at the fourth normal epoch.
    def objective(**settings) -> DLPObjective:
        return DLPObjective(tiny_config("object"), DLPTrainConfig.from_dict(dict(warmup_epoch=1, **settings)))

    ramped = objective(beta_obj_on=8.0, obj_on_ramp_epochs=4)
    assert [ramped.obj_on_weight(epoch) for epoch in range(0, 11)] == [0.0] * 5 + [2.0, 4.0, 6.0, 8.0, 8.0, 8.0]
    assert objective(beta_obj_on=8.0).obj_on_weight(5) == 8.0
    with pytest.raises(ConfigError, match="obj_on_ramp_epochs"):
        DLPTrainConfig.from_dict({"obj_on_ramp_epochs": -1})

    trainer = _tiny_object_trainer(tmp_path, beta_obj_on=100.0, obj_on_ramp_epochs=4)
    batch = next(iter(trainer.loader))
    trainer.epoch = 6
    loss, rec, kl, _, _, active, _ = trainer.train_step(batch, "normal").tolist()
    assert loss == pytest.approx(rec + 0.5 * kl + 50.0 * active, rel=1e-5)


def test_optimiser_split_is_the_official_one():
    model = DLP(tiny_config("object"))
    enc, dec = parameter_groups(model)
    enc_ids, dec_ids = set(map(id, enc)), set(map(id, dec))
    assert enc_ids.isdisjoint(dec_ids)
    assert {id(p) for p in model.prior.parameters()} <= enc_ids
    assert {id(p) for p in model.position_encoder.obj_on_head.parameters()} <= enc_ids
    assert {id(p) for p in model.glimpse_decoder.parameters()} <= dec_ids
    assert {id(p) for p in model.pointnet.parameters()} <= dec_ids


@pytest.mark.slow
def test_two_process_cpu_run_writes_one_checkpoint(tmp_path, tiny_yaml):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "dlp", "train", "-d", "shapes", "--config", str(tiny_yaml), "-b", "4", "-n", "1",
           "--output-dir", str(tmp_path / "runs"), "--name", "ddp", "--device", "cpu", "--no-progress",
           "--num-processes", "2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "runs" / "ddp"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    state = read_checkpoint(run / "checkpoints" / "last.pt")
    # 32 images, 2 processes x batch 4: 4 steps per epoch on each process.
    assert state["step"] == 4
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


# ----------------------------------------------------------------------------------------------------------------
# A new user's first runs
def test_progress_bar_ends_where_max_steps_stops_the_run(tmp_path, tiny_yaml, capsys):
    # 32 images at batch 8: 4 steps per epoch; --max-steps 3 must give a bar of 3 steps, not of the epoch (or run).
    assert main(["train", "-d", "shapes", "--config", str(tiny_yaml), "-b", "8", "-n", "50", "--output-dir",
                 str(tmp_path / "runs"), "--name", "bar", "--device", "cpu", "--max-steps", "3"]) == 0
    err = capsys.readouterr().err
    assert "0/3 [" in err and "/4 [" not in err


def test_a_run_shorter_than_the_logging_interval_still_reports(tmp_path, tiny_yaml, capsys):
    # 2 steps: fewer than log_every (10), inside the first epoch, before any evaluation epoch.
    assert train_cli(tmp_path, tiny_yaml, "--max-steps", "2", "-e", "5") == 0
    out = capsys.readouterr().out
    run = tmp_path / "runs" / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["step"] == 2 and records[0]["partial"] is True
    assert "stopped at step 2" in out and "loss=" in out
    assert (run / "figures" / "latest.png").is_file() and (run / "figures" / "step_0000002.png").is_file()


def test_train_help_groups_flags_and_describes_them_truthfully(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    headings = ["data:", "model (architecture):", "objective and optimisation:",
                "extensions (not in the papers; off by default):", "run:"]
    positions = [text.index(h) for h in headings]
    assert positions == sorted(positions)
    extensions = text[positions[3]:positions[4]]
    for flag in ("--beta_obj_on", "--obj_on_ramp_epochs", "--beta_spread", "--position_encoder"):
        assert flag in extensions
    flat = " ".join(text.split())
    no_progress = flat.split("--no-progress, --no_progress ", 1)[1]
    assert no_progress.startswith("no progress bars") and "default" not in no_progress[:40]  # not "(default: True)"
    assert "<preset><PREFIX>-<date>-<time>" in flat  # -p/--prefix: where the text goes
    for both in ("--batch_size BATCH_SIZE, --batch-size BATCH_SIZE", "--max-steps MAX_STEPS, --max_steps MAX_STEPS",
                 "--n_kp_prior N_KP_PRIOR, --n-kp-prior N_KP_PRIOR, --n_kp_enc_prior"):
        assert both in flat


def test_official_flag_alias_and_both_spellings_resolve_alike():
    assert _resolve("-d", "shapes", "--n_kp_enc_prior", "12")[1].n_kp_prior == 12
    assert _resolve("-d", "shapes", "--num-epochs", "7")[2].num_epochs == _resolve("-d", "shapes", "--num_epochs",
                                                                                    "7")[2].num_epochs == 7
    with pytest.raises(ConfigError, match=r"image size 48 is not supported by this model: .*valid sizes with the "
                                          r"other settings unchanged: 64, 128, 256"):
        _resolve("-d", "shapes", "--image-size", "48")


def test_dlp_eval_takes_a_run_directory(tmp_path, tiny_yaml, capsys):
    assert train_cli(tmp_path, tiny_yaml, "-n", "1") == 0
    run = tmp_path / "runs" / "run"
    capsys.readouterr()
    assert main(["eval", str(run), "--metrics", "discovery", "--num-images", "4", "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert f"checkpoint: {run / 'checkpoints' / 'best.pt'}" in out and "discovery/recall@4" in out
