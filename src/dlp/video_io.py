"""Videos out of the library: GIF (PIL) and MP4 (PyAV) files, side-by-side panels and particle trajectories.

    >>> from dlp.video_io import Panel, render_panels, write_video
    >>> frames = render_panels([Panel(ground_truth, "ground truth", marked=False),
    ...                         Panel(predicted, "prediction", positions=trajectory, on=obj_on >= 0.5)],
    ...                        cond_frames=4)                      # uint8 [T, H', W', 3]
    >>> write_video(frames, "prediction.gif"); write_video(frames, "prediction.mp4")

Layout of a rendered frame (`render_panels`): the panels side by side, each upscaled by the same integer factor (small
model frames become watchable; nearest neighbour, so pixels stay pixels), each in a border, an optional label above
each; below them a timeline with one cell per frame. The border of a `marked` panel and the timeline tell the phase:
green while the frame is a conditioning frame (the model saw it and reconstructs it), red once the model predicts
(the official videos mark the same switch with `rec_to_pred_t`). Trajectories are drawn on a panel given particle
positions: for every particle switched on in the current frame, a polyline through its positions in the frames so
far (broken where it was switched off) and a disc at its current position, in the particle palette of `dlp.viz`.

Conventions as in `dlp.viz`: frames are float [T, 3, H, W] in [0, 1] (clamped), particles (y, x) in [-1, 1] with
pixel (kp + 1) / 2 * (size - 1). Files are written to a temporary name beside the target and renamed, so a failed
write never leaves a half file under the target's name.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from dlp.checkpoint import atomic_write

__all__ = [
    "CONDITIONING_COLOR",
    "PREDICTION_COLOR",
    "VIDEO_SUFFIXES",
    "Panel",
    "VideoWriteError",
    "draw_trajectories",
    "mp4_codec",
    "render_panels",
    "upscale_factor",
    "write_gif",
    "write_mp4",
    "write_video",
]

CONDITIONING_COLOR = (46, 204, 64)  # green: frames the model was given (and reconstructs)
PREDICTION_COLOR = (230, 57, 50)  # red: frames the model predicts
NEUTRAL_COLOR = (90, 90, 90)  # the border of unmarked panels (ground truth)
BACKGROUND_COLOR = (20, 20, 20)
LABEL_COLOR = (235, 235, 235)
VIDEO_SUFFIXES = (".gif", ".mp4")
# H.264 where the PyAV wheel has an encoder for it, else MPEG-4 part 2 (every FFmpeg build has that one)
MP4_CODECS = ("libx264", "h264", "mpeg4")


class VideoWriteError(ValueError):
    """A video that cannot be written (one sentence: what is wrong and how to fix it)."""


# ----------------------------------------------------------------------------------------------------------------
# frames

def _as_uint8_frames(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    """float [T, 3, H, W] in [0, 1] (tensor or array) or uint8 [T, H, W, 3] -> contiguous uint8 [T, H, W, 3]."""
    if isinstance(frames, np.ndarray) and frames.dtype == np.uint8:
        array = frames
    else:
        t = torch.as_tensor(frames).detach().float().cpu()
        if t.dim() != 4 or t.shape[1] not in (1, 3):
            raise VideoWriteError(f"expected frames [T, 3, H, W] (float in [0, 1]) or uint8 [T, H, W, 3], got shape "
                                  f"{tuple(t.shape)}.")
        if t.shape[1] == 1:
            t = t.expand(-1, 3, -1, -1)
        array = t.clamp(0, 1).mul(255).add(0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    if array.ndim != 4 or array.shape[-1] != 3 or array.shape[0] == 0:
        raise VideoWriteError(f"expected at least one RGB frame [T, H, W, 3], got shape {tuple(array.shape)}.")
    return np.ascontiguousarray(array)


def upscale_factor(height: int, target: int = 256) -> int:
    """The integer factor that brings frames of `height` pixels to at least `target` pixels (1 for large frames)."""
    return max(1, math.ceil(target / max(1, height)))


def _upscale(frames: np.ndarray, factor: int) -> np.ndarray:
    """uint8 [T, H, W, 3] -> [T, H * factor, W * factor, 3], nearest neighbour."""
    if factor == 1:
        return frames
    return frames.repeat(factor, axis=1).repeat(factor, axis=2)


def _rgb(color: Sequence[float]) -> tuple[int, int, int]:
    """A colour as 0..255 integers, from floats in [0, 1] (the `dlp.viz` palette) or integers."""
    values = [float(c) for c in color]
    if all(v <= 1.0 for v in values):
        values = [v * 255.0 for v in values]
    return tuple(round(min(max(v, 0.0), 255.0)) for v in values)  # type: ignore[return-value]


def draw_trajectories(frames: torch.Tensor | np.ndarray, positions: torch.Tensor, on: torch.Tensor | None = None, *,
                      scale: int = 1, colors: torch.Tensor | None = None, trail: int | None = None,
                      line_width: int | None = None, radius: float | None = None) -> np.ndarray:
    """Draw particle trajectories onto frames.

    frames: float [T, 3, H, W] in [0, 1] or uint8 [T, H, W, 3] at the model's resolution; positions: [T, K, 2] (y, x)
    in [-1, 1]; on: [T, K] bool, the particles switched on in each frame (default: all). Frame t shows, for every
    particle on in frame t, the polyline through its positions in frames t - trail .. t (all earlier frames for
    None), broken where it was off, and a disc at its position in frame t; particle k has colour `colors[k]`
    (default: the `dlp.viz` palette). The frames are first upscaled by `scale` (nearest neighbour) so that lines are
    thin compared with the frame. Returns uint8 [T, H * scale, W * scale, 3].
    """
    from PIL import Image, ImageDraw

    from dlp.viz import kp_to_pixels, particle_colors

    images = _upscale(_as_uint8_frames(frames), scale)
    t_count, height, width = images.shape[:3]
    positions = torch.as_tensor(positions).detach().float().cpu()
    if positions.dim() != 3 or positions.shape[0] != t_count or positions.shape[-1] != 2:
        raise VideoWriteError(f"expected positions [{t_count}, K, 2] for {t_count} frames, got shape "
                              f"{tuple(positions.shape)}.")
    k = positions.shape[1]
    on = torch.ones(t_count, k, dtype=torch.bool) if on is None else torch.as_tensor(on).detach().cpu().bool()
    palette = [_rgb(c) for c in (particle_colors(k) if colors is None else torch.as_tensor(colors).cpu()).tolist()]
    # the centre of model pixel p lies at (p + 0.5) * scale - 0.5 in the upscaled frame
    pix = (kp_to_pixels(positions, height // scale, width // scale) + 0.5) * scale - 0.5  # [T, K, 2] (row, col)
    line_width = max(1, round(scale / 2)) if line_width is None else int(line_width)
    radius = max(1.5, scale * 0.9) if radius is None else float(radius)
    finite = torch.isfinite(pix).all(-1) & on  # [T, K]
    out = np.empty_like(images)
    for t in range(t_count):
        image = Image.fromarray(images[t])
        draw = ImageDraw.Draw(image)
        first = 0 if trail is None else max(0, t - int(trail))
        for i in range(k):
            if not finite[t, i]:
                continue
            color = palette[i]
            run: list[tuple[float, float]] = []  # consecutive frames with the particle on: one polyline each
            for j in range(first, t + 1):
                if finite[j, i]:
                    run.append((float(pix[j, i, 1]), float(pix[j, i, 0])))
                    continue
                if len(run) > 1:
                    draw.line(run, fill=color, width=line_width, joint="curve")
                run = []
            if len(run) > 1:
                draw.line(run, fill=color, width=line_width, joint="curve")
            col, row = float(pix[t, i, 1]), float(pix[t, i, 0])
            draw.ellipse((col - radius, row - radius, col + radius, row + radius), fill=color)
        out[t] = np.asarray(image)
    return out


# ----------------------------------------------------------------------------------------------------------------
# composition

@dataclass
class Panel:
    """One column of a side-by-side video.

    frames: float [T, 3, H, W] in [0, 1] (or uint8 [T, H, W, 3]); label: written above it (empty: none);
    positions: [T, K, 2] (y, x) in [-1, 1] to draw trajectories from (None: no trajectories); on: [T, K] bool, the
    particles switched on (default: all); marked: whether its border shows the phase (conditioning / prediction).
    """

    frames: torch.Tensor | np.ndarray
    label: str = ""
    positions: torch.Tensor | None = None
    on: torch.Tensor | None = None
    marked: bool = True


def _label_font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed-size bitmap font
        return ImageFont.load_default()


def render_panels(panels: Sequence[Panel], cond_frames: int, *, scale: int | None = None, trail: int | None = None,
                  timeline: bool = True) -> np.ndarray:
    """Compose panels of T frames side by side into one video: uint8 [T, H', W', 3] with even H' and W' (what
    yuv420p MP4s need).

    Each panel is upscaled by `scale` (default `upscale_factor`: at least 256 px high), trajectories drawn where it
    has positions, framed by a border (phase colour if `marked`, grey otherwise) and labelled. The first `cond_frames`
    frames are the conditioning phase (green), the rest the prediction (red); the timeline below has one cell per
    frame, the current one bright. See the module docstring.
    """
    if not panels:
        raise VideoWriteError("render_panels needs at least one panel.")
    frames = [_as_uint8_frames(p.frames) for p in panels]
    t_count, height, width = frames[0].shape[:3]
    if any(f.shape != frames[0].shape for f in frames):
        raise VideoWriteError(f"all panels need the same number and size of frames, got "
                              f"{[tuple(f.shape[:3]) for f in frames]}.")
    if not 0 <= cond_frames <= t_count:
        raise VideoWriteError(f"cond_frames must lie between 0 and the number of frames ({t_count}), got "
                              f"{cond_frames}.")
    scale = upscale_factor(height) if scale is None else int(scale)
    if scale < 1:
        raise VideoWriteError(f"the upscaling factor must be a positive integer, got {scale}.")
    tiles = []
    for panel, images in zip(panels, frames):
        if panel.positions is not None:
            tiles.append(draw_trajectories(images, panel.positions, panel.on, scale=scale, trail=trail))
        else:
            tiles.append(_upscale(images, scale))
    h, w = height * scale, width * scale
    border = max(2, round(h / 64))
    label_font_size = max(10, round(h / 20))
    has_labels = any(p.label for p in panels)
    header = label_font_size + 2 * border if has_labels else 0
    bar = max(4, round(h / 40)) if timeline else 0
    tile_w = w + 2 * border
    out_h = header + h + 2 * border + (bar + border if timeline else 0)
    out_w = len(panels) * tile_w + (len(panels) - 1) * border
    out_h += out_h % 2  # yuv420p halves the chroma resolution: even sizes only
    out_w += out_w % 2
    canvas = np.empty((t_count, out_h, out_w, 3), dtype=np.uint8)
    canvas[:] = BACKGROUND_COLOR
    for t in range(t_count):
        phase = CONDITIONING_COLOR if t < cond_frames else PREDICTION_COLOR
        for j, (panel, tile) in enumerate(zip(panels, tiles)):
            left, top = j * (tile_w + border), header
            canvas[t, top:top + h + 2 * border, left:left + tile_w] = phase if panel.marked else NEUTRAL_COLOR
            canvas[t, top + border:top + border + h, left + border:left + border + w] = tile[t]
        if timeline:
            top = header + h + 2 * border + border
            edges = np.linspace(0, out_w, t_count + 1).round().astype(int)
            for j in range(t_count):
                base = np.asarray(CONDITIONING_COLOR if j < cond_frames else PREDICTION_COLOR, dtype=np.float32)
                color = base if j == t else 0.35 * base + 0.65 * np.asarray(BACKGROUND_COLOR, dtype=np.float32)
                # a one-pixel gap between cells keeps neighbouring frames apart where cells are wide enough
                right = edges[j + 1] - (1 if edges[j + 1] - edges[j] > 2 else 0)
                canvas[t, top:top + bar, edges[j]:right] = color.round().astype(np.uint8)
    if has_labels:
        canvas = _write_labels(canvas, panels, tile_w, border, label_font_size)
    return canvas


def _write_labels(canvas: np.ndarray, panels: Sequence[Panel], tile_w: int, border: int, size: int) -> np.ndarray:
    """The panels' labels in the header strip of every frame (drawn once, then copied: the header never changes)."""
    from PIL import Image, ImageDraw

    font = _label_font(size)
    header = Image.fromarray(canvas[0, :size + 2 * border].copy())
    draw = ImageDraw.Draw(header)
    for j, panel in enumerate(panels):
        if panel.label:
            draw.text((j * (tile_w + border) + border, border), panel.label, fill=LABEL_COLOR, font=font)
    canvas[:, :size + 2 * border] = np.asarray(header)[None]
    return canvas


