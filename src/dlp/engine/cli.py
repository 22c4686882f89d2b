"""`dlp train`: train any model family, with the official flags and per-flag override semantics.

Resolution order (later wins; `dlp.config.resolve_config`): preset (from --preset, or the dataset's default preset) <
--config FILE < typed flags. A flag the user does not type never changes the preset. The flags are made from the
family's config dataclasses (`dlp.config.option`), so every field is a flag, spelt with underscores (the official
names) or dashes. (The official `-o` replaced every value with the argparse defaults, typed or not; here `-o/--override`
is accepted for compatibility with `train_dlp.py` command lines and changes nothing.)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time

from dlp.config import GROUPS, ConfigBase, ResolvedConfig, TrainConfig, resolve_config


class _HelpFormatter(argparse.HelpFormatter):
    """Shows a default only where one means something (preset-dependent flags list theirs per preset)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return text
        if action.default not in (None, False, "", argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def spellings(name: str) -> list[str]:
    """`--batch_size` and `--batch-size` for a field name (the official underscore names first)."""
    forms = [f"--{name}"]
    if "_" in name:
        forms.append(f"--{name.replace('_', '-')}")
    if "-" in name:
        forms.append(f"--{name.replace('-', '_')}")
    return forms


def _flag_strings(f: dataclasses.Field) -> list[str]:
    flags = spellings(f.name)
    for extra in f.metadata.get("flags", ()):
        for form in ([extra] if not extra.startswith("--") else spellings(extra[2:])):
            if form not in flags:
                flags.append(form)
    short = [s for s in flags if not s.startswith("--")]
    return short + [s for s in flags if s.startswith("--")]


def _value_type(annotation: str):
    base = annotation.replace(" | None", "")
    if base.startswith("tuple["):
        return {"int": int, "float": float, "str": str}[base[6:].split(",")[0].strip()], "+"
    return {"int": int, "float": float, "str": str, "bool": bool}.get(base, str), None


def config_fields(config_class: type) -> list[tuple[dataclasses.Field, str]]:
    """(field, `--help` group) of every flag of a config class, nested config groups flattened."""
    out = []
    for f in dataclasses.fields(config_class):
        nested = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if isinstance(nested, type) and issubclass(nested, ConfigBase):
            out += [(g, g.metadata.get("group") or nested.default_group) for g in dataclasses.fields(nested)]
        elif f.name != "dataset":  # -d/--dataset has its own flag
            out.append((f, f.metadata.get("group") or config_class.default_group))
    return out


def _preset_defaults(family: str, name: str) -> str:
    from dlp.registry import get_preset, list_presets

    values = {}
    for preset_name in list_presets(family):
        preset = get_preset(preset_name)
        model, train = preset.model_config(), preset.train_config()
        source = model if name in model.field_names() else getattr(train, "extensions", None)
        source = train if name in train.field_names() else source
        value = getattr(source, name, None)
        values[preset_name] = list(value) if isinstance(value, tuple) else value
    if not values:
        return ""
    if len(set(map(repr, values.values()))) == 1:
        return f"all presets: {next(iter(values.values()))}"
    return "presets: " + ", ".join(f"{n}={v}" for n, v in values.items())


def family_from_argv(argv: list[str] | None) -> str:
    """The model family a `dlp train` command line trains: from --resume, --preset, --config or -d, else that of the
    default dataset's preset."""
    from dlp.data.registry import dataset_info
    from dlp.registry import get_preset

    default = get_preset(dataset_info(TrainConfig.dataset).default_preset).family

    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flags in (("--preset",), ("-d", "--dataset"), ("--resume",), ("--config",)):
        pre.add_argument(*flags)
    known, _ = pre.parse_known_args(list(argv or []))
    try:
        if known.resume:
            from dlp.checkpoint import read_checkpoint
            from dlp.engine.trainer import resolve_resume_path

            return read_checkpoint(resolve_resume_path(known.resume))["arch"]
        preset = known.preset
        if preset is None and known.config:
            from dlp.config import read_config_file

            values = read_config_file(known.config)
            if values.get("family"):
                return values["family"]
            preset = values.get("preset")
        if preset is None and known.dataset:
            preset = dataset_info(known.dataset).default_preset
        return get_preset(preset).family if preset else default
    except ValueError:  # a bad name or file: resolution reports it with its own message later
        return default


def configure_parser(subparsers, argv: list[str] | None = None) -> None:
    from dlp.data.registry import list_datasets
    from dlp.registry import get_family, list_models, list_presets

    family = get_family(family_from_argv(argv))
    others = [name for name in list_models() if name != family.name]
    p = subparsers.add_parser(
        "train", help="train a model of any family", formatter_class=_HelpFormatter,
        description=f"Train a {family.name!r} model ({family.description}). --preset or -d picks a starting preset; "
        "every flag you type overrides that one value (the defaults of each preset are listed with each flag; "
        "`dlp presets` shows them all). The flags below are those of the "
        f"{family.name!r} family; `dlp train --preset NAME --help` shows those of another family"
        + (f" ({', '.join(others)})." if others else "."),
    )
    data = p.add_argument_group(GROUPS["data"])
    data.add_argument("-d", "--dataset", choices=list_datasets(), default=None,
                      help="dataset; without --preset also selects its default preset")
    groups = {"data": data}
    for key in ("model", "objective", "extensions"):
        groups[key] = p.add_argument_group(GROUPS[key])
    run = p.add_argument_group("run")
    run.add_argument("--preset", default=None, help=f"preset to start from: {', '.join(list_presets())}")
    run.add_argument("--config", default=None, help="YAML or JSON file with flag values (keys = flag names)")
    seen: set[str] = set()
    for config_class in (family.config_class, family.train_config_class):
        for f, group in config_fields(config_class):
            if f.name in seen:
                continue
            seen.add(f.name)
            kind, nargs = _value_type(str(f.type))
            defaults = _preset_defaults(family.name, f.name)
            text = f.metadata.get("help", "") + (f" ({defaults})" if defaults else "")
            target = groups.get(group, groups["objective"])
            if kind is bool:
                target.add_argument(*_flag_strings(f), dest=f.name, action=argparse.BooleanOptionalAction,
                                    default=None, help=text)
            else:
                target.add_argument(*_flag_strings(f), dest=f.name, type=kind, nargs=nargs, default=None,
                                    choices=f.metadata.get("choices"), help=text)
    run.add_argument("-o", "--override", action="store_true",
                     help="accepted for compatibility with train_dlp.py command lines; typed flags always override")
    run.add_argument("-p", "--prefix", default="",
                     help="text added after the preset name in the run directory name: <preset><PREFIX>-<date>-<time> "
                          "(the official run_prefix)")
    for flags, kwargs in (
        (("--output-dir",), dict(default="runs", help="where run directories are created")),
        (("--name",), dict(default=None, help="run directory name (default: <preset><prefix>-<date>-<time>)")),
        (("--device",), dict(default="auto", choices=("auto", "cpu", "cuda"), help="device")),
        (("--resume",), dict(default=None, metavar="RUN_DIR_OR_CKPT", help="continue a run from its last.pt")),
        (("--max-steps",), dict(type=int, default=None, help="stop after this many optimisation steps in total")),
        (("--num-workers",), dict(type=int, default=0, help="data-loading worker processes")),
        (("--num-processes",), dict(type=int, default=1, help="data-parallel processes on this machine "
                                    "(re-launches itself with torch.distributed.run)")),
        (("--log-with",), dict(choices=("tensorboard",), default=None, help="also log to TensorBoard")),
        (("--precision",), dict(choices=("fp32", "bf16", "fp16"), default="fp32", help="GPU mixed precision")),
        (("--compile",), dict(action="store_true", help="torch.compile the model (falls back when unavailable)")),
        (("--channels-last",), dict(action=argparse.BooleanOptionalAction, default=True,
                                    help="NHWC memory format for the convolutions (same math, faster on CPUs and GPUs)")),
        (("--vgg-weights",), dict(default=os.environ.get("DLP_VGG_WEIGHTS"),
                                  help="VGG16 ImageNet weights for perceptual losses (default: $DLP_VGG_WEIGHTS, the "
                                       "torch hub cache, download)")),
        (("--no-progress",), dict(dest="progress", action="store_false", help="no progress bars")),
    ):
        names = [form for flag in flags for form in spellings(flag[2:])]
        run.add_argument(*names, **kwargs)
    p.set_defaults(func=run_train, family=family.name,
                   config_dests=sorted(seen))


def resolve_args(args: argparse.Namespace) -> ResolvedConfig:
    """The run's configs from parsed `dlp train` arguments (see `dlp.config.resolve_config`)."""
    resumed = None
    if args.resume:  # the checkpoint describes the run: its architecture and its training settings
        from dlp.checkpoint import read_checkpoint
        from dlp.engine.trainer import resolve_resume_path

        resumed = read_checkpoint(resolve_resume_path(args.resume))
    overrides = {dest: getattr(args, dest) for dest in args.config_dests if getattr(args, dest) is not None}
    return resolve_config(preset=args.preset, dataset=args.dataset, config_file=args.config, overrides=overrides,
                          resume=resumed)


def _relaunch_distributed(args: argparse.Namespace) -> int:
    argv = list(args.argv)
    cleaned, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item in ("--num-processes", "--num_processes"):
            skip = True
            continue
        if item.startswith(("--num-processes=", "--num_processes=")):
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
    resolved = resolve_args(args)
    name = args.name
    if name is None and args.resume is None:
        name = f"{resolved.preset or resolved.family}{args.prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    options = RunOptions(output_dir=args.output_dir, name=name, device=args.device, resume=args.resume,
                         max_steps=args.max_steps, num_workers=args.num_workers, log_with=args.log_with,
                         precision=args.precision, compile=args.compile, channels_last=args.channels_last,
                         vgg_weights=args.vgg_weights, progress=args.progress)
    trainer = Trainer(resolved.model, resolved.train, options)
    result = trainer.fit()
    if trainer.is_main:
        print(f"run directory: {result.run_dir}")
        print(f"  checkpoint:  {result.run_dir / 'checkpoints' / 'last.pt'}")
        print(f"  figures:     {result.run_dir / 'figures'}")
    return 130 if result.interrupted else 0
