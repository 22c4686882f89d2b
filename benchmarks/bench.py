"""Speed benchmark: training step, inference and data loading for the presets of every family, on the available device.

    python benchmarks/bench.py                          # shapes, celeba, dlpv2-shapes, ddlp-balls; batch 32
    python benchmarks/bench.py --presets shapes dlpv2-shapes-quick --repeats 10 --out results.md
    python benchmarks/bench.py --device cuda --precision bf16 --compile
    python benchmarks/bench.py --mode train --profile  # + where the training step spends its time
    python benchmarks/bench.py --presets shapes celeba --mode infer --fused-inference

A training step is the engine's `Trainer.train_step` in the family's normal phase (forward + loss + backward + the
optimiser steps) on random images (or random clips for video models). Each measurement: warm-up iterations, then the
median of `--repeats` timed runs with the min-max range. Beside the times: the FLOPs of one step
(`torch.utils.flop_counter`: convolutions, matrix products, attention -- the elementwise work is not counted), the
FLOP rate that achieves, and its fraction of the machine's matrix-multiply peak, measured in the same process (a
float32 `torch.mm` of 2048 x 2048 matrices with the same threads, the best of 10 before and 10 after the timed
runs). Video models also report rollout frames per second. `--fused-inference` runs inference through
`model.fuse_for_inference()` (v1: BatchNorm folded into the convolutions, activation fused; FLOPs counted on the
plain model). `benchmarks/profile_step.py` breaks the step down by operator category and layer shape. Training and
inference of every preset run in their own subprocesses, so that each peak memory (RSS on CPU, allocated memory on
GPU) belongs to that workload alone.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def matmul_peak_gflops(device, dtype=None, size: int = 2048, repeats: int = 5) -> float:
    """The machine's matrix-multiply rate in GFLOP/s: the best of `repeats` products of two size x size matrices."""
    import torch

    dtype = dtype or torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = min(_timed(lambda: torch.mm(a, b), device, 2, repeats))
    return 2 * size**3 / best / 1e9


