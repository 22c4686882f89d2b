"""Time a quick-start run and evaluate it as a user would: `dlp train ...`, then `dlp eval` of its checkpoints.

    python benchmarks/quick_start.py --preset dlpv2-shapes-quick                 # the DLPv2 quick start
    python benchmarks/quick_start.py --preset shapes-quick                       # the DLP v1 one
    python benchmarks/quick_start.py --preset dlpv2-shapes-quick --lr 5e-4       # any `dlp train` flag

Every argument goes to `dlp train` (run directory: `--output-dir`, default runs/quick-start). The wall time of the
whole training run (evaluations during training included) is measured; then best.pt and last.pt are evaluated with
the dataset's default metrics on the held-out split (generated data: 1000 images, `--eval-images`). Prints one JSON
summary and writes it to `<run>/quick_start.json`. Run it alone on the machine: two jobs on 2 cores ruin timings.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path


def _rounded(value):
    """Metrics are numbers or, for video models, lists over the predicted steps."""
    return [round(v, 4) for v in value] if isinstance(value, list) else round(value, 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     add_help=False)
    parser.add_argument("--output-dir", default="runs/quick-start")
    parser.add_argument("--name", default=None)
    parser.add_argument("--eval-images", type=int, default=1000)
    parser.add_argument("--help", "-h", action="store_true")
    args, train_args = parser.parse_known_args()
    if args.help:
        print(__doc__)
        return

    import torch

    from dlp.cli import main as dlp_main
    from dlp.evaluation.runner import evaluate_checkpoint

    name = args.name or f"quick-{time.strftime('%Y%m%d-%H%M%S')}"
    run = Path(args.output_dir) / name
    start = time.perf_counter()
    code = dlp_main(["train", *train_args, "--output-dir", args.output_dir, "--name", name, "--no-progress"])
    minutes = (time.perf_counter() - start) / 60
    if code != 0:
        sys.exit(code)
    summary = {"command": "dlp train " + " ".join(train_args), "train_minutes": round(minutes, 2),
               "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
               "torch": torch.__version__}
    for which in ("best", "last"):
        checkpoint = run / "checkpoints" / f"{which}.pt"
        if checkpoint.is_file():
            results = evaluate_checkpoint(checkpoint, num_images=args.eval_images, untrained_baseline=False)
            summary[which] = {"step": int(torch.load(checkpoint, weights_only=True)["step"]),
                              **{k: _rounded(v) for k, v in results["metrics"].items()}}
    text = json.dumps(summary, indent=1)
    (run / "quick_start.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
