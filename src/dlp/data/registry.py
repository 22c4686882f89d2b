"""`build_dataset(name, ...)`: one entry point from a training config to a torch Dataset, and what each dataset is.

Every dataset yields dict items with at least "image" ([3, S, S] float in [0, 1]), plus "image_prior" when pairs are
requested and "landmarks" when the data has them. Builders are registered with `@register_dataset(name, ...)`, which
also records the facts the CLI, evaluation and demo need about the dataset (`DatasetInfo`: its default preset, whether
it has landmarks or ground-truth objects, its held-out split, the demo's pre-processing). Builders are called as
`builder(data_root, image_size=..., split=..., use_tps=..., use_pairs=..., seed=..., num_images=...)`, with
`data_root` an existing Path or None and `num_images` None or a cap (generated datasets use it as their size).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from dlp.data.celeba import CelebADataset
from dlp.data.common import DatasetError, DatasetNotFoundError, face_work_size, is_video_file
from dlp.data.folder import ImageFolderDataset
from dlp.data.landmarks import LandmarkFolderDataset, read_splits_csv
from dlp.data.tps import dlp_warper
from dlp.data.video import FrameArrayDataset, find_sources

DatasetBuilder = Callable[..., Dataset]
_SPLIT_TAGS = {"train": ("_train",), "valid": ("_valid", "_val")}
# Held-out splits of generated data use seeds this far from the training seed, so they never repeat training items.
HELDOUT_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class DatasetInfo:
    """What the library knows about a dataset, beyond how to build it.

    default_preset: the preset `dlp train -d NAME` starts from (None: `--preset` is required).
    landmarks: items carry annotated "landmarks" (keypoint regression applies).
    objects: items carry ground-truth object "centers" (object discovery applies).
    generated: the data is generated from a seed (no data_root needed).
    heldout_split: the split that evaluation reads.
    demo_preprocess: how `dlp demo` crops an image of this dataset ("celeba", "traffic", "clevrer"; None: centre).
    sample_folder: the folder of official demo images for `dlp demo -d NAME` (None: no samples).
    videos: the data are videos: `build_dataset(..., clip_length=T)` gives clips {"video": [T, C, H, W]} (windows
        inside one video; held-out splits one clip per whole video), without it single frames {"image": ...}.
    """

    name: str
    builder: DatasetBuilder
    default_preset: str | None = None
    landmarks: bool = False
    objects: bool = False
    generated: bool = False
    heldout_split: str = "test"
    demo_preprocess: str | None = None
    sample_folder: str | None = None
    videos: bool = False


_DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(name: str, *, default_preset: str | None = None, landmarks: bool = False, objects: bool = False,
                     generated: bool = False, heldout_split: str = "test", demo_preprocess: str | None = None,
                     sample_folder: str | None = None, videos: bool = False
                     ) -> Callable[[DatasetBuilder], DatasetBuilder]:
    """Decorator adding a builder under `name`, with the facts of `DatasetInfo`. Builders of video datasets also take
    `clip_length` (None: single frames)."""
    def add(builder: DatasetBuilder) -> DatasetBuilder:
        _DATASETS[name] = DatasetInfo(name, builder, default_preset, landmarks, objects, generated, heldout_split,
                                      demo_preprocess, sample_folder, videos)
        return builder
    return add


def list_datasets() -> list[str]:
    return sorted(_DATASETS)


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry of dataset `name`; raises `DatasetError` naming the valid ones."""
    info = _DATASETS.get(name)
    if info is None:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(list_datasets())}.")
    return info