# ----------------------------------------------------------------------------------------------------------------
# files

def _check_target(path: str | os.PathLike, suffix: str | None = None) -> Path:
    path = Path(path).expanduser()
    if suffix is not None and path.suffix.lower() != suffix:
        raise VideoWriteError(f"{path} must end in {suffix}.")
    if path.is_dir():
        raise VideoWriteError(f"{path} is a folder; give a file name ending in {suffix or ' or '.join(VIDEO_SUFFIXES)}.")
    return path


def write_gif(frames: torch.Tensor | np.ndarray, path: str | os.PathLike, fps: float = 8.0, *,
              loop: bool = True) -> Path:
    """Write frames (float [T, 3, H, W] in [0, 1] or uint8 [T, H, W, 3]) as an animated GIF (PIL, one adaptive
    palette per frame), `fps` frames per second, looping forever unless `loop=False`. Returns the path.

    PIL merges consecutive identical frames into one longer frame; `render_panels`' timeline keeps rendered frames
    distinct."""
    from PIL import Image

    path = _check_target(path, ".gif")
    images = [Image.fromarray(frame) for frame in _as_uint8_frames(frames)]
    if fps <= 0:
        raise VideoWriteError(f"fps must be positive, got {fps}.")
    duration = max(20, round(1000.0 / fps))  # GIF delays are in 1/100 s; browsers treat < 20 ms as 100 ms

    def write(tmp: str) -> None:
        options = {"loop": 0} if loop else {}
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=duration, **options)

    return atomic_write(path, write)


