"""Video data: `prepare_*` (CLEVRER, Traffic, generic; videos and frame folders), the `dlp prepare` CLI,
FrameArrayDataset splits and pairs, build_dataset resolution, and failures that leave no output behind."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dlp.data import DatasetError, FrameArrayDataset, build_dataset, prepare_clevrer, prepare_traffic, prepare_video
from dlp.data.common import crop_resize
from dlp.data.cli import configure_parser
from dlp.data.video import traffic_box

pytestmark = pytest.mark.usefixtures("single_thread")

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CLEVRER_VIDEOS = DATA / "clevrer-mini" / "videos"
TRAFFIC = DATA / "traffic-mini"

needs_clevrer = pytest.mark.skipif(not CLEVRER_VIDEOS.is_dir(), reason="no shared clevrer-mini")
needs_traffic = pytest.mark.skipif(not TRAFFIC.is_dir(), reason="no shared traffic-mini")


def decode_frame(video: Path, index: int) -> Image.Image:
    """Frame `index` (0-based) of a video, decoded independently of the library."""
    import av

    with av.open(str(video)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == index:
                return frame.to_image()
    raise AssertionError(f"{video} has no frame {index}")


def encoded_frames(root: Path, videos: int, frames: int, *, flat: bool = False) -> Path:
    """Synthetic 8x8 frame folders whose pixels encode (video, frame number): red = video, green = frame (1-based).
    One sub-folder per video, or one flat folder in the official CLEVRER naming `f_<video*1000 + frame>.png`."""
    for v in range(videos):
        folder = root if flat else root / f"video_{v:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(1, frames + 1):
            name = f"f_{v * 1000 + n}.png" if flat else f"{n}.png"
            Image.new("RGB", (8, 8), (10 * v, n, 0)).save(folder / name)
    return root


def codes(array: np.ndarray) -> list[tuple[int, int]]:
    """(video, frame number) of every frame of an encoded array."""
    return [(int(f[0, 0, 0]) // 10, int(f[0, 0, 1])) for f in array]


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ----------------------------------------------------------------------------------------------------------------
# CLEVRER

@pytest.fixture(scope="module")
def clevrer_npy(tmp_path_factory):
    if not CLEVRER_VIDEOS.is_dir():
        pytest.skip("no shared clevrer-mini")
    root = tmp_path_factory.mktemp("clevrer")
    (root / "videos").mkdir()
    for name in ("video_00000.mp4", "video_10000.mp4"):
        (root / "videos" / name).symlink_to(CLEVRER_VIDEOS / name)
    out = root / "out" / "clevrer_img32np_fs3.npy"
    spans = prepare_clevrer(root / "videos", out, image_size=32, frameskip=3, start_frame=26, progress=False)
    assert [tuple(s) for s in spans] == [("video_00000", 0, 34), ("video_10000", 34, 34)]
    return out


def test_prepare_clevrer_frame_arithmetic(clevrer_npy):
    frames = np.load(clevrer_npy)
    # 128 frames, numbers 27..128 kept (102), every 3rd -> 34 per video
    assert frames.shape == (68, 32, 32, 3) and frames.dtype == np.uint8
    sidecar = json.loads(clevrer_npy.with_suffix(".json").read_text())
    assert sidecar["num_frames"] == 68 and [v["count"] for v in sidecar["videos"]] == [34, 34]
    assert [v["offset"] for v in sidecar["videos"]] == [0, 34]
    # row 0 = frame number 27 (index 26) of the first video, row 35 = frame 30 of the second; full frame squashed
    for row, video, index in ((0, "video_00000.mp4", 26), (35, "video_10000.mp4", 29), (67, "video_10000.mp4", 125)):
        expected = np.asarray(decode_frame(CLEVRER_VIDEOS / video, index).resize((32, 32), Image.BICUBIC))
        np.testing.assert_array_equal(frames[row], expected)
    assert listing(clevrer_npy.parent) == ["clevrer_img32np_fs3.json", "clevrer_img32np_fs3.npy"]


def test_frame_dataset_splits_by_video_and_pairs_stay_inside(clevrer_npy):
    train = FrameArrayDataset(clevrer_npy, split="train")
    valid = FrameArrayDataset(clevrer_npy, split="valid")
    assert len(train) == len(valid) == 34
    assert {train[i]["video"] for i in range(34)} == {0} and {valid[i]["video"] for i in range(34)} == {1}
    item = valid[0]
    assert item["image"].shape == (3, 32, 32) and item["index"] == 34
    frames = np.load(clevrer_npy, mmap_mode="r")
    torch.testing.assert_close(item["image"], torch.from_numpy(frames[34].copy()).permute(2, 0, 1).float() / 255)

    pairs = FrameArrayDataset(clevrer_npy, mode="pairs")
    assert len(pairs) == 66  # 33 consecutive pairs per video, none across the boundary
    for i in range(len(pairs)):
        item = pairs[i]
        assert item["index_prior"] == item["index"] - 1 and item["index"] != 34
        assert (item["index"] < 34) == (item["index_prior"] < 34)
    item = pairs[40]
    torch.testing.assert_close(item["image_prior"], FrameArrayDataset(clevrer_npy)[item["index_prior"]]["image"])
    assert FrameArrayDataset(clevrer_npy, image_size=16)[0]["image"].shape == (3, 16, 16)


def test_build_dataset_clevrer_resolution(clevrer_npy, tmp_path):
    ds = build_dataset("clevrer", data_root=clevrer_npy.parent, image_size=32, split="valid")
    assert len(ds) == 34 and ds[0]["index"] == 34
    assert len(build_dataset("clevrer", data_root=clevrer_npy, image_size=32, split="test")) == 34  # test = valid
    pairs = build_dataset("clevrer", data_root=clevrer_npy, image_size=32, use_pairs=True)
    assert len(pairs) == 33 and "image_prior" in pairs[0]
    tps = build_dataset("clevrer", data_root=clevrer_npy, image_size=32, use_tps=True, use_pairs=True)
    assert tps[0]["image"].shape == tps[0]["image_prior"].shape == (3, 32, 32)
    # the official file pair: one array per split
    official = tmp_path / "official"
    official.mkdir()
    frames = np.load(clevrer_npy)
    np.save(official / "clevrer_img32np_fs3_train.npy", frames[:20])
    np.save(official / "clevrer_img32np_fs3_valid.npy", frames[20:25])
    assert len(build_dataset("clevrer", data_root=official, image_size=32, split="train")) == 20
    assert len(build_dataset("clevrer", data_root=official, image_size=32, split="valid")) == 5
    assert len(build_dataset("clevrer", data_root=official / "clevrer_img32np_fs3_train.npy", image_size=32,
                             split="valid")) == 5
    # raw videos are not a dataset yet
    with pytest.raises(DatasetError, match="raw videos .* run `dlp prepare clevrer"):
        build_dataset("clevrer", data_root=clevrer_npy.parent.parent / "videos", image_size=32)
    np.save(official / "other.npy", frames[:3])
    np.save(official / "more.npy", frames[:3])
    with pytest.raises(DatasetError, match="several frame arrays"):
        build_dataset("clevrer", data_root=official, image_size=32, split=None)


def test_prepare_keeps_phase_per_video_and_official_flat_names(tmp_path):
    sub = encoded_frames(tmp_path / "sub", videos=2, frames=30)
    flat = encoded_frames(tmp_path / "flat", videos=2, frames=30, flat=True)
    kept = [6, 10, 14, 18, 22, 26, 30]  # numbers > 5, every 4th, restarting in each video
    for source in (sub, flat):
        out = tmp_path / f"{source.name}.npy"
        spans = prepare_clevrer(source, out, image_size=8, frameskip=4, start_frame=5, progress=False)
        assert [s.count for s in spans] == [7, 7]
        assert codes(np.load(out)) == [(0, n) for n in kept] + [(1, n) for n in kept]


# ----------------------------------------------------------------------------------------------------------------
# Traffic and generic videos

def test_traffic_box():
    assert traffic_box(512, 512) == (60, 0, 480, 420)  # the official crop
    left, top, right, bottom = traffic_box(320, 240)
    assert top == 0 and bottom == pytest.approx(240 * 420 / 512) and right - left == pytest.approx(bottom)
    assert left == pytest.approx((320 - 196.875) * 60 / 92)


@needs_traffic
def test_prepare_traffic_video(tmp_path):
    out = tmp_path / "traffic.npy"
    spans = prepare_traffic(TRAFFIC / "video02.avi", out, image_size=32, frameskip=3, progress=False)
    frames = np.load(out)
    assert frames.shape == (250, 32, 32, 3) and spans[0].count == 250  # 748 decoded frames, every 3rd
    first = decode_frame(TRAFFIC / "video02.avi", 3)  # row 1 = the 4th frame
    expected = crop_resize(first, traffic_box(*first.size), 32, Image.BICUBIC)
    np.testing.assert_array_equal(frames[1], np.asarray(expected))
    ds = FrameArrayDataset(out, split="train")  # one video: temporal 90/10 split
    assert len(ds) == 225 and len(FrameArrayDataset(out, split="valid")) == 25


@needs_traffic
def test_cli_prepare_traffic_frame_folder(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="dlp")
    configure_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "frames16.npy"
    args = parser.parse_args(["prepare", "traffic", str(TRAFFIC / "frames"), str(out), "--image-size", "16",
                              "--no-progress"])
    assert args.func(args) == 0 and "wrote 17 frames from 1 video" in capsys.readouterr().out
    frames = np.load(out)
    assert frames.shape == (17, 16, 16, 3)
    # files are ordered by their integer stem (1, 4, 7, ... not 1, 10, 11, ...)
    img = Image.open(TRAFFIC / "frames" / "4.png").convert("RGB")
    np.testing.assert_array_equal(frames[1], np.asarray(crop_resize(img, traffic_box(*img.size), 16, Image.BICUBIC)))
    ds = build_dataset("traffic", data_root=tmp_path, image_size=16, split="valid")
    assert len(ds) == 2  # 17 frames: int(0.9 * 17) = 15 train, 2 valid

    args = parser.parse_args(["prepare", "clevrer", "src", "o.npy"])
    assert (args.image_size, args.frameskip, args.start_frame) == (128, 3, 26)
    args = parser.parse_args(["prepare", "video", "src", "o.npy", "--crop", "none", "--frameskip", "2"])
    assert (args.crop, args.frameskip, args.start_frame) == ("none", 2, 0)


def test_prepare_video_generic_crop(tmp_path):
    src = tmp_path / "clip"
    src.mkdir()
    for n in range(3):  # 12x8 frames: left third red, centre green, right third blue
        pixels = np.zeros((8, 12, 3), np.uint8)
        pixels[:, :2, 0] = pixels[:, 2:10, 1] = pixels[:, 10:, 2] = 255
        Image.fromarray(pixels).save(src / f"{n}.png")
    prepare_video(src, tmp_path / "c.npy", image_size=8, crop="center", progress=False)
    centre = np.load(tmp_path / "c.npy")
    assert centre.shape == (3, 8, 8, 3) and (centre[..., 1] == 255).all() and (centre[..., [0, 2]] == 0).all()
    prepare_video(src, tmp_path / "n.npy", image_size=8, crop="none", progress=False)
    assert np.load(tmp_path / "n.npy")[0, :, 0, 0].min() > 100  # squashed: the red edge is still there


# ----------------------------------------------------------------------------------------------------------------
# bad input

def test_failed_prepare_leaves_nothing(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    if CLEVRER_VIDEOS.is_dir():
        (videos / "video_00000.mp4").symlink_to(CLEVRER_VIDEOS / "video_00000.mp4")
    (videos / "video_00001.mp4").write_bytes(b"\x00\x01 definitely not a video" * 100)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(DatasetError, match=r"cannot decode video .*video_00001\.mp4"):
        prepare_clevrer(videos, out_dir / "c.npy", image_size=8, progress=False)
    assert listing(out_dir) == []

    frames = encoded_frames(tmp_path / "short", videos=1, frames=5)
    with pytest.raises(DatasetError, match="no frames were kept .*lower it"):
        prepare_clevrer(frames, out_dir / "c.npy", image_size=8, progress=False)
    (frames / "video_00000" / "3.png").write_bytes(b"broken")
    with pytest.raises(DatasetError, match=r"cannot read image .*3\.png"):
        prepare_video(frames, out_dir / "v.npy", image_size=8, progress=False)
    assert listing(out_dir) == []

    with pytest.raises(DatasetError, match="must end in .npy"):
        prepare_video(frames, out_dir / "v.bin", image_size=8)
    with pytest.raises(DatasetError, match="frameskip must be an integer >= 1"):
        prepare_video(frames, out_dir / "v.npy", image_size=8, frameskip=0)
    with pytest.raises(DatasetError, match="does not exist"):
        prepare_traffic(tmp_path / "missing", out_dir / "t.npy")
    with pytest.raises(DatasetError, match="no videos .* and no frame images"):
        prepare_traffic(out_dir, out_dir / "t.npy")


def test_frame_dataset_bad_arrays(tmp_path):
    np.save(tmp_path / "float.npy", np.zeros((4, 8, 8, 3), np.float32))
    with pytest.raises(DatasetError, match=r"holds float32 \[4, 8, 8, 3\]; expected uint8 RGB frames"):
        FrameArrayDataset(tmp_path / "float.npy")
    np.save(tmp_path / "gray.npy", np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(DatasetError, match=r"expected uint8 RGB frames \[N, H, W, 3\]"):
        FrameArrayDataset(tmp_path / "gray.npy")
    (tmp_path / "junk.npy").write_bytes(b"junk")
    # numpy's own message suggests `allow_pickle`, i.e. loading the file unsafely: it must not reach the user
    with pytest.raises(DatasetError, match=r"junk.npy is not a readable .npy frame array") as err:
        FrameArrayDataset(tmp_path / "junk.npy")
    assert "pickle" not in str(err.value)

    frames = np.zeros((20, 8, 8, 3), np.uint8)
    frames[:, 0, 0, 0] = np.arange(20)
    np.save(tmp_path / "plain.npy", frames)  # no sidecar: temporal split, pairs inside each part
    train = FrameArrayDataset(tmp_path / "plain.npy", "train")
    valid = FrameArrayDataset(tmp_path / "plain.npy", "valid")
    assert (len(train), len(valid)) == (18, 2) and valid[0]["index"] == 18
    assert len(FrameArrayDataset(tmp_path / "plain.npy", "valid", mode="pairs")) == 1
    (tmp_path / "plain.json").write_text(json.dumps({"videos": [{"name": "a", "offset": 0, "count": 19}]}))
    with pytest.raises(DatasetError, match="describes 19 frames but plain.npy holds 20; re-run"):
        FrameArrayDataset(tmp_path / "plain.npy")
    with pytest.raises(DatasetError, match="unknown mode 'triples'"):
        FrameArrayDataset(tmp_path / "float.npy", mode="triples")