def build_dataset(name: str, *, data_root: str | Path | None, image_size: int, split: str | None = "train",
                  use_tps: bool = False, use_pairs: bool = False, seed: int = 0,
                  num_images: int | None = None, clip_length: int | None = None) -> Dataset:
    """Build the dataset `name` (see `list_datasets()`).

    Per dataset ('train' / 'test' work everywhere except 'folder', so generic code can ask for them):
      * 'celeba': DVE-layout CelebA folder; split 'train' (CelebA train minus MAFL) | 'mafl_train' | 'mafl_test'
        ('test' and 'valid' mean 'mafl_test').
      * 'landmarks': a landmark folder (e.g. celeba-mini); split None, 'train', 'test' or any name in splits.csv
        ('train' without splits.csv means every image; 'valid' means 'test' when splits.csv has no 'valid').
      * 'clevrer', 'traffic': a prepared .npy or a folder holding one; split 'train' | 'valid' | None ('test' means
        'valid'). A folder with `*_train.npy` / `*_valid.npy` gives one file per split (the official CLEVRER
        files); a single array is split by video (sidecar) or 90/10 in time.
      * 'folder': any folder of images; split 'train' or None (everything).
      * 'shapes': generated; 'valid' and 'test' use the seed `seed + HELDOUT_SEED_OFFSET`.

    `num_images` keeps only the first `num_images` items of a real dataset (quick runs, capped evaluation).
    `clip_length` (video datasets, `DatasetInfo.videos`): clips of that many frames instead of single frames.

    TPS (still images and frames): `use_tps` adds the official DLP warps, `use_pairs` with it returns the strong warp
    as "image_prior" and the light warp as "image". `use_pairs` without `use_tps` gives consecutive-frame pairs for
    video datasets. Warps draw from torch's global RNG (seeded by the trainer and per DataLoader worker); `seed` is
    for generated datasets.
    """
    info = dataset_info(name)
    root = None
    if data_root is not None:
        root = Path(data_root).expanduser()
        if not root.exists():
            raise DatasetNotFoundError(f"data_root {root} for dataset {name!r} does not exist; check the path.")
    if num_images is not None and num_images < 1:
        raise DatasetError(f"num_images must be a positive integer or None, got {num_images}.")
    video_datasets = ", ".join(n for n in list_datasets() if _DATASETS[n].videos)
    if clip_length is not None and not info.videos:
        raise DatasetError(f"dataset {name!r} holds still images, but this model trains on video clips; use a video "
                           f"dataset ({video_datasets}).")
    options = {"clip_length": clip_length} if info.videos else {}
    return info.builder(root, image_size=image_size, split=split, use_tps=use_tps, use_pairs=use_pairs, seed=seed,
                        num_images=num_images, **options)


def _first(dataset: Dataset, num_images: int | None) -> Dataset:
    """The first `num_images` items (all if None or larger than the dataset)."""
    if num_images is None or num_images >= len(dataset):
        return dataset
    return Subset(dataset, range(num_images))


def _require_root(root: Path | None, name: str, what: str) -> Path:
    if root is None:
        raise DatasetError(f"dataset {name!r} needs data_root: {what}.")
    return root


def _still_warper(size: int, use_tps: bool, use_pairs: bool) -> Any:
    if use_pairs and not use_tps:
        raise DatasetError("use_pairs on still images needs use_tps (the pair is two TPS warps of one image).")
    return dlp_warper(size, pairs=use_pairs) if use_tps else None


@register_dataset("celeba", default_preset="celeba", landmarks=True, demo_preprocess="celeba",
                  sample_folder="celeb")
def _celeba(root: Path | None, *, image_size: int, split: str | None, use_tps: bool, use_pairs: bool, seed: int,
            num_images: int | None) -> Dataset:
    root = _require_root(root, "celeba", "the CelebA folder with Img/, Anno/, Eval/ and MAFL/")
    split = {None: "train", "test": "mafl_test", "valid": "mafl_test"}.get(split, split)
    warper = _still_warper(face_work_size(image_size), use_tps, use_pairs)
    return _first(CelebADataset(root, split=split, image_size=image_size, pair_warper=warper), num_images)


@register_dataset("landmarks", default_preset="celeba64", landmarks=True, demo_preprocess="celeba")
def _landmarks(root: Path | None, *, image_size: int, split: str | None, use_tps: bool, use_pairs: bool, seed: int,
               num_images: int | None) -> Dataset:
    root = _require_root(root, "landmarks", "a folder with images/ and landmarks.csv")
    splits_csv = root / "splits.csv"
    if split == "train" and not splits_csv.is_file():
        split = None
    elif split == "valid" and splits_csv.is_file() and "valid" not in set(read_splits_csv(splits_csv).values()):
        split = "test"
    warper = _still_warper(face_work_size(image_size), use_tps, use_pairs)
    return _first(LandmarkFolderDataset(root, split=split, image_size=image_size, pair_warper=warper), num_images)


