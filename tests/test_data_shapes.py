"""ShapesDataset: reproducibility, ground truth consistent with the pixels, collation, validation."""


import pytest
import torch
from torch.utils.data import DataLoader, default_collate

from dlp.config import ConfigError
from dlp.data.shapes import SHAPE_KINDS, ShapesDataset, pixels_to_kp

CYAN = torch.tensor([0.0, 1.0, 1.0]).view(3, 1, 1)


def test_item_format_and_dtypes():
    ds = ShapesDataset(4, seed=1)
    item = ds[0]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert item["centers"].shape == (5, 2) and item["centers"].dtype == torch.float32
    assert item["boxes"].shape == (5, 4) and item["boxes"].dtype == torch.float32
    assert item["kinds"].shape == (5,) and item["kinds"].dtype == torch.int64
    assert isinstance(item["count"], int) and 2 <= item["count"] <= 5
    c = item["count"]
    assert torch.isnan(item["centers"][c:]).all() and torch.isnan(item["boxes"][c:]).all()
    assert (item["kinds"][c:] == -1).all() and (item["kinds"][:c] >= 0).all()
    assert "masks" not in item
    assert len(ds) == 4 and ds[-1]["count"] == ds[3]["count"]
    with pytest.raises(IndexError):
        ds[4]


def test_reproducible_and_independent_of_access_order():
    a = ShapesDataset(20, seed=3)
    b = ShapesDataset(20, seed=3)
    later = b[17]["image"].clone()
    for i in (5, 17, 0):
        assert torch.equal(a[i]["image"], b[i]["image"])
    assert torch.equal(a[17]["image"], later)
    assert not torch.equal(a[0]["image"], a[1]["image"])
    assert not torch.equal(a[0]["image"], ShapesDataset(20, seed=4)[0]["image"])
    # image i does not depend on the dataset length
    assert torch.equal(ShapesDataset(1000, seed=3)[5]["image"], a[5]["image"])


def test_ground_truth_matches_pixels():
    ds = ShapesDataset(60, seed=0, return_masks=True)
    counts = []
    for i in range(len(ds)):
        item = ds[i]
        img, masks, c = item["image"], item["masks"], item["count"]
        counts.append(c)
        assert masks.shape == (64, 64) and int(masks.max()) == c
        assert ((img >= 0) & (img <= 1)).all()
        bg = masks == 0
        assert torch.equal(img[:, bg], CYAN.view(3, 1).expand(3, int(bg.sum())))
        for j in range(c):
            on = masks == j + 1
            rows, cols = torch.nonzero(on, as_tuple=True)
            extent = max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)
            if item["kinds"][j] == SHAPE_KINDS.index("ellipse"):
                assert 6 <= extent <= 13  # a thin ellipse at 45 degrees spans less than its major axis
            else:
                assert 11 <= extent <= 13
            x0, y0, x1, y1 = item["boxes"][j].tolist()
            assert (x0, y0, x1, y1) == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            torch.testing.assert_close(item["centers"][j], torch.stack([rows.float().mean(), cols.float().mean()]))
            colour = img[:, on]  # one colour per shape, channels in {0..200}/255
            assert (colour == colour[:, :1]).all()
            level = colour[:, 0] * 255
            assert torch.allclose(level, level.round(), atol=1e-4) and (level <= 200 + 1e-4).all()
    assert min(counts) == 2 and max(counts) == 5


def test_all_kinds_appear_and_subset():
    kinds = torch.cat([ShapesDataset(40, seed=2)[i]["kinds"] for i in range(40)])
    assert set(kinds[kinds >= 0].tolist()) == set(range(len(SHAPE_KINDS)))
    only = ShapesDataset(10, kinds=("circle",), seed=2)
    k = torch.cat([only[i]["kinds"] for i in range(10)])
    assert set(k[k >= 0].tolist()) == {SHAPE_KINDS.index("circle")}


def test_collate_and_dataloader_workers():
    ds = ShapesDataset(12, seed=0, cache=True)
    batch = default_collate([ds[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, 64, 64) and batch["centers"].shape == (4, 5, 2)
    assert batch["count"].shape == (4,)
    loader = DataLoader(ShapesDataset(12, seed=0), batch_size=6, num_workers=2)
    first = next(iter(loader))
    assert torch.equal(first["image"], torch.stack([ds[i]["image"] for i in range(6)]))
    assert ds[2] is not ds[2] and torch.equal(ds[2]["image"], ds[2]["image"])  # cached copies of the dict


def test_centers_to_particle_convention():
    item = ShapesDataset(1, image_size=32, min_size=5, max_size=7, seed=0)[0]
    kp = pixels_to_kp(item["centers"][: item["count"]], 32)
    assert ((kp >= -1) & (kp <= 1)).all()
    torch.testing.assert_close((kp + 1) / 2 * 31, item["centers"][: item["count"]])


def test_overlap_and_options():
    ds = ShapesDataset(5, image_size=32, min_shapes=5, max_shapes=5, allow_overlap=True, background=(1, 1, 1), seed=0)
    item = ds[0]
    assert item["count"] == 5  # with overlap every shape is placed
    # without overlap, a tiny image cannot host 8 big shapes: some are skipped, never drawn outside
    crowded = ShapesDataset(3, image_size=24, min_shapes=8, max_shapes=8, min_size=11, max_size=11, num_trials=5)
    for i in range(3):
        c = crowded[i]["count"]
        assert 1 <= c < 8 and (crowded[i]["boxes"][:c] <= 24).all()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(min_shapes=3, max_shapes=2),
        dict(min_size=0),
        dict(max_size=80),
        dict(kinds=("hexagon",)),
        dict(kinds=()),
        dict(background=(0, 2, 1)),
        dict(num_images=-1),
    ],
)
def test_invalid_arguments(kwargs):
    args = dict(num_images=4) | kwargs
    with pytest.raises(ConfigError):
        ShapesDataset(**args)
