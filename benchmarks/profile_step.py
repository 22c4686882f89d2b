"""Where the training step (or the inference pass) spends its time, per preset: a Markdown profile.

    python benchmarks/profile_step.py                                    # shapes, celeba, dlpv2-shapes, ddlp-balls
    python benchmarks/profile_step.py --presets shapes --batch-size 8 --steps 2 --out profile.md
    python benchmarks/profile_step.py --mode infer --fused-inference     # the deterministic forward pass

The workloads are `bench.py`'s (the engine's `Trainer.train_step` in the normal phase, MSE reconstruction, random
inputs; or the deterministic forward pass without gradients). After warm-up steps, `--steps` steps run under
`torch.profiler` with the operator shapes recorded. Every operator the Python code calls (or the autograd engine, or
the optimiser) is attributed, with the time it takes including its sub-operators, to

* a phase: forward, backward (inside the autograd engine) or optimiser (inside `Optimizer.step`/`zero_grad`), and
* a category: convolution, matrix product, batch norm, group/layer norm, replicate padding, bilinear upsampling,
  glimpse work (grid_sample, affine grids, gather/scatter/index), copies and layout, elementwise and reductions,
  the optimiser's arithmetic.

FLOPs are counted per operator from the recorded shapes with `torch.utils.flop_counter`'s formulas (convolutions
forward and backward, matrix products: what `bench.py` counts), so every row with FLOPs has its achieved GFLOP/s and
its fraction of the matrix-multiply peak measured in the same process. The convolutions are also listed by layer
shape. "Python and dispatch" is the profiled step's wall time that no operator covers (the interpreter, autograd
bookkeeping between operators). The profiler adds a few microseconds per operator, so the profiled step is a little
slower than `bench.py`'s; the step time measured without the profiler is given beside it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import _sync, _timed, make_workload, matmul_peak_gflops  # noqa: E402

CATEGORIES = {
    "convolution": ("aten::conv1d", "aten::conv2d", "aten::convolution", "aten::_convolution",
                    "aten::convolution_backward", "aten::mkldnn_convolution", "mkldnn::_convolution_pointwise",
                    "aten::_slow_conv2d_forward", "aten::_slow_conv2d_backward"),
    "matrix product": ("aten::linear", "aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::baddbmm",
                       "aten::einsum", "mkldnn::_linear_pointwise"),
    "batch norm": ("aten::batch_norm", "aten::_batch_norm_impl_index", "aten::native_batch_norm",
                   "aten::native_batch_norm_backward", "aten::_native_batch_norm_legit",
                   "aten::_native_batch_norm_legit_no_training", "aten::_batch_norm_with_update",
                   "aten::_batch_norm_no_update", "aten::batch_norm_backward"),
    "group / layer norm": ("aten::group_norm", "aten::native_group_norm", "aten::native_group_norm_backward",
                           "aten::layer_norm", "aten::native_layer_norm", "aten::native_layer_norm_backward"),
    "replicate padding": ("aten::pad", "aten::_pad_enum", "aten::replication_pad2d",
                          "aten::replication_pad2d_backward", "aten::replication_pad1d",
                          "aten::replication_pad1d_backward"),
    "bilinear upsampling": ("aten::upsample_bilinear2d", "aten::upsample_bilinear2d_backward",
                            "aten::_upsample_bilinear2d_aa"),
    "glimpse work": ("aten::grid_sampler", "aten::grid_sampler_2d", "aten::grid_sampler_2d_backward",
                     "aten::affine_grid_generator", "aten::affine_grid_generator_backward", "aten::gather",
                     "aten::gather_backward", "aten::scatter", "aten::scatter_add", "aten::scatter_add_",
                     "aten::index", "aten::index_put_", "aten::_index_put_impl_", "aten::index_select",
                     "aten::index_add_", "aten::index_select_backward", "aten::take_along_dim",
                     "aten::unfold", "aten::unfold_backward", "aten::topk"),
    "copies and layout": ("aten::copy_", "aten::contiguous", "aten::clone", "aten::to", "aten::_to_copy",
                          "aten::cat", "aten::stack", "aten::empty", "aten::empty_like", "aten::empty_strided",
                          "aten::zeros", "aten::zeros_like", "aten::ones_like", "aten::full", "aten::fill_",
                          "aten::zero_", "aten::new_zeros", "aten::new_empty", "aten::new_empty_strided",
                          "aten::reshape", "aten::view", "aten::permute", "aten::transpose", "aten::expand",
                          "aten::slice", "aten::select", "aten::split", "aten::chunk", "aten::flatten",
                          "aten::as_strided", "aten::detach", "aten::unsqueeze", "aten::squeeze", "aten::t",
                          "aten::_reshape_alias", "aten::narrow", "aten::split_with_sizes"),
}
_CATEGORY_OF = {name: category for category, names in CATEGORIES.items() for name in names}
ORDER = [*CATEGORIES, "elementwise and reductions", "optimiser", "other (compiled kernels, custom)"]
FLOP_OPS = ("aten::convolution", "aten::_convolution", "aten::convolution_backward", "aten::mm", "aten::addmm",
            "aten::bmm", "aten::baddbmm", "mkldnn::_convolution_pointwise", "mkldnn::_convolution_pointwise.default")


# ------------------------------------------------------------------------------------------------------------------
# FLOPs from recorded shapes, with torch.utils.flop_counter's formulas
def _conv_out(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def event_flops(name: str, shapes: list, concrete: list) -> int:
    """FLOPs of one operator call as `torch.utils.flop_counter` counts them (0 for operators it does not count)."""
    import torch
    from torch.utils.flop_counter import flop_registry

    aten = torch.ops.aten
    try:
        if name in ("aten::convolution", "aten::_convolution", "mkldnn::_convolution_pointwise"):
            x, w = shapes[0], shapes[1]
            if name == "mkldnn::_convolution_pointwise":  # (x, w, b, padding, stride, dilation, groups, ...)
                padding, stride, dilation, transposed = concrete[3], concrete[4], concrete[5], False
            else:  # (x, w, b, stride, padding, dilation, transposed, output_padding, groups, ...)
                stride, padding, dilation, transposed = concrete[3], concrete[4], concrete[5], bool(concrete[6])
            if transposed:
                out = None
            else:
                spatial = [_conv_out(s, k, st, p, d) for s, k, st, p, d in zip(x[2:], w[2:], stride, padding, dilation)]
                out = torch.Size([x[0], w[0], *spatial])
            return int(flop_registry[aten.convolution](torch.Size(x), torch.Size(w), None, stride, padding, dilation,
                                                       transposed, out_val=out))
        if name == "aten::convolution_backward":
            grad_out, x, w = (torch.Size(s) for s in shapes[:3])
            args = concrete[3:]
            return int(flop_registry[aten.convolution_backward](grad_out, x, w, *args, out_val=(x, w, None)))
        if name in ("aten::mm", "aten::bmm"):
            op = aten.mm if name == "aten::mm" else aten.bmm
            return int(flop_registry[op](torch.Size(shapes[0]), torch.Size(shapes[1]), out_val=None))
        if name in ("aten::addmm", "aten::baddbmm"):
            op = aten.addmm if name == "aten::addmm" else aten.baddbmm
            return int(flop_registry[op](torch.Size(shapes[0]), torch.Size(shapes[1]), torch.Size(shapes[2]),
                                         out_val=None))
    except Exception:  # noqa: BLE001 - an unexpected signature counts no FLOPs rather than stopping the profile
        return 0
    return 0


# ------------------------------------------------------------------------------------------------------------------
def _ancestors(event):
    parent = event.cpu_parent
    while parent is not None:
        yield parent
        parent = parent.cpu_parent


def _is_op(name: str) -> bool:
    return name.startswith(("aten::", "mkldnn::", "quantized::", "inductor::", "dlp::"))


def _phase(event) -> str:
    for parent in _ancestors(event):
        if parent.name.startswith("Optimizer."):
            return "optimiser"
        if parent.name.startswith("autograd::engine::evaluate_function"):
            return "backward"
    return "forward"


def _category(name: str, phase: str) -> str:
    if phase == "optimiser":
        return "optimiser"
    if name in _CATEGORY_OF:
        return _CATEGORY_OF[name]
    if name.startswith(("aten::", "mkldnn::")):
        return "elementwise and reductions"
    return "other (compiled kernels, custom)"


def _conv_key(name: str, shapes: list, concrete: list) -> tuple:
    """(direction, input shape, weight shape, stride) of a convolution call."""
    if name == "aten::convolution_backward":
        mask = concrete[-1] if concrete and isinstance(concrete[-1], (list, tuple)) else [True, True, True]
        kind = "backward (input + weight)" if mask[0] else "backward (weight only)"
        x, w, stride = shapes[1], shapes[2], concrete[4]
    else:
        kind = "forward"
        x, w = shapes[0], shapes[1]
        stride = concrete[4] if name == "mkldnn::_convolution_pointwise" else concrete[3]
    return kind, tuple(x), tuple(w), tuple(stride) if isinstance(stride, (list, tuple)) else (stride,)


def analyse(prof, steps: int) -> dict:
    """Per-step times (ms) and FLOPs of the profiled steps, by phase x category, by convolution shape and by op."""
    table = defaultdict(lambda: [0.0, 0.0])  # (category, phase) -> [ms, flops]
    convs = defaultdict(lambda: [0, 0.0, 0.0])  # key -> [calls, ms, flops]
    ops = defaultdict(lambda: [0, 0.0])  # (phase, name, first shape) -> [calls, ms]
    covered_us = 0.0
    events = prof.events()
    for event in events:
        if not _is_op(event.name) or any(_is_op(p.name) for p in _ancestors(event)):
            continue  # only the outermost operator of each call
        phase = _phase(event)
        category = _category(event.name, phase)
        shapes = event.input_shapes or []
        flops = _flops_of(event)
        ms = event.cpu_time_total / 1e3
        covered_us += event.cpu_time_total
        table[(category, phase)][0] += ms / steps
        table[(category, phase)][1] += flops / steps
        if category == "convolution" and phase != "optimiser":
            conv_event = _find_conv(event)
            if conv_event is not None:
                key = _conv_key(conv_event.name, conv_event.input_shapes or [],
                                getattr(conv_event, "concrete_inputs", None) or [])
                entry = convs[key]
                entry[0] += 1 / steps
                entry[1] += ms / steps
                entry[2] += flops / steps
        first_shape = tuple(shapes[0]) if shapes and shapes[0] else ()
        entry = ops[(phase, event.name, first_shape)]
        entry[0] += 1 / steps
        entry[1] += ms / steps
    return {"table": dict(table), "convs": dict(convs), "ops": dict(ops), "covered_ms": covered_us / 1e3 / steps}


def _flops_of(event) -> int:
    """FLOPs of an operator call: its own if it is counted, else those of the outermost counted sub-operators."""
    if event.name == "aten::affine_grid_generator":
        return 0  # its batched product is not counted by torch.utils.flop_counter (nor by bench.py)
    if event.name in FLOP_OPS:
        return event_flops(event.name, event.input_shapes or [], getattr(event, "concrete_inputs", None) or [])
    return sum(_flops_of(child) for child in event.cpu_children)


def _descendants(event):
    stack = list(event.cpu_children)
    while stack:
        child = stack.pop()
        yield child
        stack.extend(child.cpu_children)


def _find_conv(event):
    names = ("aten::convolution", "aten::convolution_backward", "mkldnn::_convolution_pointwise")
    if event.name in names:
        return event
    return next((sub for sub in _descendants(event) if sub.name in names), None)


# ------------------------------------------------------------------------------------------------------------------
def profile_workload(fn, device, steps: int, warmup: int) -> tuple[dict, float, float, int]:
    """(analysis, step time without the profiler, profiled step time, page faults per profiled step).

    The profiler records after two unrecorded steps under it: its own allocations move the heap, and every page the
    allocator has to fault in again costs microseconds (on virtual machines tens of them) charged to the operator that
    touched it."""
    import resource
    import warnings

    from torch.profiler import ProfilerActivity, profile, schedule

    warnings.filterwarnings("ignore", message=".*Profiler clears events.*")

    wall = statistics.median(_timed(fn, device, warmup, max(steps, 3)))
    analysed = []
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True,
                 schedule=schedule(wait=0, warmup=2, active=steps),
                 on_trace_ready=lambda p: analysed.append(analyse(p, steps))) as prof:
        for _ in range(2):
            fn()
            prof.step()
        _sync(device)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        profiled = 0.0
        for _ in range(steps):
            start = time.perf_counter()
            fn()
            _sync(device)
            profiled += (time.perf_counter() - start) / steps
            prof.step()  # after the last step: the trace is collected and analysed (not timed)
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) // steps
    return analysed[-1], wall, profiled, faults


def _rate(flops: float, ms: float) -> str:
    return f"{flops / ms / 1e6:.0f}" if flops and ms else "–"


def markdown(preset: str, family: str, mode: str, result: dict, wall_s: float, profiled_s: float, peak: float,
             top: int, faults: int = 0) -> str:
    table, convs, ops = result["table"], result["convs"], result["ops"]
    phases = ["forward", "backward", "optimiser"] if mode == "train" else ["forward"]
    total_ms = profiled_s * 1e3
    lines = [f"### {preset} ({family}, {mode})", "",
             f"Step without the profiler {wall_s * 1e3:.0f} ms; profiled step {total_ms:.0f} ms, of which operators "
             f"{result['covered_ms']:.0f} ms; {faults} page faults per profiled step. Matrix-multiply peak {peak:.0f} "
             f"GFLOP/s.", "",
             "| category | " + " | ".join(f"{p} (ms)" for p in phases) +
             " | total (ms) | share | GFLOP | GFLOP/s | fraction of peak |",
             "|---" * (len(phases) + 6) + "|"]
    step_flops = 0.0
    for category in ORDER:
        cells = [table.get((category, phase), [0.0, 0.0]) for phase in phases]
        ms = sum(c[0] for c in cells)
        flops = sum(c[1] for c in cells)
        if ms < 0.05:
            continue
        step_flops += flops
        fraction = f"{flops / ms / 1e6 / peak:.2f}" if flops else "–"
        lines.append(f"| {category} | " + " | ".join(f"{c[0]:.1f}" for c in cells) +
                     f" | {ms:.1f} | {100 * ms / total_ms:.1f} % | {flops / 1e9:.2f} | {_rate(flops, ms)} | "
                     f"{fraction} |")
    python_ms = max(0.0, total_ms - result["covered_ms"])
    lines.append("| Python and dispatch | " + " | ".join("" for _ in phases) +
                 f" | {python_ms:.1f} | {100 * python_ms / total_ms:.1f} % | | | |")
    lines.append("| **step** | " + " | ".join("" for _ in phases) +
                 f" | **{total_ms:.0f}** | 100 % | {step_flops / 1e9:.1f} | {_rate(step_flops, total_ms)} | "
                 f"{step_flops / total_ms / 1e6 / peak:.2f} |")

    lines += ["", f"Convolutions by layer shape (the {top} slowest; input N x C x H x W, weight Cout x Cin x k x k):",
              "", "| direction | input | weight | stride | calls | ms | GFLOP | GFLOP/s | fraction of peak |",
              "|---|---|---|---|---|---|---|---|---|"]
    ranked = sorted(convs.items(), key=lambda kv: -kv[1][1])
    for (kind, x, w, stride), (calls, ms, flops) in ranked[:top]:
        fraction = f"{flops / ms / 1e6 / peak:.2f}" if flops and ms else "–"
        lines.append(f"| {kind} | {'x'.join(map(str, x))} | {'x'.join(map(str, w))} | {stride[0]} | {calls:.0f} | "
                     f"{ms:.1f} | {flops / 1e9:.2f} | {_rate(flops, ms)} | {fraction} |")
    rest = ranked[top:]
    if rest:
        ms, flops = sum(v[1] for _, v in rest), sum(v[2] for _, v in rest)
        lines.append(f"| {len(rest)} other shapes | | | | | {ms:.1f} | {flops / 1e9:.2f} | {_rate(flops, ms)} | |")

    others = [(k, v) for k, v in ops.items() if _category(k[1], k[0]) not in ("convolution", "matrix product")]
    lines += ["", f"Slowest operators outside convolutions and matrix products (the {top}):", "",
              "| phase | operator | first input | calls | ms | share |", "|---|---|---|---|---|---|"]
    for (phase, name, shape), (calls, ms) in sorted(others, key=lambda kv: -kv[1][1])[:top]:
        lines.append(f"| {phase} | {name} | {'x'.join(map(str, shape)) or '–'} | {calls:.0f} | {ms:.1f} | "
                     f"{100 * ms / total_ms:.1f} % |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["shapes", "celeba", "dlpv2-shapes", "ddlp-balls"])
    p.add_argument("--mode", default="train", choices=("train", "infer"))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="profiled steps (after the warm-up)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--top", type=int, default=12, help="rows of the per-shape and per-operator tables")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--fused-inference", action="store_true")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--out", default=None, help="also write the Markdown to this file")
    p.add_argument("--tmp", default="/tmp/dlp-profile")
    p.add_argument("--huge-pages", action="store_true",
                   help="run with transparent huge pages for the heap (GLIBC_TUNABLES=glibc.malloc.hugetlb=1): fewer "
                        "page faults, whose cost (tens of microseconds each on a virtual machine) otherwise lands on "
                        "whichever operator first touches a page the profiler's own allocations pushed the heap to")
    args = p.parse_args()
    import os
    import platform

    if args.huge_pages and platform.system() == "Linux" and "GLIBC_TUNABLES" not in os.environ:
        os.environ["GLIBC_TUNABLES"] = "glibc.malloc.hugetlb=1"  # read by glibc at start-up: run again with it
        os.execv(sys.executable, [sys.executable, *sys.argv])

    import torch

    from dlp.registry import get_preset

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sections = [f"Profile of the {'training step' if args.mode == 'train' else 'deterministic forward pass'}: "
                f"cpu ({platform.processor() or platform.machine()}), {args.threads} threads, torch "
                f"{torch.__version__}; batch {args.batch_size}; {args.steps} profiled steps after {args.warmup} "
                f"warm-up steps{'; torch.compile' if args.compile else ''}"
                f"{'; fused inference' if args.fused_inference else ''}"
                f"{'; heap on huge pages' if 'hugetlb=1' in os.environ.get('GLIBC_TUNABLES', '') else ''}."]
    for preset in args.presets:
        workload = make_workload(preset, args.mode, batch_size=args.batch_size, compile=args.compile,
                                 channels_last=args.channels_last, fused_inference=args.fused_inference,
                                 tmp=args.tmp)
        peak = matmul_peak_gflops(workload.device, repeats=10)
        result, wall, profiled, faults = profile_workload(workload.fn, workload.device, args.steps, args.warmup)
        peak = max(peak, matmul_peak_gflops(workload.device, repeats=10))  # the best of two, on a busy machine
        sections.append(markdown(preset, get_preset(preset).family, args.mode, result, wall, profiled, peak,
                                 args.top, faults))
        print(sections[-1] + "\n", flush=True)
        del workload
    text = "\n\n".join(sections) + "\n"
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
