"""The "what if" demo of a video model (DDLP): edit particles in the conditioning frames, roll out, compare.

    >>> from dlp.demo.clip_state import ClipDemoState
    >>> from dlp.demo.state import parse_edit
    >>> state = ClipDemoState(model, clip, cond_frames=4, horizon=20)   # encodes the 4 conditioning frames once
    >>> state.apply(parse_edit("3:dx=0.3"))                              # particle 3 starts 0.3 further right
    >>> state.rollout().frames.shape                                     # [1, 24, 3, S, S], decoded from the edit
    >>> state.save_video("what_if.gif")           # ground truth | prediction | what if, side by side

`ClipDemoState` encodes the conditioning frames of a clip once (`model.encode`) and keeps two copies of their
particles, the encoded ones and the current (edited) ones; the rollout is `model.rollout_from(current particles,
horizon)`: PINT predicts from the edited conditioning frames, nothing is encoded again. This is the official GUI's
DDLP mode (edit the conditioning frames, then Play) without its interpolation between two edited frames.

An edit acts on particle i in *all* conditioning frames alike, so that the dynamics see a consistent past:

* a move (`dx`, `dy` in particle units, the image spanning [-1, 1]; `x`, `y` in pixels, giving the particle's place
  in the *first* conditioning frame) shifts the particle's whole conditioning trajectory by the same delta: its
  velocity is kept and it continues from the new place (positions are clamped to the image, which bends a
  trajectory pushed past the border);
* `on=0` sets its transparency (obj_on) to 0 in every conditioning frame, `on=1` restores the encoded transparency
  of each frame (1 where the encoder had it off, obj_on < 0.5, so that a hidden object can be brought in);
  `obj_on=v` sets it to v in every frame;
* `f<d>`, `scale` (`scale0`, `scale1`: the glimpse side as a fraction of the image, (s_y, s_x)) and `depth` set the
  value in every frame (features and attributes as in the image demo, `dlp.demo.state`); "bg:f<d>" sets background
  feature d in every frame.

Keys, syntax and errors are those of the image demo (`parse_edit`; an unknown key gives one sentence naming it and
the valid keys). `ClipDemoWindow` at the end shows the first conditioning frame with draggable particles and plays
the rollout (matplotlib, imported there only); everything above it runs without a screen.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlp.demo.state import POSITION_KEYS, Edit, EditError, apply_edit, parse_edit

__all__ = ["ClipDemoState", "ClipDemoWindow", "parse_edit"]


class ClipDemoState:
    """The conditioning particles of one clip, their edits and the rollouts from them.

    Args:
        model: a video model (DDLP: `encode`, `rollout_from`), put in eval mode.
        clip: [T, C, H, W] (or [1, T, C, H, W]) float frames in [0, 1] at the model's size, T >= cond_frames; when
            T >= cond_frames + horizon the frames are kept as the ground truth.
        cond_frames: conditioning frames (c); horizon: predicted frames.
        deterministic: mean rollouts (False samples PINT's predictions at every `rollout`).

    Attributes (c conditioning frames, K particles, D features, Dbg background features), current and encoded
    (`original_*`): `positions` [c, K, 2] (y, x) in [-1, 1], `obj_on` [c, K], `features` [c, K, D], `background`
    [c, Dbg], `attributes` {"scale": [c, K, 2] glimpse side fractions, "depth": [c, K, 1]}; `particles` is the
    model's `encode` output [1, c, ...].
    """

    def __init__(self, model: torch.nn.Module, clip: torch.Tensor, cond_frames: int, horizon: int, *,
                 deterministic: bool = True):
        from dlp.models.dlpv2.model import DEPTH_RANGE, SCALE_RANGE
        from dlp.predict import as_clips, is_video_model

        if not is_video_model(model):
            raise EditError(f"the clip demo needs a video model (DDLP), but {type(model).__name__} models single "
                            "images; use DemoState for it.")
        for name, value, low in (("cond_frames", cond_frames, 1), ("horizon", horizon, 0)):
            if isinstance(value, bool) or int(value) != value or value < low:
                raise EditError(f"{name} must be an integer >= {low}, got {value}.")
        self.model = model.eval()
        self.config = cfg = model.config
        clip = as_clips(clip)
        if clip.shape[0] != 1:
            raise EditError(f"the clip demo edits one clip, got a batch of {clip.shape[0]}.")
        clip = clip[0]
        expected = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if tuple(clip.shape[1:]) != expected:
            raise EditError(f"the demo needs frames of shape {list(expected)}, got {list(clip.shape[1:])}; load the "
                            "clip with dlp.predict.load_clip at the model's image size.")
        if clip.shape[0] < cond_frames:
            raise EditError(f"the clip has {clip.shape[0]} frame(s), fewer than the {cond_frames} conditioning "
                            "frames.")
        self.cond_frames, self.horizon = int(cond_frames), int(horizon)
        self.deterministic = deterministic
        self.size = cfg.image_size
        self.device = next(model.parameters()).device
        self.clip = clip.detach().float().cpu().clamp(0, 1)  # [T, C, H, W]
        total = self.cond_frames + self.horizon
        self.ground_truth = self.clip[:total] if self.clip.shape[0] >= total else None
        self.particles = p = model.encode(self.clip[None, :cond_frames].to(self.device))
        self.k = p.position.shape[2]
        self.feature_dim = p.features.shape[-1]
        self.background_dim = p.bg_features.shape[-1]
        self.is_object_model = True  # DDLP particles always carry a transparency
        self.attribute_ranges = {"scale": SCALE_RANGE, "depth": DEPTH_RANGE}

        self.original_positions = p.position[0].detach().clone()  # [c, K, 2]
        self.original_obj_on = p.obj_on[0].detach().clone()  # [c, K]
        self.original_features = p.features[0].detach().clone()  # [c, K, D]
        self.original_background = p.bg_features[0].detach().clone()  # [c, Dbg]
        self.original_attributes = {"scale": torch.sigmoid(p.scale[0]).detach().clone(),  # [c, K, 2]
                                    "depth": p.depth[0].detach().clone()}  # [c, K, 1]
        self._original_rollout = None
        self.reset()

    # ------------------------------------------------------------------------------------------------------------
    # reading
    @property
    def n_particles(self) -> int:
        return self.k

    @property
    def attribute_names(self) -> list[str]:
        return list(self.original_attributes)

    def edit_keys(self) -> list[str]:
        """The keys an edit accepts (`f<d>` written as a range), as `DemoState.edit_keys`."""
        keys = list(POSITION_KEYS) + [f"f0..f{self.feature_dim - 1}", "on", "obj_on"]
        for name, value in self.original_attributes.items():
            keys.append(name if value.shape[-1] == 1 else f"{name}, {name}0..{name}{value.shape[-1] - 1}")
        return keys

    def pixels(self, frame: int = 0) -> torch.Tensor:
        """(row, col) pixel positions [K, 2] of the current particles in conditioning frame `frame`."""
        from dlp.viz import kp_to_pixels

        return kp_to_pixels(self.positions[frame].detach().float().cpu(), self.size)

    def to_kp(self, pix: float) -> float:
        from dlp.data.shapes import pixels_to_kp

        return pixels_to_kp(pix, self.size)

    def is_on(self, frame: int = 0) -> torch.Tensor:
        """[K] bool: particles whose current transparency in conditioning frame `frame` is at least 0.5."""
        return (self.obj_on[frame] >= 0.5).cpu()

    def edited_particles(self) -> torch.Tensor:
        """[K] bool: particles whose position, transparency, features or attributes differ in any frame."""
        edited = (self.positions != self.original_positions).any(-1).any(0)
        edited |= (self.obj_on != self.original_obj_on).any(0)
        edited |= (self.features != self.original_features).any(-1).any(0)
        for name, value in self.attributes.items():
            edited |= (value != self.original_attributes[name]).any(-1).any(0)
        return edited.cpu()

    @property
    def edited(self) -> bool:
        """Whether any particle, or the background, differs from the encoded ones."""
        return bool(self.edited_particles().any()) or not torch.equal(self.background, self.original_background)

    # ------------------------------------------------------------------------------------------------------------
    # editing (every edit acts on all conditioning frames; see the module docstring)
    def _check_index(self, i: int, *, background_ok: bool = False) -> int:
        top = self.k + 1 if background_ok else self.k
        if not isinstance(i, int) or not 0 <= i < top:
            what = f"0..{self.k - 1} (foreground)" + (f" or {self.k} (background)" if background_ok else "")
            raise EditError(f"particle index {i} is out of range; use {what}.")
        return i

    def _changed(self) -> None:
        self._rollout = None

    def shift(self, i: int, dy: float = 0.0, dx: float = 0.0) -> None:
        """Shift particle i by (dy, dx) particle units in every conditioning frame (clamped to the image)."""
        self._check_index(i)
        delta = torch.tensor([dy, dx], dtype=self.positions.dtype, device=self.positions.device)
        self.positions[:, i] = (self.positions[:, i] + delta).clamp(-1.0, 1.0)
        self._changed()

    def move(self, i: int, y_pix: float, x_pix: float) -> None:
        """Put particle i at pixel (row y_pix, col x_pix) in the first conditioning frame, shifting its positions in
        the other conditioning frames by the same delta."""
        self._check_index(i)
        target = torch.tensor([self.to_kp(float(y_pix)), self.to_kp(float(x_pix))], dtype=self.positions.dtype,
                              device=self.positions.device).clamp(-1.0, 1.0)
        dy, dx = (float(v) for v in target - self.positions[0, i])
        self.shift(i, dy, dx)

    def set_feature(self, i: int, d: int, value: float) -> None:
        """Set feature dimension d of particle i (i == K: the background) in every conditioning frame."""
        self._check_index(i, background_ok=True)
        size = self.feature_dim if i < self.k else self.background_dim
        if not isinstance(d, int) or not 0 <= d < size:
            what = "the background has" if i == self.k else "this model has"
            raise EditError(f"feature index {d} is out of range; {what} features f0..f{size - 1}.")
        if i == self.k:
            self.background[:, d] = float(value)
        else:
            self.features[:, i, d] = float(value)
        self._changed()

    def set_attribute(self, i: int, name: str, value: float, component: int | None = None) -> None:
        """Set an attribute ('scale', 'depth') of particle i, every component or one, in every conditioning frame,
        clamped to its range."""
        self._check_index(i)
        if name not in self.attributes:
            raise EditError(f"this model has no attribute {name!r}; its attributes: {', '.join(self.attributes)}.")
        low, high = self.attribute_ranges.get(name, (-math.inf, math.inf))
        value = min(max(float(value), low), high)
        if component is None:
            self.attributes[name][:, i] = value
        else:
            if not 0 <= component < self.attributes[name].shape[-1]:
                raise EditError(f"{name} has components 0..{self.attributes[name].shape[-1] - 1}, not {component}.")
            self.attributes[name][:, i, component] = value
        self._changed()

    def set_presence(self, i: int, value: float) -> None:
        """Set the transparency (obj_on, in [0, 1]) of particle i in every conditioning frame."""
        self._check_index(i)
        self.obj_on[:, i] = min(max(float(value), 0.0), 1.0)
        self._changed()

    def set_on(self, i: int, on: bool) -> None:
        """Switch particle i off (obj_on 0) or on (the encoded obj_on of each frame, 1 where it was below 0.5)."""
        self._check_index(i)
        if on:
            encoded = self.original_obj_on[:, i]
            self.obj_on[:, i] = torch.where(encoded >= 0.5, encoded, torch.ones_like(encoded))
        else:
            self.obj_on[:, i] = 0.0
        self._changed()

    def toggle(self, i: int) -> bool:
        """Switch particle i off if it is on in the first conditioning frame, else on; returns the new state."""
        on = not bool(self.is_on()[self._check_index(i)])
        self.set_on(i, on)
        return on

    def reset(self) -> None:
        """Back to the encoded particles (and the unedited rollout)."""
        self.positions = self.original_positions.clone()
        self.obj_on = self.original_obj_on.clone()
        self.features = self.original_features.clone()
        self.background = self.original_background.clone()
        self.attributes = {name: value.clone() for name, value in self.original_attributes.items()}
        self._rollout = self._original_rollout

    def apply(self, edit: Edit) -> None:
        """Apply a parsed `Edit` (see `parse_edit`) to every conditioning frame; every key is checked before anything
        changes. `x`, `y` give the place in the first conditioning frame; `dx`, `dy` shift it."""
        apply_edit(self, edit, has_presence=True, pixels=self.pixels(0))

    # ------------------------------------------------------------------------------------------------------------
    # rolling out
    def current_particles(self):
        """The current (edited) conditioning particles, a `DDLPParticles` [1, c, ...]."""
        original_scale = self.particles.scale[0]
        fraction = self.attributes["scale"].clamp(1e-6, 1 - 1e-6)
        # unedited scales keep their encoded logits exactly (sigmoid and back would differ in the last bits)
        scale = torch.where(self.attributes["scale"] == self.original_attributes["scale"], original_scale,
                            torch.log(fraction / (1 - fraction)))
        return self.particles.frames(slice(None)).replace(
            position=self.positions[None], scale=scale[None], depth=self.attributes["depth"][None],
            obj_on=self.obj_on[None], features=self.features[None], bg_features=self.background[None],
        )

    @torch.no_grad()
    def rollout(self):
        """The rollout (`RolloutResult`: frames [1, c + horizon, C, H, W] unclamped, particles, decoded) from the
        current particles; cached until the next edit."""
        if self._rollout is None:
            self._rollout = self.model.rollout_from(self.current_particles(), self.horizon,
                                                    deterministic=self.deterministic)
        return self._rollout

    @torch.no_grad()
    def original_rollout(self):
        """The rollout from the encoded (unedited) particles, cached."""
        if self._original_rollout is None:
            self._original_rollout = self.model.rollout_from(self.particles, self.horizon,
                                                             deterministic=self.deterministic)
            if not self.edited:
                self._rollout = self._original_rollout
        return self._original_rollout

    def frames(self) -> torch.Tensor:
        """[c + horizon, 3, H, W] frames of the current rollout, clamped to [0, 1] (CPU)."""
        return self.rollout().frames[0].detach().clamp(0, 1).float().cpu()

    def original_frames(self) -> torch.Tensor:
        return self.original_rollout().frames[0].detach().clamp(0, 1).float().cpu()

    def trajectories(self, *, original: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(positions [c + horizon, K, 2] (y, x) in [-1, 1], obj_on [c + horizon, K]) of the current (or the
        unedited) rollout, CPU."""
        particles = (self.original_rollout() if original else self.rollout()).particles
        return particles.position[0].detach().float().cpu(), particles.obj_on[0].detach().float().cpu()

    # ------------------------------------------------------------------------------------------------------------
    # export
    def video(self, *, ground_truth: bool = True, trajectories: bool = True, threshold: float = 0.5,
              scale: int | None = None, trail: int | None = None) -> np.ndarray:
        """uint8 frames [c + horizon, H', W', 3]: ground truth (if there is one and `ground_truth`) | the unedited
        prediction | the edited one ("what if"), side by side, with the switched-on particles' trajectories (obj_on
        >= threshold) on both predictions; green borders on the conditioning frames, red on the predicted ones
        (`dlp.video_io.render_panels`)."""
        from dlp.video_io import Panel, render_panels

        panels = []
        if ground_truth and self.ground_truth is not None:
            panels.append(Panel(self.ground_truth, "ground truth", marked=False))
        for label, original in (("prediction", True), ("what if" if self.edited else "what if (no edit)", False)):
            positions, obj_on = self.trajectories(original=original)
            frames = self.original_frames() if original else self.frames()
            panels.append(Panel(frames, label, positions=positions if trajectories else None, on=obj_on >= threshold))
        return render_panels(panels, self.cond_frames, scale=scale, trail=trail)

    def save_video(self, path: str | os.PathLike, *, fps: float = 8.0, **video_options: Any) -> Path:
        """Write `video(**video_options)` as a GIF or an MP4, by the suffix of `path`; returns the path."""
        from dlp.video_io import write_video

        return write_video(self.video(**video_options), path, fps)

    def particle_table(self) -> list[dict[str, Any]]:
        """One dict per particle: index, its current and encoded place in the first conditioning frame ((y, x) in
        [-1, 1] and pixels), obj_on, on, edited, features and attributes (first conditioning frame), and its
        predicted trajectory (edited and unedited rollouts, (y, x) per frame)."""
        pix = self.pixels(0)
        edited = self.edited_particles()
        positions, obj_on = self.trajectories()
        original_positions, _ = self.trajectories(original=True)
        rows = []
        for i in range(self.k):
            row = {
                "index": i,
                "y": float(self.positions[0, i, 0]), "x": float(self.positions[0, i, 1]),
                "row": float(pix[i, 0]), "col": float(pix[i, 1]),
                "original_y": float(self.original_positions[0, i, 0]),
                "original_x": float(self.original_positions[0, i, 1]),
                "obj_on": float(self.obj_on[0, i]), "on": bool(self.is_on()[i]), "edited": bool(edited[i]),
                "features": [float(v) for v in self.features[0, i]],
                "trajectory": positions[:, i].tolist(), "trajectory_obj_on": obj_on[:, i].tolist(),
                "original_trajectory": original_positions[:, i].tolist(),
            }
            row.update({name: [float(v) for v in value[0, i]] for name, value in self.attributes.items()})
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "dlp-clip-demo/1",
            "image_size": self.size,
            "cond_frames": self.cond_frames,
            "horizon": self.horizon,
            "n_particles": self.k,
            "feature_dim": self.feature_dim,
            "pixel_convention": "pix = (kp + 1) / 2 * (H - 1); positions are (y, x)",
            "edited": self.edited,
            "particles": self.particle_table(),
            "background": {"features": [float(v) for v in self.background[0]]},
        }

    def save_json(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path


# ----------------------------------------------------------------------------------------------------------------
class ClipDemoWindow:
    """A matplotlib window for `ClipDemoState`: the first conditioning frame with its particles (drag one to move it
    in every conditioning frame; its conditioning trajectory is drawn as a line), and the rollout beside it
    (prediction | what if). Buttons and keys: Play (space) plays the rollout of the current edits, Reset (r) undoes
    them, t switches the selected particle off / on. `headless=True` draws on an off-screen Agg canvas (tests,
    `save_figure`)."""

    def __init__(self, state: ClipDemoState, *, threshold: float | None = None, title: str = "", fps: float = 8.0,
                 headless: bool = False, epsilon: float = 10.0):
        from matplotlib.widgets import Button

        self.state = state
        self.threshold = threshold
        self.fps = float(fps)
        self.epsilon = float(epsilon)
        self.selected: int | None = None
        self.dragging = False
        self.timer = None
        self.playing: np.ndarray | None = None
        self.frame_index = 0
        if headless:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure

            self.fig = Figure(figsize=(11, 5))
            FigureCanvasAgg(self.fig)
        else:
            import matplotlib.pyplot as plt

            self.fig = plt.figure(figsize=(11, 5))
        self.fig.suptitle(title or "what if: drag particles, then Play")
        self.ax_edit = self.fig.add_axes((0.02, 0.15, 0.36, 0.75))
        self.ax_play = self.fig.add_axes((0.40, 0.15, 0.58, 0.75))
        for ax in (self.ax_edit, self.ax_play):
            ax.set_xticks([])
            ax.set_yticks([])
        self.ax_edit.set_title("first conditioning frame", fontsize=9)
        self.ax_edit.imshow(state.clip[0].permute(1, 2, 0).numpy(), interpolation="nearest")
        self.play_image = self.ax_play.imshow(state.video(ground_truth=False, trajectories=True)[0])
        self.play_title = self.ax_play.set_title("prediction | what if", fontsize=9)
        from dlp.viz import particle_colors

        self.colors = particle_colors(state.k).numpy()
        self.lines = [self.ax_edit.plot([], [], "-", color=self.colors[i], lw=1.5)[0] for i in range(state.k)]
        self.points = self.ax_edit.scatter([], [], s=60, edgecolors="white", linewidths=1.0)
        self.status = self.fig.text(0.02, 0.03, "", fontsize=9)
        self.play_button = Button(self.fig.add_axes((0.70, 0.02, 0.12, 0.07)), "Play")
        self.reset_button = Button(self.fig.add_axes((0.84, 0.02, 0.12, 0.07)), "Reset")
        self.play_button.on_clicked(lambda _event: self.play())
        self.reset_button.on_clicked(lambda _event: self.reset())
        canvas = self.fig.canvas
        canvas.mpl_connect("button_press_event", lambda e: self.on_press(*self._image_xy(e), e.button))
        canvas.mpl_connect("motion_notify_event", lambda e: self.on_motion(*self._image_xy(e)))
        canvas.mpl_connect("button_release_event", lambda e: self.on_release())
        canvas.mpl_connect("key_press_event", lambda e: self.on_key(e.key))
        self.redraw()

    def _image_xy(self, event) -> tuple[float | None, float | None]:
        if event.inaxes is not self.ax_edit:
            return None, None
        return event.xdata, event.ydata

    def visible(self) -> list[int]:
        obj_on = self.state.original_obj_on[0].cpu()
        return [i for i in range(self.state.k) if self.threshold is None or float(obj_on[i]) >= self.threshold]

    def redraw(self) -> None:
        """Draw the particles of the conditioning frames (filled: on, hollow: off) and the status line."""
        from dlp.viz import kp_to_pixels

        visible = self.visible()
        trajectory = kp_to_pixels(self.state.positions.detach().float().cpu(), self.state.size)  # [c, K, 2]
        for i, line in enumerate(self.lines):
            if i in visible:  # the particle's (possibly moved) path through the conditioning frames
                line.set_data(trajectory[:, i, 1].numpy(), trajectory[:, i, 0].numpy())
            else:
                line.set_data([], [])
        pix = trajectory[0, visible].numpy().reshape(-1, 2)
        on = self.state.is_on()[visible].numpy()[:, None]
        rgba = np.concatenate([self.colors[visible], np.ones((len(visible), 1))], -1)
        white = np.ones_like(rgba)
        self.points.set_offsets(pix[:, ::-1])
        self.points.set_facecolors(np.where(on, rgba, 0.0))  # switched off: hollow, in the particle's colour
        self.points.set_edgecolors(np.where(on, white, rgba))
        self.points.set_sizes([140 if i == self.selected else 60 for i in visible])
        edited = int(self.state.edited_particles().sum())
        chosen = f"particle {self.selected} selected; " if self.selected is not None else ""
        self.status.set_text(f"{chosen}{edited} particle(s) edited; drag to move, t: on/off, r: reset, "
                             "space: play")
        self.fig.canvas.draw_idle()

    def pick(self, x: float, y: float) -> int | None:
        """The nearest visible particle within epsilon display pixels of image point (x = col, y = row)."""
        visible = self.visible()
        if not visible:
            return None
        pix = self.state.pixels(0)[visible]
        display = self.ax_edit.transData.transform(np.stack([pix[:, 1].numpy(), pix[:, 0].numpy()], -1))
        target = self.ax_edit.transData.transform([[x, y]])[0]
        dist = np.hypot(*(display - target).T)
        j = int(dist.argmin())
        return visible[j] if dist[j] <= self.epsilon else None

    def on_press(self, x: float | None, y: float | None, button: int = 1) -> bool:
        if x is None or y is None or button != 1:
            return False
        self.selected = self.pick(x, y)
        self.dragging = self.selected is not None
        self.redraw()
        return self.dragging

    def on_motion(self, x: float | None, y: float | None) -> bool:
        if not self.dragging or x is None or y is None:
            return False
        self.state.move(self.selected, y, x)
        self.redraw()
        return True

    def on_release(self) -> bool:
        was, self.dragging = self.dragging, False
        return was

    def on_key(self, key: str | None) -> bool:
        if key == "t" and self.selected is not None:
            self.state.toggle(self.selected)
        elif key == "r":
            self.reset()
            return True
        elif key == " ":
            self.play()
            return True
        else:
            return False
        self.redraw()
        return True

    def reset(self) -> None:
        self.state.reset()
        self.redraw()

    def play(self) -> np.ndarray:
        """Roll out the current edits and play them (prediction | what if) frame by frame; returns the frames."""
        self.playing = self.state.video(ground_truth=False, trajectories=True)
        self.frame_index = 0
        self.show_frame(0)
        if self.timer is not None:
            self.timer.stop()
        if not hasattr(self.fig.canvas, "manager") or self.fig.canvas.manager is None:
            return self.playing  # off screen: no event loop to drive a timer
        self.timer = self.fig.canvas.new_timer(interval=max(1, round(1000 / self.fps)))
        self.timer.add_callback(self._advance)
        self.timer.start()
        return self.playing

    def _advance(self) -> None:
        if self.playing is None or self.frame_index + 1 >= len(self.playing):
            if self.timer is not None:
                self.timer.stop()
            return
        self.show_frame(self.frame_index + 1)

    def show_frame(self, t: int) -> None:
        self.frame_index = t
        phase = "conditioning" if t < self.state.cond_frames else "predicted"
        self.play_image.set_data(self.playing[t])
        self.play_title.set_text(f"prediction | what if: frame {t + 1}/{len(self.playing)} ({phase})")
        self.fig.canvas.draw_idle()

    def save_figure(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fig.savefig(path, dpi=100)
        return path

    def show(self) -> None:
        import matplotlib.pyplot as plt

        plt.show()
