"""Any folder of images (searched recursively) as an unlabelled dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dlp.data.common import (
    DatasetError,
    ImageListDataset,
    SquareCropTransform,
    drop_unreadable_images,
    list_images,
    require_dir,
)


class ImageFolderDataset(ImageListDataset):
    """Every image under `root` (recursive, sorted by path), centre square crop, resized (bilinear) to
    `image_size x image_size`. Grayscale / palette / RGBA images are converted to RGB.

    `pair_warper`: optional TPS warper built for `image_size` pixels (there is no margin here, so warped borders
    are zero-padded). Unreadable files: <= 1 % are skipped with a warning, more raise a DatasetError naming them.
    Items: {"image": [3, S, S] float in [0, 1], "index"} (+ "image_prior" with a pair warper).
    """

    def __init__(self, root: str | Path, image_size: int, pair_warper: Any = None, *,
                 verify_images: bool = True) -> None:
        self.root = require_dir(root, "image folder")
        paths = list(list_images(self.root).values())
        if not paths:
            raise DatasetError(f"{self.root} contains no images (.jpg, .png, ...); point to a folder of images.")
        if verify_images:
            paths = [paths[i] for i in drop_unreadable_images(paths, what=str(self.root))]
        super().__init__(paths, SquareCropTransform(image_size, warper=pair_warper))