def count_flops(fn) -> float:
    """FLOPs of one call of `fn` (what `torch.utils.flop_counter` counts: convolutions, matrix products)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


class Workload:
    """One benchmarked call: `fn()` runs a training step or a deterministic forward pass of a preset at a batch size."""

    def __init__(self, fn, device, *, clip: int | None, x, model, trainer=None, flop_fn=None):
        self.fn, self.device, self.clip, self.x, self.model, self.trainer = fn, device, clip, x, model, trainer
        self.flop_fn = flop_fn or fn  # what FLOPs are counted on (the unfused model: its kernels are the known ones)


def make_workload(preset_name: str, mode: str, *, batch_size: int = 32, device: str = "cpu", precision: str = "fp32",
                  compile: bool = False, channels_last: bool = True, fused_inference: bool = False,
                  tmp: str = "/tmp/dlp-bench") -> Workload:
    """The benchmark's workload for `mode` 'train' (the engine's `Trainer.train_step` in the normal phase, MSE
    reconstruction) or 'infer' (deterministic forward without gradients, eval mode), on random inputs.

    `fused_inference` runs inference through `fuse_for_inference` (BatchNorm folded into the convolutions, fused
    convolution + activation kernels) where the family has it."""
    import torch

    from dlp.engine.trainer import RunOptions, Trainer
    from dlp.registry import get_family, get_preset

    dev = torch.device("cuda" if device == "cuda" else "cpu")
    preset = get_preset(preset_name)
    family = get_family(preset.family)
    model_config = preset.model_config()
    overrides = {"batch_size": batch_size}
    if "rec_loss_function" in family.train_config_class.field_names():  # no ImageNet weights needed
        overrides["rec_loss_function"] = "mse"
    train_config = preset.train_config(**overrides)
    objective = family.objective_class(model_config, train_config)
    size = model_config.image_size
    clip = objective.dataset_options().get("clip_length")
    shape = (batch_size, clip, 3, size, size) if clip else (batch_size, 3, size, size)
    key = "video" if clip else "image"
    x = torch.rand(*shape, device=dev)

    if mode == "train":
        dataset = [{key: torch.rand(*shape[1:])} for _ in range(batch_size)]
        name = f"{preset_name}-{time.time_ns()}"
        trainer = Trainer(model_config, train_config,
                          RunOptions(output_dir=str(Path(tmp) / "runs"), name=name, device=device,
                                     precision=precision, compile=compile, progress=False,
                                     channels_last=channels_last),
                          train_dataset=dataset, eval_fn=lambda *a, **k: {})
        batch = {key: x}
        return Workload(lambda: trainer.train_step(batch, "normal"), dev, clip=clip, x=x, model=trainer.model,
                        trainer=trainer)

    from dlp.engine.allocator import retain_freed_memory

    if dev.type == "cpu":  # as `dlp eval` does
        retain_freed_memory()
    model = family.build_model(model_config).to(dev).eval()
    if channels_last and not clip:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    plain = model
    if fused_inference:
        if not hasattr(model, "fuse_for_inference"):
            raise SystemExit(f"--fused-inference: the {preset.family!r} family has no fused inference path")
        model = model.fuse_for_inference()

    def forward(net):
        def run():
            with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                net(x, deterministic=True)
        return run

    return Workload(forward(model), dev, clip=clip, x=x, model=model, flop_fn=forward(plain))


def worker(args) -> dict:
    import torch

    from dlp.registry import get_preset

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    workload = make_workload(args.worker, args.mode, batch_size=args.batch_size, device=args.device,
                             precision=args.precision, compile=args.compile, channels_last=args.channels_last,
                             fused_inference=args.fused_inference, tmp=args.tmp)
    device = workload.device
    result = {"preset": args.worker, "family": get_preset(args.worker).family}
    peak = matmul_peak_gflops(device, repeats=10)

    if args.mode == "train":
        step = workload.fn
        if args.compile:  # compilation happens at the first call: time it apart from the steps
            start = time.perf_counter()
            step()
            _sync(device)
            result["compile_s"] = time.perf_counter() - start
            result["compiled"] = workload.trainer.forward_model is not workload.trainer.model
        times = _timed(step, device, args.warmup, args.repeats)
        result["train_s"] = times
        result["peak_mem_gb"] = _peak_memory_gb(device)  # before profiling, which keeps its own records
        peak = max(peak, matmul_peak_gflops(device, repeats=10))  # the best of two: a busy machine only lowers it
        result["matmul_peak_gflops"] = peak
        result["train_gflop"] = count_flops(step) / 1e9
        result["train_fraction_of_peak"] = result["train_gflop"] / statistics.median(times) / peak
        if args.profile:
            result["profile_ms"] = _profile_step(step)
    else:
        infer = workload.fn
        result["infer_s"] = _timed(infer, device, args.warmup, args.repeats)
        result["peak_mem_gb"] = _peak_memory_gb(device)
        peak = max(peak, matmul_peak_gflops(device, repeats=10))  # the best of two: a busy machine only lowers it
        result["matmul_peak_gflops"] = peak
        result["infer_gflop"] = count_flops(workload.flop_fn) / 1e9
        result["infer_fraction_of_peak"] = result["infer_gflop"] / statistics.median(result["infer_s"]) / peak
        clip = workload.clip
        if clip:  # video prediction: condition on half the clip, predict as many frames again
            cond = max(1, clip // 2)
            horizon = clip - cond
            model, x = workload.model, workload.x
            rollout_s = _timed(lambda: model.rollout(x, cond, horizon), device, 1, max(1, args.repeats // 2))
            result["rollout_frames_per_s"] = args.batch_size * horizon / statistics.median(rollout_s)
    return result


def _peak_memory_gb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


_PROFILE_GROUPS = {
    "convolutions": ("convolution", "conv2d", "mkldnn_conv"),
    "batch norm": ("batch_norm",),
    "linear layers": ("aten::mm", "aten::addmm", "aten::bmm"),
}


def _profile_step(step, steps: int = 3) -> dict[str, float]:
    """Self CPU time of one training step by operator group, in ms (the profile behind the speed figures)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    totals = dict.fromkeys([*_PROFILE_GROUPS, "everything else"], 0.0)
    for event in prof.key_averages():
        group = next((g for g, keys in _PROFILE_GROUPS.items() if any(key in event.key for key in keys)),
                     "everything else")
        totals[group] += event.self_cpu_time_total / 1e3 / steps
    return totals


def loader_throughput(args) -> list[dict]:
    """Samples per second of the data loaders alone (no model)."""
    import numpy as np
    from torch.utils.data import DataLoader

    from dlp.data.shapes import ShapesDataset

    rows = []
    sources = {"shapes 64px (generated)": ShapesDataset(4096, image_size=64, seed=0)}
    try:
        from dlp.data.video import FrameArrayDataset

        array = Path(args.tmp) / "frames.npy"
        np.save(array, np.random.randint(0, 255, (2048, 128, 128, 3), dtype=np.uint8))
        sources["prepared array 128px (mmap)"] = FrameArrayDataset(array, split=None)
    except ImportError:
        pass
    for name, dataset in sources.items():
        for workers in sorted({0, args.loader_workers}):
            loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=workers,
                                drop_last=True)
            start, n = time.perf_counter(), 0
            for batch in loader:
                n += batch["image"].shape[0]
                if n >= 2048:
                    break
            rows.append({"source": name, "workers": workers, "samples_per_s": n / (time.perf_counter() - start)})
    return rows


def _fmt(times: list[float] | None) -> str:
    if not times:
        return "–"
    return f"{statistics.median(times):.3f} ({min(times):.3f}–{max(times):.3f})"


