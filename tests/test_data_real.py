"""Real still-image data: landmark folders (celeba-mini), the DVE CelebA/MAFL layout, image folders, build_dataset."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dlp.data import (
    CelebADataset,
    DatasetError,
    DatasetNotFoundError,
    ImageFolderDataset,
    LandmarkFolderDataset,
    build_dataset,
)
from dlp.data.common import square_box

pytestmark = pytest.mark.usefixtures("single_thread")

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CELEBA_MINI = DATA / "celeba-mini"
SAMPLES = DATA / "samples"

needs_celeba_mini = pytest.mark.skipif(not (CELEBA_MINI / "landmarks.csv").is_file(), reason="no shared celeba-mini")


def raw_landmarks(names: list[str]) -> dict[str, np.ndarray]:
    """The celeba-mini CSV rows for `names`, read independently of the library: name -> [5, 2] (x, y)."""
    wanted, out = set(names), {}
    with open(CELEBA_MINI / "landmarks.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["image"] in wanted:
                values = [float(row[f"{p}_{c}"]) for p in ("lefteye", "righteye", "nose", "leftmouth", "rightmouth")
                          for c in "xy"]
                out[row["image"]] = np.array(values).reshape(5, 2)
    return out


def to_array(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).numpy()


# ----------------------------------------------------------------------------------------------------------------
# celeba-mini (landmark folder)

@pytest.fixture(scope="module")
def mini_test64():
    if not (CELEBA_MINI / "landmarks.csv").is_file():
        pytest.skip("no shared celeba-mini")
    return LandmarkFolderDataset(CELEBA_MINI, split="test", image_size=64)


def test_celeba_mini_split_and_items(mini_test64):
    ds = mini_test64
    assert len(ds) == 1000 and ds.names[0] == "009001.jpg" and ds.names[-1] == "010000.jpg"
    assert ds.landmark_names == ["lefteye", "righteye", "nose", "leftmouth", "rightmouth"]
    item = ds[3]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert 0 <= item["image"].min() and item["image"].max() <= 1
    assert item["landmarks"].shape == (5, 2) and item["index"] == 3


def test_celeba_mini_landmarks_follow_the_official_transform(mini_test64):
    ds = mini_test64
    picks = [0, 17, 500, 999]
    raw = raw_landmarks([ds.names[i] for i in picks])
    for i in picks:
        x, y = raw[ds.names[i]].T
        # 89x109 image: square rows 15..103 (CelebA's 30..207 halved), resized to 80, 8 px cut per side -> 64
        expected = np.stack([x * 80 / 89 - 8, (y - 15) * 80 / 89 - 8], axis=1)
        np.testing.assert_allclose(ds[i]["landmarks"].numpy(), expected, atol=1e-4)
        # ... which is the official 178x218 -> 128 transform of the original coordinates, halved
        official = np.stack([(2 * x) * 160 / 178 - 16, (2 * y - 30) * 160 / 178 - 16], axis=1) / 2
        np.testing.assert_allclose(ds[i]["landmarks"].numpy(), official, atol=1e-4)


def test_celeba_mini_landmarks_land_on_face_parts(mini_test64):
    ds = mini_test64
    for i in range(0, 1000, 97):
        (lex, ley), (rex, rey), (nx, ny), (lmx, lmy), (rmx, rmy) = ds[i]["landmarks"].tolist()
        assert lex < nx < rex and lmx < rmx  # left eye, nose, right eye from left to right
        assert max(ley, rey) < ny < min(lmy, rmy)  # eyes above the nose above the mouth
        assert 24 < (ley + rey) / 2 < 36 and 40 < (lmy + rmy) / 2 < 54  # where aligned CelebA puts them


def test_celeba_mini_pixels_match_a_hand_crop(mini_test64):
    ds = mini_test64
    img = Image.open(CELEBA_MINI / "images" / ds.names[5]).convert("RGB")
    expected = np.asarray(img.crop((0, 15, 89, 104)).resize((80, 80), Image.BILINEAR))[8:72, 8:72] / 255.0
    np.testing.assert_allclose(to_array(ds[5]["image"]), expected, atol=1e-6)


@needs_celeba_mini
def test_celeba_mini_pairs_through_build_dataset():
    ds = build_dataset("landmarks", data_root=CELEBA_MINI, image_size=64, split="test", use_tps=True, use_pairs=True,
                       num_images=4)
    assert len(ds) == 4
    item = ds[1]
    assert item["image"].shape == item["image_prior"].shape == (3, 64, 64)
    assert item["landmarks"].shape == item["landmarks_prior"].shape == (5, 2)
    assert not torch.equal(item["image"], item["image_prior"])


# ----------------------------------------------------------------------------------------------------------------
# landmark folder: bad input

def make_landmark_folder(root: Path, n: int = 3, *, size=(20, 24), modes=None, splits=None) -> Path:
    """n small images with one landmark each; `modes` gives PIL modes per image, `splits` split names."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["image,p_x,p_y"]
    for i in range(n):
        mode = modes[i] if modes else "RGB"
        channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
        pixels = rng.integers(0, 255, (size[1], size[0], channels), dtype=np.uint8)
        Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(root / "images" / f"{i:03d}.png")
        rows.append(f"{i:03d}.png,{size[0] / 2},{size[1] / 2}")
    (root / "landmarks.csv").write_text("\n".join(rows) + "\n")
    if splits:
        (root / "splits.csv").write_text("image,split\n" + "".join(f"{i:03d}.png,{s}\n" for i, s in enumerate(splits)))
    return root


