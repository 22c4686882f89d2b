"""The training engine: one loop for a laptop CPU, one GPU or many GPUs/nodes (HuggingFace Accelerate).

The official schedule (`train_dlp.py`): per epoch, `warmup = epoch < warmup_epoch` (object models learn to
reconstruct their own glimpses, no background decoder) and `noisy_masks = epoch < 5 * warmup_epoch`; two Adam
optimisers (eps 1e-4) over the encoder-side and decoder-side parameters, both stepped every batch; MultiStepLR on
each, stepped once per epoch.
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
from dlp.config import ConfigError, DLPConfig, TrainConfig
from dlp.engine.allocator import retain_freed_memory
from dlp.losses import dlp_loss
from dlp.model import DLP

ENCODER_SIDE = ("prior", "encoder", "to_normal_stats", "anchor_offsets", "bg_encoder", "glimpse_encoder", "obj_on_head")
DECODER_SIDE = ("decoder", "pointnet", "glimpse_decoder")
LOSS_KEYS = ("loss", "rec", "kl", "kl_kp", "kl_feat", "active", "spread")
HEADLINE_METRICS = ("recall@4", "precision@4", "fair/mu", "official/mu", "elbo/elbo", "elbo/psnr")


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


def first_normal_epoch(warmup_epoch: int) -> int:
    """Object models leave the noisy-mask phase after 5 x warmup_epoch epochs (the warm-up included)."""
    return 5 * warmup_epoch


def phase_of(epoch: int, warmup_epoch: int, object_model: bool) -> str:
    if object_model and epoch < warmup_epoch:
        return "warm-up"
    if object_model and epoch < first_normal_epoch(warmup_epoch):
        return "noisy"
    return "normal"


def obj_on_cost_weight(train_config: TrainConfig, epoch: int) -> float:
    """The weight of the obj_on sparsity cost in a normal-phase `epoch` of an object model.

    It rises linearly to `beta_obj_on` over the first `obj_on_ramp_epochs` normal epochs (0: full weight at once).
    """
    if train_config.obj_on_ramp_epochs == 0:
        return train_config.beta_obj_on
    normal_epochs_so_far = max(1, epoch - first_normal_epoch(train_config.warmup_epoch) + 1)
    return train_config.beta_obj_on * min(1.0, normal_epochs_so_far / train_config.obj_on_ramp_epochs)


class EpochShuffleSampler(Sampler[int]):
    """A shuffle that depends only on (seed, epoch), so a resumed run sees exactly the batches it would have seen."""

    def __init__(self, length: int, seed: int):
        self.length, self.seed, self.epoch = length, seed, 0

    def shuffle_for_epoch(self, epoch: int) -> None:
        # Deliberately not named `set_epoch`: Accelerate would call that with its own iteration counter.
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=g).tolist())

    def __len__(self) -> int:
        return self.length


def parameter_groups(model: DLP) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """The official optimiser split: (prior + encoders, decoders)."""
    groups = []
    for names in (ENCODER_SIDE, DECODER_SIDE):
        params = []
        for name in names:
            module = getattr(model, name)
            if module is not None:
                params += list(module.parameters())
        groups.append(params)
    assert sum(map(len, groups)) == len(list(model.parameters())), "every parameter belongs to one optimiser"
    return groups[0], groups[1]


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
        raise CheckpointError(f"nothing to resume at {resume}: give a run directory or a .pt checkpoint written by `dlp train`.")
    return path


@dataclass
class TrainResult:
    run_dir: Path
    epoch: int
    step: int
    metrics: list[dict] = field(default_factory=list)
    interrupted: bool = False


class Trainer:
    """Trains a DLP model. Usage: `Trainer(model_config, train_config, options).fit()`."""

    def __init__(self, model_config: DLPConfig, train_config: TrainConfig, options: RunOptions | None = None, *,
                 train_dataset: Dataset | None = None, eval_fn: Callable | None = None):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        self.options = options = options or RunOptions()
        self.cfg, self.tcfg = model_config, train_config
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
        self.train_dataset = train_dataset if train_dataset is not None else self._build_dataset("train")
        if len(self.train_dataset) < train_config.batch_size * self.accelerator.num_processes:
            raise ConfigError(
                f"the training set has {len(self.train_dataset)} images, fewer than one batch of "
                f"{train_config.batch_size}; lower --batch_size or add data."
            )
        self._check_sample_size()
        self.rec_loss = self._reconstruction_loss()
        self.run_dir = self._make_run_dir(resume_payload)
        self.eval_fn = eval_fn

        torch.manual_seed(train_config.seed)
        model = DLP(model_config)
        if self.accelerator.num_processes > 1 and self.accelerator.device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # SyncBatchNorm runs on GPU modules only
        if options.channels_last:
            model = model.to(memory_format=torch.channels_last)
        enc_params, dec_params = parameter_groups(model)
        adam = dict(lr=train_config.lr, betas=(0.9, 0.999), eps=train_config.adam_eps, weight_decay=0.0)
        self.opt_e = torch.optim.Adam(enc_params, **adam)
        self.opt_d = torch.optim.Adam(dec_params, **adam)
        self.sched_e = torch.optim.lr_scheduler.MultiStepLR(self.opt_e, train_config.lr_milestones, train_config.lr_gamma)
        self.sched_d = torch.optim.lr_scheduler.MultiStepLR(self.opt_d, train_config.lr_milestones, train_config.lr_gamma)

        self.sampler = EpochShuffleSampler(len(self.train_dataset), train_config.seed)
        loader = DataLoader(self.train_dataset, batch_size=train_config.batch_size, sampler=self.sampler,
                            drop_last=True, num_workers=options.num_workers, pin_memory=not use_cpu,
                            persistent_workers=options.num_workers > 0, generator=torch.Generator())
        self.model, self.opt_e, self.opt_d, self.loader = self.accelerator.prepare(model, self.opt_e, self.opt_d, loader)
        self.forward_model = self.model
        self._compiled_ok = False
        if options.compile:
            self.forward_model = _try_compile(self.model)

        self.epoch, self.step, self.batch_in_epoch = 0, 0, 0
        self.epoch_sums = torch.zeros(len(LOSS_KEYS) + 1, device=self.accelerator.device)
        self.metrics: list[dict] = []
        self.best_score = math.inf
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
        stored = DLPConfig.from_dict(payload["config"])
        diff = stored.diff(self.cfg)
        if diff:
            details = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            raise ConfigError(f"cannot resume with a different architecture ({details}); drop the changed flags.")

    def _make_run_dir(self, resume_payload: dict | None) -> Path:
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

    def _reconstruction_loss(self):
        if self.tcfg.rec_loss_function != "vgg":
            return None
        from dlp.perceptual import VGGPerceptual

        vgg = VGGPerceptual(weights=self.options.vgg_weights).to(self.accelerator.device)
        return lambda x, y: vgg(x, y, reduction="none")

    def _build_dataset(self, split: str):
        from dlp.data.registry import build_dataset

        return build_dataset(self.tcfg.dataset, data_root=self.tcfg.data_root, image_size=self.cfg.image_size,
                             split=split, use_tps=self.tcfg.use_tps, use_pairs=self.tcfg.use_pairs,
                             seed=self.tcfg.seed, num_images=self.tcfg.num_train_images)

    def _check_sample_size(self) -> None:
        image = self.train_dataset[0]["image"]
        expected = (self.cfg.in_channels, self.cfg.image_size, self.cfg.image_size)
        if tuple(image.shape) != expected:
            raise ConfigError(
                f"the dataset yields images of shape {list(image.shape)} but the model expects {list(expected)}; "
                f"pass --image-size {image.shape[-1]} or prepare the data at {self.cfg.image_size} pixels."
            )

    def _write_config(self) -> None:
        import yaml

        resolved = {"model": self.cfg.to_dict(), "train": self.tcfg.to_dict(),
                    "run": {k: v for k, v in vars(self.options).items() if k not in ("progress",)}}
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))

    # ------------------------------------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        unwrapped = self.accelerator.unwrap_model(self.model)
        return {
            "optimizer_e": self.opt_e.state_dict(), "optimizer_d": self.opt_d.state_dict(),
            "scheduler_e": self.sched_e.state_dict(), "scheduler_d": self.sched_d.state_dict(),
            "epoch": self.epoch, "step": self.step, "batch_in_epoch": self.batch_in_epoch,
            "epoch_sums": self.epoch_sums.detach().cpu(), "best_score": self.best_score, "rng": _rng_state(),
        }, unwrapped

    def save(self, filename: str = "last.pt") -> Path | None:
        """Write a checkpoint from the main process (callers synchronise processes first)."""
        if not self.is_main:
            return None
        state, unwrapped = self._state()
        model_to_save = unwrapped
        if any(isinstance(m, torch.nn.SyncBatchNorm) for m in unwrapped.modules()):
            model_to_save = DLP(self.cfg)
            model_to_save.load_state_dict(unwrapped.state_dict())
        return save_checkpoint(self.run_dir / "checkpoints" / filename, model_to_save, train_state=state,
                               train_config=self.tcfg.to_dict(), epoch=self.epoch, step=self.step,
                               metrics=self.metrics[-1] if self.metrics else {})

    def _load_state(self, payload: dict) -> None:
        state = payload["train_state"]
        self.accelerator.unwrap_model(self.model).load_state_dict(payload["model"], strict=True)
        self.opt_e.load_state_dict(state["optimizer_e"])
        self.opt_d.load_state_dict(state["optimizer_d"])
        self.sched_e.load_state_dict(state["scheduler_e"])
        self.sched_d.load_state_dict(state["scheduler_d"])
        self.epoch, self.step, self.batch_in_epoch = state["epoch"], state["step"], state["batch_in_epoch"]
        self.epoch_sums = state["epoch_sums"].to(self.accelerator.device)
        self.best_score = state["best_score"]
        metrics_file = self.run_dir / "metrics.jsonl"
        if metrics_file.exists():
            self.metrics = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
        _set_rng_state(state["rng"])

    # ------------------------------------------------------------------------------------------------------------
    def train_step(self, batch: dict, phase: str) -> torch.Tensor:
        """One optimisation step; returns the detached loss terms (no host synchronisation)."""
        x = batch["image"]
        x_prior = batch.get("image_prior")
        if self.options.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
            x_prior = None if x_prior is None else x_prior.contiguous(memory_format=torch.channels_last)
        self.opt_e.zero_grad(set_to_none=False)
        self.opt_d.zero_grad(set_to_none=False)
        if self.forward_model is not self.model and not self._compiled_ok:
            # torch.compile fails lazily, at the first forward or backward: fall back to eager mode then.
            try:
                terms = self._loss_and_backward(x, x_prior, phase)
                self._compiled_ok = True
            except Exception as exc:  # noqa: BLE001 - any compiler failure means: run eagerly
                print(f"torch.compile failed ({type(exc).__name__}); continuing without it.")
                self.forward_model = self.model
                self.opt_e.zero_grad(set_to_none=False)
                self.opt_d.zero_grad(set_to_none=False)
                terms = self._loss_and_backward(x, x_prior, phase)
        else:
            terms = self._loss_and_backward(x, x_prior, phase)
        self.opt_e.step()
        self.opt_d.step()
        return torch.stack([getattr(terms, k).detach().float() for k in LOSS_KEYS])

    def _loss_and_backward(self, x: torch.Tensor, x_prior: torch.Tensor | None, phase: str):
        warmup = phase == "warm-up"
        obj_on_weight = obj_on_cost_weight(self.tcfg, self.epoch) if phase == "normal" else 0.0
        with self.accelerator.autocast():
            out = self.forward_model(x, x_prior, warmup=warmup, noisy_masks=phase != "normal")
            terms = dlp_loss(out, x, beta_rec=self.tcfg.beta_rec, beta_kl=self.tcfg.beta_kl,
                             kl_balance=self.tcfg.kl_balance, logvar_prior=self.cfg.logvar_prior, warmup=warmup,
                             rec_loss=self.rec_loss, beta_obj_on=obj_on_weight,
                             beta_spread=0.0 if warmup else self.tcfg.beta_spread)
        loss = terms.loss
        if warmup and self.cfg.use_object_dec and self.accelerator.num_processes > 1:
            loss = loss + 0.0 * out.rec.mean()  # keeps every DDP bucket in the graph
        self.accelerator.backward(loss)
        return terms

    def fit(self) -> TrainResult:
        with _sigterm_as_interrupt():
            return self._fit()

    def _fit(self) -> TrainResult:
        from tqdm.auto import tqdm

        tcfg, opts = self.tcfg, self.options
        object_model = self.cfg.use_object_dec
        steps_per_epoch = len(self.loader)
        interrupted = False
        try:
            while self.epoch < tcfg.num_epochs:
                if opts.max_steps is not None and self.step >= opts.max_steps:
                    break
                phase = phase_of(self.epoch, tcfg.warmup_epoch, object_model)
                self.sampler.shuffle_for_epoch(self.epoch)
                self.model.train()
                loader = self.loader
                if self.batch_in_epoch:
                    from accelerate import skip_first_batches

                    loader = skip_first_batches(self.loader, self.batch_in_epoch)
                bar = tqdm(total=steps_per_epoch, initial=self.batch_in_epoch, disable=not (opts.progress and self.is_main),
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
                        bar.set_postfix({k: f"{v:.3g}" for k, v in zip(LOSS_KEYS, terms.tolist())}, refresh=False)
                    if opts.max_steps is not None and self.step >= opts.max_steps:
                        stopped = True
                        break
                bar.close()
                if stopped and self.batch_in_epoch < steps_per_epoch:
                    break  # mid-epoch stop: last.pt records the position, --resume continues from it
                self._end_epoch(phase, time.perf_counter() - start)
        except KeyboardInterrupt:
            interrupted = True
            if self.is_main:
                print(f"\ninterrupted: saving {self.run_dir / 'checkpoints' / 'last.pt'}")
        self.accelerator.wait_for_everyone()
        self.save("last.pt")
        if opts.log_with:
            self.accelerator.end_training()
        return TrainResult(self.run_dir, self.epoch, self.step, self.metrics, interrupted)

    def _end_epoch(self, phase: str, seconds: float) -> None:
        sums = self.accelerator.reduce(self.epoch_sums, reduction="sum")
        means = (sums[:-1] / sums[-1].clamp_min(1)).tolist()
        record: dict[str, Any] = {"epoch": self.epoch + 1, "step": self.step, "phase": phase,
                                  "lr": self.sched_e.get_last_lr()[0], "seconds": round(seconds, 2)}
        record.update({k: v for k, v in zip(LOSS_KEYS, means)})
        self.sched_e.step()
        self.sched_d.step()
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
        self.metrics.append(record)
        if self.is_main:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            summary = " ".join(f"{k}={record[k]:.4g}" for k in LOSS_KEYS)
            extra = " ".join(f"{k[5:]}={v:.4g}" for k, v in record.items() if k.startswith("eval/") and
                             k.endswith(HEADLINE_METRICS))
            print(f"epoch {record['epoch']}/{self.tcfg.num_epochs} [{phase}] {summary} {extra} ({seconds:.1f}s)")
            if self.options.log_with:
                self.accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=self.step)
            if evaluate:
                self._save_figures(record["epoch"])
        self.accelerator.wait_for_everyone()
        self.save("last.pt")
        if score is not None and score < self.best_score:
            self.best_score = score
            self.save("best.pt")

    def _evaluate(self) -> dict[str, float]:
        """Evaluation on held-out data (see `dlp.evaluation`); `score` (lower is better) chooses best.pt."""
        if self.eval_fn is None:
            from dlp.evaluation.training import evaluate_during_training

            self.eval_fn = evaluate_during_training
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        try:
            metrics = self.eval_fn(model, self.tcfg, device=self.accelerator.device,
                                   rec_loss=self.rec_loss) if self.is_main else {}
        finally:
            model.train(was_training)
        return metrics

    def _save_figures(self, epoch: int) -> None:
        from dlp.viz import plot_loss_curves, save_image, training_figure

        model = self.accelerator.unwrap_model(self.model)
        batch = next(iter(DataLoader(self.train_dataset, batch_size=min(8, self.tcfg.batch_size), shuffle=False)))
        x = batch["image"].to(self.accelerator.device)
        x_prior = batch.get("image_prior")
        x_prior = x if x_prior is None else x_prior.to(self.accelerator.device)
        model.eval()
        with torch.no_grad():
            out = model(x, x_prior, deterministic=True)
        model.train()
        grid = training_figure(x, out, x_prior, topk=self.tcfg.topk, iou_thresh=self.tcfg.iou_thresh,
                               anchor_s=self.cfg.anchor_s)
        save_image(grid, self.run_dir / "figures" / f"epoch_{epoch:04d}.png")
        save_image(grid, self.run_dir / "figures" / "latest.png")
        plot_loss_curves(self.metrics, self.run_dir / "figures" / "loss_curves.png")


def _try_compile(model):
    try:
        return torch.compile(model)
    except Exception as exc:  # compile is an optimisation: never a reason to stop training
        print(f"torch.compile unavailable ({type(exc).__name__}: {exc}); continuing without it.")
        return model
