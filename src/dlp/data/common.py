"""Shared pieces of the real-data layer: errors, file discovery, image loading and the square-crop geometry.

Every still-image dataset (CelebA/MAFL, landmark folders, plain image folders) goes through `SquareCropTransform`
and every frame array goes through `square_box`/`crop_resize`, so the cropping arithmetic lives in one place.

Geometry convention (the official one): a crop box `(left, top, right, bottom)` in stored-image pixels is resized to
`work_size x work_size`, then `margin` pixels are cut from every side. A point `p = (x, y)` in stored-image pixels
maps to `(p - (left, top)) * work_size / side - margin` (the official CelebA code scales coordinates this way, i.e.
without a half-pixel correction).
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})

# At most this fraction of unreadable images is skipped with a warning; more raises.
MAX_BAD_IMAGE_FRACTION = 0.01

Box = tuple[float, float, float, float]


class DatasetError(ValueError):
    """Bad user data or arguments for a dataset (one sentence: what is wrong and how to fix it)."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A dataset file or folder does not exist."""


# ----------------------------------------------------------------------------------------------------------------
# files

def require_dir(path: str | Path, what: str) -> Path:
    """`path` as a Path, or a DatasetNotFoundError naming `what` if it is not an existing folder."""
    path = Path(path).expanduser()
    if not path.is_dir():
        state = "is not a folder" if path.exists() else "does not exist"
        raise DatasetNotFoundError(f"{what} {path} {state}; check the path.")
    return path


def require_file(path: str | Path, what: str) -> Path:
    """`path` as a Path, or a DatasetNotFoundError naming `what` if it is not an existing file."""
    path = Path(path).expanduser()
    if not path.is_file():
        state = "is not a file" if path.exists() else "does not exist"
        raise DatasetNotFoundError(f"{what} {path} {state}; check the path.")
    return path


def frame_sort_key(path: str | Path) -> tuple[Any, ...]:
    """Sort key that orders `1.png, 2.png, 10.png` and `video_27.png` numerically (by the trailing integer of the
    stem, as both official prepare scripts do); names without a trailing integer sort after, alphabetically."""
    path = Path(path)
    match = re.search(r"(\d+)$", path.stem)
    if match:
        return (0, int(match.group(1)), path.name)
    return (1, 0, path.name)


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def is_video_file(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS and not path.name.startswith(".")


def list_images(root: Path, *, recursive: bool = True) -> dict[str, Path]:
    """Image files under `root` (hidden files and folders skipped): relative POSIX name -> path, sorted by name."""
    found: dict[str, Path] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        prefix = os.path.relpath(folder, root).replace(os.sep, "/")
        prefix = "" if prefix == "." else prefix + "/"
        for name in files:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found[prefix + name] = Path(folder, name)
    return dict(sorted(found.items()))


def examples(items: Iterable[Any], limit: int = 3) -> str:
    """'a, b, c, ...' for error messages."""
    items = list(items)
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (", ..." if len(items) > limit else "")


# ----------------------------------------------------------------------------------------------------------------
# images

def load_rgb(path: str | Path) -> Image.Image:
    """Open and fully decode an image as RGB (grayscale, palette and RGBA are converted; alpha is dropped).

    Raises DatasetError naming the file if it cannot be decoded.
    """
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB") if img.mode != "RGB" else img.copy()
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"cannot read image {path} ({exc}); replace or remove the file.") from exc


def _image_header_ok(path: Path) -> bool:
    try:
        with Image.open(path) as img:
            width, height = img.size
        return width > 0 and height > 0
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return False


def drop_unreadable_images(paths: Sequence[Path], *, what: str) -> list[int]:
    """Indices of `paths` whose image header can be read.

    Files that are not images, empty or truncated before the header are unreadable. If at most 1 % of the files are
    unreadable they are skipped with a warning that counts them; otherwise a DatasetError names them.
    (Damage past the header only shows when the image is decoded: `load_rgb` then names the file.)
    """
    bad = [i for i, p in enumerate(paths) if not _image_header_ok(p)]
    if not bad:
        return list(range(len(paths)))
    names = [paths[i] for i in bad]
    if len(bad) > MAX_BAD_IMAGE_FRACTION * len(paths):
        raise DatasetError(
            f"{len(bad)} of {len(paths)} images in {what} cannot be read ({examples(names, 5)}); "
            "replace or remove them."
        )
    warnings.warn(
        f"skipping {len(bad)} unreadable image(s) of {len(paths)} in {what}: {examples(names, 5)}",
        stacklevel=3,
    )
    bad_set = set(bad)
    return [i for i in range(len(paths)) if i not in bad_set]


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor [3, H, W] in [0, 1]."""
    array = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 frames [..., H, W, 3] -> float tensor [..., 3, H, W] in [0, 1]."""
    tensor = torch.from_numpy(np.array(frames, dtype=np.uint8, copy=True))
    return tensor.movedim(-1, -3).float().div_(255.0)


