"""`dlp prepare {clevrer,traffic,video} SRC OUT.npy`: turn videos or frame folders into frame arrays.

`configure_parser(subparsers)` adds the sub-command to the `dlp` parser; each leaf parser sets `func(args) -> int`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dlp.data.video import VideoSpan, prepare_clevrer, prepare_traffic, prepare_video, sidecar_path


def _report(out: str, spans: list[VideoSpan]) -> int:
    total = sum(span.count for span in spans)
    print(f"wrote {total} frames from {len(spans)} video(s) to {out} (video offsets in {sidecar_path(out)})")
    return 0


def _run_clevrer(args: argparse.Namespace) -> int:
    spans = prepare_clevrer(args.source, args.out, image_size=args.image_size, frameskip=args.frameskip,
                            start_frame=args.start_frame, progress=not args.no_progress)
    return _report(args.out, spans)


def _run_traffic(args: argparse.Namespace) -> int:
    spans = prepare_traffic(args.source, args.out, image_size=args.image_size, frameskip=args.frameskip,
                            progress=not args.no_progress)
    return _report(args.out, spans)


def _run_video(args: argparse.Namespace) -> int:
    spans = prepare_video(args.source, args.out, image_size=args.image_size, frameskip=args.frameskip,
                          crop=args.crop, start_frame=args.start_frame, progress=not args.no_progress)
    return _report(args.out, spans)


def _add_common(parser: argparse.ArgumentParser, source_help: str, frameskip: int) -> None:
    parser.add_argument("source", type=Path, metavar="SRC", help=source_help)
    parser.add_argument("out", metavar="OUT.npy", help="output uint8 [N, H, W, 3] array; OUT.json is written beside it")
    parser.add_argument("--image-size", type=int, default=128, help="output side in pixels (default: 128)")
    parser.add_argument("--frameskip", type=int, default=frameskip,
                        help=f"keep every n-th frame of each video (default: {frameskip})")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def configure_parser(subparsers: argparse._SubParsersAction, argv: list[str] | None = None) -> argparse.ArgumentParser:
    """Add `prepare` and its `clevrer` / `traffic` / `video` sub-commands to `subparsers`."""
    parser = subparsers.add_parser(
        "prepare", help="turn videos or frame folders into .npy frame arrays for training",
        description="Decode videos (PyAV) or read frame folders, crop/resize the frames and write a uint8 "
                    "[N, H, W, 3] .npy plus a JSON sidecar with the per-video frame offsets.",
    )
    kinds = parser.add_subparsers(dest="prepare_kind", metavar="{clevrer,traffic,video}", required=True)

    clevrer = kinds.add_parser(
        "clevrer", help="official CLEVRER videos (video_XXXXX.mp4) or extracted frames",
        description="Per video keep the frames numbered > --start-frame, then every --frameskip-th, and squash "
                    "each full frame to --image-size (official CLEVRER preprocessing, phase restarted per video).",
    )
    _add_common(clevrer, "folder of CLEVRER videos (searched recursively) or of extracted frames", frameskip=3)
    clevrer.add_argument("--start-frame", type=int, default=26,
                         help="drop the first n frames of each video (default: 26)")
    clevrer.set_defaults(func=_run_clevrer)

    traffic = kinds.add_parser(
        "traffic", help="traffic-camera videos (.avi/.mp4) or a frame folder (0.png, 1.png, ...)",
        description="Keep every --frameskip-th frame, crop the official traffic box ((60, 0, 480, 420) on 512x512 "
                    "frames, scaled for other sizes) and resize to --image-size.",
    )
    _add_common(traffic, "a video file, a folder of videos or a folder of frames", frameskip=3)
    traffic.set_defaults(func=_run_traffic)

    video = kinds.add_parser("video", help="any videos or frame folders",
                             description="Generic preparation with a choice of crop.")
    _add_common(video, "a video file, a folder of videos, a folder of frames or of frame folders", frameskip=1)
    video.add_argument("--crop", choices=("center", "none", "traffic"), default="center",
                       help="centre square crop, squash the full frame, or the traffic box (default: center)")
    video.add_argument("--start-frame", type=int, default=0, help="drop the first n frames of each video (default: 0)")
    video.set_defaults(func=_run_video)
    return parser
