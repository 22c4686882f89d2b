"""Video clips for DDLP: the generated bouncing balls (determinism, ground truth vs pixels, physics) and the clip
datasets over prepared frame arrays and the official OBJ3D / CLEVRER / PHYRE frame folders (windows never cross
episodes, held-out clips are whole episodes, layouts, errors), plus one run on the shared clevrer-mini videos."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import default_collate

from dlp.config import ConfigError
from dlp.data.registry import build_dataset
from dlp.data.balls import (
    BALL_COLORS,
    BouncingBallsDataset,
    kp_to_positions,
    positions_to_kp,
)
from dlp.data.clips import EpisodeFolderClips, FrameArrayClips
from dlp.data.common import DatasetError, DatasetNotFoundError
from dlp.data.video import prepare_clevrer, prepare_video

pytestmark = pytest.mark.usefixtures("single_thread")

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CLEVRER_VIDEOS = DATA / "clevrer-mini" / "videos"


# ----------------------------------------------------------------------------------------------------------------
# bouncing balls

def pair_distances(positions: torch.Tensor) -> torch.Tensor:
    """[T, N, 2] -> [T, N, N] centre distances, inf on the diagonal."""
    d = torch.cdist(positions.double(), positions.double())
    return d + torch.diag(torch.full((positions.shape[1],), float("inf"), dtype=torch.float64))


def test_balls_item_format():
    ds = BouncingBallsDataset(5, clip_length=12, seed=0)
    item = ds[1]
    assert item["video"].shape == (12, 3, 64, 64) and item["video"].dtype == torch.float32
    assert item["positions"].shape == (12, 3, 2) and item["positions"].dtype == torch.float32
    assert item["velocities"].shape == (12, 3, 2)
    assert item["sizes"].shape == (12, 3) and torch.all(item["sizes"] == 4.0)
    assert item["ids"].shape == (12, 3) and item["ids"].dtype == torch.int64
    assert torch.equal(item["ids"], torch.arange(3).expand(12, 3))  # constant identities
    assert item["colors"].shape == (3, 3) and item["index"] == 1
    assert 0.0 <= item["video"].min() and item["video"].max() <= 1.0
    palette = {tuple(c) for c in BALL_COLORS.values()}
    assert len({tuple(c.tolist()) for c in item["colors"]}) == 3 <= len(palette)  # drawn without replacement
    assert all(tuple(c.tolist()) in palette for c in item["colors"])
    assert len(ds) == 5 and ds[-1]["index"] == 4
    with pytest.raises(IndexError):
        ds[5]
    batch = default_collate([ds[0], ds[1]])
    assert batch["video"].shape == (2, 12, 3, 64, 64) and batch["positions"].shape == (2, 12, 3, 2)


def test_balls_deterministic_per_seed_and_index():
    a = BouncingBallsDataset(30, clip_length=10, seed=3)
    b = BouncingBallsDataset(100, clip_length=10, seed=3)  # clip i does not depend on the dataset length
    later = b[17]
    for i in (5, 17, 0):
        for key in ("video", "positions", "velocities"):
            assert torch.equal(a[i][key], b[i][key])
    assert torch.equal(a[17]["video"], later["video"])
    assert not torch.equal(a[0]["video"], a[1]["video"])
    assert not torch.equal(a[0]["positions"], BouncingBallsDataset(30, clip_length=10, seed=4)[0]["positions"])
    # a longer clip continues the same trajectory
    longer = BouncingBallsDataset(30, clip_length=25, seed=3)[5]
    assert torch.equal(longer["video"][:10], a[5]["video"])


def test_balls_ground_truth_matches_pixels():
    ds = BouncingBallsDataset(12, clip_length=20, seed=1)
    size = ds.image_size
    rows = torch.arange(size, dtype=torch.float64)
    for i in range(len(ds)):
        item = ds[i]
        video, pos, colors = item["video"], item["positions"], item["colors"]
        t_len, n = pos.shape[:2]
        # the pixel under every centre has exactly that ball's colour
        idx = pos.round().long()
        under = video[torch.arange(t_len)[:, None], :, idx[..., 0], idx[..., 1]]  # [T, N, 3]
        torch.testing.assert_close(under, colors.expand(t_len, n, 3), rtol=0, atol=1e-6)
        # centres stay inside the canvas (the discs too: r - 0.5 <= centre <= H - 0.5 - r)
        assert pos.min() >= 4 - 0.5 - 1e-4 and pos.max() <= size - 0.5 - 4 + 1e-4
        kp = positions_to_kp(pos, size)
        assert kp.abs().max() <= 1
        # pixels farther than r + 0.5 from every centre are black
        dist = torch.sqrt((rows[:, None] - pos[..., 0, None, None].double()) ** 2
                          + (rows[None, :] - pos[..., 1, None, None].double()) ** 2)  # [T, N, H, W]
        far = (dist > 4.5 + 1e-3).all(dim=1)  # [T, H, W]
        assert torch.all(video.permute(0, 2, 3, 1)[far] == 0)
        # the brightness centroid of an isolated ball is its (y, x) position
        isolated = (pair_distances(pos) > 2 * 4 + 3).all(dim=2)  # [T, N]
        for t, k in zip(*torch.nonzero(isolated, as_tuple=True)):
            weight = video[t].sum(0).double() * (dist[t, k] < 5.5)
            centroid = torch.stack([(weight.sum(1) * rows).sum(), (weight.sum(0) * rows).sum()]) / weight.sum()
            torch.testing.assert_close(centroid, pos[t, k].double(), rtol=0, atol=0.05)
    # the patch renderer equals drawing the discs at every pixel
    video, positions, _, radii, colors = ds.generate(3)
    np.testing.assert_allclose(video, ds.render_dense(positions, radii, colors), atol=1e-5)


def test_balls_physics_elastic():
    ds = BouncingBallsDataset(40, clip_length=40, seed=2)
    changed = 0
    for i in range(len(ds)):
        item = ds[i]
        pos, vel = item["positions"].double(), item["velocities"].double()
        # non-overlapping first frame, and discs never sink into each other afterwards
        assert (pair_distances(pos[:1]) >= 8 - 1e-6).all()
        assert (pair_distances(pos) >= 8 - 1e-3).all()
        # equal masses: total kinetic energy is conserved (so is the mean squared speed, 3 px/frame initially)
        energy = (vel ** 2).sum(dim=(1, 2))
        torch.testing.assert_close(energy, torch.full_like(energy, 3 * 9.0), rtol=1e-5, atol=0)
        speed = vel.norm(dim=-1)  # [T, N]
        assert torch.allclose(speed[0], torch.full((3,), 3.0, dtype=torch.float64))
        # a ball's speed changes only in a frame where it touches another ball
        # (two balls close in by at most |v1 - v2| <= sqrt(2 (|v1|^2 + |v2|^2)) <= sqrt(2 * 27) < 7.5 px per frame, so a
        # pair that collides between frames t and t + 1 is within 8 + 7.5 px at both frames)
        touching = (pair_distances(pos) < 8 + 7.5).any(dim=2)
        jumps = (speed[1:] - speed[:-1]).abs() > 1e-4
        assert not (jumps & ~touching[1:] & ~touching[:-1]).any()
        changed += int(jumps.any())
        # away from walls and other balls, a ball moves by its velocity
        free = ((pos[:-1] > 12) & (pos[:-1] < 51)).all(-1) & (pair_distances(pos[:-1]) > 30).all(-1)
        torch.testing.assert_close((pos[1:] - pos[:-1])[free], vel[:-1][free], rtol=0, atol=1e-4)
    assert changed > 5  # balls do interact


def test_balls_collisions_exchange_normal_velocity():
    ds = BouncingBallsDataset(1, clip_length=30, image_size=200, num_balls=2, substeps=8)
    lo, hi = np.full((2, 1), 3.5), np.full((2, 1), 200 - 4.5)
    radii = np.full(2, 4.0)
    # head-on: the balls swap velocities
    pos, vel = ds._simulate(np.array([[100.0, 80.0], [100.0, 120.0]]), np.array([[0.0, 3.0], [0.0, -3.0]]),
                            radii, lo, hi)
    np.testing.assert_allclose(vel[-1], [[0.0, -3.0], [0.0, 3.0]], atol=1e-9)
    assert pos[-1, 0, 1] < 80 and pos[-1, 1, 1] > 120
    # oblique, one ball at rest: momentum and energy conserved, outgoing directions perpendicular
    pos, vel = ds._simulate(np.array([[100.0, 70.0], [103.0, 100.0]]), np.array([[0.0, 3.0], [0.0, 0.0]]),
                            radii, lo, hi)
    np.testing.assert_allclose(vel[-1].sum(0), [0.0, 3.0], atol=1e-9)
    np.testing.assert_allclose((vel[-1] ** 2).sum(), 9.0, atol=1e-9)
    assert abs(vel[-1, 0] @ vel[-1, 1]) < 1e-9 and np.abs(vel[-1, 1]).sum() > 0.5
    # walls reflect and keep the speed
    pos, vel = ds._simulate(np.array([[100.0, 190.0], [20.0, 20.0]]), np.array([[0.0, 3.0], [-2.0, 0.0]]),
                            radii, lo, hi)
    np.testing.assert_allclose(vel[-1], [[0.0, -3.0], [2.0, 0.0]])
    assert pos[:, :, :].min() >= 3.5 and pos.max() <= 195.5


def test_balls_kp_helpers_splits_and_errors():
    pix = torch.tensor([[0.0, 63.0], [31.5, 31.5]])
    torch.testing.assert_close(positions_to_kp(pix, 64), torch.tensor([[-1.0, 1.0], [0.0, 0.0]]))
    torch.testing.assert_close(kp_to_positions(positions_to_kp(pix, 64), 64), pix)
    train, valid, test = (build_dataset("balls", data_root=None, image_size=64, split=s, clip_length=4)
                          for s in ("train", "val", "test"))
    assert (len(train), len(valid), len(test)) == (5000, 200, 200)
    # the held-out clips never repeat training clips (valid and test are the same held-out set, as for shapes)
    assert float(train[0]["positions"].sum()) != float(valid[0]["positions"].sum())
    assert float(valid[0]["positions"].sum()) == float(test[0]["positions"].sum())
    small = build_dataset("balls", data_root=None, image_size=32, split="valid", clip_length=4, num_images=7)
    assert len(small) == 7 and len(small[0]["video"]) == 4
    # without a clip length: single frames with their ground truth, like shapes
    frame = build_dataset("balls", data_root=None, image_size=32, split="test", num_images=2)[0]
    assert frame["image"].shape == (3, 32, 32) and frame["centers"].shape == (3, 2) and frame["boxes"].shape == (3, 4)
    with pytest.raises(DatasetError, match="split"):
        build_dataset("balls", data_root=None, image_size=32, split="holdout")
    with pytest.raises(DatasetError, match="holds still images, but this model trains on video clips"):
        build_dataset("shapes", data_root=None, image_size=32, clip_length=4)
    with pytest.raises(ConfigError, match="crowd"):
        BouncingBallsDataset(1, num_balls=40)
    with pytest.raises(ConfigError, match="radius"):
        BouncingBallsDataset(1, radius=0.2)
    other = BouncingBallsDataset(3, clip_length=5, image_size=32, num_balls=6, radius=(2.0, 3.0))[2]
    assert other["video"].shape == (5, 3, 32, 32) and other["sizes"].min() >= 2 and other["sizes"].max() <= 3


def test_balls_fast():
    ds = BouncingBallsDataset(50, clip_length=20, seed=0)
    ds[0]
    start = time.perf_counter()
    for i in range(20):
        ds[i]
    assert (time.perf_counter() - start) / 20 < 0.01


# ----------------------------------------------------------------------------------------------------------------
# prepared frame arrays

def encoded_videos(root: Path, lengths: list[int]) -> Path:
    """Frame folders whose 8x8 pixels encode (video, frame): red = 10 * video, green = frame (0-based)."""
    for v, length in enumerate(lengths):
        folder = root / f"video_{v:03d}"
        folder.mkdir(parents=True)
        for k in range(length):
            Image.new("RGB", (8, 8), (10 * v, k, 0)).save(folder / f"{k + 1}.png")
    return root


def decode(video: torch.Tensor) -> list[tuple[int, int]]:
    """(video, frame) of every frame of an encoded clip [T, 3, H, W]."""
    codes = (video[:, :2, 0, 0] * 255).round().long()
    return [(int(r) // 10, int(g)) for r, g in codes]


@pytest.fixture(scope="module")
def encoded_npy(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    encoded_videos(root / "src", [7, 4, 6])
    out = root / "enc.npy"
    spans = prepare_video(root / "src", out, image_size=8, progress=False)
    assert [s.count for s in spans] == [7, 4, 6]
    return out


def test_frame_array_train_windows_stay_inside_one_video(encoded_npy):
    train = FrameArrayClips(encoded_npy, "train", clip_length=5)
    # videos 0 and 1 are training videos (the last 10 %, at least one video, is held out); video 1 (4 frames) is
    # shorter than T = 5 and skipped: 7 - 5 + 1 windows
    assert len(train) == 3 and train.num_episodes_used == 1
    seen = []
    for i in range(len(train)):
        item = train[i]
        assert item["video"].shape == (5, 3, 8, 8) and item["index"] == i
        codes = decode(item["video"])
        assert {v for v, _ in codes} == {item["episode"]} == {0}
        assert [f for _, f in codes] == list(range(item["start"], item["start"] + 5))
        seen.append(item["start"])
    assert seen == [0, 1, 2]
    train3 = FrameArrayClips(encoded_npy, "train", clip_length=3)
    assert len(train3) == 5 + 2
    for i in range(len(train3)):
        codes = decode(train3[i]["video"])
        assert len({v for v, _ in codes}) == 1  # never across two videos
        assert [f for _, f in codes] == list(range(codes[0][1], codes[0][1] + 3))
    batch = default_collate([train3[0], train3[6]])
    assert batch["video"].shape == (2, 3, 3, 8, 8) and batch["episode"].tolist() == [0, 1]
    assert len(FrameArrayClips(encoded_npy, None, clip_length=3)) == 5 + 2 + 4


def test_frame_array_heldout_clips_are_whole_videos(encoded_npy):
    for split in ("valid", "val", "test"):
        valid = FrameArrayClips(encoded_npy, split, clip_length=5)
        assert len(valid) == 1
        item = valid[0]
        assert decode(item["video"]) == [(2, k) for k in range(5)] and item["episode"] == 2 and item["start"] == 0
    whole = FrameArrayClips(encoded_npy, "valid", clip_length=None)
    assert len(whole) == 1 and decode(whole[0]["video"]) == [(2, k) for k in range(6)]
    assert FrameArrayClips(encoded_npy, "valid", clip_length=2, image_size=4)[0]["video"].shape == (2, 3, 4, 4)
    assert len(FrameArrayClips(encoded_npy, "valid", clip_length=2, every_window=True)) == 5


def test_frame_array_without_sidecar_is_split_in_time(tmp_path):
    frames = np.zeros((40, 4, 4, 3), dtype=np.uint8)
    frames[..., 1] = np.arange(40)[:, None, None]
    np.save(tmp_path / "stream.npy", frames)
    train = FrameArrayClips(tmp_path / "stream.npy", "train", clip_length=4)
    assert len(train) == 36 - 4 + 1
    last = train[len(train) - 1]
    assert decode(last["video"]) == [(0, k) for k in range(32, 36)]
    valid = FrameArrayClips(tmp_path / "stream.npy", "valid", clip_length=2)  # held-out frames 36..39 in chunks
    assert [decode(valid[i]["video"]) for i in range(len(valid))] == [[(0, 36), (0, 37)], [(0, 38), (0, 39)]]
    assert [valid[i]["start"] for i in range(2)] == [36, 38]
    assert len(FrameArrayClips(tmp_path / "stream.npy", "valid", clip_length=None)[0]["video"]) == 4
    with pytest.raises(DatasetError, match=r"long enough for clips of 5 frames .* have 4 frames"):
        FrameArrayClips(tmp_path / "stream.npy", "valid", clip_length=5)
    with pytest.raises(DatasetError, match="clip_length must be a positive integer"):
        FrameArrayClips(tmp_path / "stream.npy", "valid", clip_length=0)


def test_frame_array_errors(encoded_npy, tmp_path):
    with pytest.raises(DatasetError, match=r"long enough for clips of 8 frames .* 4 to 7 frames"):
        FrameArrayClips(encoded_npy, "train", clip_length=8)
    with pytest.raises(DatasetError, match="split"):
        FrameArrayClips(encoded_npy, "holdout", clip_length=2)
    for split in ("train", "valid"):
        with pytest.raises(DatasetError, match="clip_length must be a positive integer"):
            FrameArrayClips(encoded_npy, split, clip_length=0)
    with pytest.raises(DatasetNotFoundError):
        FrameArrayClips(tmp_path / "missing.npy", "train", clip_length=2)


# ----------------------------------------------------------------------------------------------------------------
# official episode folders

def episode_tree(root: Path, split_folder: str, lengths: dict[str, int], name: str, *, mode: str = "RGB",
                 size: int = 8, background: int = 0) -> Path:
    """`root/split_folder/{episode}/name.format(k)` frames encoding (episode, frame): red = 10 * episode number,
    green = 10 + k, on a `background` border."""
    for episode, length in lengths.items():
        folder = root / split_folder / episode
        folder.mkdir(parents=True)
        for k in range(length):
            color = (10 * int(episode), 10 + k, 0) + ((128,) if mode == "RGBA" else ())
            img = Image.new(mode, (size, size), (background,) * len(color))
            img.paste(Image.new(mode, (size - 2, size - 2), color), (1, 1))
            img.save(folder / name.format(k=k))
    return root


def codes_of(video: torch.Tensor, invert: bool = False) -> list[tuple[int, int]]:
    px = (video[:, :2, 3, 3] * 255).round().long()
    if invert:
        px = 255 - px
    return [(int(r) // 10, int(g) - 10) for r, g in px]


def test_obj3d_layout(tmp_path):
    root = tmp_path / "obj3d"
    episode_tree(root, "train", {"0": 12, "2": 5, "10": 12}, "test_{k}.png", mode="RGBA")
    episode_tree(root, "val", {"3": 12, "1": 4}, "test_{k}.png", mode="RGBA")
    (root / "train" / "0" / "notes.txt").write_text("ignored")
    train = EpisodeFolderClips(root, "train", clip_length=10, image_size=8, layout="obj3d")
    # episodes sorted numerically (0, 2, 10); 2 is too short; frames sorted by k (test_10 after test_9)
    assert train.episode_names == ["0", "2", "10"] and len(train) == 3 + 3
    for i in range(len(train)):
        item = train[i]
        assert item["video"].shape == (10, 3, 8, 8)
        codes = codes_of(item["video"])
        episode = int(train.episode_names[item["episode"]])
        assert codes == [(episode, k) for k in range(item["start"], item["start"] + 10)]
    # alpha is dropped, not composited; the border stays black
    assert train[0]["video"][0, :, 0, 0].tolist() == [0.0, 0.0, 0.0]
    for split in ("valid", "val"):
        valid = EpisodeFolderClips(root, split, clip_length=10, image_size=8, layout="obj3d")
        assert len(valid) == 1 and codes_of(valid[0]["video"]) == [(3, k) for k in range(10)]
    whole = EpisodeFolderClips(root, "val", clip_length=None, image_size=8, layout="obj3d")
    assert [len(whole[i]["video"]) for i in range(len(whole))] == [4, 12]
    # resized with PIL bicubic in RGBA, RGB kept
    small = EpisodeFolderClips(root, "val", clip_length=2, image_size=5, layout="obj3d")[0]["video"]
    with Image.open(root / "val" / "1" / "test_1.png") as img:  # episode 1 sorts first
        expected = np.asarray(img.resize((5, 5), Image.Resampling.BICUBIC))[..., :3]
    np.testing.assert_array_equal((small[1].permute(1, 2, 0) * 255).round().byte().numpy(), expected)
    assert EpisodeFolderClips(root, "train", clip_length=4, layout="obj3d").image_size == 64  # official default


def test_clevrer_layout_and_val_alias(tmp_path):
    root = tmp_path / "clevrer"
    episode_tree(root, "train", {"1": 6, "0": 6}, "{k}.png")
    episode_tree(root, "val", {"5": 6}, "{k}.png")  # 'val' on disk also serves split 'valid'
    train = EpisodeFolderClips(root, "train", clip_length=4, image_size=8, layout="clevrer")
    assert len(train) == 6
    assert [(train[i]["episode"], train[i]["start"]) for i in range(6)] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1),
                                                                          (1, 2)]
    assert codes_of(train[4]["video"]) == [(1, 1), (1, 2), (1, 3), (1, 4)]
    valid = EpisodeFolderClips(root, "valid", clip_length=4, image_size=8, layout="clevrer")
    assert len(valid) == 1 and codes_of(valid[0]["video"]) == [(5, k) for k in range(4)]
    batch = default_collate([train[0], train[5]])
    assert batch["video"].shape == (2, 4, 3, 8, 8) and batch["start"].tolist() == [0, 2]


def test_phyre_layout_inverts_colours(tmp_path):
    root = tmp_path / "phyre"
    episode_tree(root, "train", {"0": 5, "1": 3}, "frame_{k}.png", background=255)
    episode_tree(root, "test", {"2": 4}, "{k}.png", background=255)
    train = EpisodeFolderClips(root, "train", clip_length=4, image_size=8, layout="phyre")
    assert len(train) == 2  # episode 1 (3 frames) is skipped
    video = train[1]["video"]
    assert torch.all(video[:, :, 0, 0] == 0)  # white background -> black
    assert codes_of(video, invert=True) == [(0, k) for k in range(1, 5)]
    with Image.open(root / "train" / "0" / "frame_1.png") as img:
        expected = 1.0 - torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(video[0], expected, rtol=0, atol=0)
    test = EpisodeFolderClips(root, "test", clip_length=None, image_size=8, layout="phyre")
    assert len(test) == 1 and codes_of(test[0]["video"], invert=True) == [(2, k) for k in range(4)]


def test_episode_folder_errors(tmp_path):
    root = tmp_path / "data"
    episode_tree(root, "train", {"0": 3}, "test_{k}.png")
    with pytest.raises(DatasetNotFoundError, match=r"nowhere does not exist; layout 'obj3d' expects"):
        EpisodeFolderClips(tmp_path / "nowhere", "train", 2, layout="obj3d")
    with pytest.raises(DatasetNotFoundError, match=r"has no val/ or valid/ folder; layout 'obj3d' expects "
                                                   r"\{root\}/\{train,val,test\}/\{episode\}/test_\{k\}\.png"):
        EpisodeFolderClips(root, "valid", 2, layout="obj3d")
    with pytest.raises(DatasetError, match=r"no episode folder of .*train holds frames named \{k\}\.png; "
                                           r"layout 'clevrer' expects"):
        EpisodeFolderClips(root, "train", 2, layout="clevrer")
    (root / "test").mkdir()
    Image.new("RGB", (4, 4)).save(root / "test" / "0.png")
    with pytest.raises(DatasetError, match="test holds frames directly instead of episode folders"):
        EpisodeFolderClips(root, "test", 2, layout="clevrer")
    (root / "valid").mkdir()
    with pytest.raises(DatasetError, match="valid holds no episode folders; layout 'phyre' expects"):
        EpisodeFolderClips(root, "val", 2, layout="phyre")
    with pytest.raises(DatasetError, match="unknown episode layout 'movi'"):
        EpisodeFolderClips(root, "train", 2, layout="movi")
    with pytest.raises(DatasetError, match=r"long enough for clips of 5 frames .* have 3 frames\); lower"):
        EpisodeFolderClips(root, "train", 5, layout="obj3d")
    with pytest.raises(DatasetError, match="split"):
        EpisodeFolderClips(root, None, 2, layout="obj3d")
    bad = root / "train" / "0" / "test_1.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="cannot read frame"):
        EpisodeFolderClips(root, "train", 2, image_size=8, layout="obj3d")[0]


# ----------------------------------------------------------------------------------------------------------------
# real data

@pytest.mark.skipif(not CLEVRER_VIDEOS.is_dir(), reason="no shared clevrer-mini")
def test_clevrer_mini_clips(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("video_00000.mp4", "video_10000.mp4"):
        (videos / name).symlink_to(CLEVRER_VIDEOS / name)
    out = tmp_path / "clevrer.npy"
    prepare_clevrer(videos, out, image_size=32, progress=False)  # 34 frames per video
    frames = np.load(out)
    train = FrameArrayClips(out, "train", clip_length=8)
    assert len(train) == 34 - 8 + 1
    item = train[5]
    assert item["video"].shape == (8, 3, 32, 32) and item["episode"] == 0 and item["start"] == 5
    expected = torch.from_numpy(frames[5:13].copy()).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(item["video"], expected, rtol=0, atol=0)
    valid = FrameArrayClips(out, "valid", clip_length=None, image_size=16)
    assert len(valid) == 1 and valid[0]["video"].shape == (34, 3, 16, 16) and valid[0]["episode"] == 1
    assert 0 <= valid[0]["video"].min() and valid[0]["video"].max() <= 1 and valid[0]["video"].std() > 0.01
