"""Speed benchmark: training step, inference and data loading for the presets, on the available device.

    python benchmarks/bench.py                          # shapes and celeba presets, batch 32, Markdown table
    python benchmarks/bench.py --presets shapes --repeats 10 --out results.md
    python benchmarks/bench.py --device cuda --precision bf16 --compile
    python benchmarks/bench.py --mode train --profile  # + where the training step spends its time

A training step is forward + loss + backward + both Adam steps (the engine's `Trainer.train_step`, warm-up off,
noisy masks off), on random images. Each measurement: warm-up iterations, then the median of `--repeats` timed
runs with the min-max range. Training and inference of every preset run in their own subprocesses, so that each
peak memory (RSS on CPU, allocated memory on GPU) belongs to that workload alone.
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


def worker(args) -> dict:
    import torch

    from dlp.engine.trainer import RunOptions, Trainer
    from dlp.registry import get_family, get_preset

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device("cuda" if args.device == "cuda" else "cpu")
    preset = get_preset(args.worker)
    model_config = preset.model_config()
    family = get_family(preset.family)
    overrides = {"batch_size": args.batch_size}
    if "rec_loss_function" in family.train_config_class.field_names():  # no ImageNet weights needed
        overrides["rec_loss_function"] = "mse"
    train_config = preset.train_config(**overrides)
    size = model_config.image_size
    x = torch.rand(args.batch_size, 3, size, size, device=device)
    result = {"preset": args.worker}

    if args.mode == "train":
        dataset = [{"image": torch.rand(3, size, size)} for _ in range(args.batch_size)]
        trainer = Trainer(model_config, train_config,
                          RunOptions(output_dir=str(Path(args.tmp) / "runs"), name=args.worker, device=args.device,
                                     precision=args.precision, compile=args.compile, progress=False),
                          train_dataset=dataset, eval_fn=lambda *a, **k: {})
        batch = {"image": x}
        times = _timed(lambda: trainer.train_step(batch, "normal"), device, args.warmup, args.repeats)
        result["train_s"] = times
        result["peak_mem_gb"] = _peak_memory_gb(device)  # before profiling, which keeps its own records
        if args.profile:
            result["profile_ms"] = _profile_step(lambda: trainer.train_step(batch, "normal"))
    else:
        from dlp.engine.allocator import retain_freed_memory

        if device.type == "cpu":  # as `dlp eval` does
            retain_freed_memory()
        model = family.build_model(model_config).to(device).eval()

        def infer():
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
                model(x, deterministic=True)

        result["infer_s"] = _timed(infer, device, args.warmup, args.repeats)
        result["peak_mem_gb"] = _peak_memory_gb(device)
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
            "--tmp", args.tmp] + (["--compile"] if args.compile else []) + (["--profile"] if args.profile else [])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["shapes", "celeba"])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--compile", action="store_true")
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
             f"{'; torch.compile' if args.compile else ''}; median (min–max) of {args.repeats} runs.", "",
             "| preset | train step (s) | peak memory, training (GB) | inference (s) | peak memory, inference (GB) |",
             "|---|---|---|---|---|"]
    for row in results:
        lines.append(f"| {row['preset']} | {_fmt(row.get('train_s'))} | {_fmt_gb(row.get('train_mem_gb'))} | "
                     f"{_fmt(row.get('infer_s'))} | {_fmt_gb(row.get('infer_mem_gb'))} |")
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
