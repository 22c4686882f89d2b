"""The training engine: one loop for every model family, on a laptop CPU, one GPU or many GPUs/nodes (Accelerate).

The engine knows no family. It builds the model through the registry and asks the family's objective
(`dlp.engine.objective.Objective`) for everything specific to it: the phase of each epoch, the loss terms of a
batch, the optimisers and schedulers, the figures and the held-out evaluation. It owns the rest: the run directory,
data order, logging, checkpoints (`last.pt` every epoch, `best.pt` by the evaluation score), resume (bit-identical to
an uninterrupted run), Ctrl-C / SIGTERM, mixed precision and data-parallel processes.
"""

from __future__ import annotations

import json
import math
import random
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from dlp.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from dlp.config import ConfigError, TrainConfig
from dlp.engine.allocator import retain_freed_memory


@dataclass
class RunOptions:
    """How and where to run (not part of the experiment's definition)."""

    output_dir: str = "runs"
    name: str | None = None
    device: str = "auto"  # auto | cpu | cuda
    resume: str | None = None
    max_steps: int | None = None
    num_workers: int = 0
    log_with: str | None = None  # None | tensorboard
    precision: str = "fp32"  # fp32 | bf16 | fp16 (GPU)
    compile: bool = False
    channels_last: bool = True  # NHWC convolutions: faster on CPUs (oneDNN) and tensor-core GPUs, same math
    vgg_weights: str | None = None
    progress: bool = True
    log_every: int = 10


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM (what `kill`, SLURM and Kubernetes send before killing) like Ctrl-C: save last.pt, then stop."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class EpochShuffleSampler(Sampler[int]):
    """A shuffle that depends only on (seed, epoch), so a resumed run sees exactly the batches it would have seen."""

    def __init__(self, length: int, seed: int):
        self.length, self.seed, self.epoch = length, seed, 0

    def shuffle_for_epoch(self, epoch: int) -> None:
        # Deliberately not named `set_epoch`: Accelerate would call that with its own iteration counter.
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        seed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
        g = torch.Generator().manual_seed(seed)
        return iter(torch.randperm(self.length, generator=g).tolist())

    def __len__(self) -> int:
        return self.length


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]), "python_pos": random.getstate()[2],
             "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
             "numpy_pos": int(np.random.get_state()[2])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_resume_path(resume: str) -> Path:
    path = Path(resume)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"nothing to resume at {resume}: give a run directory or a .pt checkpoint written by "
                              "`dlp train`.")
    return path


@dataclass
class TrainResult:
    run_dir: Path
    epoch: int
    step: int
    metrics: list[dict] = field(default_factory=list)
    interrupted: bool = False


