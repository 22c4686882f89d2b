"""Video prediction with a video model (DDLP): roll a clip out, get the frames and the particle trajectories back.

    >>> import dlp
    >>> from dlp.predict import load_clip, predict
    >>> model = dlp.load_checkpoint("runs/clevrer/checkpoints/best.pt")
    >>> clip = load_clip(video="video_10000.mp4", image_size=model.config.image_size, num_frames=16,
    ...                  dataset="clevrer")                                   # [16, 3, S, S] in [0, 1]
    >>> result = predict(model, clip.frames, cond_frames=6, horizon=10)
    >>> result.frames.shape, result.trajectories.shape                       # [1, 16, 3, S, S], [1, 16, K, 2]
    >>> result.save("prediction.gif"); result.save("prediction.mp4")         # ground truth | prediction

`predict` encodes the first `cond_frames` frames, lets the model's dynamics (PINT) predict `horizon` more frames from
its own predictions, and decodes them (`DDLP.rollout`). The returned frames start with the reconstructions of the
conditioning frames; the trajectories are the particles of every frame, conditioning frames included.

Clips come from a video file or a folder of frames (`load_video_clip`, decoded with PyAV through `dlp.data.video`) or
from a dataset (`load_dataset_clip`, a prepared frame array or episode folders as `build_dataset` reads them). A video
is pre-processed like the training data of the model: the crop of the training dataset (`demo_preprocess` of the
dataset registry: the whole CLEVRER frame, the traffic box; a centre square otherwise) and the frame skip of
`dlp prepare` (recorded in the sidecar of the training array when it can be found, else `dlp prepare`'s default for
that dataset), so that the model sees objects at the size and speed it was trained on.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlp.viz import kp_to_pixels

__all__ = [
    "Clip",
    "PredictError",
    "Prediction",
    "VideoPreprocessing",
    "as_clips",
    "is_video_model",
    "load_clip",
    "load_dataset_clip",
    "load_video_clip",
    "predict",
    "rollout_lengths",
    "video_preprocessing",
]

# `dlp prepare clevrer|traffic` keep every 3rd frame by default; other video datasets are read frame by frame.
PREPARE_FRAMESKIP = {"clevrer": 3, "traffic": 3}
# the demo's pre-processing of a dataset's images -> the crop of `dlp.data.video.CROPS` that matches it
_CROP_OF_PREPROCESS = {"clevrer": "none", "traffic": "traffic"}
DEFAULT_THRESHOLD = 0.5  # particles with obj_on below it count as switched off (as in the training figures)


class PredictError(ValueError):
    """Bad input for a prediction (one sentence: what is wrong and how to fix it)."""


# ----------------------------------------------------------------------------------------------------------------
# the result

@dataclass
class Prediction:
    """A rollout of B clips over T = cond_frames + horizon frames, on the CPU.

    frames: [B, T, C, H, W] in [0, 1]: reconstructions of the `cond_frames` conditioning frames, then the predicted
        frames.
    ground_truth: [B, T, C, H, W] the input's frames, or None when the input had fewer than T frames.
    trajectories: [B, T, K, 2] particle positions (y, x) in [-1, 1]; pixels: [B, T, K, 2] the same as (row, col)
        pixels, (kp + 1) / 2 * (H - 1).
    obj_on: [B, T, K] transparency in [0, 1] (a particle is drawn as switched on from `DEFAULT_THRESHOLD`).
    cond_frames: how many leading frames are conditioning frames.
    particles: every latent of the trajectory (`DDLPParticles`: position, scale, depth, obj_on, features,
        bg_features; the conditioning frames' can be edited and rolled out again with `model.rollout_from` after
        moving them to the model's device).
    """

    frames: torch.Tensor
    ground_truth: torch.Tensor | None
    trajectories: torch.Tensor
    pixels: torch.Tensor
    obj_on: torch.Tensor
    cond_frames: int
    particles: Any = None

    @property
    def num_frames(self) -> int:
        return self.frames.shape[1]

    @property
    def horizon(self) -> int:
        return self.num_frames - self.cond_frames

    def switched_on(self, threshold: float = DEFAULT_THRESHOLD) -> torch.Tensor:
        """[B, T, K] bool: the particles whose transparency is at least `threshold`."""
        return self.obj_on >= threshold

    def video(self, index: int = 0, *, trajectories: bool = True, ground_truth: bool = True,
              threshold: float = DEFAULT_THRESHOLD, scale: int | None = None, trail: int | None = None) -> np.ndarray:
        """Clip `index` rendered as uint8 frames [T, H', W', 3]: ground truth | prediction side by side (the ground
        truth where there is one and `ground_truth`), the prediction's border and the timeline green on conditioning
        frames and red on predicted ones, the switched-on particles' trajectories drawn on the prediction (see
        `dlp.video_io.render_panels`; `trail` limits them to the last frames)."""
        from dlp.video_io import Panel, render_panels

        if not -self.frames.shape[0] <= index < self.frames.shape[0]:
            raise PredictError(f"clip index {index} is out of range for a prediction of {self.frames.shape[0]} "
                               "clip(s).")
        panels = []
        if ground_truth and self.ground_truth is not None:
            panels.append(Panel(self.ground_truth[index], "ground truth", marked=False))
        panels.append(Panel(self.frames[index], "prediction",
                            positions=self.trajectories[index] if trajectories else None,
                            on=self.switched_on(threshold)[index]))
        return render_panels(panels, self.cond_frames, scale=scale, trail=trail)

    def save(self, path: str | os.PathLike, index: int = 0, *, fps: float = 8.0, **video_options: Any) -> Path:
        """Write clip `index` as a GIF or MP4 (by the suffix of `path`), rendered by `video(**video_options)`."""
        from dlp.video_io import write_video

        return write_video(self.video(index, **video_options), path, fps)

    def to_dict(self) -> dict[str, Any]:
        """The trajectories as plain lists (for JSON): per clip, per frame, per particle."""
        return {
            "format": "dlp-prediction/1",
            "cond_frames": self.cond_frames,
            "horizon": self.horizon,
            "image_size": list(self.frames.shape[-2:]),
            "pixel_convention": "pix = (kp + 1) / 2 * (H - 1); positions are (y, x), pixels (row, col)",
            "clips": [{"positions": self.trajectories[b].tolist(), "pixels": self.pixels[b].tolist(),
                       "obj_on": self.obj_on[b].tolist()} for b in range(self.frames.shape[0])],
        }

    def save_json(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict()) + "\n")
        return path


# ----------------------------------------------------------------------------------------------------------------
# prediction

def is_video_model(model: Any) -> bool:
    """Whether `model` predicts videos (has `rollout` and `rollout_from`, as DDLP does)."""
    return callable(getattr(model, "rollout", None)) and callable(getattr(model, "rollout_from", None))


def _check_lengths(cond_frames: int, horizon: int) -> tuple[int, int]:
    for name, value, low in (("cond_frames", cond_frames, 1), ("horizon", horizon, 0)):
        if isinstance(value, bool) or int(value) != value or value < low:
            raise PredictError(f"{name} must be an integer >= {low}, got {value}.")
    return int(cond_frames), int(horizon)


def as_clips(frames: torch.Tensor | np.ndarray) -> torch.Tensor:
    """[T, C, H, W] or [B, T, C, H, W] frames (float in [0, 1] or uint8) -> float [B, T, C, H, W]."""
    x = torch.as_tensor(frames)
    if x.dim() == 4:
        x = x[None]
    if x.dim() != 5:
        raise PredictError(f"expected frames [T, C, H, W] or [B, T, C, H, W], got shape {tuple(x.shape)}.")
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


@torch.no_grad()
def predict(model: torch.nn.Module, frames: torch.Tensor | np.ndarray, cond_frames: int, horizon: int, *,
            deterministic: bool = True) -> Prediction:
    """Roll a video model out from the first `cond_frames` frames for `horizon` more.

    frames: [T, C, H, W] or [B, T, C, H, W], float in [0, 1] (or uint8), at the model's image size, T >= cond_frames;
    when T >= cond_frames + horizon the first cond_frames + horizon frames are returned as the ground truth.
    deterministic: posterior means and PINT's mean predictions (False samples both). The model is put in eval mode
    for the rollout (PINT's dropout would act otherwise) and back in its mode afterwards.
    Returns a `Prediction` (frames clamped to [0, 1], everything on the CPU; a single clip gets B = 1).
    """
    if not is_video_model(model):
        raise PredictError(f"predict needs a video model (DDLP), but {type(model).__name__} models single images.")
    cond_frames, horizon = _check_lengths(cond_frames, horizon)
    x = as_clips(frames)
    cfg = model.config
    expected = (cfg.in_channels, cfg.image_size, cfg.image_size)
    if tuple(x.shape[2:]) != expected:
        raise PredictError(f"the model takes frames of shape {list(expected)}, got {list(x.shape[2:])}; load them with "
                           "dlp.predict.load_clip(image_size=model.config.image_size, ...) or resize them.")
    if x.shape[1] < cond_frames:
        raise PredictError(f"the clip has {x.shape[1]} frame(s), fewer than the {cond_frames} conditioning frames; "
                           "give more frames or fewer conditioning frames.")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        result = model.rollout(x[:, :cond_frames].to(device), cond_frames, horizon, deterministic=deterministic)
    finally:
        model.train(was_training)
    total = cond_frames + horizon
    positions = result.particles.position.detach().float().cpu()
    return Prediction(
        frames=result.frames.detach().float().clamp(0, 1).cpu(),
        ground_truth=x[:, :total].clamp(0, 1).cpu() if x.shape[1] >= total else None,
        trajectories=positions,
        pixels=kp_to_pixels(positions, cfg.image_size),
        obj_on=result.particles.obj_on.detach().float().cpu(),
        cond_frames=cond_frames,
        particles=type(result.particles)(*(getattr(result.particles, name).detach().cpu()
                                            for name in result.particles.LATENTS)),
    )


def rollout_lengths(train_config: dict[str, Any] | None, cond_frames: int | None = None,
                    horizon: int | None = None) -> tuple[int, int]:
    """(conditioning frames, horizon): the given values, else those of the checkpoint's training config
    (`cond_steps`, `rollout_horizon`)."""
    train_config = train_config or {}
    cond_frames = train_config.get("cond_steps") if cond_frames is None else cond_frames
    horizon = train_config.get("rollout_horizon") if horizon is None else horizon
    if cond_frames is None or horizon is None:
        raise PredictError("the checkpoint records no rollout lengths (cond_steps, rollout_horizon); pass "
                           "--cond-frames C and --horizon H.")
    return _check_lengths(cond_frames, horizon)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' (CUDA when available), 'cpu' or 'cuda'."""
    if name == "cuda" and not torch.cuda.is_available():
        raise PredictError("--device cuda was requested but no CUDA device is available; use --device cpu.")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


# ----------------------------------------------------------------------------------------------------------------
# clips

@dataclass
class Clip:
    """Frames to predict from: frames [T, 3, S, S] float in [0, 1]; source: where they come from, in words."""

    frames: torch.Tensor
    source: str


@dataclass(frozen=True)
class VideoPreprocessing:
    """How the frames of a video file are turned into model frames: the crop ('none' = squash the whole frame,
    'center' = centre square, 'traffic' = the traffic box; `dlp.data.video.CROPS`), every `frameskip`-th frame from
    frame `start_frame` (0-based), resized (bicubic) to the model's size."""

    crop: str = "center"
    frameskip: int = 1
    start_frame: int = 0


def _recorded_preparation(dataset: str, data_root: str | os.PathLike | None) -> dict[str, Any] | None:
    """The sidecar of the training frame array (`dlp prepare` records crop and frameskip there), if it can be read."""
    if not data_root:
        return None
    try:
        from dlp.data.registry import resolve_frame_array
        from dlp.data.video import sidecar_path

        npy, _ = resolve_frame_array(Path(data_root).expanduser(), dataset, "train")
        return json.loads(sidecar_path(npy).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # no array there any more, no sidecar, another machine's path: use the defaults
        return None


def video_preprocessing(dataset: str | None, data_root: str | os.PathLike | None = None) -> VideoPreprocessing:
    """The pre-processing of video files for a model trained on `dataset` (see the module docstring): the dataset's
    crop, and the frame skip recorded beside its training array `data_root` (else `dlp prepare`'s default)."""
    from dlp.data.registry import _DATASETS
    from dlp.data.video import CROPS

    info = _DATASETS.get(dataset or "")
    crop = _CROP_OF_PREPROCESS.get(info.demo_preprocess if info is not None else None, "center")
    frameskip = PREPARE_FRAMESKIP.get(dataset or "", 1)
    recorded = _recorded_preparation(dataset, data_root) if info is not None and info.videos else None
    if recorded is not None:
        if recorded.get("crop") in CROPS:
            crop = recorded["crop"]
        if isinstance(recorded.get("frameskip"), int) and recorded["frameskip"] >= 1:
            frameskip = recorded["frameskip"]
    return VideoPreprocessing(crop=crop, frameskip=frameskip)


def _too_short(where: str, have: int, need: int) -> PredictError:
    return PredictError(f"{where} has {have} frame(s), fewer than the {need} needed (conditioning frames + horizon); "
                        "lower --cond-frames or --horizon, or use a longer clip.")


def load_video_clip(path: str | os.PathLike, image_size: int, num_frames: int | None = None, *,
                    preprocessing: VideoPreprocessing = VideoPreprocessing()) -> Clip:
    """The frames of a video file (PyAV) or of a folder of frame images: every `preprocessing.frameskip`-th frame from
    `preprocessing.start_frame`, cropped and resized (bicubic) to `image_size` -> `Clip` with frames
    [num_frames, 3, S, S] (all remaining frames for None). Decoding stops once `num_frames` frames are read; fewer
    raise `PredictError`."""
    from PIL import Image

    from dlp.data.common import DatasetError, crop_resize, pil_to_tensor
    from dlp.data.video import CROPS, _kept_frames, find_sources

    prep = preprocessing
    if prep.crop not in CROPS:
        raise PredictError(f"unknown crop {prep.crop!r}; choose one of {', '.join(CROPS)}.")
    if prep.frameskip < 1 or prep.start_frame < 0:
        raise PredictError(f"frameskip must be >= 1 and start_frame >= 0, got {prep.frameskip} and "
                           f"{prep.start_frame}.")
    path = Path(path).expanduser()
    try:
        sources = find_sources(path)
    except DatasetError as exc:
        raise PredictError(str(exc)) from None
    if len(sources) != 1:
        raise PredictError(f"{path} holds {len(sources)} videos; pass one video file or one folder of frames.")

    def keep(i: int) -> bool:
        return i >= prep.start_frame and (i - prep.start_frame) % prep.frameskip == 0

    frames = []
    try:
        for image in _kept_frames(sources[0], keep):
            box = CROPS[prep.crop](*image.size)
            frames.append(pil_to_tensor(crop_resize(image, box, image_size, Image.Resampling.BICUBIC)))
            if num_frames is not None and len(frames) == num_frames:
                break  # closing the generator closes the container: the rest of the video is never decoded
    except DatasetError as exc:
        raise PredictError(str(exc)) from None
    if num_frames is not None and len(frames) < num_frames or not frames:
        where = f"{path} (frameskip {prep.frameskip}, from frame {prep.start_frame})"
        raise _too_short(where, len(frames), num_frames or 1)
    how = f"crop {prep.crop}, frameskip {prep.frameskip}, from frame {prep.start_frame}"
    return Clip(torch.stack(frames), f"{path.name} ({how})")


def _longest_video(dataset: str, data_root: Path | None, image_size: int, split: str | None) -> int | None:
    """The length of the longest video of a dataset split (None when the dataset does not tell)."""
    from dlp.data.common import DatasetError
    from dlp.data.registry import build_dataset

    try:
        probe = build_dataset(dataset, data_root=data_root, image_size=image_size, split=split, clip_length=1)
    except DatasetError:
        return None
    lengths = getattr(getattr(probe, "dataset", probe), "_lengths", None)
    return int(max(lengths)) if lengths is not None and len(lengths) else None


def load_dataset_clip(dataset: str, data_root: str | os.PathLike | None, index: int, image_size: int,
                      num_frames: int, *, split: str | None = "heldout") -> Clip:
    """Clip `index` (0-based) of `num_frames` frames of a video dataset, as `build_dataset(dataset, ...,
    clip_length=num_frames)` numbers its clips: the held-out splits give one clip per video (its first frames),
    'train' and None (every video) every window of every video.

    data_root: a prepared .npy or a folder as `build_dataset` accepts (None for generated datasets such as 'balls');
    split: 'heldout' (the dataset's held-out split, `DatasetInfo.heldout_split`), 'train', 'valid', 'test' or None.
    """
    from dlp.data.common import DatasetError
    from dlp.data.registry import build_dataset, dataset_info, list_datasets

    try:
        info = dataset_info(dataset)
    except DatasetError as exc:
        raise PredictError(str(exc)) from None
    if not info.videos:
        videos = ", ".join(n for n in list_datasets() if dataset_info(n).videos)
        raise PredictError(f"dataset {dataset!r} holds still images; a prediction needs a video dataset ({videos}).")
    if data_root is None and not info.generated:
        raise PredictError(f"dataset {dataset!r} needs its data: pass --data-root DIR (a prepared .npy or the "
                           "frame folders).")
    root = None if data_root is None else Path(data_root).expanduser()
    split = info.heldout_split if split == "heldout" else split
    try:
        clips = build_dataset(dataset, data_root=root, image_size=image_size, split=split, clip_length=num_frames)
    except DatasetError as exc:
        longest = _longest_video(dataset, root, image_size, split)
        if longest is not None and longest < num_frames:
            raise _too_short(f"the longest video of {root} (split {split!r})", longest, num_frames) from None
        raise PredictError(str(exc)) from None
    if isinstance(index, bool) or int(index) != index or not 0 <= index < len(clips):
        raise PredictError(f"clip index {index} is out of range: split {split!r} of {root or dataset} has "
                           f"{len(clips)} clip(s) of {num_frames} frames (indices 0..{len(clips) - 1}).")
    item = clips[int(index)]
    where = f"{root.name if root is not None else dataset} split {split!r} clip {index}"
    if "episode" in item:
        where += f" (video {item['episode']}, from frame {item.get('start', 0)})"
    return Clip(item["video"][:num_frames], where)


def load_clip(*, image_size: int, num_frames: int, video: str | os.PathLike | None = None,
              data_root: str | os.PathLike | None = None, dataset: str | None = None, index: int = 0,
              split: str | None = "heldout", crop: str | None = None, frameskip: int | None = None,
              start_frame: int | None = None, train_config: dict[str, Any] | None = None) -> Clip:
    """A clip of `num_frames` frames at `image_size` from a video file / frame folder (`video`, see
    `load_video_clip`) or from a dataset (`data_root`, `index`, `split`, see `load_dataset_clip`).

    dataset: the dataset whose pre-processing a video gets, and the dataset of `data_root`; default: the training
    dataset of `train_config` (a checkpoint's "train_config"), whose recorded data also gives the video frame skip.
    crop, frameskip, start_frame: override the video's pre-processing (`video_preprocessing`); video files only.
    Without `video` and `data_root`: the training data recorded in `train_config` when `dataset` is the training
    dataset and the data are still there, else a generated dataset (e.g. 'balls') is generated.
    """
    train_config = train_config or {}
    if video is not None and data_root is not None:
        raise PredictError("give either a video file or a data root, not both.")
    trained_on = train_config.get("dataset")
    if dataset is not None:
        from dlp.data.common import DatasetError
        from dlp.data.registry import dataset_info

        try:
            dataset_info(dataset)
        except DatasetError as exc:
            raise PredictError(str(exc)) from None
    dataset = dataset or trained_on
    overrides = {k: v for k, v in (("crop", crop), ("frameskip", frameskip), ("start_frame", start_frame))
                 if v is not None}
    if video is not None:
        recorded_root = train_config.get("data_root") if dataset == trained_on else None
        preprocessing = replace(video_preprocessing(dataset, recorded_root), **overrides)
        return load_video_clip(video, image_size, num_frames, preprocessing=preprocessing)
    if overrides:
        raise PredictError("crop, frameskip and start frame pre-process a video file; a dataset clip is read as "
                           "prepared.")
    if dataset is None:
        raise PredictError("no clip given; pass --video FILE, or --data-root DIR with -d DATASET (the checkpoint "
                           "does not record its training dataset).")
    if data_root is None and dataset == trained_on and train_config.get("data_root"):
        recorded = Path(train_config["data_root"]).expanduser()
        data_root = recorded if recorded.exists() else None  # the training data, when it is still there
    return load_dataset_clip(dataset, data_root, index, image_size, num_frames, split=split)
