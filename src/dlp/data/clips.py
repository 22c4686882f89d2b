"""Video clips for DDLP (Daniel & Tamar, TMLR 2024): T consecutive frames of one video, never across two videos.

Two sources, one windowing rule (the official `datasets/*_ds.py` one, behaviour §1):

* `FrameArrayClips` reads a prepared uint8 frame array (`dlp prepare clevrer|traffic|video`, memory-mapped, split by
  whole videos through `FrameArrayDataset`).
* `EpisodeFolderClips` reads the official frame-folder layouts of OBJ3D, CLEVRER and PHYRE
  (`{root}/{split}/{episode}/{frames}.png`), one PNG per frame, lazily.

Windowing: the training split indexes every window of T frames inside every episode (video), i.e. an episode of L
frames gives L - T + 1 clips, `index -> (episode, offset)`; the held-out splits ('valid'/'val', 'test') give one clip
per episode, its first T frames (the official code returns whole episodes and the evaluation takes the first frames).
With `clip_length=None` every episode is one clip of all its frames, in any split (clips then differ in length:
batch them with batch_size 1 or only equal-length episodes). Episodes shorter than T are skipped; if none is long
enough a `DatasetError` says how long the episodes are. `every_window` overrides the per-split default.

Items (dicts of tensors and ints, so `torch.utils.data.default_collate` batches them):

* ``video``   [T, 3, S, S] float32 in [0, 1]
* ``index``   int: the clip index
* ``episode`` int: the episode (video) the clip comes from (position in the sidecar / in the sorted episode folders)
* ``start``   int: the 0-based frame of the episode where the clip starts
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from dlp.data.common import DatasetError, DatasetNotFoundError, frame_sort_key, frames_to_tensor
from dlp.data.video import FrameArrayDataset

__all__ = ["EPISODE_LAYOUTS", "EpisodeFolderClips", "EpisodeLayout", "FrameArrayClips"]

_SPLIT_ALIASES = {"train": "train", "valid": "valid", "val": "valid", "test": "test"}


def _normalise_split(split: str | None, allowed: tuple[str | None, ...]) -> str | None:
    canonical = _SPLIT_ALIASES.get(split, split) if split is not None else None
    if canonical not in allowed:
        names = ", ".join(repr(s) for s in allowed if s is not None)
        raise DatasetError(f"unknown split {split!r}; use one of {names}" + (" or None." if None in allowed else "."))
    return canonical


class _ClipIndex(Dataset):
    """Base class: the clip table (episode, start, length) of a list of episode lengths, and the item format.

    Subclasses set `split` and `clip_length` (checked with `_check_clip_length`), call `_build_index` with the
    episode lengths, and implement `_read(episode, start, stop) -> [stop - start, 3, S, S]`.
    """

    split: str | None
    clip_length: int | None
    image_size: int

    @staticmethod
    def _check_clip_length(clip_length: int | None) -> int | None:
        if clip_length is None:
            return None
        if isinstance(clip_length, bool) or int(clip_length) != clip_length or clip_length < 1:
            raise DatasetError(f"clip_length must be a positive integer or None, got {clip_length}.")
        return int(clip_length)

    def _build_index(self, lengths: list[int], every_window: bool | None, what: str, noun: str = "episode") -> None:
        if every_window is None:
            every_window = self.split in (None, "train")
        self.every_window = bool(every_window)
        lengths_arr = np.asarray(lengths, dtype=np.int64)
        t = self.clip_length
        if t is None:
            counts = np.ones_like(lengths_arr)
        elif self.every_window:
            counts = np.maximum(lengths_arr - t + 1, 0)
        else:
            counts = (lengths_arr >= t).astype(np.int64)
        if counts.sum() == 0:
            lo, hi = (int(lengths_arr.min()), int(lengths_arr.max())) if len(lengths_arr) else (0, 0)
            span = f"{lo} frames" if lo == hi else f"{lo} to {hi} frames"
            raise DatasetError(f"no {noun} of {what} is long enough for clips of {t} frames (its {len(lengths)} "
                               f"{noun}(s) have {span}); lower clip_length to at most {hi}.")
        self._lengths = lengths_arr
        self._clip_episode = np.repeat(np.arange(len(lengths_arr)), counts)  # [num_clips]
        first = np.cumsum(counts) - counts  # first clip of every episode
        self._clip_start = np.arange(len(self._clip_episode)) - np.repeat(first, counts)  # offset inside the episode
        if not self.every_window:
            self._clip_start[:] = 0

    def __len__(self) -> int:
        return len(self._clip_episode)

    @property
    def num_episodes_used(self) -> int:
        """Episodes that contribute at least one clip (the others are shorter than T)."""
        return len(np.unique(self._clip_episode))

    def clip_span(self, index: int) -> tuple[int, int, int]:
        """(episode, start, stop) of clip `index`: frames start..stop-1 of that episode."""
        episode, start = int(self._clip_episode[index]), int(self._clip_start[index])
        length = int(self._lengths[episode]) if self.clip_length is None else int(self.clip_length)
        return episode, start, start + length

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a clip dataset of {len(self)} clips")
        episode, start, stop = self.clip_span(index)
        return {"video": self._read(episode, start, stop), "index": index, "episode": episode, "start": start}

    def _read(self, episode: int, start: int, stop: int) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------------------------
# prepared frame arrays

class FrameArrayClips(_ClipIndex):
    """Clips of T consecutive frames of one video of a prepared frame array (`dlp prepare ...`; see the module
    docstring for the windowing rule and the item keys).

    The array is read through a `FrameArrayDataset` (memory map, sidecar video spans, resizing, split by whole
    videos): with a sidecar of 2+ videos the last `valid_fraction` of the videos (at least one) are held out. An array
    of one video (or one without a sidecar, e.g. Traffic) is split in time (first 90 % train); its held-out stretch is
    then cut into consecutive, non-overlapping clips of T frames (the official Traffic evaluation chunks), or is one
    clip with `clip_length=None`.

    Args:
        npy: the prepared `.npy` (uint8 [N, S, S, 3]) with its sidecar `.json`.
        split: 'train', 'valid' (or 'val'), 'test' (a frame array has a two-way split: 'test' reads the held-out
            videos too) or None (every video, every window).
        clip_length: T, or None for whole videos.
        image_size: frame side (bilinear, antialiased resize if it differs from the stored one); None keeps it.
        valid_fraction: the held-out fraction (see `FrameArrayDataset`).
        every_window: True = every window, False = one clip per video (default: True for 'train' and None).
    """

    def __init__(self, npy: str | Path, split: str | None = "train", clip_length: int | None = 20,
                 image_size: int | None = None, *, valid_fraction: float = 0.1,
                 every_window: bool | None = None) -> None:
        self.split = _normalise_split(split, ("train", "valid", "test", None))
        self.clip_length = clip_length = self._check_clip_length(clip_length)
        inner = {"train": "train", "valid": "valid", "test": "valid", None: None}[self.split]
        self.frames = FrameArrayDataset(npy, split=inner, mode="single", valid_fraction=valid_fraction,
                                        image_size=image_size)
        self.path = self.frames.path
        self.image_size = self.frames.image_size
        # (video position in the sidecar, first row, stop row) of every stretch of this split
        segments = [(int(v), int(a), int(b)) for v, a, b in self.frames._segments]
        chunked = (len(self.frames.videos) == 1 and self.split in ("valid", "test") and clip_length is not None
                   and not every_window)
        if chunked:  # one continuous held-out stretch: non-overlapping T-frame chunks, each its own "episode"
            video, first, stop = segments[0]
            segments = [(video, a, a + clip_length) for a in range(first, stop - clip_length + 1, clip_length)] \
                or segments
        self._segments = segments
        what = f"split {self.split!r} of {self.path}"
        self._build_index([b - a for _, a, b in segments], every_window, what, "video")

    def __repr__(self) -> str:
        return (f"FrameArrayClips({str(self.path)!r}, split={self.split!r}, clip_length={self.clip_length}, "
                f"image_size={self.image_size}, clips={len(self)})")

    def clip_rows(self, index: int) -> tuple[int, int]:
        """(first row, stop row) of clip `index` in the frame array."""
        episode, start, stop = self.clip_span(index)
        first = self._segments[episode][1]
        return first + start, first + stop

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = super().__getitem__(index)
        item["episode"] = self._segments[item["episode"]][0]  # the video's position in the sidecar
        if len(self.frames.videos) == 1:  # chunks of one stretch: "start" counts from the start of the video
            item["start"] = self.clip_rows(item["index"])[0] - self.frames.videos[0].offset
        return item

    def _read(self, episode: int, start: int, stop: int) -> torch.Tensor:
        first = self._segments[episode][1]
        return torch.stack([self.frames._frame(row) for row in range(first + start, first + stop)])


# ----------------------------------------------------------------------------------------------------------------
# official episode folders

@dataclass(frozen=True)
class EpisodeLayout:
    """An official frame-folder layout: `{root}/{split folder}/{episode}/{frame}.png`."""

    name: str
    split_folders: dict[str, tuple[str, ...]]  # canonical split -> folder names to try, in order
    frame_pattern: str  # regular expression a frame file name must match (full match, case-insensitive)
    pattern_text: str  # the layout in words, for error messages
    image_size: int  # the official resolution (default image_size)
    invert: bool = False  # colours inverted (1 - img)

    def describe(self) -> str:
        splits = ",".join(f[0] for f in self.split_folders.values())
        return f"{{root}}/{{{splits}}}/{{episode}}/{self.pattern_text}"


EPISODE_LAYOUTS: dict[str, EpisodeLayout] = {
    # G-SWM's OBJ3D (DDLP `obj3d_ds.py`): RGBA PNGs, alpha dropped; 'obj3d128' is the same data at 128.
    "obj3d": EpisodeLayout("obj3d", {"train": ("train",), "valid": ("val", "valid"), "test": ("test",)},
                           r"test_(\d+)\.png", "test_{k}.png", 64),
    # `preprocess_clevrer` output (DDLP `clevrer_ds.py`): frames 18-117 of each video, 128x128.
    "clevrer": EpisodeLayout("clevrer", {"train": ("train",), "valid": ("valid", "val"), "test": ("test",)},
                             r"(\d+)\.png", "{k}.png", 128),
    # `phyre_preparation.py` output (DDLP `phyre_ds.py`): white background, inverted to black.
    "phyre": EpisodeLayout("phyre", {"train": ("train",), "valid": ("valid", "val"), "test": ("test",)},
                           r".+\.png", "*.png", 128, invert=True),
}


def load_frame(path: Path, size: int) -> np.ndarray:
    """One frame as uint8 [size, size, 3]: resized with PIL bicubic in its own mode (RGBA stays RGBA, as the official
    `img.resize((res, res))` does), then the RGB channels kept. Raises DatasetError naming an unreadable file."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("RGB", "RGBA"):
                img = img.convert("RGBA")
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BICUBIC)
            return np.asarray(img.convert("RGB") if img.mode != "RGB" else img, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"cannot read frame {path} ({exc}); replace or remove the file.") from exc


