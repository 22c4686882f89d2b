"""`dlp eval CHECKPOINT_OR_RUN_DIR`: evaluate a model with the metrics that fit its dataset (`dlp.evaluation.runner`)."""

from __future__ import annotations

import argparse
from typing import Any

from dlp.evaluation.runner import METRICS

DESCRIPTION = """Evaluate a checkpoint (or a run directory of `dlp train`: its best.pt, else last.pt) with the metrics
that fit its dataset:

* datasets with landmarks (CelebA / MAFL / landmark folders) -> keypoint linear regression (`regression`);
* datasets with ground-truth objects (random shapes) -> object discovery (`discovery`) and the validation ELBO;
* anything else (CLEVRER, Traffic, image folders) -> the validation ELBO (`elbo`);
* video models (DDLP) -> video prediction (`video`: PSNR, SSIM, LPIPS of the rollout per future step, beside the
  last conditioning frame repeated and the model's reconstruction) and the ELBO on held-out clips, plus ball
  tracking (`tracking`) on bouncing balls. LPIPS reads the ImageNet VGG16 ($DLP_VGG_WEIGHTS or --vgg-weights, the
  torch hub cache, a download) and the LPIPS v0.1 vgg.pth (--lpips-weights, $DLP_LPIPS_WEIGHTS, the caches, a
  download); without them it is skipped with a warning.

The dataset is the one the checkpoint was trained on; a checkpoint that records none (converted official weights)
takes -d/--dataset and --data-root."""


def configure_parser(subparsers: Any, argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("eval", help="evaluate a checkpoint or run directory", description=DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", metavar="CHECKPOINT_OR_RUN_DIR",
                        help="a checkpoint written by `dlp train` or `dlp convert-official`, or a run directory")
    parser.add_argument("-d", "--dataset", default=None,
                        help="dataset to evaluate on (default: the checkpoint's training dataset)")
    parser.add_argument("--data-root", "--data_root", default=None,
                        help="dataset location (default: the one recorded in the checkpoint)")
    parser.add_argument("--metrics", nargs="+", choices=METRICS, default=None,
                        help="metrics to compute (default: chosen by the dataset)")
    parser.add_argument("--out", default=None,
                        help="write the results as JSON to this file (and the figure next to it)")
    parser.add_argument("--topk", type=int, default=10, help="number of confident particles for the top-k metrics")
    parser.add_argument("--device", default="auto", help="torch device: auto (CUDA when available), cpu, cuda, ...")
    parser.add_argument("--batch-size", "--batch_size", type=int, default=64, help="evaluation batch size")
    parser.add_argument("--num-images", "--num_images", type=int, default=None,
                        help="cap on the images per split (generated data: number of images, default 1000)")
    parser.add_argument("--cond-frames", "--cond_frames", type=int, default=None,
                        help="video: conditioning frames of the rollouts (default: the run's cond_steps)")
    parser.add_argument("--horizon", type=int, default=None,
                        help="video: predicted frames of the rollouts (default: the run's rollout_horizon)")
    parser.add_argument("--lpips-weights", "--lpips_weights", default=None,
                        help="video: the LPIPS v0.1 vgg.pth (default: $DLP_LPIPS_WEIGHTS, the caches, a download)")
    parser.add_argument("--vgg-weights", "--vgg_weights", default=None,
                        help="ImageNet VGG16 weights for LPIPS and perceptual losses (default: $DLP_VGG_WEIGHTS, the "
                             "torch hub cache, a download)")
    parser.add_argument("--no-lpips", "--no_lpips", dest="lpips", action="store_false",
                        help="video: skip LPIPS (PSNR and SSIM only)")
    parser.add_argument("--no-untrained-baseline", "--no_untrained_baseline", dest="untrained_baseline",
                        action="store_false", help="skip the regression baseline from a freshly initialised model")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import torch

    from dlp.evaluation.runner import evaluate_checkpoint, format_table

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type == "cpu":
        from dlp.engine.allocator import retain_freed_memory

        retain_freed_memory()
    if args.dataset is not None:
        from dlp.data.registry import dataset_info

        dataset_info(args.dataset)  # an unknown name fails here, naming the valid ones
    results = evaluate_checkpoint(
        args.checkpoint, dataset=args.dataset, data_root=args.data_root, metrics=args.metrics, out=args.out,
        topk=args.topk, device=device, batch_size=args.batch_size, num_images=args.num_images,
        untrained_baseline=args.untrained_baseline, cond_frames=args.cond_frames, horizon=args.horizon,
        video_quality=("psnr", "ssim", "lpips") if args.lpips else ("psnr", "ssim"),
        lpips_weights=args.lpips_weights, vgg_weights=args.vgg_weights,
    )
    print(format_table(results))
    if args.out:
        print(f"results written to {args.out}")
    return 0