# A plain folder has no held-out images: evaluation reads the training images.
@register_dataset("folder", heldout_split="train")
def _folder(root: Path | None, *, image_size: int, split: str | None, use_tps: bool, use_pairs: bool, seed: int,
            num_images: int | None) -> Dataset:
    root = _require_root(root, "folder", "a folder of images")
    if split not in (None, "train"):
        raise DatasetError(f"an image folder has no {split!r} split; use split='train' or None.")
    warper = _still_warper(image_size, use_tps, use_pairs)
    return _first(ImageFolderDataset(root, image_size, pair_warper=warper), num_images)


def _split_tag(path: Path) -> str | None:
    for split, suffixes in _SPLIT_TAGS.items():
        if path.stem.endswith(suffixes):
            return split
    return None


def _tagged_sibling(path: Path, split: str) -> Path | None:
    base = path.stem[: path.stem.rfind("_")]
    for suffix in _SPLIT_TAGS[split]:
        candidate = path.with_name(f"{base}{suffix}.npy")
        if candidate.is_file():
            return candidate
    return None


def resolve_frame_array(root: Path, name: str, split: str | None) -> tuple[Path, str | None]:
    """(the .npy to read, the split to apply inside it) for a file or folder given as data_root."""
    prepare_hint = f"run `dlp prepare {name} {root} OUT.npy` first and pass OUT.npy"
    if root.is_file():
        if root.suffix != ".npy":
            hint = prepare_hint if is_video_file(root) else "pass a prepared .npy frame array"
            raise DatasetError(f"{root} is not a .npy frame array; {hint}.")
        tag = _split_tag(root)
        if tag is None or split is None or split == tag:
            return root, (split if tag is None else None)
        sibling = _tagged_sibling(root, split)
        if sibling is None:
            raise DatasetError(f"{root} holds the {tag!r} frames and there is no matching {split!r} file beside it; "
                               "pass the folder holding both or an untagged array.")
        return sibling, None
    arrays = sorted(root.glob("*.npy"))
    if not arrays:
        try:
            find_sources(root)
        except DatasetError:
            raise DatasetError(f"{root} holds no .npy frame array; {prepare_hint}.") from None
        raise DatasetError(f"{root} holds raw videos or frames, not a prepared array; {prepare_hint}.")
    tagged = {_split_tag(p): p for p in arrays if _split_tag(p)}
    untagged = [p for p in arrays if not _split_tag(p)]
    if split in tagged:
        return tagged[split], None
    if len(untagged) == 1:
        return untagged[0], split
    if untagged:
        names = ", ".join(p.name for p in untagged)
        raise DatasetError(f"{root} holds several frame arrays ({names}); pass the one to use as data_root.")
    raise DatasetError(f"{root} has no frame array for split {split!r} (found {', '.join(p.name for p in arrays)}).")


def _frames(name: str) -> DatasetBuilder:
    def build(root: Path | None, *, image_size: int, split: str | None, use_tps: bool, use_pairs: bool, seed: int,
              num_images: int | None, clip_length: int | None = None) -> Dataset:
        root = _require_root(root, name, f"a prepared .npy (see `dlp prepare {name}`) or a folder holding one")
        npy, inner_split = resolve_frame_array(root, name, "valid" if split == "test" else split)
        if clip_length is not None:
            from dlp.data.clips import FrameArrayClips

            if use_tps or use_pairs:
                raise DatasetError("video clips have no TPS warps or pairs; drop --use_tps/--use_pairs.")
            return _first(FrameArrayClips(npy, inner_split, clip_length, image_size), num_images)
        warper = dlp_warper(image_size, pairs=use_pairs, video=True) if use_tps else None
        mode = "pairs" if use_pairs and not use_tps else "single"
        dataset = FrameArrayDataset(npy, split=inner_split, mode=mode, image_size=image_size, warper=warper)
        return _first(dataset, num_images)
    build.__name__ = f"_{name}"
    return build


register_dataset("clevrer", default_preset="clevrer", heldout_split="valid", demo_preprocess="clevrer",
                 sample_folder="clevrer", videos=True)(_frames("clevrer"))
register_dataset("traffic", default_preset="traffic", heldout_split="valid", demo_preprocess="traffic",
                 sample_folder="traffic", videos=True)(_frames("traffic"))


