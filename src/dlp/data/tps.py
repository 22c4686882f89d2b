"""Random thin-plate-spline warps, behaving like the DVE warpers used by the official DLP code (`utils/tps.py`).

For every output pixel with normalised position (x, y) in [-1, 1] the warp samples the input at

    src = sum_k U((x, y), c_k) w_k + affine(x, y),    U(p, c) = d log(d + 1e-5),  d = |p - c|^2,

with `c_k` the 10x10 control grid and random weights `w_k` (no TPS system is solved: as in the official code this is
"a random smooth warp"). Images are resampled with `grid_sample(..., align_corners=True)` and zero padding.
Keypoints, (x, y) pixels, move to the output pixel whose sampling position is nearest to them (the official
KD-tree trick, here a chunked exact nearest-neighbour search in torch), i.e. with integer-pixel precision.

All randomness comes from the optional `torch.Generator` (given at construction or per call), else from torch's
global RNG (which DataLoader seeds differently in every worker).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from dlp.data.common import DatasetError

N_CONTROL_SIDE = 10  # the official 10 x 10 control points


def tps_grid(H: int, W: int) -> torch.Tensor:
    """[H*W, 2] positions (x, y) in [-1, 1], raster (row-major) order."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij")
    return torch.stack((xs.reshape(-1), ys.reshape(-1)), dim=1)


