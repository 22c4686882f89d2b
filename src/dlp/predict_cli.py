"""`dlp predict`: roll a video model (DDLP) out from the first frames of a clip and write the prediction as a video.

    dlp predict runs/clevrer --video video_10000.mp4 --cond-frames 6 --horizon 10 -o pred        # pred.gif, pred.mp4
    dlp predict model.pt --data-root clevrer_valid.npy --index 3 -o out/pred.mp4 --format mp4
    dlp predict model.pt --data-root obj3d/ -d obj3d --split test --index 0 --sample --seed 1 -o pred

Writes OUT.gif and OUT.mp4 (--format picks; a .gif or .mp4 ending of OUT is dropped first): the ground truth beside
the prediction, the prediction framed green on the conditioning frames (reconstructions of the frames the model was
given) and red on the predicted ones, a timeline below, and the trajectory of every switched-on particle (obj_on >=
--threshold) drawn on the prediction. OUT.json holds the trajectories (positions in [-1, 1], pixels, obj_on).

--cond-frames and --horizon default to the rollout of the checkpoint's training config (cond_steps,
rollout_horizon). The clip must have at least cond-frames + horizon frames.

A --video is pre-processed like the model's training data: the crop of the training dataset (-d overrides it: the whole
frame for clevrer, the traffic box for traffic, a centre square otherwise) and the frame skip of `dlp prepare` (as
recorded beside the training array, else 3 for clevrer and traffic, 1 otherwise); --crop, --frameskip and
--start-frame override them.
A --data-root is read as `build_dataset` reads it (a prepared .npy, a folder holding one, or episode folders) for
the checkpoint's training dataset (or -d); --index N is the N-th clip (0-based) of --split: the held-out split by
default, one clip per video (its first frames); 'train' and 'all' count every window of every video.
With neither, the clip comes from the training data recorded in the checkpoint if it is still there, or from a
generated dataset (-d balls).
"""

from __future__ import annotations

import argparse
from pathlib import Path

FORMATS = ("gif", "mp4")
SPLITS = ("heldout", "train", "valid", "test", "all")


def configure_parser(subparsers, argv: list[str] | None = None) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "predict", help="video prediction with a DDLP checkpoint, written as GIF/MP4 with the particle trajectories",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a DDLP checkpoint (.pt) or a run directory of dlp train")
    src = p.add_argument_group("clip (--video or --data-root; default: the recorded training data)")
    src.add_argument("--video", metavar="FILE", help="a video file (.mp4, .avi, ...; PyAV) or a folder of frames")
    src.add_argument("--data-root", metavar="DIR", help="a prepared .npy frame array, a folder holding one, or "
                     "episode frame folders (as dlp train reads them)")
    src.add_argument("--index", type=int, default=None, metavar="N", help="the clip of --data-root, 0-based "
                     "(default 0)")
    src.add_argument("-d", "--dataset", metavar="NAME", help="the dataset of --data-root, and whose pre-processing "
                     "a --video gets (default: the checkpoint's training dataset)")
    src.add_argument("--split", choices=SPLITS, default="heldout", help="split of --data-root (default: the "
                     "dataset's held-out split; all = every video)")
    prep = p.add_argument_group("pre-processing of --video")
    prep.add_argument("--crop", choices=("none", "center", "traffic"), default=None,
                      help="none (squash the whole frame), center (centre square), traffic (the traffic box)")
    prep.add_argument("--frameskip", type=int, default=None, metavar="N", help="keep every N-th frame")
    prep.add_argument("--start-frame", type=int, default=None, metavar="N", help="skip the first N frames (default 0)")
    roll = p.add_argument_group("rollout")
    roll.add_argument("--cond-frames", type=int, default=None, metavar="C",
                      help="conditioning frames (default: the checkpoint's cond_steps)")
    roll.add_argument("--horizon", type=int, default=None, metavar="H",
                      help="predicted frames (default: the checkpoint's rollout_horizon)")
    roll.add_argument("--sample", action="store_true", help="sample the encoder and the dynamics instead of taking "
                      "their means")
    roll.add_argument("--seed", type=int, default=None, help="random seed for --sample")
    out = p.add_argument_group("output")
    out.add_argument("-o", "--output", required=True, metavar="OUT", help="output path without extension (OUT.gif, "
                     "OUT.mp4 and OUT.json are written)")
    out.add_argument("--format", nargs="+", choices=FORMATS, default=list(FORMATS), help="video formats to write "
                     "(default: gif mp4)")
    out.add_argument("--fps", type=float, default=8.0, help="frames per second (default 8)")
    out.add_argument("--scale", type=int, default=None, metavar="N", help="integer upscaling of the frames "
                     "(default: to at least 256 px)")
    out.add_argument("--no-trajectories", action="store_true", help="do not draw the particles' trajectories")
    out.add_argument("--threshold", type=float, default=0.5, metavar="T",
                     help="draw particles whose obj_on is at least T (default 0.5)")
    out.add_argument("--trail", type=int, default=None, metavar="N",
                     help="draw only the last N frames of each trajectory (default: all)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where the model runs")
    p.set_defaults(func=run)
    return p