# ----------------------------------------------------------------------------------------------------------------
# geometry

def square_box(width: int, height: int, *, side_fraction: float = 1.0,
               align: tuple[float, float] = (0.5, 0.5)) -> Box:
    """A square crop box `(left, top, right, bottom)` (floats, stored-image pixels).

    The side is `side_fraction * min(width, height)`; the leftover room is split so that a fraction `align[0]` of
    the horizontal slack lies left of the box and `align[1]` of the vertical slack above it
    ((0.5, 0.5) = centre crop, (0, 0) = top-left).
    """
    side = side_fraction * min(width, height)
    left = (width - side) * align[0]
    top = (height - side) * align[1]
    # Rounded so that the official integer boxes come out exactly (e.g. 92 * 60/92 -> 60.0, not 59.999...).
    return tuple(round(v, 6) for v in (left, top, left + side, top + side))  # type: ignore[return-value]


# CelebA aligned images are 178x218 and the official code crops rows 30..207 (a 178x178 square, "move head up"):
# 30 of the 40 spare rows lie above the square. Expressed as a fraction this works for any scaled copy (89x109 ->
# rows 15..103) and degrades to a plain centre crop for square images.
FACE_ALIGN = (0.5, 30.0 / 40.0)
# The official traffic crop (60, 0, 480, 420) of the 512x512 frames: a square of 420/512 of the shorter side with
# 60 of the 92 spare columns on its left and all spare rows below it.
TRAFFIC_SIDE_FRACTION = 420.0 / 512.0
TRAFFIC_ALIGN = (60.0 / 92.0, 0.0)


def crop_resize(img: Image.Image, box: Box | None, size: int, resample: int = Image.Resampling.BILINEAR) -> Image.Image:
    """Resize the `box` region of `img` (whole image if None) to `size x size`.

    Like the official crop-then-resize, the resampling filter never reads pixels outside the box (rounded out to
    whole pixels for fractional boxes); PIL's `resize(box=...)` alone would read context beyond it.
    """
    if box is not None:
        left, top = math.floor(box[0]), math.floor(box[1])
        outer = (left, top, math.ceil(box[2]), math.ceil(box[3]))
        if outer != (0, 0, img.width, img.height):
            img = img.crop(outer)
        box = (box[0] - left, box[1] - top, box[2] - left, box[3] - top)
        if box == (0, 0, img.width, img.height):
            box = None
    if box is None and img.size == (size, size):
        return img
    return img.resize((size, size), resample, box=box)


def face_margin(image_size: int) -> int:
    """Pixels cut from every side after resizing: the official 16 for 128 (imwidth 160), scaled proportionally."""
    return int(round(image_size / 8))