def tps_U(g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """[N1, N2] kernel `d log(d + 1e-5)` of the squared distances d between the rows of g1 and g2."""
    d = (g1[:, None, :] - g2[None, :, :]).pow(2).sum(-1)
    return d * torch.log(d + 1e-5)


def grid_unnormalize(grid: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """[-1, 1] (x, y) -> pixels (align_corners=True convention)."""
    return (grid + 1) / 2 * grid.new_tensor([W - 1, H - 1])


def grid_normalize(grid: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Pixels (x, y) -> [-1, 1] (inverse of `grid_unnormalize`)."""
    return 2 * grid / grid.new_tensor([W - 1, H - 1]) - 1


def random_tps_weights(nctrlpts: int, warpsd_all: float, warpsd_subset: float, transsd: float, scalesd: float,
                       rotsd: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """[nctrlpts + 3, 2] random warp weights: kernel weights N(0, warpsd_all^2), of which a random half of the
    entries (per element) are redrawn with std warpsd_subset, then the affine rows
    [[tx, ty], [sc cos r, -sc sin r], [sc sin r, sc cos r]] with r ~ N(0, rotsd) degrees, sc ~ 1 + N(0, scalesd^2),
    tx, ty ~ N(0, transsd^2)."""
    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    weights = randn(nctrlpts, 2) * warpsd_all
    subset = torch.rand(nctrlpts, 2, generator=generator) > 0.5
    weights = torch.where(subset, randn(nctrlpts, 2) * warpsd_subset, weights)
    rot, sc, tx, ty = randn(4).unbind()
    rot = rot * rotsd * math.pi / 180
    sc = 1.0 + sc * scalesd
    cos, sin = sc * torch.cos(rot), sc * torch.sin(rot)
    affine = torch.stack([torch.stack([tx * transsd, ty * transsd]), torch.stack([cos, -sin]),
                          torch.stack([sin, cos])])
    return torch.cat([weights, affine], dim=0)


class PairWarp(NamedTuple):
    """Output of `Warper`, in the official return order `(im2, im1, flow, grid, kp2, kp1)`."""

    image_strong: torch.Tensor  # doubly warped (the official first output; DLP's prior input)
    image_light: torch.Tensor  # warped once, lightly (DLP's posterior input and reconstruction target)
    flow: torch.Tensor  # [1, h, w, 2] pixel displacement of the second warp, cropped
    grid: torch.Tensor  # [1, h, w, 2] second warp's sampling grid in the cropped frame, normalised
    keypoints_strong: torch.Tensor | None  # [K, 2] (x, y) pixels in the cropped strong image
    keypoints_light: torch.Tensor | None  # [K, 2] (x, y) pixels in the cropped light image


class SingleWarp(NamedTuple):
    """Output of `WarperSingle`, in the official order `(im1, kp1)`."""

    image: torch.Tensor
    keypoints: torch.Tensor | None


class _RandomWarp:
    """Shared machinery: the kernel basis of an H x W image, sampling, cropping and keypoint tracking."""

    def __init__(self, H: int, W: int, generator: torch.Generator | None) -> None:
        self.H, self.W = int(H), int(W)
        if self.H < 2 or self.W < 2:
            raise DatasetError(f"a TPS warper needs an image of at least 2x2 pixels, got {H}x{W}.")
        self.generator = generator
        pixels = tps_grid(self.H, self.W)
        controls = tps_grid(N_CONTROL_SIDE, N_CONTROL_SIDE)
        ones = torch.ones(self.H * self.W, 1)
        self.basis = torch.cat([tps_U(pixels, controls), ones, pixels], dim=1)  # [H*W, 100 + 3]
        self.pixel_grid = grid_unnormalize(pixels, self.H, self.W).view(1, self.H, self.W, 2)

    def _random_grid(self, sd: tuple[float, ...], generator: torch.Generator | None) -> torch.Tensor:
        """[1, H, W, 2] normalised sampling grid of one random warp with stds (all, subset, trans, scale, rot)."""
        weights = random_tps_weights(N_CONTROL_SIDE ** 2, *sd, generator=generator or self.generator)
        return (self.basis @ weights).view(1, self.H, self.W, 2)

    def _as_batch(self, image: torch.Tensor) -> torch.Tensor:
        if image.dim() not in (3, 4) or tuple(image.shape[-2:]) != (self.H, self.W):
            raise DatasetError(
                f"this warper expects images [C, {self.H}, {self.W}] or [N, C, {self.H}, {self.W}], "
                f"got shape {tuple(image.shape)}."
            )
        return image[None] if image.dim() == 3 else image

    @staticmethod
    def _sample(batch: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        grid = grid.to(device=batch.device, dtype=batch.dtype).expand(batch.shape[0], -1, -1, -1)
        return F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=True)

    def _crop_image(self, x: torch.Tensor, crop: int) -> torch.Tensor:
        return x[..., crop:self.H - crop, crop:self.W - crop] if crop else x

    def _crop_grid(self, g: torch.Tensor, crop: int) -> torch.Tensor:
        return g[:, crop:self.H - crop, crop:self.W - crop, :] if crop else g

    def warp_keypoints(self, keypoints: torch.Tensor, grid: torch.Tensor, chunk_elems: int = 1 << 22) -> torch.Tensor:
        """Move (x, y) pixel keypoints [K, 2] through a normalised sampling grid [1, H, W, 2]: each keypoint goes to
        the output pixel whose sampling position is nearest to it."""
        sampling = grid_unnormalize(grid.reshape(-1, 2), self.H, self.W)
        pixels = self.pixel_grid.reshape(-1, 2)
        found = []
        for part in keypoints.float().split(max(1, chunk_elems // sampling.shape[0])):
            dist = torch.cdist(part, sampling, compute_mode="donot_use_mm_for_euclid_dist")
            found.append(pixels[dist.argmin(dim=1)])
        return torch.cat(found) if found else keypoints.float().clone()

    def _check(self, keypoints, crop: int) -> torch.Tensor | None:
        if not 0 <= crop < min(self.H, self.W) / 2:
            raise DatasetError(f"crop must be in [0, {min(self.H, self.W) // 2}), got {crop}.")
        if keypoints is None:
            return None
        kp = torch.as_tensor(np.asarray(keypoints) if not torch.is_tensor(keypoints) else keypoints)
        if kp.dim() != 2 or kp.shape[1] != 2:
            raise DatasetError(f"keypoints must be [K, 2] (x, y) pixels, got shape {tuple(kp.shape)}.")
        return kp.detach().cpu().float()


class Warper(_RandomWarp):
    """Pair warper (official `tps.Warper`, `returns_pairs = True`).

    `warper(im1, im2=None, keypoints=None, crop=0)`: a light warp (stds scaled by `im1_multiplier`, affine stds by
    `im1_multiplier_aff`) is applied to both images, then a full-strength warp to `im2` (default `im1`) only;
    `crop` pixels are cut from every side. Returns a `PairWarp` whose order matches the official tuple: strong
    (doubly warped) image first, light second, then flow, grid, strong keypoints, light keypoints.
    Images are [C, H, W] or [N, C, H, W] (any value range; the output keeps the input's rank); keypoints [K, 2] are
    (x, y) pixels in the uncropped input.

    DLP's CelebA setting: `Warper(160, 160, im1_multiplier=0.1, im1_multiplier_aff=0.1)` with crop 16.
    """

    returns_pairs = True

    def __init__(self, H: int, W: int, warpsd_all: float = 0.001, warpsd_subset: float = 0.01, transsd: float = 0.1,
                 scalesd: float = 0.1, rotsd: float = 5, im1_multiplier: float = 0.5, im1_multiplier_aff: float = 1.0,
                 *, generator: torch.Generator | None = None) -> None:
        super().__init__(H, W, generator)
        a, b = im1_multiplier, im1_multiplier_aff
        self.sd_strong = (warpsd_all, warpsd_subset, transsd, scalesd, rotsd)
        self.sd_light = (a * warpsd_all, a * warpsd_subset, b * transsd, b * scalesd, b * rotsd)

    def __call__(self, im1: torch.Tensor, im2: torch.Tensor | None = None, keypoints=None, crop: int = 0, *,
                 generator: torch.Generator | None = None) -> PairWarp:
        kp = self._check(keypoints, crop)
        batch1 = self._as_batch(im1)
        batch2 = batch1 if im2 is None else self._as_batch(im2)
        grid1 = self._random_grid(self.sd_light, generator)
        light1 = self._sample(batch1, grid1)
        light2 = light1 if im2 is None else self._sample(batch2, grid1)
        grid2 = self._random_grid(self.sd_strong, generator)
        strong = self._sample(light2, grid2)

        kp_light = kp_strong = None
        if kp is not None:
            kp_light = self.warp_keypoints(kp, grid1)
            kp_strong = self.warp_keypoints(kp_light, grid2) - crop
            kp_light = kp_light - crop

        grid2_pixels = grid_unnormalize(grid2, self.H, self.W)
        flow = self._crop_grid(grid2_pixels - self.pixel_grid, crop)
        grid = grid_normalize(self._crop_grid(grid2_pixels, crop) - crop, self.H - 2 * crop, self.W - 2 * crop)

        def restore(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
            x = self._crop_image(x, crop)
            return x[0] if like.dim() == 3 else x

        return PairWarp(restore(strong, im1 if im2 is None else im2), restore(light1, im1), flow, grid,
                        kp_strong, kp_light)


class WarperSingle(_RandomWarp):
    """Single warper (official `tps.WarperSingle`, `returns_pairs = False`): one full-strength warp, then the crop.

    `warper(im1, keypoints=None, crop=0)` -> `SingleWarp(image, keypoints)`. DLP's CelebA setting (TPS without
    pairs): `WarperSingle(160, 160, 0.001, 0.01, 0.1, 0.1, 5)` with crop 16.
    """

    returns_pairs = False

    def __init__(self, H: int, W: int, warpsd_all: float = 0.0005, warpsd_subset: float = 0.0, transsd: float = 0.02,
                 scalesd: float = 0.02, rotsd: float = 2, *, generator: torch.Generator | None = None) -> None:
        super().__init__(H, W, generator)
        self.sd = (warpsd_all, warpsd_subset, transsd, scalesd, rotsd)

    def __call__(self, im1: torch.Tensor, keypoints=None, crop: int = 0, *,
                 generator: torch.Generator | None = None) -> SingleWarp:
        kp = self._check(keypoints, crop)
        grid = self._random_grid(self.sd, generator)
        image = self._crop_image(self._sample(self._as_batch(im1), grid), crop)
        kp_out = None if kp is None else self.warp_keypoints(kp, grid) - crop
        return SingleWarp(image[0] if im1.dim() == 3 else image, kp_out)


def dlp_warper(size: int, *, pairs: bool, video: bool = False,
               generator: torch.Generator | None = None) -> Warper | WarperSingle:
    """The warpers the official DLP code builds, for `size x size` images (before any crop).

    Faces (`video=False`): pairs -> `Warper(im1_multiplier=0.1, im1_multiplier_aff=0.1)`, single ->
    `WarperSingle(0.001, 0.01, 0.1, 0.1, 5)` (train_dlp.py). Video frames (`video=True`, the CLEVRER/Traffic 'tps'
    mode): pairs -> `Warper(warpsd_all=1e-5, warpsd_subset=1e-3, transsd=0.1, scalesd=0.1, rotsd=2, 0.1, 0.1)`;
    single -> the face single warper.
    """
    if pairs and video:
        return Warper(size, size, warpsd_all=1e-5, warpsd_subset=1e-3, transsd=0.1, scalesd=0.1, rotsd=2,
                      im1_multiplier=0.1, im1_multiplier_aff=0.1, generator=generator)
    if pairs:
        return Warper(size, size, im1_multiplier=0.1, im1_multiplier_aff=0.1, generator=generator)
    return WarperSingle(size, size, warpsd_all=0.001, warpsd_subset=0.01, transsd=0.1, scalesd=0.1, rotsd=5,
                        generator=generator)
