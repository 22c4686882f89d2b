"""CelebA / MAFL in the DVE folder layout that the official DLP code reads (`datasets/celeba_dataset.py`).

Layout::

    root/Img/img_align_celeba_hq/000001.jpg ...   (preferred when present, as the official default)
    root/Img/img_align_celeba/000001.jpg ...
    root/Anno/list_landmarks_align_celeba.txt     count, 10 column names, then "file x y x y ..." (178x218 frame)
    root/Eval/list_eval_partition.txt             "file partition" (0 train, 1 valid, 2 test)
    root/MAFL/training.txt, root/MAFL/testing.txt  one file name per line

Splits: 'train' = CelebA's train partition minus every MAFL image (the official `CelebAPrunedAligned_MAFLVal`
with train=True, which DLP trains on); 'mafl_train' / 'mafl_test' = the MAFL lists (`MAFLAligned`), used for the
landmark-regression evaluation. Images keep the annotation file's order.

Geometry: the official crop (rows 30..207 of the 178x218 image), resize to 160 and 16 px cut per side for
image_size 128 (`imwidth=160, crop=16`); other sizes scale both numbers (see `common.face_transform`). Landmarks are
transformed the same way; they are given in the 178x218 frame and rescaled if the stored images have another size.
The official TPS pipeline rounds warped images to uint8; here they stay float.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from dlp.data.common import (
    DatasetError,
    ImageListDataset,
    drop_unreadable_images,
    examples,
    face_transform,
    require_dir,
    require_file,
)

CELEBA_FRAME = (178, 218)  # (width, height) of the aligned images the annotations refer to
CELEBA_SPLITS = ("train", "mafl_train", "mafl_test")
LANDMARK_NAMES = ("lefteye", "righteye", "nose", "leftmouth", "rightmouth")


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, whitespace-separated fields) of the non-blank lines of a text file."""
    with open(path, encoding="utf-8") as f:
        return [(i + 1, line.split()) for i, line in enumerate(f) if line.strip()]


def read_landmark_file(path: Path) -> tuple[list[str], torch.Tensor]:
    """(file names, landmarks [N, 5, 2] as (x, y) in the 178x218 frame) from `list_landmarks_align_celeba.txt`."""
    lines = _lines(path)
    if len(lines) < 2 or len(lines[0][1]) != 1 or not lines[0][1][0].isdigit():
        raise DatasetError(f"{path} must start with the row count and a line of 10 column names (CelebA format).")
    count = int(lines[0][1][0])
    if len(lines[1][1]) != 10:
        raise DatasetError(f"{path} line {lines[1][0]} should name the 10 landmark columns, found {len(lines[1][1])}.")
    names, values = [], []
    for line, fields in lines[2:]:
        if len(fields) != 11:
            raise DatasetError(f"{path} line {line} has {len(fields)} fields, expected a file name and 10 numbers.")
        try:
            values.append([float(v) for v in fields[1:]])
        except ValueError:
            raise DatasetError(f"{path} line {line} has a value that is not a number.") from None
        names.append(fields[0])
    if len(names) != count:
        raise DatasetError(f"{path} announces {count} rows but holds {len(names)}; the file is truncated or edited.")
    if len(set(names)) != len(names):
        raise DatasetError(f"{path} lists some file names twice; keep one row per image.")
    return names, torch.tensor(values, dtype=torch.float32).view(len(names), 5, 2)


def read_partition_file(path: Path) -> dict[str, int]:
    """file name -> partition (0 train, 1 valid, 2 test) from `list_eval_partition.txt`."""
    partition = {}
    for line, fields in _lines(path):
        if len(fields) != 2 or not fields[1].isdigit():
            raise DatasetError(f"{path} line {line} should read '<file> <partition>', got {' '.join(fields)!r}.")
        partition[fields[0]] = int(fields[1])
    return partition


def read_name_list(path: Path) -> list[str]:
    """One file name per line (the MAFL lists)."""
    return [fields[0] for _, fields in _lines(path)]