def mp4_codec() -> str:
    """The MP4 video encoder this PyAV build has: H.264 (libx264) where available, else MPEG-4 part 2."""
    import av

    for name in MP4_CODECS:
        try:
            av.codec.Codec(name, "w")
        except ValueError:  # PyAV's UnknownCodecError (a ValueError): this build lacks the encoder
            continue
        return name
    raise VideoWriteError("this PyAV build has no H.264 or MPEG-4 encoder; install a PyAV wheel with FFmpeg encoders "
                          "or write a GIF instead.")


def write_mp4(frames: torch.Tensor | np.ndarray, path: str | os.PathLike, fps: float = 8.0, *,
              codec: str | None = None) -> Path:
    """Write frames (float [T, 3, H, W] in [0, 1] or uint8 [T, H, W, 3]) as an MP4 (PyAV, yuv420p, `codec` or
    `mp4_codec()`), `fps` frames per second. Odd frame sizes are padded by one black row / column (yuv420p halves
    the chroma resolution). Returns the path."""
    import av

    path = _check_target(path, ".mp4")
    array = _as_uint8_frames(frames)
    if fps <= 0:
        raise VideoWriteError(f"fps must be positive, got {fps}.")
    pad_h, pad_w = array.shape[1] % 2, array.shape[2] % 2
    if pad_h or pad_w:
        array = np.pad(array, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    codec = codec or mp4_codec()
    rate = Fraction(fps).limit_denominator(1001)

    def write(tmp: str) -> None:
        with av.open(tmp, mode="w", format="mp4") as container:
            stream = container.add_stream(codec, rate=rate)
            stream.width, stream.height = array.shape[2], array.shape[1]
            stream.pix_fmt = "yuv420p"
            if codec in ("libx264", "h264"):
                stream.options = {"crf": "17", "preset": "medium"}  # near-lossless: small clips, sharp particles
            else:
                stream.bit_rate = 8_000_000
            for frame in array:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():  # flush the encoder's delayed frames
                container.mux(packet)

    return atomic_write(path, write)


def write_video(frames: torch.Tensor | np.ndarray, path: str | os.PathLike, fps: float = 8.0) -> Path:
    """Write a GIF or an MP4, chosen by the suffix of `path` (.gif / .mp4)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".gif":
        return write_gif(frames, path, fps)
    if suffix == ".mp4":
        return write_mp4(frames, path, fps)
    raise VideoWriteError(f"cannot tell the video format of {path}; give a file name ending in .gif or .mp4.")
