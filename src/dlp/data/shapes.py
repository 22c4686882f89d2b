"""Random coloured shapes on a cyan background, with ground truth, generated on the fly.

A seeded replacement for the official `datasets/shapes_ds.py` (which calls `skimage.draw.random_shapes` with a fresh,
unseeded RNG and throws the labels away). Image `i` depends only on `(seed, i)`: it is drawn in `__getitem__` from its
own `numpy.random.Generator`, so any number of DataLoader workers, any access order and any process produce the same
pixels, and nothing is held in memory unless `cache=True`.

What is kept from the official generator: 2-5 shapes per image, each a rectangle, circle, triangle or ellipse of
roughly 11-13 pixels, colours with every RGB channel uniform in {0..200}/255, shapes fully inside the image, no overlap
(a shape that finds no free spot in `num_trials` tries is skipped, as skimage does), background cyan (0, 1, 1).

Ground truth per item (fixed shapes, so `torch.utils.data.default_collate` batches it; M = `max_shapes`):

* ``image``   [3, H, W] float32 in [0, 1]
* ``centers`` [M, 2] float32: (y, x) centroid of each shape's pixels, in pixel-index units (row r has y = r), i.e. the
  particle convention ``kp = centers / (H - 1) * 2 - 1`` (see `pixels_to_kp`); padding rows are NaN
* ``boxes``   [M, 4] float32: tight (x0, y0, x1, y1) with exclusive ends (the shape covers x0 <= col < x1), NaN padding
* ``kinds``   [M] int64: index into `SHAPE_KINDS` (independent of the `kinds` subset asked for), -1 padding
* ``count``   int: number of shapes drawn
* ``masks``   [H, W] int64 (only with ``return_masks=True``): 0 background, i + 1 for the pixels of shape i

Example::

    >>> ds = ShapesDataset(1000, seed=0)
    >>> batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=32, num_workers=2)))
    >>> batch["image"].shape, batch["centers"].shape
    (torch.Size([32, 3, 64, 64]), torch.Size([32, 5, 2]))
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from dlp.config import ConfigError

__all__ = ["SHAPE_KINDS", "ShapesDataset", "pixels_to_kp"]

SHAPE_KINDS: tuple[str, ...] = ("rectangle", "circle", "triangle", "ellipse")
_RECT, _CIRCLE, _TRIANGLE, _ELLIPSE = range(4)
_EPS = 1e-6


def pixels_to_kp(pixels: torch.Tensor, image_size: int) -> torch.Tensor:
    """Map (y, x) pixel-index coordinates to the particle convention [-1, 1] (inverse of (kp + 1) / 2 * (H - 1))."""
    return pixels / (image_size - 1) * 2.0 - 1.0


@lru_cache(maxsize=None)
def _circle_mask(size: int) -> np.ndarray:
    """Disc of diameter `size` inscribed in a size x size patch (pixel-centre test). [S, S] bool."""
    d = np.arange(size) + 0.5 - size / 2
    return d[:, None] ** 2 + d[None, :] ** 2 <= (size / 2) ** 2 + _EPS


@lru_cache(maxsize=None)
def _triangle_mask(size: int) -> np.ndarray:
    """Upright equilateral triangle of side `size` (apex on top). [round(size * sqrt(3) / 2), S] bool."""
    height = max(1, round(size * math.sqrt(3) / 2))
    y = np.arange(height) + 0.5
    x = np.arange(size) + 0.5
    return np.abs(x[None, :] - size / 2) <= (size / 2) * (y[:, None] / height) + _EPS


def _ellipse_mask(size: int, ratio: float, angle: float) -> np.ndarray:
    """Ellipse with major axis `size`, minor axis `ratio * size`, rotated by `angle`, inside a size x size patch."""
    d = np.arange(size) + 0.5 - size / 2
    dy, dx = d[:, None], d[None, :]
    cos, sin = math.cos(angle), math.sin(angle)
    a = size / 2
    b = a * ratio
    u = (dx * cos + dy * sin) / a
    v = (dy * cos - dx * sin) / b
    return u * u + v * v <= 1.0 + _EPS


class ShapesDataset(Dataset):
    """`num_images` random-shape images with ground-truth centres, boxes and kinds (see the module docstring).

    Args:
        num_images: dataset length.
        image_size: H = W of the images.
        min_shapes, max_shapes: the number of shapes is uniform in [min_shapes, max_shapes] (inclusive).
        min_size, max_size: shape size in pixels, uniform in [min_size, max_size] (inclusive): rectangle sides (each
            drawn independently), circle diameter, triangle side, ellipse major axis (minor axis 0.5-0.85 of it,
            random rotation).
        kinds: which of `SHAPE_KINDS` to draw, uniformly.
        background: RGB background colour in [0, 1] (official: cyan).
        allow_overlap: if True shapes may overlap (later shapes drawn on top; ground truth stays per whole shape).
        seed: image i is a function of (seed, i) only.
        cache: keep generated items in memory (per process) after the first access.
        return_masks: also return the instance mask ``masks`` [H, W] int64.
        num_trials: placement attempts per shape before it is skipped.
    """

    def __init__(
        self,
        num_images: int,
        image_size: int = 64,
        min_shapes: int = 2,
        max_shapes: int = 5,
        min_size: int = 11,
        max_size: int = 13,
        kinds: Sequence[str] = SHAPE_KINDS,
        background: Sequence[float] = (0.0, 1.0, 1.0),
        allow_overlap: bool = False,
        seed: int = 0,
        *,
        cache: bool = False,
        return_masks: bool = False,
        num_trials: int = 100,
    ) -> None:
        if num_images < 0:
            raise ConfigError(f"num_images must be >= 0, got {num_images}.")
        if not 1 <= min_shapes <= max_shapes:
            raise ConfigError(f"need 1 <= min_shapes <= max_shapes, got {min_shapes} and {max_shapes}.")
        if not 1 <= min_size <= max_size:
            raise ConfigError(f"need 1 <= min_size <= max_size, got min_size={min_size}, max_size={max_size}.")
        if max_size > image_size:
            raise ConfigError(f"max_size={max_size} does not fit in a {image_size}-pixel image; lower max_size.")
        kinds = tuple(kinds)
        unknown = [k for k in kinds if k not in SHAPE_KINDS]
        if not kinds or unknown:
            raise ConfigError(f"kinds must be a non-empty subset of {SHAPE_KINDS}, got {kinds}.")
        background = tuple(float(c) for c in background)
        if len(background) != 3 or not all(0.0 <= c <= 1.0 for c in background):
            raise ConfigError(f"background must be 3 RGB values in [0, 1], got {background}.")
        if num_trials < 1:
            raise ConfigError(f"num_trials must be >= 1, got {num_trials}.")
        self.num_images = int(num_images)
        self.image_size = int(image_size)
        self.min_shapes, self.max_shapes = int(min_shapes), int(max_shapes)
        self.min_size, self.max_size = int(min_size), int(max_size)
        self.kinds = kinds
        self._kind_ids = np.array([SHAPE_KINDS.index(k) for k in kinds], dtype=np.int64)
        self.background = background
        self._background = np.asarray(background, dtype=np.float32)[:, None, None]  # [3, 1, 1]
        self.allow_overlap = bool(allow_overlap)
        self.seed = int(seed)
        self.return_masks = bool(return_masks)
        self.num_trials = int(num_trials)
        self._cache: dict[int, dict[str, Any]] | None = {} if cache else None

    def __len__(self) -> int:
        return self.num_images

    def __repr__(self) -> str:
        return (
            f"ShapesDataset(num_images={self.num_images}, image_size={self.image_size}, "
            f"shapes={self.min_shapes}-{self.max_shapes}, size={self.min_size}-{self.max_size}, seed={self.seed})"
        )

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if index < 0:
            index += self.num_images
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for a ShapesDataset of {self.num_images} images")
        if self._cache is not None and index in self._cache:
            return dict(self._cache[index])
        image, centers, boxes, kinds, count, masks = self.generate(index)
        item: dict[str, Any] = {
            "image": torch.from_numpy(image),
            "centers": torch.from_numpy(centers),
            "boxes": torch.from_numpy(boxes),
            "kinds": torch.from_numpy(kinds),
            "count": count,
        }
        if self.return_masks:
            item["masks"] = torch.from_numpy(masks)
        if self._cache is not None:
            self._cache[index] = dict(item)
        return item

    def generate(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, np.ndarray]:
        """Draw image `index` as numpy arrays.

        Returns: image [3, H, W] float32, centers [M, 2], boxes [M, 4], kinds [M], count, masks [H, W] int64.
        """
        size, m = self.image_size, self.max_shapes
        rng = np.random.default_rng((self.seed, index))
        n = int(rng.integers(self.min_shapes, self.max_shapes + 1))
        kinds = self._kind_ids[rng.integers(0, len(self._kind_ids), size=n)]
        sides = rng.integers(self.min_size, self.max_size + 1, size=(n, 2))
        colors = rng.integers(0, 201, size=(n, 3)).astype(np.float32) / 255.0  # [n, 3]
        ellipse = rng.random((n, 2))  # minor/major ratio and rotation, used by ellipses only

        image = np.empty((3, size, size), dtype=np.float32)
        image[...] = self._background
        occupied = np.zeros((size, size), dtype=np.int64)  # 0 free, i + 1 = drawn by shape i
        centers = np.full((m, 2), np.nan, dtype=np.float32)
        boxes = np.full((m, 4), np.nan, dtype=np.float32)
        out_kinds = np.full((m,), -1, dtype=np.int64)
        count = 0
        for j in range(n):
            kind = int(kinds[j])
            s = int(sides[j, 0])
            if kind == _RECT:
                mask = np.ones((s, int(sides[j, 1])), dtype=bool)
            elif kind == _CIRCLE:
                mask = _circle_mask(s)
            elif kind == _TRIANGLE:
                mask = _triangle_mask(s)
            else:
                mask = _ellipse_mask(s, 0.5 + 0.35 * float(ellipse[j, 0]), math.pi * float(ellipse[j, 1]))
            ph, pw = mask.shape
            # all placement tries are drawn at once so the random stream does not depend on where a shape fits
            tries = rng.integers(0, (size - ph + 1, size - pw + 1), size=(self.num_trials, 2))
            for y0, x0 in tries:
                window = occupied[y0 : y0 + ph, x0 : x0 + pw]
                if self.allow_overlap or not window[mask].any():
                    break
            else:
                continue  # no free spot: skip the shape, as skimage.draw.random_shapes does
            window[mask] = count + 1
            image[:, y0 : y0 + ph, x0 : x0 + pw][:, mask] = colors[j][:, None]
            rows, cols = np.nonzero(mask)
            centers[count] = (y0 + rows.mean(), x0 + cols.mean())
            boxes[count] = (x0 + cols.min(), y0 + rows.min(), x0 + cols.max() + 1, y0 + rows.max() + 1)
            out_kinds[count] = kind
            count += 1
        return image, centers, boxes, out_kinds, count, occupied