def output_stem(output: str) -> Path:
    """OUT, OUT.gif or OUT.mp4 -> OUT (the files are OUT.gif, OUT.mp4, OUT.json)."""
    from dlp.video_io import VIDEO_SUFFIXES

    path = Path(output).expanduser()
    return path.with_suffix("") if path.suffix.lower() in VIDEO_SUFFIXES else path


def _with_extension(stem: Path, extension: str) -> Path:
    return stem.with_name(f"{stem.name}.{extension}")  # not with_suffix: "pred.v2" keeps its ".v2"


def run(args: argparse.Namespace) -> int:
    import torch

    from dlp.checkpoint import model_from_checkpoint, read_checkpoint
    from dlp.predict import (
        PredictError,
        is_video_model,
        load_clip,
        predict,
        resolve_device,
        rollout_lengths,
    )

    # every check that needs no model comes first: nothing is computed for a run that cannot be written
    stem = output_stem(args.output)
    if stem.name in ("", ".") or stem.is_dir():
        raise PredictError(f"-o {args.output} names a folder; give a file name such as {Path(args.output) / 'pred'}.")
    if args.video is not None and args.data_root is not None:
        raise PredictError("--video and --data-root both give a clip; pass one of them.")
    for name, path in (("--video", args.video), ("--data-root", args.data_root)):
        if path is not None and not Path(path).expanduser().exists():
            raise PredictError(f"{name} {path} does not exist; check the path.")
    if args.video is not None and args.index is not None:
        raise PredictError("--index picks a clip of --data-root; a --video is read from its start (see --start-frame).")
    if args.fps <= 0 or (args.scale is not None and args.scale < 1) or (args.trail is not None and args.trail < 0):
        raise PredictError(f"--fps must be positive, --scale at least 1 and --trail at least 0, got {args.fps}, "
                           f"{args.scale} and {args.trail}.")

    device = resolve_device(args.device)
    payload = read_checkpoint(args.checkpoint, map_location=device)
    model = model_from_checkpoint(payload, device, source=args.checkpoint)
    if not is_video_model(model):
        raise PredictError(f"dlp predict needs a video model (DDLP), but {args.checkpoint} holds a "
                           f"{payload.get('arch')!r} model of single images.")
    train_config = payload.get("train_config") or {}
    cond_frames, horizon = rollout_lengths(train_config, args.cond_frames, args.horizon)
    clip = load_clip(image_size=model.config.image_size, num_frames=cond_frames + horizon, video=args.video,
                     data_root=args.data_root, dataset=args.dataset, index=args.index or 0,
                     split=None if args.split == "all" else args.split, crop=args.crop, frameskip=args.frameskip,
                     start_frame=args.start_frame, train_config=train_config)

    if args.seed is not None:
        torch.manual_seed(args.seed)
    prediction = predict(model, clip.frames, cond_frames, horizon, deterministic=not args.sample)
    frames = prediction.video(0, trajectories=not args.no_trajectories, threshold=args.threshold, scale=args.scale,
                              trail=args.trail)

    from dlp.video_io import write_video

    written = [write_video(frames, _with_extension(stem, fmt), args.fps) for fmt in dict.fromkeys(args.format)]
    trajectories = prediction.save_json(_with_extension(stem, "json"))
    height, width = frames.shape[1:3]
    print(f"clip: {clip.source}\n"
          f"prediction: {', '.join(map(str, written))} ({prediction.num_frames} frames: {cond_frames} conditioning + "
          f"{horizon} predicted, {width}x{height} px)\n"
          f"trajectories: {trajectories}")
    return 0
