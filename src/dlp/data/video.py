"""Video frames: preparation into uint8 `.npy` arrays (CLEVRER, Traffic, any video) and the array dataset.

`prepare_*` read videos with PyAV or folders of extracted frames, keep every `frameskip`-th frame of each video
after the first `start_frame` frames, crop/resize with PIL bicubic, and stream the frames into `OUT.npy`
(uint8 [N, H, W, 3], RGB) plus a sidecar `OUT.json` that records each video's offset and frame count, so that
`FrameArrayDataset` can split by video and form pairs inside a video. Both files are written to temporary names
and renamed at the end: a failed run leaves no partial output.

Differences from the official `prepare_numpy_file` scripts (on purpose): the frame-skip phase restarts in every
video (officially it runs over the concatenated list), frames are numbered by their 1-based position in the video
(officially parsed from file names), and the video boundaries are stored instead of assumed (officially 34 frames
per CLEVRER video).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from dlp.data.common import (
    TRAFFIC_ALIGN,
    TRAFFIC_SIDE_FRACTION,
    Box,
    DatasetError,
    crop_resize,
    examples,
    frame_sort_key,
    frames_to_tensor,
    is_image_file,
    is_video_file,
    load_rgb,
    require_file,
    square_box,
)

SIDECAR_FORMAT = "dlp-frame-array"
SIDECAR_VERSION = 1


# ----------------------------------------------------------------------------------------------------------------
# crops

def _no_crop(width: int, height: int) -> Box | None:
    return None


def _center_crop(width: int, height: int) -> Box | None:
    return square_box(width, height)


def traffic_box(width: int, height: int) -> Box:
    """The official traffic crop generalised: for 512x512 frames exactly PIL box (60, 0, 480, 420); otherwise a
    square of 420/512 of the shorter side, with the spare columns split 60:32 (left:right) and the spare rows all
    below it, i.e. the official box scaled to the frame and kept at the same relative position."""
    return square_box(width, height, side_fraction=TRAFFIC_SIDE_FRACTION, align=TRAFFIC_ALIGN)


CROPS: dict[str, Callable[[int, int], Box | None]] = {"none": _no_crop, "center": _center_crop, "traffic": traffic_box}


# ----------------------------------------------------------------------------------------------------------------
# sources

@dataclass(frozen=True)
class FrameSource:
    """One video: a file decoded with PyAV, or an ordered list of frame images."""

    name: str
    video: Path | None = None
    frames: tuple[Path, ...] = ()

    @property
    def location(self) -> Path:
        return self.video if self.video is not None else self.frames[0].parent


def _frame_source(name: str, files: Sequence[Path]) -> FrameSource:
    return FrameSource(name=name, frames=tuple(sorted(files, key=frame_sort_key)))


def _split_official_clevrer(folder: Path, files: list[Path]) -> list[FrameSource]:
    """A flat folder in the official CLEVRER naming `<prefix>_<video * 1000 + frame>.png` -> one source per video
    (grouped by key // 1000); any other flat folder is a single video."""
    keys = [re.search(r"_(\d+)$", f.stem) for f in files]
    if not all(keys):
        return [_frame_source(folder.name, files)]
    groups: dict[int, list[Path]] = {}
    for f, key in zip(files, keys):
        groups.setdefault(int(key.group(1)) // 1000, []).append(f)
    return [_frame_source(f"{folder.name}:{video}", group) for video, group in sorted(groups.items())]


def find_sources(path: str | Path, *, official_clevrer_names: bool = False) -> list[FrameSource]:
    """The videos under `path`, in this order of precedence:

    1. `path` is a video file -> that video;
    2. `path` directly holds image files -> one video made of those frames (sorted by the trailing integer of the
       file name; with `official_clevrer_names`, split into videos by `key // 1000` as the official CLEVRER frames are
       named);
    3. video files anywhere below `path` (.mp4, .avi, ...) -> one source each, sorted by relative path;
    4. sub-folders of `path` holding frames -> one video per sub-folder.
    """
    path = Path(path).expanduser()
    if path.is_file():
        if not is_video_file(path):
            raise DatasetError(f"{path} is not a video file (.mp4, .avi, ...) or a folder of frames.")
        return [FrameSource(name=path.stem, video=path)]
    if not path.is_dir():
        raise DatasetError(f"video source {path} does not exist; check the path.")
    images = [p for p in path.iterdir() if p.is_file() and is_image_file(p)]
    if images:
        return _split_official_clevrer(path, images) if official_clevrer_names else [_frame_source(path.name, images)]
    videos = sorted((p for p in path.rglob("*") if p.is_file() and is_video_file(p)),
                    key=lambda p: p.relative_to(path).as_posix())
    if videos:
        return [FrameSource(name=p.stem, video=p) for p in videos]
    sources = []
    for sub in sorted(p for p in path.iterdir() if p.is_dir()):
        frames = [p for p in sub.iterdir() if p.is_file() and is_image_file(p)]
        if frames:
            sources.append(_frame_source(sub.name, frames))
    if not sources:
        raise DatasetError(f"{path} holds no videos (.mp4, .avi, ...) and no frame images; check the path.")
    return sources


def _kept_frames(source: FrameSource, keep: Callable[[int], bool]) -> Iterator[Image.Image]:
    """The RGB frames of `source` whose 0-based position passes `keep` (other frames are decoded but not converted)."""
    if source.video is None:
        for i, frame in enumerate(source.frames):
            if keep(i):
                yield load_rgb(frame)
        return
    import av  # PyAV; imported here so that `import dlp.data` does not need it

    decoded = 0
    try:
        with av.open(str(source.video)) as container:
            if not container.streams.video:
                raise DatasetError(f"{source.video} has no video stream; remove it from the input.")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                if keep(decoded):
                    yield frame.to_image().convert("RGB")
                decoded += 1
    except (av.error.FFmpegError, OSError) as exc:
        raise DatasetError(f"cannot decode video {source.video} ({exc}); replace or remove the file.") from exc
    if decoded == 0:
        raise DatasetError(f"no frame of video {source.video} could be decoded; replace or remove the file.")


# ----------------------------------------------------------------------------------------------------------------
# writing

class VideoSpan(NamedTuple):
    """Frames `offset .. offset + count - 1` of a frame array belong to video `name`."""

    name: str
    offset: int
    count: int


def sidecar_path(npy: str | Path) -> Path:
    """`OUT.npy` -> `OUT.json`."""
    return Path(npy).with_suffix(".json")


def _temp_in(directory: Path, name: str) -> tuple[int, Path]:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".partial")
    return fd, Path(tmp)


class _FrameArrayWriter:
    """Streams uint8 frames [S, S, 3] into a temporary .npy whose header is fixed up on `commit`."""

    _PLACEHOLDER_FRAMES = 10 ** 15

    def __init__(self, out: Path, size: int) -> None:
        self.out, self.frame_shape, self.count = out, (size, size, 3), 0
        fd, self.tmp = _temp_in(out.parent, out.name)
        self.file = os.fdopen(fd, "wb")
        self.header_len = self._write_header(self._PLACEHOLDER_FRAMES)

    def _write_header(self, n: int) -> int:
        self.file.seek(0)
        header = {"descr": np.dtype(np.uint8).str, "fortran_order": False, "shape": (n, *self.frame_shape)}
        np.lib.format.write_array_header_1_0(self.file, header)
        return self.file.tell()

    def append(self, frame: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(frame, dtype=np.uint8).tobytes())
        self.count += 1

    def commit(self) -> Path:
        """Write the real header and return the temporary file (renamed by the caller)."""
        self.file.flush()
        if self._write_header(self.count) != self.header_len:  # pragma: no cover - both headers are 128 bytes
            raise RuntimeError("internal error: the .npy header changed size")
        self.file.close()
        return self.tmp

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def _prepare(path: str | Path, out_npy: str | Path, *, kind: str, image_size: int, frameskip: int, start_frame: int,
             crop: str, official_clevrer_names: bool = False, progress: bool = True) -> list[VideoSpan]:
    """Shared body of the `prepare_*` functions (see the module docstring)."""
    out = Path(out_npy).expanduser()
    if out.suffix != ".npy":
        raise DatasetError(f"the output file must end in .npy, got {out}.")
    checks = (("image_size", image_size, 1), ("frameskip", frameskip, 1), ("start_frame", start_frame, 0))
    for name, value, low in checks:
        if int(value) != value or value < low:
            raise DatasetError(f"{name} must be an integer >= {low}, got {value}.")
    if crop not in CROPS:
        raise DatasetError(f"unknown crop {crop!r}; choose one of {', '.join(CROPS)}.")
    sources = find_sources(path, official_clevrer_names=official_clevrer_names)
    box_of = CROPS[crop]

    def keep(i: int) -> bool:  # 0-based position i = 1-based frame number i + 1 > start_frame, phase per video
        return i >= start_frame and (i - start_frame) % frameskip == 0

    out.parent.mkdir(parents=True, exist_ok=True)
    writer = _FrameArrayWriter(out, image_size)
    spans, empty = [], []
    try:
        bar = tqdm(sources, desc=f"prepare {kind}", unit="video", disable=None if progress else True)
        for source in bar:
            start = writer.count
            for img in _kept_frames(source, keep):
                resized = crop_resize(img, box_of(*img.size), image_size, Image.Resampling.BICUBIC)
                writer.append(np.asarray(resized, dtype=np.uint8))
            if writer.count == start:
                empty.append(source.name)
            else:
                spans.append(VideoSpan(source.name, start, writer.count - start))
            bar.set_postfix(frames=writer.count)
        if not spans:
            raise DatasetError(
                f"no frames were kept from {path} (start_frame={start_frame}); the videos are shorter than "
                "start_frame, lower it."
            )
        npy_tmp = writer.commit()
    except BaseException:
        writer.abort()
        raise
    if empty:
        warnings.warn(f"{len(empty)} video(s) have no frame after start_frame={start_frame} and were left out: "
                      f"{examples(empty)}", stacklevel=3)
    sidecar = {
        "format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, "kind": kind, "source": str(Path(path).resolve()),
        "num_frames": writer.count, "image_size": image_size, "frameskip": frameskip, "start_frame": start_frame,
        "crop": crop, "videos": [span._asdict() for span in spans],
    }
    json_tmp: Path | None = None
    try:
        fd, json_tmp = _temp_in(out.parent, sidecar_path(out).name)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(sidecar, f, indent=1)
        os.replace(npy_tmp, out)
        os.replace(json_tmp, sidecar_path(out))
    except BaseException:
        for tmp in (npy_tmp, json_tmp):
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        raise
    return spans


def prepare_clevrer(video_dir_or_frames: str | Path, out_npy: str | Path, image_size: int = 128, frameskip: int = 3,
                    start_frame: int = 26, *, progress: bool = True) -> list[VideoSpan]:
    """Official CLEVRER videos (`video_XXXXX.mp4`, found recursively) or extracted frames -> `out_npy` + sidecar.

    Per video, frames numbered 1..T are kept when number > `start_frame` and then every `frameskip`-th
    (128-frame videos with the defaults: frames 27, 30, ..., 126 -> 34 frames). Full frames are resized to
    `image_size x image_size` (PIL bicubic; the 480x320 frames are squashed, as officially). Frame folders: one
    sub-folder per video, or one flat folder (official naming `<prefix>_<video * 1000 + frame>.png` is split into
    videos). Returns the per-video spans written to the sidecar.
    """
    return _prepare(video_dir_or_frames, out_npy, kind="clevrer", image_size=image_size, frameskip=frameskip,
                    start_frame=start_frame, crop="none", official_clevrer_names=True, progress=progress)


def prepare_traffic(video_or_frame_dir: str | Path, out_npy: str | Path, image_size: int = 128, frameskip: int = 3,
                    *, progress: bool = True) -> list[VideoSpan]:
    """Traffic videos (.avi/.mp4 via PyAV) or frame folders (`0.png, 1.png, ...`, sorted by the integer stem) ->
    `out_npy` + sidecar. Every `frameskip`-th frame from the first, cropped with `traffic_box` (the official
    (60, 0, 480, 420) on 512x512 frames, scaled for other sizes), resized (bicubic) to `image_size`."""
    return _prepare(video_or_frame_dir, out_npy, kind="traffic", image_size=image_size, frameskip=frameskip,
                    start_frame=0, crop="traffic", progress=progress)


def prepare_video(video_or_dir: str | Path, out_npy: str | Path, image_size: int, frameskip: int = 1,
                  crop: str = "center", *, start_frame: int = 0, progress: bool = True) -> list[VideoSpan]:
    """Any videos or frame folders (see `find_sources`) -> `out_npy` + sidecar; `crop` is 'center' (centre square),
    'none' (squash the full frame) or 'traffic' (see `traffic_box`)."""
    return _prepare(video_or_dir, out_npy, kind="video", image_size=image_size, frameskip=frameskip,
                    start_frame=start_frame, crop=crop, progress=progress)


# ----------------------------------------------------------------------------------------------------------------
# dataset

def read_sidecar(npy: str | Path, num_frames: int) -> list[VideoSpan] | None:
    """The video spans stored beside `npy`, or None if there is no sidecar; checked against the array length."""
    path = sidecar_path(npy)
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        spans = [VideoSpan(str(v["name"]), int(v["offset"]), int(v["count"])) for v in data["videos"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"cannot read the sidecar {path} ({exc}); delete it or re-run `dlp prepare`.") from exc
    expected = 0
    for span in spans:
        if span.offset != expected or span.count < 1:
            raise DatasetError(f"the sidecar {path} has inconsistent video offsets; re-run `dlp prepare`.")
        expected += span.count
    if expected != num_frames:
        raise DatasetError(
            f"the sidecar {path} describes {expected} frames but {Path(npy).name} holds {num_frames}; "
            "re-run `dlp prepare` (or delete the sidecar to use a temporal split)."
        )
    return spans


class FrameArrayDataset(torch.utils.data.Dataset):
    """Frames of a uint8 [N, H, W, 3] `.npy` (memory-mapped), as written by `prepare_*` or the official scripts.

    Args:
        npy: the frame array.
        split: None for all frames; 'train' / 'valid': with a sidecar (2+ videos) the last `valid_fraction` of the
            videos (at least one) are 'valid'; otherwise a temporal split, the first `int((1 - valid_fraction) * N)`
            frames train (the official Traffic 90/10 split).
        mode: 'single' -> {"image", "index", "video"}; 'pairs' -> consecutive frames of one video: "image" = frame t,
            "image_prior" = frame t - 1 (+ "index", "index_prior", "video"). Pairs never cross a video or split
            boundary, so a video of T frames gives T - 1 pairs.
        image_size: resize frames (bilinear, antialiased) to this side if it differs from the stored one.
        warper: optional TPS warper for `image_size` pixels ('single' mode only); a pair warper gives "image" = light
            and "image_prior" = strong warp (the official 'tps' mode).

    Indices ("index", "index_prior") are rows of the array; "video" is the video's position in the sidecar (0 without
    one).
    """

    def __init__(self, npy: str | Path, split: str | None = None, mode: str = "single", valid_fraction: float = 0.1,
                 *, image_size: int | None = None, warper: Any = None) -> None:
        self.path = require_file(npy, "frame array")
        if split not in (None, "train", "valid"):
            raise DatasetError(f"unknown split {split!r} for a frame array; use 'train', 'valid' or None.")
        if mode not in ("single", "pairs"):
            raise DatasetError(f"unknown mode {mode!r}; use 'single' or 'pairs'.")
        if not 0 < valid_fraction < 1:
            raise DatasetError(f"valid_fraction must be between 0 and 1, got {valid_fraction}.")
        if warper is not None and mode != "single":
            raise DatasetError("a TPS warper works on single frames; use mode='single' with a warper.")
        frames = self._open()
        n, stored = frames.shape[0], frames.shape[1]
        self.split, self.mode, self.warper = split, mode, warper
        self.stored_size = stored
        self.image_size = int(image_size or stored)
        if warper is not None and (warper.H, warper.W) != (self.image_size, self.image_size):
            raise DatasetError(f"the warper is built for {warper.H}x{warper.W} but the frames are "
                               f"{self.image_size}x{self.image_size}; build it for the frame size.")
        if n == 0:
            raise DatasetError(f"{self.path} holds no frames; re-run `dlp prepare`.")
        spans = read_sidecar(self.path, n)
        self.videos = spans or [VideoSpan(self.path.stem, 0, n)]
        segments = self._split_segments(split, valid_fraction)  # [(video, start, stop)]
        self._segments = segments
        video_ids, rows = [], []
        first = 0 if mode == "single" else 1
        for video, start, stop in segments:
            rows.append(np.arange(start + first, stop))
            video_ids.append(np.full(max(0, stop - start - first), video))
        self._rows = np.concatenate(rows).astype(np.int64)
        self._video_of_row = np.concatenate(video_ids).astype(np.int64)
        if len(self._rows) == 0:
            raise DatasetError(f"split {split!r} of {self.path} has no {'frames' if first == 0 else 'frame pairs'}; "
                               "prepare more frames or use split=None.")

    def _open(self) -> np.ndarray:
        try:
            frames = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            # (numpy's own message for a damaged file suggests allow_pickle, i.e. loading it unsafely: not shown)
            raise DatasetError(f"{self.path} is not a readable .npy frame array (damaged, truncated or another kind "
                               f"of file: {type(exc).__name__}); re-create it with `dlp prepare`.") from exc
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3 or frames.shape[1] != frames.shape[2]:
            raise DatasetError(
                f"{self.path} holds {frames.dtype} {list(frames.shape)}; expected uint8 RGB frames [N, H, W, 3] with "
                "H = W, as written by `dlp prepare`."
            )
        self._frames = frames
        return frames

    def _split_segments(self, split: str | None, valid_fraction: float) -> list[tuple[int, int, int]]:
        segments = [(i, v.offset, v.offset + v.count) for i, v in enumerate(self.videos)]
        if split is None:
            return segments
        if len(segments) >= 2:
            n_train = min(max(int((1 - valid_fraction) * len(segments) + 1e-9), 1), len(segments) - 1)
            return segments[:n_train] if split == "train" else segments[n_train:]
        _, start, stop = segments[0]
        cut = start + min(max(int((1 - valid_fraction) * (stop - start) + 1e-9), 1), stop - start - 1)
        return [(0, start, cut)] if split == "train" else [(0, cut, stop)]

    def __getstate__(self) -> dict[str, Any]:  # workers re-open the memory map instead of pickling the frames
        state = self.__dict__.copy()
        state["_frames"] = None
        return state

    def __len__(self) -> int:
        return len(self._rows)

    def _frame(self, row: int) -> torch.Tensor:
        if self._frames is None:
            self._open()
        image = frames_to_tensor(self._frames[row])
        if self.image_size != self.stored_size:
            image = F.interpolate(image[None], size=(self.image_size, self.image_size), mode="bilinear",
                                  align_corners=False, antialias=True)[0].clamp_(0, 1)
        return image

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} items")
        row = int(self._rows[index])
        item: dict[str, Any] = {"index": row, "video": int(self._video_of_row[index])}
        image = self._frame(row)
        if self.mode == "pairs":
            item["image_prior"] = self._frame(row - 1)
            item["index_prior"] = row - 1
        elif self.warper is not None and getattr(self.warper, "returns_pairs", False):
            out = self.warper(image)
            image, item["image_prior"] = out.image_light.clamp_(0, 1), out.image_strong.clamp_(0, 1)
        elif self.warper is not None:
            image = self.warper(image).image.clamp_(0, 1)
        item["image"] = image
        return item
