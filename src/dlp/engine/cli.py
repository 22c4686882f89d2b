"""`dlp train`: every flag of the official `train_dlp.py`, with per-flag override semantics.

Resolution order (later wins): preset (from --preset, or the dataset's paper preset) < --config FILE < typed flags.
A flag the user does not type never changes the preset. (The official `-o` replaced every value with the argparse
defaults, typed or not; here `-o/--override` is accepted for compatibility and changes nothing.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from dlp.config import ConfigError, DLPConfig, TrainConfig
from dlp.presets import get_preset, list_presets

DATASETS = ("shapes", "celeba", "landmarks", "clevrer", "traffic", "folder")
DATASET_PRESETS = {"shapes": "shapes", "celeba": "celeba", "landmarks": "celeba64", "clevrer": "clevrer",
                   "traffic": "traffic"}

# (flags, dest, type, target config, help). target: "model" -> DLPConfig field, "train" -> TrainConfig field.
_BOOL = "bool"
OFFICIAL_FLAGS = (
    (("-l", "--lr"), "lr", float, "train", "learning rate of both Adam optimisers"),
    (("-b", "--batch_size"), "batch_size", int, "train", "batch size (per process)"),
    (("-n", "--num_epochs"), "num_epochs", int, "train", "number of epochs"),
    (("-e", "--eval_freq"), "eval_freq", int, "train", "evaluate, draw figures and pick best.pt every N epochs"),
    (("-s", "--sigma"), "sigma", float, "model", "prior keypoint std (also the Gaussian-map width)"),
    (("-r", "--beta_rec"), "beta_rec", float, "train", "weight of the reconstruction term"),
    (("-k", "--beta_kl"), "beta_kl", float, "train", "weight of the KL terms"),
    (("-c", "--kl_balance"), "kl_balance", float, "train", "weight of the feature KL relative to the Chamfer-KL"),
    (("-v", "--rec_loss_function"), "rec_loss_function", str, "train", "reconstruction loss: mse or vgg"),
    (("--n_kp_enc",), "n_kp_enc", int, "model", "number of posterior particles K"),
    (("--n_kp_prior",), "n_kp_prior", int, "model", "number of prior keypoints kept"),
    (("--dec_bone",), "dec_bone", str, "model", "decoder: gauss_pointnetpp_feat (masked) or gauss_pointnetpp (object)"),
    (("--patch_size",), "patch_size", int, "model", "prior patch size"),
    (("--learned_feature_dim",), "learned_feature_dim", int, "model", "visual feature dimension D"),
    (("--use_object_enc",), "use_object_enc", _BOOL, "model", "glimpse (object) encoder"),
    (("--use_object_dec",), "use_object_dec", _BOOL, "model", "glimpse (object) decoder: the object model"),
    (("--warmup_epoch",), "warmup_epoch", int, "train", "object models: warm-up epochs (noisy masks for 5x as many)"),
    (("--anchor_s",), "anchor_s", float, "model", "glimpse size as a fraction of the image"),
    (("--exclusive_patches",), "exclusive_patches", _BOOL, "model", "object glimpses exclusive in particle order"),
)
EXTRA_FLAGS = (
    (("--image-size",), "image_size", int, "model", "image size (the model is built for it)"),
    (("--seed",), "seed", int, "train", "random seed (data order, initialisation, sampling)"),
    (("--use_tps",), "use_tps", _BOOL, "train", "thin-plate-spline warps (face datasets)"),
    (("--use_pairs",), "use_pairs", _BOOL, "train", "(strong warp -> prior, light warp -> posterior) pairs"),
    (("--num-train-images",), "num_train_images", int, "train", "shapes: number of generated training images"),
    (("--topk",), "topk", int, "train", "particles shown in the top-k figure and used by top-k evaluation"),
    (("--beta_obj_on",), "beta_obj_on", float, "train",
     "object models: cost of each switched-on particle after the noisy-mask phase (0 = the official objective)"),
    (("--obj_on_ramp_epochs",), "obj_on_ramp_epochs", int, "train",
     "object models: epochs over which the beta_obj_on cost rises linearly from 0 once the noisy phase ends"),
    (("--beta_spread",), "beta_spread", float, "train",
     "object models: cost of decoded alpha far from its particle after the warm-up (0 = the official objective)"),
    (("--prior_anchored_positions",), "prior_anchored_positions", _BOOL, "model",
     "object models: particles are the prior's top proposals moved by offsets read from their glimpses"),
)
FILE_KEYS = {dest: target for _, dest, _, target, _ in OFFICIAL_FLAGS + EXTRA_FLAGS}
MODEL_KEYS = {f.name for f in dataclasses.fields(DLPConfig)} - {"extra"}
TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainConfig)}


def _preset_defaults(dest: str, target: str) -> str:
    values = {}
    for name in list_presets():
        preset = get_preset(name)
        config = preset.model_config() if target == "model" else preset.train_config()
        values[name] = getattr(config, dest)
    if len(set(map(repr, values.values()))) == 1:
        return f"all presets: {next(iter(values.values()))}"
    return "presets: " + ", ".join(f"{n}={v}" for n, v in values.items())


def _add_flag(parser, flags, dest, kind, target, text):
    help_text = f"{text} ({_preset_defaults(dest, target)})"
    if kind is _BOOL:
        parser.add_argument(*flags, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
    else:
        parser.add_argument(*flags, dest=dest, type=kind, default=None, help=help_text)


class _DefaultsFormatter(argparse.HelpFormatter):
    """Shows a default only where there is one (preset-dependent flags list theirs per preset)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, "", argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def configure_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a DLP model",
        description="Train a DLP model. -d picks a dataset and its paper preset; every flag you type overrides that "
        "one value of the preset (defaults per preset are listed with each flag; `dlp presets` shows them all).",
        formatter_class=_DefaultsFormatter,
    )
    p.add_argument("-d", "--dataset", choices=DATASETS, default=None,
                   help="dataset; also selects its preset (shapes, celeba, landmarks->celeba64, clevrer, traffic)")
    p.add_argument("--preset", default=None, help=f"preset to start from: {', '.join(list_presets())}")
    p.add_argument("--config", default=None, help="YAML or JSON file with flag values (keys = flag names)")
    p.add_argument("-o", "--override", action="store_true",
                   help="accepted for compatibility with train_dlp.py; typed flags always override")
    p.add_argument("-p", "--prefix", default="", help="suffix added to the run name")
    for flags, dest, kind, target, text in OFFICIAL_FLAGS + EXTRA_FLAGS:
        _add_flag(p, flags, dest, kind, target, text)
    p.add_argument("--data-root", default=None, help="dataset location (not needed for shapes)")
    p.add_argument("--output-dir", default="runs", help="where run directories are created")
    p.add_argument("--name", default=None, help="run directory name (default: <preset><prefix>-<date>-<time>)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="device")
    p.add_argument("--resume", default=None, metavar="RUN_DIR_OR_CKPT", help="continue a run from its last.pt")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimisation steps in total")
    p.add_argument("--num-workers", type=int, default=0, help="data-loading worker processes")
    p.add_argument("--num-processes", type=int, default=1,
                   help="data-parallel processes on this machine (re-launches itself with torch.distributed.run)")
    p.add_argument("--log-with", choices=("tensorboard",), default=None, help="also log to TensorBoard")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32", help="GPU mixed precision")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (falls back when unavailable)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="NHWC memory format for the convolutions (same math, faster on CPUs and GPUs)")
    p.add_argument("--vgg-weights", default=os.environ.get("DLP_VGG_WEIGHTS"),
                   help="VGG16 ImageNet weights for -v vgg (default: $DLP_VGG_WEIGHTS, the torch hub cache, download)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=run_train)


def _read_config_file(path: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {path} does not exist.")
    text = file.read_text()
    data = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of flag names to values.")
    # A run's own config.yaml ({model: ..., train: ..., run: ...}) is accepted too.
    if set(data) <= {"model", "train", "run"} and data:
        return {**data.get("model", {}), **data.get("train", {})}
    data = {k.replace("-", "_"): v for k, v in data.items()}
    unknown = set(data) - set(FILE_KEYS) - MODEL_KEYS - TRAIN_KEYS - {"preset"}
    if unknown:
        raise ConfigError(
            f"config file {path} has unknown keys {sorted(unknown)}; use `dlp train` flag names or DLPConfig/TrainConfig fields."
        )
    return data


def resolve_configs(args: argparse.Namespace) -> tuple[str, DLPConfig, TrainConfig]:
    """(preset name, model config, train config) from preset < config file < typed flags."""
    file_values = _read_config_file(args.config) if args.config else {}
    resumed = None
    if args.resume:  # the checkpoint describes the run: its architecture and its training settings
        from dlp.checkpoint import read_checkpoint
        from dlp.engine.trainer import resolve_resume_path

        resumed = read_checkpoint(resolve_resume_path(args.resume))
    chosen_dataset = args.dataset or file_values.get("dataset")  # None: the preset's (or the resumed run's)
    dataset = chosen_dataset
    if resumed and dataset is None:
        dataset = (resumed.get("train_config") or {}).get("dataset")
    preset_name = args.preset or file_values.get("preset")
    if preset_name is None:
        dataset = dataset or "shapes"
        if dataset in DATASET_PRESETS:
            preset_name = DATASET_PRESETS[dataset]
        elif not resumed:  # a resumed run takes everything from its checkpoint and needs no preset
            raise ConfigError(f"dataset {dataset!r} has no paper preset; choose one with --preset ({', '.join(list_presets())}).")
    if resumed:
        model_values = dict(resumed["config"])
        train_values = dict(resumed.get("train_config") or get_preset(preset_name or "shapes").train)
    else:
        preset = get_preset(preset_name)
        model_values, train_values = dict(preset.model), dict(preset.train)
    for key, value in file_values.items():
        if key in MODEL_KEYS:
            model_values[key] = value
        elif key in TRAIN_KEYS:
            train_values[key] = value
    for _, dest, _, target, _ in OFFICIAL_FLAGS + EXTRA_FLAGS:
        value = getattr(args, dest)
        if value is not None:
            (model_values if target == "model" else train_values)[dest] = value
    if chosen_dataset is not None:
        train_values["dataset"] = chosen_dataset
    if args.data_root is not None:
        train_values["data_root"] = args.data_root
    if train_values.get("dataset") not in DATASETS:
        raise ConfigError(f"unknown dataset {train_values.get('dataset')!r}; choose one of {', '.join(DATASETS)}.")
    return preset_name, DLPConfig.from_dict(model_values), TrainConfig.from_dict(train_values)


def _relaunch_distributed(args: argparse.Namespace) -> int:
    argv = list(args.argv)
    cleaned, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item == "--num-processes":
            skip = True
            continue
        if item.startswith("--num-processes="):
            continue
        cleaned.append(item)
    if args.name is None and args.resume is None:  # every process must agree on the run directory
        cleaned += ["--name", f"{args.preset or args.dataset or 'shapes'}{args.prefix}-{time.strftime('%Y%m%d-%H%M%S')}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.num_processes}",
           "-m", "dlp", *cleaned]
    return subprocess.call(cmd)


def run_train(args: argparse.Namespace) -> int:
    from dlp.engine.trainer import RunOptions, Trainer

    if args.num_processes > 1 and "LOCAL_RANK" not in os.environ:
        return _relaunch_distributed(args)
    preset_name, model_config, train_config = resolve_configs(args)
    name = args.name
    if name is None and args.resume is None:
        name = f"{preset_name}{args.prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    options = RunOptions(output_dir=args.output_dir, name=name, device=args.device, resume=args.resume,
                         max_steps=args.max_steps, num_workers=args.num_workers, log_with=args.log_with,
                         precision=args.precision, compile=args.compile, channels_last=args.channels_last,
                         vgg_weights=args.vgg_weights,
                         progress=args.progress)
    trainer = Trainer(model_config, train_config, options)
    result = trainer.fit()
    if trainer.is_main:
        print(f"run directory: {result.run_dir}")
        print(f"  checkpoint:  {result.run_dir / 'checkpoints' / 'last.pt'}")
        print(f"  figures:     {result.run_dir / 'figures'}")
    return 130 if result.interrupted else 0