class FramesAsImages(Dataset):
    """Single-frame clips as images: {"video": [1, C, H, W], ...} -> {"image": [C, H, W], ...}; per-frame ground
    truth of generated videos (positions, radii) becomes the image's "centers" and "boxes"."""

    def __init__(self, clips: Dataset):
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.clips[index])
        item["image"] = item.pop("video")[0]
        if "positions" in item:  # (y, x) centres and radii of the first (only) frame
            centers, radii = item.pop("positions")[0], item.pop("sizes")[0]
            item["centers"] = centers
            item["boxes"] = torch.stack([centers[:, 1] - radii, centers[:, 0] - radii, centers[:, 1] + radii + 1,
                                         centers[:, 0] + radii + 1], -1)
            for key in ("velocities", "ids", "colors"):
                item.pop(key, None)
        return item


def _episode_folders(name: str, layout: str, native_size: int | None) -> DatasetBuilder:
    def build(root: Path | None, *, image_size: int, split: str | None, use_tps: bool, use_pairs: bool, seed: int,
              num_images: int | None, clip_length: int | None = None) -> Dataset:
        from dlp.data.clips import EpisodeFolderClips

        root = _require_root(root, name, f"the {layout} frame folders (<root>/<split>/<episode>/<frame>.png)")
        if use_tps or use_pairs:
            raise DatasetError(f"{name} has no TPS warps or pairs; drop --use_tps/--use_pairs.")
        clips = EpisodeFolderClips(root, split or "train", clip_length or 1, image_size or native_size, layout)
        return _first(clips if clip_length is not None else FramesAsImages(clips), num_images)
    build.__name__ = f"_{name}"
    return build


for _name, _layout, _preset in (("obj3d", "obj3d", "dlpv2-obj3d"), ("obj3d128", "obj3d", "dlpv2-obj3d128"),
                                ("phyre", "phyre", None)):
    register_dataset(_name, default_preset=_preset, videos=True)(_episode_folders(_name, _layout, None))


@register_dataset("balls", default_preset="ddlp-balls-quick", objects=True, generated=True, videos=True)
def _balls(root: Path | None, *, image_size: int, split: str | None, use_tps: bool, use_pairs: bool, seed: int,
           num_images: int | None, clip_length: int | None = None) -> Dataset:
    """Generated bouncing balls (`dlp.data.balls`): clips with ground truth; single frames with their centres."""
    from dlp.data.balls import BALLS_CLIPS, BouncingBallsDataset

    if use_tps or use_pairs:
        raise DatasetError("the balls dataset has no TPS warps or pairs; drop --use_tps/--use_pairs.")
    split = {None: "train", "val": "valid"}.get(split, split)
    if split not in ("train", "valid", "test"):
        raise DatasetError(f"the balls dataset has no {split!r} split; use 'train', 'valid' or 'test'.")
    clips = BouncingBallsDataset(num_images or BALLS_CLIPS[split], clip_length=clip_length or 1,
                                 image_size=image_size, seed=seed if split == "train" else seed + HELDOUT_SEED_OFFSET)
    return clips if clip_length is not None else FramesAsImages(clips)


SHAPES_TRAIN_IMAGES = 40_000  # the official `train_dlp.py` size
SHAPES_HELDOUT_IMAGES = 1_000


@register_dataset("shapes", default_preset="shapes", objects=True, generated=True)
def _shapes(root: Path | None, *, image_size: int, split: str | None, use_tps: bool, use_pairs: bool, seed: int,
            num_images: int | None) -> Dataset:
    from dlp.data.shapes import ShapesDataset

    if use_tps or use_pairs:
        raise DatasetError("the shapes dataset has no TPS pairs; drop --use_tps/--use_pairs.")
    split = split or "train"
    if split not in ("train", "valid", "test"):
        raise DatasetError(f"the shapes dataset has no {split!r} split; use 'train', 'valid' or 'test'.")
    if split == "train":
        return ShapesDataset(num_images or SHAPES_TRAIN_IMAGES, image_size=image_size, seed=seed)
    return ShapesDataset(num_images or SHAPES_HELDOUT_IMAGES, image_size=image_size, seed=seed + HELDOUT_SEED_OFFSET)
