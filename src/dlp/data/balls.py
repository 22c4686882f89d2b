"""Bouncing balls: a generated video dataset with ground truth, for DDLP (Daniel & Tamar, TMLR 2024).

A seeded stand-in for the official Balls-Interaction data (G-SWM's `gen_data_balls.sh`, read by DDLP's
`datasets/balls_ds.py` from HDF5 files that cannot be produced or downloaded here). Clip `i` depends only on
`(seed, i)`: it is simulated and drawn in `__getitem__` from its own `numpy.random.Generator`, so any number of
DataLoader workers, any access order and any process give the same pixels, and nothing is stored.

What is kept from Balls-Interaction: a 64x64 black canvas, 3 balls of diameter 8 (radius 4 px), colours drawn from
{blue, red, yellow, fuchsia, aqua} (without replacement while there are enough colours), speed 3 px/frame in a
uniformly random direction, elastic interactions, and a first frame in which no two balls overlap.

Physics (per frame, in `substeps` equal sub-steps): the balls move in straight lines; a ball that crosses a wall is
reflected (the overshoot is mirrored and the normal velocity flips); two balls whose discs overlap and approach each
other collide elastically with equal masses (they exchange the velocity components along the line between their
centres, which conserves momentum and kinetic energy exactly), and are then pushed apart along that line. Speeds
change only in ball-ball collisions; the total kinetic energy never changes.

Drawing: anti-aliased discs, coverage `clip(r + 0.5 - d, 0, 1)` for a pixel whose centre lies at distance `d` from the
ball's centre (so the pixel under a centre has exactly the ball's colour), composited in ball order on black.

Coordinates are pixel indices `(y, x) = (row, col)`: pixel (r, c) is centred at (r, c) and covers [r - 0.5, r + 0.5];
the canvas spans [-0.5, H - 0.5], so a centre always lies in [r - 0.5, H - 0.5 - r] ⊂ [0, H - 1]. The particle
convention of the models is `kp = pix / (H - 1) * 2 - 1` (`positions_to_kp`; inverse `kp_to_positions`).

Items (fixed shapes, so `torch.utils.data.default_collate` batches them; T = `clip_length`, N = `num_balls`):

* ``video``      [T, 3, H, W] float32 in [0, 1]
* ``positions``  [T, N, 2] float32: (y, x) pixel centre of every ball in every frame
* ``velocities`` [T, N, 2] float32: (dy, dx) in pixels per frame, the velocity leaving frame t
* ``sizes``      [T, N] float32: radius of every ball in pixels (constant over time)
* ``ids``        [T, N] int64: ball identity 0..N-1 (column n is ball n in every frame)
* ``colors``     [N, 3] float32: RGB colour of every ball
* ``index``      int: the clip index i

Example::

    >>> ds = BouncingBallsDataset(1000, clip_length=20, seed=0)
    >>> item = ds[0]
    >>> item["video"].shape, item["positions"].shape
    (torch.Size([20, 3, 64, 64]), torch.Size([20, 3, 2]))
    >>> kp = positions_to_kp(item["positions"], ds.image_size)  # (y, x) in [-1, 1]
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from dlp.config import ConfigError
from dlp.data.shapes import pixels_to_kp

__all__ = [
    "BALL_COLORS",
    "BALLS_CLIPS",
    "BouncingBallsDataset",
    "kp_to_positions",
    "positions_to_kp",
]

# The Balls-Interaction palette (G-SWM `scripts/dataset_balls/config.py`), RGB in [0, 1].
BALL_COLORS: dict[str, tuple[float, float, float]] = {
    "blue": (0.0, 0.0, 1.0),
    "red": (1.0, 0.0, 0.0),
    "yellow": (1.0, 1.0, 0.0),
    "fuchsia": (1.0, 0.0, 1.0),
    "aqua": (0.0, 1.0, 1.0),
}

# Default number of clips per split of the registered dataset "balls" (the official 5000 / 200 / 200 episodes).
BALLS_CLIPS = {"train": 5000, "valid": 200, "test": 200}


def positions_to_kp(positions: Any, image_size: int) -> Any:
    """(y, x) pixel centres (tensor or array, any leading shape) -> the particle convention (y, x) in [-1, 1],
    i.e. `kp = pix / (H - 1) * 2 - 1`, the inverse of `pix = (kp + 1) / 2 * (H - 1)`."""
    return pixels_to_kp(positions, image_size)


def kp_to_positions(kp: Any, image_size: int) -> Any:
    """(y, x) in [-1, 1] -> pixel centres: `pix = (kp + 1) / 2 * (H - 1)` (inverse of `positions_to_kp`)."""
    return (kp + 1.0) / 2.0 * (image_size - 1)


class BouncingBallsDataset(Dataset):
    """`num_clips` bouncing-ball clips with ground-truth positions, velocities, radii and identities (see the module
    docstring for the item keys and shapes).

    Args:
        num_clips: dataset length.
        clip_length: T, frames per clip.
        image_size: H = W of the canvas.
        num_balls: N, balls per clip.
        radius: ball radius in pixels, or a (low, high) range from which each ball's radius is drawn uniformly.
        speed: initial speed of every ball in pixels per frame (random direction).
        colors: palette (RGB in [0, 1]); each clip draws its ball colours from it, without replacement when
            `num_balls <= len(colors)`.
        seed: clip i is a function of (seed, i) only.
        substeps: simulation sub-steps per frame (more = fewer missed or late collisions at high speed).
    """

    def __init__(
        self,
        num_clips: int,
        clip_length: int = 20,
        image_size: int = 64,
        num_balls: int = 3,
        radius: float | tuple[float, float] = 4.0,
        speed: float = 3.0,
        colors: Sequence[Sequence[float]] = tuple(BALL_COLORS.values()),
        seed: int = 0,
        *,
        substeps: int = 4,
    ) -> None:
        if num_clips < 0:
            raise ConfigError(f"num_clips must be >= 0, got {num_clips}.")
        if clip_length < 1:
            raise ConfigError(f"clip_length must be >= 1, got {clip_length}.")
        if num_balls < 1:
            raise ConfigError(f"num_balls must be >= 1, got {num_balls}.")
        low, high = (float(radius), float(radius)) if np.isscalar(radius) else (float(radius[0]), float(radius[1]))
        if not 0.5 <= low <= high:
            raise ConfigError(f"the ball radius must be >= 0.5 px (low <= high), got {radius}.")
        if 2 * high > image_size - 1:
            raise ConfigError(f"balls of radius {high} do not fit in a {image_size}-pixel canvas; lower the radius.")
        if num_balls * (2 * high) ** 2 > 0.5 * image_size ** 2:
            raise ConfigError(f"{num_balls} balls of radius {high} crowd a {image_size}x{image_size} canvas; use fewer "
                              "or smaller balls.")
        if speed < 0:
            raise ConfigError(f"speed must be >= 0, got {speed}.")
        palette = np.asarray(colors, dtype=np.float32)
        if palette.ndim != 2 or palette.shape[1] != 3 or len(palette) == 0 or palette.min() < 0 or palette.max() > 1:
            raise ConfigError("colors must be a non-empty list of RGB triples in [0, 1].")
        if substeps < 1:
            raise ConfigError(f"substeps must be >= 1, got {substeps}.")
        self.num_clips = int(num_clips)
        self.clip_length = int(clip_length)
        self.image_size = int(image_size)
        self.num_balls = int(num_balls)
        self.radius = (low, high)
        self.speed = float(speed)
        self.colors = palette
        self.seed = int(seed)
        self.substeps = int(substeps)

    def __len__(self) -> int:
        return self.num_clips

    def __repr__(self) -> str:
        return (f"BouncingBallsDataset(num_clips={self.num_clips}, clip_length={self.clip_length}, "
                f"image_size={self.image_size}, num_balls={self.num_balls}, seed={self.seed})")

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if index < 0:
            index += self.num_clips
        if not 0 <= index < self.num_clips:
            raise IndexError(f"index {index} out of range for a BouncingBallsDataset of {self.num_clips} clips")
        video, positions, velocities, radii, colors = self.generate(index)
        t, n = positions.shape[:2]
        return {
            "video": torch.from_numpy(video),
            "positions": torch.from_numpy(positions),
            "velocities": torch.from_numpy(velocities),
            "sizes": torch.from_numpy(np.broadcast_to(radii, (t, n)).copy()),
            "ids": torch.arange(n, dtype=torch.int64).expand(t, n).contiguous(),
            "colors": torch.from_numpy(colors),
            "index": index,
        }

    # ------------------------------------------------------------------------------------------------------------

    def generate(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Simulate and draw clip `index` as numpy arrays.

        Returns: video [T, 3, H, W] float32, positions [T, N, 2] float32 (y, x), velocities [T, N, 2] float32,
        radii [N] float32, colors [N, 3] float32.
        """
        rng = np.random.default_rng((self.seed, index))
        n = self.num_balls
        radii = rng.uniform(self.radius[0], self.radius[1], size=n) if self.radius[0] < self.radius[1] \
            else np.full(n, self.radius[0])
        colors = self.colors[rng.choice(len(self.colors), size=n, replace=n > len(self.colors))]
        angle = rng.uniform(0.0, 2.0 * math.pi, size=n)
        vel = self.speed * np.stack([np.sin(angle), np.cos(angle)], axis=1)  # [N, 2] (dy, dx)
        lo = radii[:, None] - 0.5  # [N, 1] extent of the centres: the disc stays inside [-0.5, H - 0.5]
        hi = self.image_size - 0.5 - radii[:, None]
        pos = self._place(rng, radii, lo, hi)
        positions, velocities = self._simulate(pos, vel, radii, lo, hi)
        video = self.render(positions, radii, colors)
        return video, positions.astype(np.float32), velocities.astype(np.float32), radii.astype(np.float32), \
            colors.astype(np.float32)

    def _place(self, rng: np.random.Generator, radii: np.ndarray, lo: np.ndarray, hi: np.ndarray,
               num_trials: int = 200) -> np.ndarray:
        """Non-overlapping first-frame centres [N, 2]: each ball takes the first of `num_trials` uniform candidates
        that keeps clear of the balls already placed (all candidates drawn at once)."""
        n = len(radii)
        tries = rng.uniform(lo[:, None, :], hi[:, None, :], size=(n, num_trials, 2))  # [N, K, 2]
        pos = np.empty((n, 2))
        for j in range(n):
            if j:
                gap = np.linalg.norm(tries[j][:, None, :] - pos[None, :j], axis=-1) - (radii[j] + radii[:j])  # [K, j]
                free = np.flatnonzero((gap >= 0).all(axis=1))
                if len(free) == 0:
                    raise ConfigError(f"could not place {n} balls without overlap in a {self.image_size}-pixel canvas; "
                                      "use fewer or smaller balls.")
                pos[j] = tries[j][free[0]]
            else:
                pos[j] = tries[j][0]
        return pos

    def _simulate(self, pos: np.ndarray, vel: np.ndarray, radii: np.ndarray, lo: np.ndarray,
                  hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions and velocities [T, N, 2] from the first-frame state (see the module docstring)."""
        t_len, n = self.clip_length, len(radii)
        positions = np.empty((t_len, n, 2))
        velocities = np.empty((t_len, n, 2))
        positions[0], velocities[0] = pos, vel
        dt = 1.0 / self.substeps
        reach2 = (radii[:, None] + radii[None, :]) ** 2  # [N, N] squared contact distance
        reach2[np.tril_indices(n)] = -1.0  # each pair once (i < j)
        pos, vel = pos.copy(), vel.copy()
        for t in range(1, t_len):
            for _ in range(self.substeps):
                pos += vel * dt
                # walls: mirror the overshoot and point the velocity back inside
                push = np.maximum(lo - pos, 0.0) - np.maximum(pos - hi, 0.0)  # > 0 below lo, < 0 above hi
                if push.any():
                    pos += 2.0 * push
                    vel = np.where(push != 0.0, np.copysign(vel, push), vel)
                for _ in range(10 if n > 1 else 0):  # a push may cause a new overlap (three balls, walls): re-check
                    delta = pos[None, :, :] - pos[:, None, :]
                    close = np.einsum("ijk,ijk->ij", delta, delta) < reach2 - 1e-9
                    if not close.any():
                        break
                    for i, j in zip(*np.nonzero(close)):
                        self._collide(pos, vel, int(i), int(j), radii, lo, hi)
            positions[t], velocities[t] = pos, vel
        return positions, velocities

    @staticmethod
    def _collide(pos: np.ndarray, vel: np.ndarray, i: int, j: int, radii: np.ndarray, lo: np.ndarray,
                 hi: np.ndarray) -> None:
        """Elastic collision of balls i and j (equal masses), in place: exchange the velocity components along the
        line of centres if they approach, then push both apart to contact along that line (kept inside the walls)."""
        delta = pos[j] - pos[i]
        dist = float(np.hypot(delta[0], delta[1]))
        if dist >= radii[i] + radii[j]:  # separated by an earlier collision of this sub-step
            return
        normal = delta / dist if dist > 1e-9 else np.array([1.0, 0.0])
        approach = float((vel[i] - vel[j]) @ normal)
        if approach > 0:
            vel[i] -= approach * normal
            vel[j] += approach * normal
        contact = radii[i] + radii[j]
        overlap = contact - dist
        if overlap > 0:  # half each; a ball held by a wall leaves the rest to the other one
            pos[i] = np.clip(pos[i] - 0.5 * overlap * normal, lo[i], hi[i])
            pos[j] = np.clip(pos[i] + contact * normal, lo[j], hi[j])
            pos[i] = np.clip(pos[j] - contact * normal, lo[i], hi[i])

    def render(self, positions: np.ndarray, radii: np.ndarray, colors: np.ndarray) -> np.ndarray:
        """Anti-aliased discs on black: positions [T, N, 2] (y, x), radii [N], colors [N, 3] -> [T, 3, H, W] float32.

        Each ball is drawn in the P x P patch of pixels around it that holds every pixel it touches (vectorised over
        the frames), on a canvas padded by P so that patches never need clipping.
        """
        t_len, size = len(positions), self.image_size
        patch = int(math.ceil(2 * float(radii.max()))) + 3
        canvas = np.zeros((t_len, size + 2 * patch, size + 2 * patch, 3), dtype=np.float32)  # [T, H', W', 3]
        steps = np.arange(patch)
        frames = np.arange(t_len)[:, None, None]
        for k in range(len(radii)):
            r = float(radii[k])
            centre = positions[:, k, :]  # [T, 2]
            first = np.floor(centre - r - 0.5).astype(np.int64)  # [T, 2] top-left pixel of the patch
            pix = first[:, None, :] + steps[None, :, None]  # [T, P, 2] pixel rows (..., 0) and cols (..., 1)
            d = (pix - centre[:, None, :]).astype(np.float32)
            dist = np.sqrt(d[:, :, None, 0] ** 2 + d[:, None, :, 1] ** 2)  # [T, P, P]
            alpha = np.clip(np.float32(r + 0.5) - dist, 0.0, 1.0)[..., None]  # [T, P, P, 1]
            rows, cols = pix[:, :, None, 0] + patch, pix[:, None, :, 1] + patch
            under = canvas[frames, rows, cols]  # [T, P, P, 3]
            canvas[frames, rows, cols] = under + alpha * (colors[k].astype(np.float32) - under)
        return np.ascontiguousarray(canvas[:, patch:patch + size, patch:patch + size].transpose(0, 3, 1, 2))

    def render_dense(self, positions: np.ndarray, radii: np.ndarray, colors: np.ndarray) -> np.ndarray:
        """Reference for `render`: the same discs evaluated at every pixel (slower; used by the tests)."""
        grid = np.arange(self.image_size, dtype=np.float32)
        pos = positions.astype(np.float32)
        dy2 = (grid[None, None, :] - pos[..., 0:1]) ** 2  # [T, N, H]
        dx2 = (grid[None, None, :] - pos[..., 1:2]) ** 2  # [T, N, W]
        dist = np.sqrt(dy2[..., :, None] + dx2[..., None, :])  # [T, N, H, W]
        alpha = np.clip(radii.astype(np.float32)[None, :, None, None] + 0.5 - dist, 0.0, 1.0)
        video = np.zeros((len(positions), 3, self.image_size, self.image_size), dtype=np.float32)
        for k in range(len(radii)):
            a = alpha[:, k, None]  # [T, 1, H, W]
            video += a * (colors[k].astype(np.float32)[None, :, None, None] - video)
        return video