class CelebADataset(ImageListDataset):
    """CelebA / MAFL aligned faces with their 5 landmarks (layout and splits in the module docstring).

    Args:
        root: the CelebA folder.
        split: 'train' (CelebA train minus MAFL), 'mafl_train' or 'mafl_test'.
        image_size: output side S (128 reproduces the official imwidth 160 / crop 16).
        pair_warper: optional TPS warper built for `face_work_size(image_size)` pixels (160 for 128), e.g.
            `dlp.data.tps.dlp_warper(160, pairs=True)`.
        use_hq_ims: True for `Img/img_align_celeba_hq`, False for `Img/img_align_celeba`, None for the HQ folder
            when it exists.
        verify_images: read every selected image header up front (off by default: 200k files take a while; an
            unreadable image then raises, naming the file, when it is loaded).

    Items: {"image": [3, S, S], "landmarks": [5, 2] (x, y) output pixels, "index"} (+ "image_prior",
    "landmarks_prior" with a pair warper). Landmark order: left eye, right eye, nose, left / right mouth corner
    (left = image left).
    """

    def __init__(self, root: str | Path, split: str = "train", image_size: int = 128, pair_warper: Any = None, *,
                 use_hq_ims: bool | None = None, verify_images: bool = False) -> None:
        if split not in CELEBA_SPLITS:
            raise DatasetError(f"unknown CelebA split {split!r}; choose one of {', '.join(CELEBA_SPLITS)}.")
        self.root = require_dir(root, "CelebA folder")
        self.split = split
        image_dir = self._image_dir(use_hq_ims)
        anno = require_file(self.root / "Anno" / "list_landmarks_align_celeba.txt", "CelebA landmark file")
        part_file = require_file(self.root / "Eval" / "list_eval_partition.txt", "CelebA partition file")
        mafl_train = read_name_list(require_file(self.root / "MAFL" / "training.txt", "MAFL training list"))
        mafl_test = read_name_list(require_file(self.root / "MAFL" / "testing.txt", "MAFL testing list"))

        names, landmarks = read_landmark_file(anno)
        partition = read_partition_file(part_file)
        unpartitioned = [n for n in names if n not in partition]
        if unpartitioned:
            raise DatasetError(
                f"{len(unpartitioned)} image(s) of {anno.name} have no row in {part_file} ({examples(unpartitioned)}); "
                "the annotation files must list the same images."
            )
        known = set(names)
        for path_name, listed in (("MAFL/training.txt", mafl_train), ("MAFL/testing.txt", mafl_test)):
            unknown = [n for n in listed if n not in known]
            if unknown:
                raise DatasetError(
                    f"{path_name} names {len(unknown)} image(s) without CelebA landmarks ({examples(unknown)})."
                )
        overlap = set(mafl_train) & set(mafl_test)
        if overlap:
            raise DatasetError(
                f"MAFL training and testing lists share {len(overlap)} image(s) ({examples(sorted(overlap))})."
            )

        if split == "train":
            mafl = set(mafl_train) | set(mafl_test)
            chosen = {n for n in names if partition[n] == 0 and n not in mafl}
        else:
            chosen = set(mafl_train if split == "mafl_train" else mafl_test)
        keep = [i for i, n in enumerate(names) if n in chosen]
        if not keep:
            raise DatasetError(f"the CelebA split {split!r} is empty in {self.root}; check the annotation files.")

        on_disk = set(os.listdir(image_dir))
        absent = [names[i] for i in keep if names[i] not in on_disk]
        if absent:
            raise DatasetError(
                f"{len(absent)} image(s) of split {split!r} are missing from {image_dir} ({examples(absent)}); "
                "complete the image folder."
            )
        paths = [image_dir / names[i] for i in keep]
        if verify_images:
            readable = drop_unreadable_images(paths, what=str(image_dir))
            keep, paths = [keep[i] for i in readable], [paths[i] for i in readable]
        self.names = [names[i] for i in keep]
        self.landmark_names = list(LANDMARK_NAMES)
        super().__init__(paths, face_transform(image_size, pair_warper), landmarks[keep], landmark_frame=CELEBA_FRAME)

    def _image_dir(self, use_hq_ims: bool | None) -> Path:
        hq, plain = self.root / "Img" / "img_align_celeba_hq", self.root / "Img" / "img_align_celeba"
        if use_hq_ims is None:
            use_hq_ims = hq.is_dir()
        return require_dir(hq if use_hq_ims else plain, "CelebA image folder")
