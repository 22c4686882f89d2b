"""Aligned face images with landmarks in a simple folder layout (e.g. `shared/data/celeba-mini`).

Layout::

    root/images/<name>.jpg ...       any image format; names may contain sub-folders ("a/b.jpg")
    root/landmarks.csv               header, then `image,x1,y1,x2,y2,...` in stored-image pixels
    root/splits.csv                  optional: header, then `image,split` (e.g. train / test)

Images get the official CelebA/DVE geometry (see `common.face_transform`): for 178x218 images the square of rows
30..207, resized to 160 and cropped 16 px per side for 128 output pixels; other sizes proportionally (89x109
celeba-mini images give the same relative crop; square images a centre crop).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch

from dlp.data.common import (
    DatasetError,
    DatasetNotFoundError,
    ImageListDataset,
    drop_unreadable_images,
    examples,
    face_transform,
    list_images,
    require_dir,
)


def _read_csv(path: Path, n_columns: int | None, what: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (line number, fields) rows of a small CSV; blank lines are skipped."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        lines = [(i + 1, row) for i, row in enumerate(csv.reader(f)) if any(cell.strip() for cell in row)]
    if not lines:
        raise DatasetError(f"{path} is empty; {what} needs a header line and one row per image.")
    header = [cell.strip() for cell in lines[0][1]]
    expected = n_columns or len(header)
    if len(header) != expected:
        raise DatasetError(f"{path} header has {len(header)} columns, expected {expected} ({what}).")
    rows = []
    for line, row in lines[1:]:
        if len(row) != expected:
            raise DatasetError(f"{path} line {line} has {len(row)} fields, expected {expected} like the header.")
        rows.append((line, [cell.strip() for cell in row]))
    return header, rows


def read_landmarks_csv(path: Path) -> tuple[list[str], list[str], torch.Tensor]:
    """(image names, landmark names, landmarks [N, L, 2] as (x, y)) from `landmarks.csv`."""
    header, rows = _read_csv(path, None, "image,x1,y1,x2,y2,...")
    if len(header) < 3 or len(header) % 2 == 0:
        raise DatasetError(
            f"{path} must have an image column followed by x,y pairs, but its header has {len(header)} columns."
        )
    names, values, seen = [], [], set()
    for line, row in rows:
        name = row[0]
        if name in seen:
            raise DatasetError(f"{path} line {line}: image {name!r} appears twice; keep one row per image.")
        seen.add(name)
        try:
            values.append([float(v) for v in row[1:]])
        except ValueError:
            raise DatasetError(f"{path} line {line} has a value that is not a number: {row[1:]}.") from None
        names.append(name)
    if not names:
        raise DatasetError(f"{path} has a header but no landmark rows.")
    point_names = [header[i][:-2] if header[i].endswith("_x") else f"p{i // 2}" for i in range(1, len(header), 2)]
    return names, point_names, torch.tensor(values, dtype=torch.float32).view(len(names), -1, 2)


def read_splits_csv(path: Path) -> dict[str, str]:
    """image name -> split name from `splits.csv`."""
    _, rows = _read_csv(path, 2, "image,split")
    splits: dict[str, str] = {}
    for line, (name, split) in rows:
        if name in splits:
            raise DatasetError(f"{path} line {line}: image {name!r} appears twice; keep one row per image.")
        splits[name] = split
    return splits


class LandmarkFolderDataset(ImageListDataset):
    """Face images with landmarks from `root` (layout in the module docstring).

    Args:
        root: the dataset folder.
        split: None for every image, else a split name from `splits.csv` (e.g. 'train', 'test').
        image_size: output side S.
        pair_warper: optional TPS warper (`dlp.data.tps`) built for `face_work_size(image_size)` pixels (80 for 64,
            160 for 128); a pair warper adds "image_prior" (strong warp) and makes "image" the light warp.
        verify_images: read every image header up front (unreadable files: <= 1 % skipped with a warning,
            more raise).

    Items: {"image": [3, S, S] float in [0, 1], "landmarks": [L, 2] (x, y) output pixels, "index": int} and, with a
    pair warper, "image_prior" and "landmarks_prior". `landmark_names` lists the L points.
    """

    def __init__(self, root: str | Path, split: str | None = None, image_size: int = 64, pair_warper: Any = None,
                 *, verify_images: bool = True) -> None:
        self.root = require_dir(root, "landmark dataset folder")
        image_dir, landmarks_csv = self.root / "images", self.root / "landmarks.csv"
        if not image_dir.is_dir() or not landmarks_csv.is_file():
            missing = "images/" if not image_dir.is_dir() else "landmarks.csv"
            raise DatasetNotFoundError(
                f"the landmark folder {root} has no {missing}; expected {root}/images/ (the face images) and "
                f"{root}/landmarks.csv (a header, then image,x1,y1,x2,y2,... per image), as in celeba-mini."
            )

        on_disk = list_images(image_dir)
        if not on_disk:
            raise DatasetError(f"{image_dir} contains no images (.jpg, .png, ...); add the images there.")
        names, self.landmark_names, landmarks = read_landmarks_csv(landmarks_csv)
        missing = [n for n in names if n not in on_disk]
        if missing:
            raise DatasetError(
                f"{landmarks_csv} has rows for {len(missing)} image(s) that are not in {image_dir} "
                f"({examples(missing)}); add the images or delete those rows."
            )
        listed = set(names)
        unlabelled = [n for n in on_disk if n not in listed]
        if unlabelled:
            raise DatasetError(
                f"{len(unlabelled)} image(s) in {image_dir} have no row in {landmarks_csv} ({examples(unlabelled)}); "
                "add their landmarks or move them out of the folder."
            )

        keep = list(range(len(names)))
        self.split = split
        if split is not None:
            keep = self._select_split(names, split)
        paths = [on_disk[names[i]] for i in keep]
        if verify_images:
            readable = drop_unreadable_images(paths, what=str(image_dir))
            keep, paths = [keep[i] for i in readable], [paths[i] for i in readable]
        self.names = [names[i] for i in keep]
        super().__init__(paths, face_transform(image_size, pair_warper), landmarks[keep])

    def _select_split(self, names: list[str], split: str) -> list[int]:
        splits_csv = self.root / "splits.csv"
        if not splits_csv.is_file():
            raise DatasetError(f"split={split!r} needs {splits_csv}; add it or pass split=None to use every image.")
        splits = read_splits_csv(splits_csv)
        known = set(names)
        stray = [n for n in splits if n not in known]
        if stray:
            raise DatasetError(
                f"{splits_csv} lists {len(stray)} image(s) without landmarks ({examples(stray)}); delete those rows."
            )
        unassigned = [n for n in names if n not in splits]
        if unassigned:
            raise DatasetError(
                f"{len(unassigned)} image(s) have no row in {splits_csv} ({examples(unassigned)}); give each a split."
            )
        keep = [i for i, n in enumerate(names) if splits[n] == split]
        if not keep:
            raise DatasetError(
                f"split {split!r} has no images in {splits_csv}; available: {sorted(set(splits.values()))}."
            )
        return keep