def _fmt_gb(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _forwarded_options(args) -> list[str]:
    return ["--device", args.device, "--batch-size", str(args.batch_size), "--threads", str(args.threads),
            "--warmup", str(args.warmup), "--repeats", str(args.repeats), "--precision", args.precision,
            "--tmp", args.tmp] + (["--compile"] if args.compile else []) + (["--profile"] if args.profile else []) + \
        ([] if args.channels_last else ["--no-channels-last"]) + (["--fused-inference"] if args.fused_inference else [])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["shapes", "celeba", "dlpv2-shapes", "ddlp-balls"])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--compile", action="store_true")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="NHWC memory format for training and inference (default: on, as the trainer)")
    p.add_argument("--fused-inference", action="store_true",
                   help="inference through model.fuse_for_inference(): BatchNorm folded into the convolutions, "
                        "convolution + activation fused (v1 models)")
    p.add_argument("--loader-workers", type=int, default=2)
    p.add_argument("--mode", default="all", choices=("all", "train", "infer"))
    p.add_argument("--profile", action="store_true",
                   help="also profile the training step and show the time per operator group")
    p.add_argument("--out", default=None, help="also write the Markdown table to this file")
    p.add_argument("--tmp", default="/tmp/dlp-bench")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    Path(args.tmp).mkdir(parents=True, exist_ok=True)

    if args.worker:
        print(json.dumps(worker(args)))
        return

    # Training and inference run in separate processes so that each peak memory belongs to that workload alone.
    modes = ("train", "infer") if args.mode == "all" else (args.mode,)
    results = []
    for preset in args.presets:
        row = {"preset": preset}
        for mode in modes:
            cmd = [sys.executable, __file__, "--worker", preset, "--mode", mode] + _forwarded_options(args)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"benchmark of {preset} ({mode}) failed:\n{proc.stderr[-3000:]}")
            measured = json.loads(proc.stdout.strip().splitlines()[-1])
            row.update({key: value for key, value in measured.items() if key not in ("preset", "peak_mem_gb")})
            row[f"{mode}_mem_gb"] = measured["peak_mem_gb"]
        results.append(row)

    import torch

    machine = (f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}"
               if args.device == "cpu" else torch.cuda.get_device_name(0))
    lines = [f"Device: {args.device} ({machine}); batch {args.batch_size}; precision {args.precision}"
             f"{'; torch.compile' if args.compile else ''}{'; fused inference' if args.fused_inference else ''}"
             f"; median (min–max) of {args.repeats} runs.", "",
             "| preset | family | train step (s) | GFLOP / step | fraction of matmul peak | peak memory, training (GB) "
             "| inference (s) | fraction of peak | peak memory, inference (GB) | rollout frames/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in results:
        fraction = lambda key: f"{row[key]:.2f}" if key in row else "–"  # noqa: E731
        rollout = f"{row['rollout_frames_per_s']:.1f}" if "rollout_frames_per_s" in row else "–"
        lines.append(f"| {row['preset']} | {row['family']} | {_fmt(row.get('train_s'))} | "
                     f"{row.get('train_gflop', float('nan')):.1f} | {fraction('train_fraction_of_peak')} | "
                     f"{_fmt_gb(row.get('train_mem_gb'))} | {_fmt(row.get('infer_s'))} | "
                     f"{fraction('infer_fraction_of_peak')} | {_fmt_gb(row.get('infer_mem_gb'))} | {rollout} |")
    for row in results:
        if "compile_s" in row:
            state = "compiled" if row.get("compiled") else "fell back to eager mode"
            lines.append(f"\n{row['preset']}: first (compiling) training step {row['compile_s']:.1f} s, {state}.")
    peaks = [row["matmul_peak_gflops"] for row in results if "matmul_peak_gflops" in row]
    if peaks:
        lines.append(f"\nMatrix-multiply peak measured in the workers: {min(peaks):.0f}–{max(peaks):.0f} GFLOP/s.")
    profiled = [row for row in results if "profile_ms" in row]
    if profiled:
        groups = list(profiled[0]["profile_ms"])
        lines += ["", "Training step profile (self CPU time per step, ms; the profiler adds overhead):", "",
                  "| preset | " + " | ".join(groups) + " |", "|---" * (len(groups) + 1) + "|"]
        for row in profiled:
            total = sum(row["profile_ms"].values())
            lines.append(f"| {row['preset']} | " + " | ".join(
                f"{ms:.0f} ({100 * ms / total:.0f} %)" for ms in row["profile_ms"].values()) + " |")
    if args.mode == "all":
        lines += ["", "| data source | workers | samples/s |", "|---|---|---|"]
        for row in loader_throughput(args):
            lines.append(f"| {row['source']} | {row['workers']} | {row['samples_per_s']:.0f} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