class Trainer:
    """Trains a model of any registered family: `Trainer(model_config, train_config, options).fit()`.

    `model_config` is the family's architecture config (it selects the family), `train_config` the family's
    training config. `train_dataset` replaces the dataset the config names; `eval_fn(model, objective, device=...)`
    replaces the objective's held-out evaluation.
    """

    def __init__(self, model_config: Any, train_config: TrainConfig, options: RunOptions | None = None, *,
                 train_dataset: Dataset | None = None, eval_fn: Callable | None = None):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        from dlp.registry import family_for_config

        self.options = options = options or RunOptions()
        self.family = family_for_config(model_config)
        self.cfg, self.tcfg = model_config, train_config
        if not isinstance(train_config, self.family.train_config_class):
            raise ConfigError(f"the {self.family.name!r} family trains with a {self.family.train_config_class.__name__}, "
                              f"not a {type(train_config).__name__}.")
        resume_payload = None
        if options.resume:
            resume_payload = read_checkpoint(resolve_resume_path(options.resume))
            self._check_resume_compatible(resume_payload)

        if options.log_with == "tensorboard":
            try:
                import tensorboard  # noqa: F401
            except ImportError:
                raise ConfigError("--log-with tensorboard needs the tensorboard package: pip install tensorboard") from None
        if options.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"--device must be auto, cpu or cuda, got {options.device!r}.")
        if options.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda was requested but no CUDA device is available; use --device cpu.")
        mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}.get(options.precision)
        if mixed is None:
            raise ConfigError(f"--precision must be fp32, bf16 or fp16, got {options.precision!r}.")
        use_cpu = options.device == "cpu" or not torch.cuda.is_available()
        if use_cpu:
            retain_freed_memory()
        if mixed != "no" and use_cpu:
            raise ConfigError("--precision bf16/fp16 is for GPUs; use --precision fp32 on the CPU.")
        self.accelerator = Accelerator(
            cpu=use_cpu, mixed_precision=mixed, log_with=options.log_with, rng_types=[],
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )
        self.is_main = self.accelerator.is_main_process

        # Everything that can be wrong with the inputs is checked before anything is written.
        self.objective = self.family.objective_class(model_config, train_config, device=self.accelerator.device,
                                                     vgg_weights=options.vgg_weights)
        self.train_dataset = train_dataset if train_dataset is not None else self._build_dataset("train")
        if len(self.train_dataset) < train_config.batch_size * self.accelerator.num_processes:
            raise ConfigError(
                f"the training set has {len(self.train_dataset)} items, fewer than one batch of "
                f"{train_config.batch_size}; lower --batch_size or add data."
            )
        self.objective.check_item(self.train_dataset[0])
        self.objective.setup()
        self.run_dir = self._make_run_dir()
        self.eval_fn = eval_fn

        torch.manual_seed(train_config.seed)
        model = self.family.build_model(model_config)
        if self.accelerator.num_processes > 1 and self.accelerator.device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # SyncBatchNorm runs on GPU modules only
        if options.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.optimizers, self.schedulers = self.objective.configure_optimizers(model)

        self.sampler = EpochShuffleSampler(len(self.train_dataset), train_config.seed)
        loader = DataLoader(self.train_dataset, batch_size=train_config.batch_size, sampler=self.sampler,
                            drop_last=True, num_workers=options.num_workers, pin_memory=not use_cpu,
                            persistent_workers=options.num_workers > 0, generator=torch.Generator())
        prepared = self.accelerator.prepare(model, *self.optimizers, loader)
        self.model, self.optimizers, self.loader = prepared[0], list(prepared[1:-1]), prepared[-1]
        self.objective.steps_per_epoch = len(self.loader)
        self.forward_model = self.model
        self._compiled_ok = False
        if options.compile:
            self.forward_model = _try_compile(self.model)

        self.epoch, self.step, self.batch_in_epoch = 0, 0, 0
        self.loss_names = tuple(self.objective.loss_names)
        self.epoch_sums = torch.zeros(len(self.loss_names) + 1, device=self.accelerator.device)
        self.metrics: list[dict] = []
        self.best_score = math.inf
        self._figure_step = 0  # the step of the last figure drawn
        if resume_payload is not None:
            self._load_state(resume_payload)
        if self.is_main:
            self._write_config()
        if options.log_with:
            self.accelerator.init_trackers(self.run_dir.name, config={**train_config.to_dict()})

    # ------------------------------------------------------------------------------------------------------------
    def _check_resume_compatible(self, payload: dict) -> None:
        if "train_state" not in payload:
            raise CheckpointError("this checkpoint holds weights only, not a training state; it cannot be resumed.")
        if "optimizers" not in payload["train_state"]:
            raise CheckpointError("this checkpoint was written by an older version of dlp: it loads for evaluation and "
                                  "the demo, but its optimiser state cannot be resumed.")
        if payload.get("arch") != self.family.name:
            raise ConfigError(f"cannot resume a {payload.get('arch')!r} checkpoint as a {self.family.name!r} model.")
        stored = self.family.config_class.from_dict(payload["config"])
        diff = stored.diff(self.cfg)
        if diff:
            details = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
            raise ConfigError(f"cannot resume with a different architecture ({details}); drop the changed flags.")

    def _make_run_dir(self) -> Path:
        if self.options.resume:
            path = resolve_resume_path(self.options.resume)
            run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        else:
            name = self.options.name or f"{self.tcfg.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
            run_dir = Path(self.options.output_dir) / name
            if (run_dir / "checkpoints" / "last.pt").exists():
                raise ConfigError(f"run directory {run_dir} already holds a run; use --resume {run_dir} or another --name.")
        if self.is_main:
            (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            (run_dir / "figures").mkdir(parents=True, exist_ok=True)
        return run_dir

    def _build_dataset(self, split: str):
        from dlp.data.registry import build_dataset

        return build_dataset(self.tcfg.dataset, data_root=self.tcfg.data_root, image_size=self.cfg.image_size,
                             split=split, use_tps=self.tcfg.use_tps, use_pairs=self.tcfg.use_pairs,
                             seed=self.tcfg.seed, num_images=self.tcfg.num_train_images,
                             **self.objective.dataset_options())

    def _write_config(self) -> None:
        import yaml

        resolved = {"family": self.family.name, "model": self.cfg.to_dict(), "train": self.tcfg.to_dict(),
                    "run": {k: v for k, v in vars(self.options).items() if k not in ("progress",)}}
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))

    # ------------------------------------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "schedulers": [sched.state_dict() for sched in self.schedulers],
            "epoch": self.epoch, "step": self.step, "batch_in_epoch": self.batch_in_epoch,
            "epoch_sums": self.epoch_sums.detach().cpu(), "best_score": self.best_score, "rng": _rng_state(),
        }

    def save(self, filename: str = "last.pt") -> Path | None:
        """Write a checkpoint from the main process (callers synchronise processes first)."""
        if not self.is_main:
            return None
        model_to_save = self.accelerator.unwrap_model(self.model)
        if any(isinstance(m, torch.nn.SyncBatchNorm) for m in model_to_save.modules()):
            plain = self.family.build_model(self.cfg)
            plain.load_state_dict(model_to_save.state_dict())
            model_to_save = plain
        return save_checkpoint(self.run_dir / "checkpoints" / filename, model_to_save, train_state=self._state(),
                               train_config=self.tcfg.to_dict(), epoch=self.epoch, step=self.step,
                               metrics=self.metrics[-1] if self.metrics else {})

    def _load_state(self, payload: dict) -> None:
        state = payload["train_state"]
        self.accelerator.unwrap_model(self.model).load_state_dict(payload["model"], strict=True)
        if len(state["optimizers"]) != len(self.optimizers) or len(state["schedulers"]) != len(self.schedulers):
            raise CheckpointError("the checkpoint's optimisers do not match this family's; it cannot be resumed.")
        for opt, opt_state in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(opt_state)
        for sched, sched_state in zip(self.schedulers, state["schedulers"]):
            sched.load_state_dict(sched_state)
        self.epoch, self.step, self.batch_in_epoch = state["epoch"], state["step"], state["batch_in_epoch"]
        self.epoch_sums = state["epoch_sums"].to(self.accelerator.device)
        self.best_score = state["best_score"]
        metrics_file = self.run_dir / "metrics.jsonl"
        if metrics_file.exists():
            self.metrics = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
        _set_rng_state(state["rng"])

    # ------------------------------------------------------------------------------------------------------------
    def _prepare_batch(self, batch: dict) -> dict:
        if not self.options.channels_last:
            return batch
        return {k: v.contiguous(memory_format=torch.channels_last) if isinstance(v, torch.Tensor) and v.dim() == 4
                and v.is_floating_point() else v for k, v in batch.items()}

    def _zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=False)

    def train_step(self, batch: dict, phase: str) -> torch.Tensor:
        """One optimisation step; returns the detached loss terms in `loss_names` order (no host synchronisation)."""
        batch = self._prepare_batch(batch)
        self._zero_grad()
        if self.forward_model is not self.model and not self._compiled_ok:
            # torch.compile fails lazily, at the first forward or backward: fall back to eager mode then.
            try:
                terms = self._loss_and_backward(batch, phase)
                self._compiled_ok = True
            except Exception as exc:  # noqa: BLE001 - any compiler failure means: run eagerly
                print(f"torch.compile failed ({type(exc).__name__}); continuing without it.")
                self.forward_model = self.model
                self._zero_grad()
                terms = self._loss_and_backward(batch, phase)
        else:
            terms = self._loss_and_backward(batch, phase)
        for opt in self.optimizers:
            opt.step()
        return torch.stack([terms[k].detach().float() for k in self.loss_names])

    def _loss_and_backward(self, batch: dict, phase: str) -> dict[str, torch.Tensor]:
        with self.accelerator.autocast():
            terms = self.objective.loss(self.forward_model, batch, epoch=self.epoch, phase=phase, step=self.step)
        self.accelerator.backward(terms["loss"])
        return terms

    def fit(self) -> TrainResult:
        with _sigterm_as_interrupt():
            return self._fit()

    def _fit(self) -> TrainResult:
        from tqdm.auto import tqdm

        tcfg, opts = self.tcfg, self.options
        steps_per_epoch = len(self.loader)
        interrupted = False
        self._figure_step = self.step
        try:
            while self.epoch < tcfg.num_epochs:
                if opts.max_steps is not None and self.step >= opts.max_steps:
                    break
                phase = self.objective.phase(self.epoch)
                self.sampler.shuffle_for_epoch(self.epoch)
                self.model.train()
                loader = self.loader
                if self.batch_in_epoch:
                    from accelerate import skip_first_batches

                    loader = skip_first_batches(self.loader, self.batch_in_epoch)
                last_batch = steps_per_epoch
                if opts.max_steps is not None:  # the bar ends where --max-steps stops the run
                    last_batch = min(steps_per_epoch, self.batch_in_epoch + opts.max_steps - self.step)
                bar = tqdm(total=last_batch, initial=self.batch_in_epoch, disable=not (opts.progress and self.is_main),
                           desc=f"epoch {self.epoch + 1}/{tcfg.num_epochs} [{phase}]", leave=False, dynamic_ncols=True)
                start = time.perf_counter()
                stopped = False
                for batch in loader:
                    terms = self.train_step(batch, phase)
                    self.epoch_sums += torch.cat([terms, terms.new_ones(1)])
                    self.step += 1
                    self.batch_in_epoch += 1
                    bar.update(1)
                    if self.step % opts.log_every == 0 and bar.disable is False:
                        bar.set_postfix({k: f"{v:.3g}" for k, v in zip(self.loss_names, terms.tolist())}, refresh=False)
                    if opts.max_steps is not None and self.step >= opts.max_steps:
                        stopped = True
                        break
                bar.close()
                if stopped and self.batch_in_epoch < steps_per_epoch:
                    # mid-epoch stop: a metrics line and a figure for the steps so far; last.pt records the
                    # position and --resume continues from it
                    self._report_partial_epoch(phase, time.perf_counter() - start)
                    break
                self._end_epoch(phase, time.perf_counter() - start)
        except KeyboardInterrupt:
            interrupted = True
            if self.is_main:
                print(f"\ninterrupted: saving {self.run_dir / 'checkpoints' / 'last.pt'}")
        if self.step > self._figure_step:  # however short the run, it ends with a figure of its last state
            self._save_figures(f"step_{self.step:07d}")
        self.accelerator.wait_for_everyone()
        self.save("last.pt")
        if opts.log_with:
            self.accelerator.end_training()
        return TrainResult(self.run_dir, self.epoch, self.step, self.metrics, interrupted)

    def _epoch_record(self, phase: str, seconds: float) -> dict[str, Any]:
        sums = self.accelerator.reduce(self.epoch_sums, reduction="sum")
        means = (sums[:-1] / sums[-1].clamp_min(1)).tolist()
        record: dict[str, Any] = {"epoch": self.epoch + 1, "step": self.step, "phase": phase,
                                  "lr": self.optimizers[0].param_groups[0]["lr"], "seconds": round(seconds, 2)}
        record.update(dict(zip(self.loss_names, means)))
        return record

    def _log(self, record: dict[str, Any]) -> None:
        """Append `record` to metrics.jsonl, print it and send it to the tracker (main process)."""
        self.metrics.append(record)
        if not self.is_main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        parts = [f"epoch {record['epoch']}/{self.tcfg.num_epochs}"]
        if record.get("partial"):
            parts[0] += f", stopped at step {record['step']}"
        parts.append(f"[{record['phase']}]")
        parts += [f"{k}={record[k]:.4g}" for k in self.loss_names]
        parts += [f"{k[5:]}={v:.4g}" for k, v in record.items()
                  if k.startswith("eval/") and k.endswith(tuple(self.objective.headline_metrics))]
        parts.append(f"({record['seconds']:.1f}s)")
        print(" ".join(parts))
        if self.options.log_with:
            self.accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=self.step)

    def _report_partial_epoch(self, phase: str, seconds: float) -> None:
        record = self._epoch_record(phase, seconds)
        record["partial"] = True
        self._log(record)

    def _end_epoch(self, phase: str, seconds: float) -> None:
        record = self._epoch_record(phase, seconds)
        for sched in self.schedulers:
            sched.step()
        is_last = self.epoch + 1 == self.tcfg.num_epochs
        evaluate = (self.epoch + 1) % self.tcfg.eval_freq == 0 or is_last
        score = None
        if evaluate:
            eval_metrics = self._evaluate()
            record.update(eval_metrics)
            score = eval_metrics.get("score")
        self.epoch += 1
        self.batch_in_epoch = 0
        self.epoch_sums = torch.zeros_like(self.epoch_sums)
        self._log(record)
        if evaluate:
            self._save_figures(f"epoch_{record['epoch']:04d}")
        self.accelerator.wait_for_everyone()
        self.save("last.pt")
        if score is not None and score < self.best_score:
            self.best_score = score
            self.save("best.pt")

    def _evaluate(self) -> dict[str, float]:
        """Held-out evaluation (the objective's, or `eval_fn`); `score` (lower is better) chooses best.pt."""
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        try:
            if not self.is_main:
                return {}
            with torch.random.fork_rng(devices=_cuda_devices(self.accelerator.device)):  # training draws unchanged
                if self.eval_fn is not None:
                    return self.eval_fn(model, self.objective, device=self.accelerator.device)
                return self.objective.evaluate(model, device=self.accelerator.device)
        finally:
            model.train(was_training)

    def _save_figures(self, name: str) -> None:
        """The objective's figures of the first training items (main one: `<name>.png`, `latest.png`) and the loss
        curves; drawn without touching the training random streams."""
        from dlp.viz import plot_loss_curves, save_image

        self._figure_step = self.step
        if not self.is_main:
            return
        model = self.accelerator.unwrap_model(self.model)
        figures_dir = self.run_dir / "figures"
        with torch.random.fork_rng(devices=_cuda_devices(self.accelerator.device)):
            first = [self.train_dataset[i] for i in range(min(8, self.tcfg.batch_size, len(self.train_dataset)))]
            batch = {k: v.to(self.accelerator.device) if isinstance(v, torch.Tensor) else v
                     for k, v in torch.utils.data.default_collate(first).items()}
            model.eval()
            with torch.no_grad():
                figures = self.objective.figures(model, batch)
            model.train()
        for i, (figure_name, grid) in enumerate(figures.items()):
            prefix = "" if i == 0 else f"{figure_name}_"
            save_image(grid, figures_dir / f"{prefix}{name}.png")
            save_image(grid, figures_dir / f"{prefix}latest.png")
        plot_loss_curves(self.metrics, figures_dir / "loss_curves.png")


def _cuda_devices(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def _try_compile(model):
    try:
        return torch.compile(model)
    except Exception as exc:  # compile is an optimisation: never a reason to stop training
        print(f"torch.compile unavailable ({type(exc).__name__}: {exc}); continuing without it.")
        return model