def test_landmark_folder_missing_parts(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        LandmarkFolderDataset(tmp_path / "nope")
    (tmp_path / "a" / "images").mkdir(parents=True)
    (tmp_path / "a" / "landmarks.csv").write_text("image,x,y\n")
    with pytest.raises(DatasetError, match="contains no images"):
        LandmarkFolderDataset(tmp_path / "a")
    root = make_landmark_folder(tmp_path / "b")
    (root / "landmarks.csv").unlink()
    with pytest.raises(DatasetNotFoundError, match="has no landmarks.csv; expected .*/images/ .*landmarks.csv"):
        LandmarkFolderDataset(root)


def test_landmark_folder_without_images_names_the_folder_typed_and_the_layout(tmp_path, monkeypatch):
    (tmp_path / "faces").mkdir()
    (tmp_path / "faces" / "landmarks.csv").write_text("image,x,y\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetNotFoundError, match=r"^the landmark folder faces has no images/; expected "
                                                   r"faces/images/ \(the face images\) and faces/landmarks.csv"):
        LandmarkFolderDataset("faces")


def test_landmark_folder_rows_and_images_must_match(tmp_path):
    root = make_landmark_folder(tmp_path / "extra_row")
    with open(root / "landmarks.csv", "a") as f:
        f.write("ghost.png,1,2\n")
    with pytest.raises(DatasetError, match=r"rows for 1 image\(s\) that are not in .*ghost\.png"):
        LandmarkFolderDataset(root)

    root = make_landmark_folder(tmp_path / "unlabelled")
    Image.new("RGB", (8, 8)).save(root / "images" / "new.png")
    with pytest.raises(DatasetError, match=r"have no row in .*new\.png"):
        LandmarkFolderDataset(root)

    root = make_landmark_folder(tmp_path / "nan")
    (root / "landmarks.csv").write_text("image,p_x,p_y\n000.png,1,a\n001.png,1,2\n002.png,1,2\n")
    with pytest.raises(DatasetError, match="line 2 has a value that is not a number"):
        LandmarkFolderDataset(root)


def test_landmark_folder_splits(tmp_path):
    root = make_landmark_folder(tmp_path / "s", 3, splits=["train", "test", "train"])
    assert LandmarkFolderDataset(root, split="train").names == ["000.png", "002.png"]
    assert len(LandmarkFolderDataset(root, split=None)) == 3
    with pytest.raises(DatasetError, match=r"available: \['test', 'train'\]"):
        LandmarkFolderDataset(root, split="valid")
    (root / "splits.csv").unlink()
    with pytest.raises(DatasetError, match="needs .*splits.csv"):
        LandmarkFolderDataset(root, split="test")
    # build_dataset: 'train' without splits.csv means every image
    assert len(build_dataset("landmarks", data_root=root, image_size=16)) == 3


def test_landmark_folder_converts_gray_and_rgba(tmp_path):
    root = make_landmark_folder(tmp_path / "modes", 3, modes=["L", "RGBA", "RGB"])
    ds = LandmarkFolderDataset(root, image_size=16)
    for i in range(3):
        assert ds[i]["image"].shape == (3, 16, 16)
    gray = ds[0]["image"]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_landmark_folder_unreadable_images(tmp_path):
    few = make_landmark_folder(tmp_path / "few", 101, size=(8, 8))
    (few / "images" / "050.png").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match=r"skipping 1 unreadable image\(s\) of 101.*050\.png"):
        ds = LandmarkFolderDataset(few, image_size=8)
    assert len(ds) == 100 and "050.png" not in ds.names

    many = make_landmark_folder(tmp_path / "many", 10, size=(8, 8))
    for name in ("003.png", "007.png"):
        (many / "images" / name).write_bytes(b"")
    with pytest.raises(DatasetError, match=r"2 of 10 images .* cannot be read .*003\.png.*007\.png"):
        LandmarkFolderDataset(many, image_size=8)

    # damage past the header shows on load, naming the file
    late = make_landmark_folder(tmp_path / "late", 2, size=(64, 64))
    path = late / "images" / "001.png"
    path.write_bytes(path.read_bytes()[:100])
    ds = LandmarkFolderDataset(late, image_size=8)
    with pytest.raises(DatasetError, match=r"cannot read image .*001\.png"):
        ds[1]