class SquareCropTransform:
    """Stored image (+ landmarks) -> dataset item, with an optional TPS warper.

    The image is cropped to `box_fn(width, height)`, resized (PIL bilinear) to `work_size = image_size + 2 * margin`
    and then `margin` pixels are cut from every side, or, with a warper, warped at `work_size` and cropped inside the
    warper, as the official DVE pipeline does.

    Returns a dict with "image" [3, S, S] in [0, 1] and, when landmarks are given, "landmarks" [L, 2] as (x, y) pixels
    in the output image. With a pair warper (`returns_pairs`) "image" is the light warp, "image_prior" the strong
    (doubly warped) one and "landmarks_prior" its landmarks.
    """

    def __init__(self, image_size: int, *, margin: int = 0, side_fraction: float = 1.0,
                 align: tuple[float, float] = (0.5, 0.5), warper: Any = None) -> None:
        if image_size < 1 or margin < 0:
            raise DatasetError(f"image_size must be positive and margin >= 0, got {image_size} and {margin}.")
        self.image_size = int(image_size)
        self.margin = int(margin)
        self.work_size = self.image_size + 2 * self.margin
        self.side_fraction = side_fraction
        self.align = align
        if warper is not None and (warper.H, warper.W) != (self.work_size, self.work_size):
            raise DatasetError(
                f"the warper works on {warper.H}x{warper.W} images but this dataset warps at "
                f"{self.work_size}x{self.work_size} (image_size {self.image_size} + 2 x margin {self.margin}); "
                f"build it with H = W = {self.work_size}."
            )
        self.warper = warper

    def box(self, width: int, height: int) -> Box:
        return square_box(width, height, side_fraction=self.side_fraction, align=self.align)

    def to_work_frame(self, points: torch.Tensor, width: int, height: int) -> torch.Tensor:
        """(x, y) stored-image pixels -> (x, y) pixels of the resized `work_size` image (before the margin is cut)."""
        left, top, right, _ = self.box(width, height)
        offset = torch.tensor([left, top], dtype=points.dtype)
        return (points - offset) * (self.work_size / (right - left))

    def transform_points(self, points: torch.Tensor, width: int, height: int) -> torch.Tensor:
        """(x, y) stored-image pixels -> (x, y) pixels of the un-warped output image."""
        return self.to_work_frame(points, width, height) - self.margin

    def __call__(self, img: Image.Image, landmarks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        width, height = img.size
        work = pil_to_tensor(crop_resize(img, self.box(width, height), self.work_size))
        # The warper expects landmarks in the work frame; it cuts the margin itself.
        kp = None if landmarks is None else self.to_work_frame(landmarks, width, height)
        item: dict[str, torch.Tensor] = {}
        if self.warper is None:
            m = self.margin
            item["image"] = work[:, m:m + self.image_size, m:m + self.image_size]
            if kp is not None:
                item["landmarks"] = kp - m
        elif getattr(self.warper, "returns_pairs", False):
            out = self.warper(work, keypoints=kp, crop=self.margin)
            item["image"] = out.image_light.clamp_(0, 1)
            item["image_prior"] = out.image_strong.clamp_(0, 1)
            if kp is not None:
                item["landmarks"] = out.keypoints_light
                item["landmarks_prior"] = out.keypoints_strong
        else:
            out = self.warper(work, keypoints=kp, crop=self.margin)
            item["image"] = out.image.clamp_(0, 1)
            if kp is not None:
                item["landmarks"] = out.keypoints
        return item


def face_work_size(image_size: int) -> int:
    """Side at which face images are resized (and TPS-warped) before the margin is cut: 160 for 128."""
    return image_size + 2 * face_margin(image_size)


def face_transform(image_size: int, warper: Any = None) -> SquareCropTransform:
    """The official CelebA/DVE geometry for any aligned face image: the CelebA square (rows 30..207 of 178x218,
    proportionally for other sizes), resized to `face_work_size(image_size)`, `face_margin` cut per side."""
    return SquareCropTransform(image_size, margin=face_margin(image_size), align=FACE_ALIGN, warper=warper)


# ----------------------------------------------------------------------------------------------------------------
# still-image datasets

class ImageListDataset(torch.utils.data.Dataset):
    """Images from a list of files, optionally with landmarks, through a `SquareCropTransform`.

    `landmarks` [N, L, 2] are (x, y) pixels in the stored images, or, if `landmark_frame=(w, h)` is given, in a
    `w x h` reference frame that is rescaled to each image's actual size (CelebA's files are in the 178x218 frame).
    Items: {"image", "index"} plus "landmarks" / "image_prior" / "landmarks_prior" as the transform provides.
    """

    def __init__(self, paths: Sequence[Path], transform: SquareCropTransform, landmarks: torch.Tensor | None = None,
                 landmark_frame: tuple[int, int] | None = None) -> None:
        self.paths = list(paths)
        self.transform = transform
        self.landmarks = landmarks
        self.landmark_frame = landmark_frame
        if landmarks is not None and len(landmarks) != len(self.paths):
            raise DatasetError(f"got {len(landmarks)} landmark rows for {len(self.paths)} images.")

    @property
    def image_size(self) -> int:
        return self.transform.image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        index = index % len(self)
        img = load_rgb(self.paths[index])
        points = None
        if self.landmarks is not None:
            points = self.landmarks[index]
            if self.landmark_frame is not None and img.size != self.landmark_frame:
                scale = torch.tensor([img.width / self.landmark_frame[0], img.height / self.landmark_frame[1]])
                points = points * scale
        item: dict[str, Any] = self.transform(img, points)
        item["index"] = index
        return item