class EpisodeFolderClips(_ClipIndex):
    """Clips of T consecutive frames of one episode, from an official OBJ3D / CLEVRER / PHYRE frame-folder tree (see
    the module docstring for the windowing rule and the item keys).

    Layouts (`EPISODE_LAYOUTS`; episodes and frames are sorted by their trailing integer, `frame_sort_key`):

    * 'obj3d':   `{root}/{train,val,test}/{episode}/test_{k}.png`, RGBA (alpha dropped), official size 64 (128 for
      the official 'obj3d128');
    * 'clevrer': `{root}/{train,valid,test}/{episode}/{k}.png`, official size 128;
    * 'phyre':   `{root}/{train,valid,test}/{episode}/*.png`, colours inverted (`1 - img`: the white background
      becomes black), official size 128.

    'valid' and 'val' are interchangeable, as split argument and as folder name. Files not matching the layout's
    frame name are ignored. Frames are read lazily (one PIL image per frame) and resized with PIL bicubic when their
    size differs from `image_size`.

    Args:
        root: the dataset folder holding the split folders.
        split: 'train', 'valid' (or 'val') or 'test'.
        clip_length: T, or None for whole episodes.
        image_size: frame side; None = the layout's official size.
        layout: 'obj3d', 'clevrer' or 'phyre'.
        every_window: True = every window, False = one clip per episode (default: True for 'train' only).
    """

    def __init__(self, root: str | Path, split: str = "train", clip_length: int | None = 20,
                 image_size: int | None = None, layout: str = "clevrer", *,
                 every_window: bool | None = None) -> None:
        if layout not in EPISODE_LAYOUTS:
            raise DatasetError(f"unknown episode layout {layout!r}; choose one of {', '.join(EPISODE_LAYOUTS)}.")
        self.layout = EPISODE_LAYOUTS[layout]
        self.split = _normalise_split(split, ("train", "valid", "test"))
        self.clip_length = self._check_clip_length(clip_length)
        self.image_size = int(image_size or self.layout.image_size)
        if self.image_size < 1:
            raise DatasetError(f"image_size must be positive, got {image_size}.")
        self.root = Path(root).expanduser()
        self.split_dir = self._find_split_dir()
        self.episode_names, self.episode_frames = self._find_episodes()
        self._build_index([len(f) for f in self.episode_frames], every_window, f"{self.split_dir}")

    def __repr__(self) -> str:
        return (f"EpisodeFolderClips({str(self.root)!r}, split={self.split!r}, clip_length={self.clip_length}, "
                f"image_size={self.image_size}, layout={self.layout.name!r}, clips={len(self)})")

    def _expect(self) -> str:
        return f"layout {self.layout.name!r} expects {self.layout.describe()}"

    def _find_split_dir(self) -> Path:
        if not self.root.is_dir():
            state = "is not a folder" if self.root.exists() else "does not exist"
            raise DatasetNotFoundError(f"dataset folder {self.root} {state}; {self._expect()}.")
        names = self.layout.split_folders[self.split]
        for name in names:
            if (self.root / name).is_dir():
                return self.root / name
        tried = " or ".join(f"{n}/" for n in names)
        raise DatasetNotFoundError(f"{self.root} has no {tried} folder; {self._expect()}.")

    def _find_episodes(self) -> tuple[list[str], list[tuple[Path, ...]]]:
        pattern = re.compile(self.layout.frame_pattern, re.IGNORECASE)
        with os.scandir(self.split_dir) as entries:
            entries = [e for e in entries if not e.name.startswith(".")]
        episodes = sorted((e for e in entries if e.is_dir()), key=lambda e: frame_sort_key(e.name))
        names, frames = [], []
        for episode in episodes:
            with os.scandir(episode.path) as files:
                found = [Path(f.path) for f in files if pattern.fullmatch(f.name) and f.is_file()]
            if found:
                names.append(episode.name)
                frames.append(tuple(sorted(found, key=frame_sort_key)))
        if not frames:
            loose = [e.name for e in entries if e.is_file() and pattern.fullmatch(e.name)]
            if loose:
                problem = f"{self.split_dir} holds frames directly instead of episode folders"
            elif episodes:
                problem = f"no episode folder of {self.split_dir} holds frames named {self.layout.pattern_text}"
            else:
                problem = f"{self.split_dir} holds no episode folders"
            raise DatasetError(f"{problem}; {self._expect()}.")
        return names, frames

    def _read(self, episode: int, start: int, stop: int) -> torch.Tensor:
        paths = self.episode_frames[episode][start:stop]
        video = frames_to_tensor(np.stack([load_frame(p, self.image_size) for p in paths]))  # [T, 3, S, S]
        return 1.0 - video if self.layout.invert else video