# ----------------------------------------------------------------------------------------------------------------
# DVE-layout CelebA, built from a few celeba-mini images upscaled to the official 178x218

CELEBA_IDS = list(range(1, 13))
PARTITION = {i: 0 if i <= 8 else (1 if i <= 10 else 2) for i in CELEBA_IDS}
MAFL_TRAIN, MAFL_TEST = [3, 4, 11], [5, 12]


def make_celeba_tree(root: Path, ids=CELEBA_IDS, *, count_delta: int = 0, skip_image: int | None = None) -> Path:
    image_dir = root / "Img" / "img_align_celeba"
    for sub in (image_dir, root / "Anno", root / "Eval", root / "MAFL"):
        sub.mkdir(parents=True, exist_ok=True)
    names = [f"{i:06d}.jpg" for i in ids]
    raw = raw_landmarks(names)
    for i, name in zip(ids, names):
        if i != skip_image:
            Image.open(CELEBA_MINI / "images" / name).resize((178, 218), Image.BICUBIC).save(image_dir / name,
                                                                                               quality=95)
    header = "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y"
    rows = [f"{name} " + " ".join(f"{int(v * 2):4d}" for v in raw[name].reshape(-1)) for name in names]
    (root / "Anno" / "list_landmarks_align_celeba.txt").write_text(
        f"{len(rows) + count_delta}\n{header}\n" + "\n".join(rows) + "\n")
    (root / "Eval" / "list_eval_partition.txt").write_text("".join(f"{i:06d}.jpg {PARTITION[i]}\n" for i in ids))
    (root / "MAFL" / "training.txt").write_text("".join(f"{i:06d}.jpg\n" for i in MAFL_TRAIN if i in ids))
    (root / "MAFL" / "testing.txt").write_text("".join(f"{i:06d}.jpg\n" for i in MAFL_TEST if i in ids))
    return root


@pytest.fixture(scope="module")
def celeba_tree(tmp_path_factory):
    if not (CELEBA_MINI / "landmarks.csv").is_file():
        pytest.skip("no shared celeba-mini")
    return make_celeba_tree(tmp_path_factory.mktemp("celeba"))


def test_celeba_splits(celeba_tree):
    names = lambda ids: [f"{i:06d}.jpg" for i in ids]  # noqa: E731
    assert CelebADataset(celeba_tree, "train").names == names([1, 2, 6, 7, 8])  # partition 0 minus MAFL
    assert CelebADataset(celeba_tree, "mafl_train").names == names([3, 4, 11])
    assert CelebADataset(celeba_tree, "mafl_test").names == names([5, 12])
    with pytest.raises(DatasetError, match="unknown CelebA split 'valid'"):
        CelebADataset(celeba_tree, "valid")


def test_celeba_official_preprocessing(celeba_tree):
    ds = CelebADataset(celeba_tree, "mafl_train", image_size=128)
    item = ds[2]
    assert item["image"].shape == (3, 128, 128) and item["landmarks"].shape == (5, 2)
    # image: crop top=30 178x178, resize to 160 (bilinear), cut 16 px per side
    img = Image.open(celeba_tree / "Img" / "img_align_celeba" / "000011.jpg").convert("RGB")
    expected = np.asarray(img.crop((0, 30, 178, 208)).resize((160, 160), Image.BILINEAR))[16:144, 16:144] / 255.0
    np.testing.assert_allclose(to_array(item["image"]), expected, atol=1e-6)
    # landmarks: y -= 30, * 160/178, -= 16
    raw = raw_landmarks(["000011.jpg"])["000011.jpg"] * 2
    official = np.stack([raw[:, 0] * 160 / 178 - 16, (raw[:, 1] - 30) * 160 / 178 - 16], axis=1)
    np.testing.assert_allclose(item["landmarks"].numpy(), official, atol=1e-4)


