"""TPS warpers: keypoints stay on the warped image content, reproducibility, shapes, identity, bad input."""

from __future__ import annotations

import pytest
import torch

from dlp.data import DatasetError, LandmarkFolderDataset, Warper, WarperSingle, dlp_warper
from dlp.data.tps import random_tps_weights

pytestmark = pytest.mark.usefixtures("single_thread")

SIZE, CROP = 160, 16
DOTS = torch.tensor([[70.0, 90.0], [60.0, 58.0], [100.0, 104.0], [85.0, 70.0]])  # (x, y) pixels


def dot_image(points: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """[3, size, size] black image with a small bright Gaussian dot at every (x, y) point."""
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    image = torch.zeros(size, size)
    for x, y in points:
        image = torch.maximum(image, torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 1.2 ** 2)))
    return image.expand(3, -1, -1).clone()


def brightest_near(image: torch.Tensor, point: torch.Tensor, radius: int = 5) -> torch.Tensor:
    """(x, y) of the brightest pixel of channel 0 within `radius` of `point`."""
    x0, y0 = int(round(point[0].item())), int(round(point[1].item()))
    h, w = image.shape[-2:]
    top, left = max(0, y0 - radius), max(0, x0 - radius)
    window = image[0, top:min(h, y0 + radius + 1), left:min(w, x0 + radius + 1)]
    row, col = divmod(int(window.argmax()), window.shape[1])
    return torch.tensor([left + col, top + row], dtype=torch.float32)


def assert_on_dots(image: torch.Tensor, keypoints: torch.Tensor, tol: float = 1.5) -> None:
    for kp in keypoints:
        assert 0 <= kp[0] < image.shape[-1] and 0 <= kp[1] < image.shape[-2]
        peak = brightest_near(image, kp)
        assert image[0, int(peak[1]), int(peak[0])] > 0.5, "the dot vanished"
        assert torch.dist(peak, kp) <= tol, (peak, kp)


@pytest.mark.parametrize("seed", range(6))
def test_pair_warper_keypoints_follow_the_dots(seed):
    warper = dlp_warper(SIZE, pairs=True, generator=torch.Generator().manual_seed(seed))
    out = warper(dot_image(DOTS), keypoints=DOTS, crop=CROP)
    assert out.image_strong.shape == out.image_light.shape == (3, SIZE - 2 * CROP, SIZE - 2 * CROP)
    assert out.flow.shape == out.grid.shape == (1, SIZE - 2 * CROP, SIZE - 2 * CROP, 2)
    assert_on_dots(out.image_light, out.keypoints_light)
    assert_on_dots(out.image_strong, out.keypoints_strong)
    # the official tuple order: strong image first, light second, then flow, grid, strong kp, light kp
    im2, im1, _, _, kp2, kp1 = out
    assert im2 is out.image_strong and kp1 is out.keypoints_light


@pytest.mark.parametrize("seed", range(4))
def test_single_warper_keypoints_follow_the_dots(seed):
    warper = dlp_warper(SIZE, pairs=False, generator=torch.Generator().manual_seed(seed))
    image, keypoints = warper(dot_image(DOTS), keypoints=DOTS, crop=CROP)
    assert image.shape == (3, 128, 128)
    assert_on_dots(image, keypoints)


def test_light_warp_is_lighter_than_strong():
    warper = dlp_warper(SIZE, pairs=True, generator=torch.Generator().manual_seed(0))
    moves_light, moves_strong = [], []
    for _ in range(8):
        out = warper(dot_image(DOTS), keypoints=DOTS, crop=0)
        moves_light.append((out.keypoints_light - DOTS).norm(dim=1).mean())
        moves_strong.append((out.keypoints_strong - out.keypoints_light).norm(dim=1).mean())
    assert torch.stack(moves_light).mean() < torch.stack(moves_strong).mean()


def test_generator_makes_warps_reproducible():
    image = torch.rand(3, 40, 40)
    first = Warper(40, 40, generator=torch.Generator().manual_seed(3))(image, keypoints=DOTS / 4)
    again = Warper(40, 40, generator=torch.Generator().manual_seed(3))(image, keypoints=DOTS / 4)
    other = Warper(40, 40, generator=torch.Generator().manual_seed(4))(image, keypoints=DOTS / 4)
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    assert not torch.equal(first.image_strong, other.image_strong)
    # a per-call generator overrides the warper's own
    call = Warper(40, 40)(image, generator=torch.Generator().manual_seed(3))
    assert torch.equal(call.image_light, first.image_light)


def test_zero_strength_warp_is_identity():
    warper = Warper(32, 32, 0, 0, 0, 0, 0)
    image, kp = torch.rand(2, 3, 32, 32), torch.tensor([[3.0, 7.0], [20.0, 11.0]])
    out = warper(image, keypoints=kp, crop=2)
    torch.testing.assert_close(out.image_strong, image[..., 2:30, 2:30], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.keypoints_light, kp - 2)
    torch.testing.assert_close(out.flow, torch.zeros(1, 28, 28, 2), atol=1e-4, rtol=0)
    assert out.image_strong.shape == (2, 3, 28, 28)  # batched input keeps its rank


def test_random_weights_shape_and_affine_rows():
    w = random_tps_weights(100, 0, 0, 0, 0, 0)
    assert w.shape == (103, 2)
    torch.testing.assert_close(w[100:], torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))


def test_warper_bad_input(tmp_path):
    warper = WarperSingle(32, 32)
    with pytest.raises(DatasetError, match=r"expects images \[C, 32, 32\]"):
        warper(torch.rand(3, 16, 16))
    with pytest.raises(DatasetError, match=r"keypoints must be \[K, 2\]"):
        warper(torch.rand(3, 32, 32), keypoints=torch.zeros(4))
    with pytest.raises(DatasetError, match="crop must be in"):
        warper(torch.rand(3, 32, 32), crop=16)
    # datasets check the warper size: 64-pixel faces are warped at 80 (64 + 2 x 8)
    root = tmp_path / "lm"
    (root / "images").mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (20, 24)).save(root / "images" / "a.png")
    (root / "landmarks.csv").write_text("image,x,y\na.png,10,12\n")
    with pytest.raises(DatasetError, match="build it with H = W = 80"):
        LandmarkFolderDataset(root, image_size=64, pair_warper=Warper(64, 64))
    item = LandmarkFolderDataset(root, image_size=64, pair_warper=dlp_warper(80, pairs=True))[0]
    assert item["image"].shape == item["image_prior"].shape == (3, 64, 64)