def test_celeba_matches_celeba_mini_geometry(celeba_tree, mini_test64):
    """The same faces at half resolution (celeba-mini, 64 px) get exactly half the landmark coordinates."""
    full = CelebADataset(celeba_tree, "train", image_size=128)
    mini = LandmarkFolderDataset(CELEBA_MINI, split="train", image_size=64, verify_images=False)
    for i, name in enumerate(full.names):
        j = mini.names.index(name)
        torch.testing.assert_close(full[i]["landmarks"] / 2, mini[j]["landmarks"])


@needs_celeba_mini
def test_celeba_rescales_landmarks_for_other_image_sizes(tmp_path):
    root = make_celeba_tree(tmp_path / "small", [1, 2])
    image_dir = root / "Img" / "img_align_celeba"
    ref = CelebADataset(root, "train", image_size=64)[0]["landmarks"]
    for path in image_dir.iterdir():  # stored at half size, annotations still in the 178x218 frame
        Image.open(path).resize((89, 109), Image.BICUBIC).save(path)
    torch.testing.assert_close(CelebADataset(root, "train", image_size=64)[0]["landmarks"], ref)


def test_celeba_tps_pairs_via_build_dataset(celeba_tree):
    ds = build_dataset("celeba", data_root=celeba_tree, image_size=128, use_tps=True, use_pairs=True)
    item = ds[0]
    assert item["image"].shape == item["image_prior"].shape == (3, 128, 128)
    single = build_dataset("celeba", data_root=celeba_tree, image_size=64, use_tps=True)[0]
    assert single["image"].shape == (3, 64, 64) and "image_prior" not in single
    assert len(build_dataset("celeba", data_root=celeba_tree, image_size=64, split="test")) == 2  # = mafl_test


@needs_celeba_mini
def test_celeba_inconsistent_trees(tmp_path):
    with pytest.raises(DatasetError, match="announces 4 rows but holds 3"):
        CelebADataset(make_celeba_tree(tmp_path / "count", [1, 2, 6], count_delta=1), "train")
    with pytest.raises(DatasetError, match=r"missing from .*img_align_celeba .*000002\.jpg"):
        CelebADataset(make_celeba_tree(tmp_path / "img", [1, 2, 6], skip_image=2), "train")
    root = make_celeba_tree(tmp_path / "mafl", [1, 2, 6])
    (root / "MAFL" / "testing.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match="MAFL testing list"):
        CelebADataset(root, "train")
    (root / "MAFL" / "testing.txt").write_text("999999.jpg\n")
    with pytest.raises(DatasetError, match="without CelebA landmarks"):
        CelebADataset(root, "train")
    with pytest.raises(DatasetNotFoundError, match="CelebA image folder"):
        CelebADataset(root, "train", use_hq_ims=True)


# ----------------------------------------------------------------------------------------------------------------
# image folders and the registry

@pytest.mark.skipif(not SAMPLES.is_dir(), reason="no shared samples")
def test_image_folder_recursive_centre_crop():
    ds = ImageFolderDataset(SAMPLES, image_size=32)
    assert len(ds) == 11  # 8 celeb + 2 clevrer + 1 traffic, found recursively
    assert all(ds[i]["image"].shape == (3, 32, 32) for i in range(len(ds)))
    index = [p.name for p in ds.paths].index("1.png")  # clevrer/1.png, 480x320
    img = Image.open(ds.paths[index]).convert("RGB")
    assert square_box(*img.size) == (80, 0, 400, 320)
    expected = np.asarray(img.crop((80, 0, 400, 320)).resize((32, 32), Image.BILINEAR)) / 255.0
    np.testing.assert_allclose(to_array(ds[index]["image"]), expected, atol=1e-6)


def test_image_folder_bad_input(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing", 16)
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="contains no images"):
        ImageFolderDataset(tmp_path, 16)


def test_build_dataset_errors(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset 'celebaa'; choose one of"):
        build_dataset("celebaa", data_root=tmp_path, image_size=64)
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        build_dataset("celeba", data_root=tmp_path / "nowhere", image_size=64)
    with pytest.raises(DatasetError, match="needs data_root"):
        build_dataset("landmarks", data_root=None, image_size=64)
    root = make_landmark_folder(tmp_path / "lm")
    with pytest.raises(DatasetError, match="use_pairs on still images needs use_tps"):
        build_dataset("landmarks", data_root=root, image_size=16, use_pairs=True)
    with pytest.raises(DatasetError, match="has no 'test' split"):
        build_dataset("folder", data_root=root / "images", image_size=16, split="test")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = build_dataset("folder", data_root=root / "images", image_size=16, use_tps=True, use_pairs=True)
    assert ds[0]["image_prior"].shape == (3, 16, 16)
