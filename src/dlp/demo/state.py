"""The interactive demo's logic, free of any screen: edit particles of one image and decode them again.

`DemoState` encodes an image once and keeps two copies of its particles, the encoded ones and the current (edited)
ones; every edit changes only the current copy and the reconstruction is decoded from it (`model.decode`, never a new
encoding). It works on every model family through the common particle vocabulary (`dlp.models.base.ParticleView`:
`model.particle_view` and `model.apply_view`). `DemoController` turns mouse, slider and key events into edits; the
matplotlib window (`dlp.demo.window`) only draws and forwards events, so everything here is unit-testable without a
display.

Conventions: particle positions are (y, x) in [-1, 1]; pixel positions are (row, col) with
pix = (kp + 1) / 2 * (H - 1), as everywhere in the library. Particle indices 0..K-1 are the K foreground particles;
index K (or "bg" in an edit) is the background, of which only the features can be edited.

Switching a particle off (`toggle`): models with a presence (object models, `obj_on`) set it to 0 (its glimpse is not
composited); switching it back on restores the encoded presence, or 1 if the encoder had the particle (almost) off
(obj_on < 0.5), so that a hidden object can be brought in. Models without one (DLP's masked model) hide it their own
way when decoding (`apply_view(..., switched_off)`); it keeps its place, its features and its position.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = ["DemoController", "DemoState", "Edit", "EditError", "parse_edit"]


class EditError(ValueError):
    """A malformed or impossible particle edit (one sentence: what is wrong and how to write it)."""


# ----------------------------------------------------------------------------------------------------------------
# edits as text (the CLI's --edit)

EDIT_SYNTAX = "INDEX:KEY=VALUE[,KEY=VALUE...], e.g. 3:dx=0.2,dy=-0.1"
POSITION_KEYS = ("dx", "dy", "x", "y")
_EDIT_RE = re.compile(r"^\s*(\d+|bg)\s*:\s*(.+?)\s*$")
_KEY_RE = re.compile(r"^[A-Za-z_]+\d*$")


@dataclass
class Edit:
    """One particle edit: `index` (int, or "bg" for the background) and ordered (key, value) changes.

    Keys: `dx`, `dy` shift the position in particle units (the image spans [-1, 1]); `x`, `y` set the column / row in
    pixels; `f<d>` sets feature dimension d (0-based); `on` switches the particle on (1) or off (0); `obj_on` sets
    the transparency (models with one, in [0, 1]); a family's own
    attributes (`DemoState.attribute_names`, e.g. DLPv2's `scale`, `depth`, `obj_on`) set that attribute, `<name><j>`
    one component of it. Which keys a model accepts: `DemoState.edit_keys()`.
    """

    index: int | str
    changes: list[tuple[str, float]] = field(default_factory=list)


def parse_edit(text: str) -> Edit:
    """Parse an edit such as "3:dx=0.2,dy=-0.1", "0:x=40,y=12", "5:f2=0.5", "2:on=0" or "bg:f0=1" (syntax only;
    `DemoState.apply` checks the keys against the model)."""
    match = _EDIT_RE.match(text)
    if not match:
        raise EditError(f"bad edit {text!r}: expected {EDIT_SYNTAX}.")
    index: int | str = match.group(1) if match.group(1) == "bg" else int(match.group(1))
    changes = []
    for part in match.group(2).split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not _KEY_RE.match(key):
            raise EditError(f"bad edit {text!r}: {part.strip()!r} is not KEY=VALUE; expected {EDIT_SYNTAX}.")
        try:
            number = float(value)
        except ValueError:
            raise EditError(f"bad edit {text!r}: the value of {key} must be a number, got {value!r}.") from None
        if not math.isfinite(number):
            raise EditError(f"bad edit {text!r}: the value of {key} must be finite, got {value!r}.")
        if key == "on" and number not in (0.0, 1.0):
            raise EditError(f"bad edit {text!r}: on must be 0 or 1, got {value!r}.")
        changes.append((key, number))
    return Edit(index, changes)


# ----------------------------------------------------------------------------------------------------------------
class DemoState:
    """The particles of one image, their edits and the reconstruction decoded from them.

    Args:
        model: a model of any registered family (put in eval mode; no gradients are taken).
        image: [C, H, W] (or [1, C, H, W]) float image in [0, 1] at the model's image size.

    Attributes (K foreground particles, D features, Dbg background features): `positions` [K, 2] current (y, x),
    `features` [K, D], `background` [Dbg], `obj_on` [K] current presence (models with one, else None),
    `attributes` {name: [K, n]} the family's further attributes, `off` [K] bool (models without a presence), and the
    encoded originals `original_positions`, `original_features`, `original_background`, `original_obj_on`,
    `original_attributes`; `particles` is the model's `encode` output, `view` its `particle_view`.
    """

    def __init__(self, model: torch.nn.Module, image: torch.Tensor):
        self.model = model.eval()
        self.config = cfg = model.config
        if image.dim() == 4 and image.shape[0] == 1:
            image = image[0]
        expected = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if image.dim() != 3 or tuple(image.shape) != expected:
            raise ValueError(f"the demo needs one image of shape {list(expected)}, got {list(image.shape)}; resize "
                             "it to the model's image size.")
        self.device = next(model.parameters()).device
        self.image = image.detach().float().cpu().clamp(0, 1)
        self.particles = model.encode(self.image[None].to(self.device))
        self.view = view = model.particle_view(self.particles)
        self.k = view.positions.shape[1]
        self.feature_dim = view.features.shape[-1]
        self.background_dim = view.background.shape[-1]
        self.is_object_model = view.presence is not None
        self.size = cfg.image_size
        self.attribute_ranges = dict(view.attribute_ranges)

        self.original_positions = view.positions[0].clone()  # [K, 2]
        self.original_features = view.features[0].clone()  # [K, D]
        self.original_background = view.background[0].clone()  # [Dbg]
        self.original_obj_on = view.presence[0].clone() if self.is_object_model else None  # [K]
        self.original_attributes = {name: value[0].clone() for name, value in view.attributes.items()}  # [K, n]
        self._confidence = view.confidence[0].detach().float().cpu()  # [K]
        self._original_decoded = None
        self._decoded = None
        self.reset()
        self._original_decoded = self._decode()
        self._decoded = self._original_decoded

    # ------------------------------------------------------------------------------------------------------------
    # reading
    @property
    def n_particles(self) -> int:
        return self.k

    @property
    def attribute_names(self) -> list[str]:
        return list(self.original_attributes)

    def edit_keys(self) -> list[str]:
        """The keys `--edit` accepts for this model (`f<d>` written as a range)."""
        keys = list(POSITION_KEYS) + [f"f0..f{self.feature_dim - 1}", "on"] + (["obj_on"] if self.is_object_model else [])
        for name, value in self.original_attributes.items():
            keys.append(name if value.shape[-1] == 1 else f"{name}, {name}0..{name}{value.shape[-1] - 1}")
        return keys

    def confidence(self) -> torch.Tensor:
        """[K] encoded confidence, higher = surer (the presence where the model has one)."""
        return self._confidence

    def visible(self, threshold: float | None = None) -> torch.Tensor:
        """[K] bool: particles whose encoded confidence is >= threshold (all of them for None)."""
        conf = self.confidence()
        if threshold is None:
            return torch.ones_like(conf, dtype=torch.bool)
        return conf >= threshold

    def is_on(self) -> torch.Tensor:
        """[K] bool: particles currently switched on."""
        if self.is_object_model:
            return (self.obj_on > 0).cpu()
        return ~self.off.cpu()

    def pixels(self, positions: torch.Tensor | None = None) -> torch.Tensor:
        """(row, col) pixel positions [K, 2] of the current (or the given) particle positions."""
        from dlp.viz import kp_to_pixels

        kp = self.positions if positions is None else positions
        return kp_to_pixels(kp.detach().float().cpu(), self.size)

    def to_kp(self, pix: float) -> float:
        from dlp.data.shapes import pixels_to_kp

        return pixels_to_kp(pix, self.size)

    def feature_limit(self) -> float:
        """A symmetric slider range for every feature dimension: max(5, 1.5 x the largest encoded |feature|)."""
        largest = float(self.original_features.abs().max()) if self.original_features.numel() else 0.0
        return max(5.0, math.ceil(1.5 * largest))

    def edited_particles(self) -> torch.Tensor:
        """[K] bool: foreground particles whose position, features, attributes or on/off state differ."""
        edited = (self.positions != self.original_positions).any(-1)
        edited |= (self.features != self.original_features).any(-1)
        for name, value in self.attributes.items():
            edited |= (value != self.original_attributes[name]).any(-1)
        edited |= (self.obj_on != self.original_obj_on) if self.is_object_model else self.off
        return edited.cpu()

    @property
    def edited(self) -> bool:
        """Whether any particle, the background included, differs from the encoded ones."""
        return bool(self.edited_particles().any()) or not torch.equal(self.background, self.original_background)

    # ------------------------------------------------------------------------------------------------------------
    # editing
    def _check_index(self, i: int, *, background_ok: bool = False) -> int:
        top = self.k + 1 if background_ok else self.k
        if not isinstance(i, int) or not 0 <= i < top:
            what = f"0..{self.k - 1} (foreground)" + (f" or {self.k} (background)" if background_ok else "")
            raise EditError(f"particle index {i} is out of range; use {what}.")
        return i

    def _changed(self) -> None:
        self._decoded = None

    def move(self, i: int, y_pix: float, x_pix: float) -> None:
        """Put foreground particle i at pixel (row y_pix, col x_pix), clamped to the image."""
        self._check_index(i)
        kp = torch.tensor([self.to_kp(float(y_pix)), self.to_kp(float(x_pix))], dtype=self.positions.dtype)
        self.positions[i] = kp.clamp(-1.0, 1.0).to(self.positions.device)
        self._changed()

    def shift(self, i: int, dy: float = 0.0, dx: float = 0.0) -> None:
        """Shift foreground particle i by (dy, dx) particle units (the image spans [-1, 1]), clamped to the image."""
        self._check_index(i)
        delta = torch.tensor([dy, dx], dtype=self.positions.dtype, device=self.positions.device)
        self.positions[i] = (self.positions[i] + delta).clamp(-1.0, 1.0)
        self._changed()

    def set_feature(self, i: int, d: int, value: float) -> None:
        """Set feature dimension d of particle i (i == K edits the background)."""
        self._check_index(i, background_ok=True)
        size = self.feature_dim if i < self.k else self.background_dim
        if not isinstance(d, int) or not 0 <= d < size:
            what = "the background has" if i == self.k else "this model has"
            raise EditError(f"feature index {d} is out of range; {what} features f0..f{size - 1}.")
        if i == self.k:
            self.background[d] = float(value)
        else:
            self.features[i, d] = float(value)
        self._changed()

    def set_attribute(self, i: int, name: str, value: float, component: int | None = None) -> None:
        """Set a family attribute of particle i (every component, or one), clamped to its range."""
        self._check_index(i)
        if name not in self.attributes:
            raise EditError(f"this model has no attribute {name!r}; its attributes: {', '.join(self.attributes)}.")
        low, high = self.attribute_ranges.get(name, (-math.inf, math.inf))
        value = min(max(float(value), low), high)
        if component is None:
            self.attributes[name][i] = value
        else:
            if not 0 <= component < self.attributes[name].shape[-1]:
                raise EditError(f"{name} has components 0..{self.attributes[name].shape[-1] - 1}, not {component}.")
            self.attributes[name][i, component] = value
        self._changed()

    def set_presence(self, i: int, value: float) -> None:
        """Set the transparency (`obj_on`, in [0, 1]) of foreground particle i (models with a presence only)."""
        self._check_index(i)
        if not self.is_object_model:
            raise EditError("this model has no transparency (obj_on); switch particles with on=0/1 instead.")
        self.obj_on[i] = min(max(float(value), 0.0), 1.0)
        self._changed()

    def slider_specs(self) -> list[tuple[str, float, float]]:
        """The per-particle sliders after position and before features: (name, low, high) for the transparency
        (models with a presence) and every component of the family's attributes (`<name><j>`)."""
        specs = [("obj_on", 0.0, 1.0)] if self.is_object_model else []
        for name, value in self.original_attributes.items():
            low, high = self.attribute_ranges.get(name, (-5.0, 5.0))
            specs += [(f"{name}{j}", low, high) for j in range(value.shape[-1])]
        return specs

    def slider_value(self, i: int, name: str, *, original: bool = False) -> float:
        """The current (or encoded) value of particle i shown on slider `name` of `slider_specs`."""
        if name == "obj_on":
            return float((self.original_obj_on if original else self.obj_on)[i])
        attribute, component = re.fullmatch(r"(.*?)(\d+)", name).groups()
        return float((self.original_attributes if original else self.attributes)[attribute][i, int(component)])

    def set_on(self, i: int, on: bool) -> None:
        """Switch foreground particle i on or off (see the module docstring for what "off" means per model)."""
        self._check_index(i)
        if self.is_object_model:
            encoded = float(self.original_obj_on[i])
            self.obj_on[i] = (encoded if encoded >= 0.5 else 1.0) if on else 0.0
        else:
            self.off[i] = not on
        self._changed()

    def toggle(self, i: int) -> bool:
        """Switch particle i off if it is on, else on; returns the new state (True = on)."""
        on = not bool(self.is_on()[self._check_index(i)])
        self.set_on(i, on)
        return on

    def reset(self) -> None:
        """Back to the encoded particles (and the original reconstruction)."""
        self.positions = self.original_positions.clone()
        self.features = self.original_features.clone()
        self.background = self.original_background.clone()
        self.obj_on = self.original_obj_on.clone() if self.is_object_model else None
        self.attributes = {name: value.clone() for name, value in self.original_attributes.items()}
        self.off = torch.zeros(self.k, dtype=torch.bool, device=self.positions.device)
        self._decoded = self._original_decoded

    def apply(self, edit: Edit) -> None:
        """Apply a parsed `Edit` (see `parse_edit`); every key is checked before anything changes."""
        apply_edit(self, edit, has_presence=self.is_object_model, pixels=self.pixels())

    # ------------------------------------------------------------------------------------------------------------
    # decoding
    def current_view(self):
        """The current (edited) particles as a batch-of-one `ParticleView`."""
        from dataclasses import replace

        return replace(
            self.view, positions=self.positions[None], features=self.features[None],
            background=self.background[None], presence=self.obj_on[None] if self.is_object_model else None,
            attributes={name: value[None] for name, value in self.attributes.items()},
        )

    @torch.no_grad()
    def _decode(self):
        edited = self.model.apply_view(self.particles, self.current_view(), switched_off=self.off[None])
        return self.model.decode(edited)

    def decoded(self):
        """The family's decoded output for the current particles (cached until the next edit)."""
        if self._decoded is None:
            self._decoded = self._decode()
        return self._decoded

    def reconstruction(self) -> torch.Tensor:
        """[3, H, W] reconstruction from the current particles, clamped to [0, 1] (CPU)."""
        return self.decoded().rec[0].detach().clamp(0, 1).float().cpu()

    def original_reconstruction(self) -> torch.Tensor:
        return self._original_decoded.rec[0].detach().clamp(0, 1).float().cpu()

    def glimpses(self) -> torch.Tensor | None:
        """Object models: [K, 4, S, S] decoded RGBA glimpses of the current particles (alpha first); else None."""
        dec = getattr(self.decoded(), "dec_glimpses", None)
        return None if dec is None else dec[0].detach().float().cpu()

    def objects(self) -> torch.Tensor | None:
        """Object models: [3, H, W] the composited objects without background; else None."""
        dec = getattr(self.decoded(), "dec_objects", None)
        return None if dec is None else dec[0].detach().clamp(0, 1).float().cpu()

    # ------------------------------------------------------------------------------------------------------------
    # export
    def particle_table(self, threshold: float | None = None) -> list[dict[str, Any]]:
        """One dict per foreground particle: index, y, x (in [-1, 1]), row, col (pixels), the encoded
        original_y/x, confidence, obj_on (None without a presence), on, visible, edited, features, and the
        family's attributes."""
        pix = self.pixels()
        conf = self.confidence()
        vis = self.visible(threshold)
        on = self.is_on()
        pos = self.positions.detach().float().cpu()
        orig = self.original_positions.detach().float().cpu()
        feats = self.features.detach().float().cpu()
        edited = self.edited_particles()
        rows = []
        for i in range(self.k):
            row = {
                "index": i,
                "y": float(pos[i, 0]), "x": float(pos[i, 1]),
                "row": float(pix[i, 0]), "col": float(pix[i, 1]),
                "original_y": float(orig[i, 0]), "original_x": float(orig[i, 1]),
                "confidence": float(conf[i]),
                "obj_on": float(self.obj_on[i]) if self.is_object_model else None,
                "on": bool(on[i]),
                "visible": bool(vis[i]),
                "edited": bool(edited[i]),
                "features": [float(v) for v in feats[i]],
            }
            row.update({name: [float(v) for v in value[i].detach().float().cpu()]
                        for name, value in self.attributes.items()})
            rows.append(row)
        return rows

    def to_dict(self, threshold: float | None = None) -> dict[str, Any]:
        return {
            "format": "dlp-demo/2",
            "model": "object" if self.is_object_model else "masked",
            "image_size": self.size,
            "n_particles": self.k,
            "feature_dim": self.feature_dim,
            "pixel_convention": "pix = (kp + 1) / 2 * (H - 1); positions are (y, x)",
            "threshold": threshold,
            "edited": self.edited,
            "particles": self.particle_table(threshold),
            "background": {"features": [float(v) for v in self.background.detach().float().cpu()]},
        }

    def save(self, png_path: str | os.PathLike | None, json_path: str | os.PathLike | None = None, *,
             threshold: float | None = None) -> tuple[Path | None, Path | None]:
        """Write the reconstruction as a PNG and/or the particle table as JSON; returns the written paths."""
        from dlp.viz import save_image

        png = save_image(self.reconstruction(), png_path) if png_path is not None else None
        js = None
        if json_path is not None:
            js = Path(json_path)
            js.parent.mkdir(parents=True, exist_ok=True)
            js.write_text(json.dumps(self.to_dict(threshold), indent=1) + "\n")
        return png, js


# ----------------------------------------------------------------------------------------------------------------
def apply_edit(state, edit: Edit, *, has_presence: bool, pixels: torch.Tensor) -> None:
    """Apply a parsed `Edit` to a demo state (`DemoState`, `ClipDemoState`) through its setters, after checking every
    key against `state.edit_keys()`. `pixels` [K, 2] are the (row, col) places that `dx`, `dy` shift; `obj_on` is a
    valid key only when `has_presence`."""
    i = state.k if edit.index == "bg" else edit.index
    state._check_index(i, background_ok=True)
    attributes = "|".join(map(re.escape, state.attributes))
    attribute_re = re.compile(rf"^({attributes})(\d*)$") if attributes else None
    for key, _ in edit.changes:
        known = key in POSITION_KEYS or key == "on" or re.fullmatch(r"f\d+", key)
        known = known or (key == "obj_on" and has_presence)
        known = known or (attribute_re is not None and attribute_re.match(key))
        if not known:
            raise EditError(f"unknown edit key {key!r} in edit {edit.index}:...; valid keys for this model: "
                            f"{', '.join(state.edit_keys())}.")
        if i == state.k and not key.startswith("f"):
            raise EditError(f"the background can only have its features edited, not {key}.")
    row, col = (float(v) for v in pixels[i]) if i < state.k else (None, None)
    moved = False
    for key, value in edit.changes:
        if re.fullmatch(r"f\d+", key):
            state.set_feature(i, int(key[1:]), value)
        elif key == "on":
            state.set_on(i, bool(value))
        elif key == "obj_on":
            state.set_presence(i, value)
        elif key == "dx":
            col += value / 2.0 * (state.size - 1)
            moved = True
        elif key == "dy":
            row += value / 2.0 * (state.size - 1)
            moved = True
        elif key == "x":
            col, moved = value, True
        elif key == "y":
            row, moved = value, True
        else:
            name, component = attribute_re.match(key).groups()
            state.set_attribute(i, name, value, int(component) if component else None)
    if moved:
        state.move(i, row, col)


class DemoController:
    """Pure event handling for the demo window; every handler returns True when the view must be redrawn.

    Mouse coordinates are image data coordinates: x = column, y = row, in pixels (what matplotlib reports as
    `event.xdata, event.ydata` on the image axes; None outside it). `display_scale` is the number of display pixels
    per image pixel (the window keeps it current), so that a press selects the nearest visible particle within
    `epsilon` *display* pixels, as in the official demo (epsilon = 10).

    Sliders (`on_slider(name, value)`): "threshold" (hide particles whose confidence is below it), "f<d>" (feature d of
    the selected particle), "x" / "y" (column / row of the selected particle in pixels).
    Keys (`on_key`): t or space toggles the selected particle, r resets, n / right / tab selects the next visible
    particle, p / left the previous one, escape deselects, s saves to `save_paths` (if given).
    """

    def __init__(self, state: DemoState, *, epsilon: float = 10.0, threshold: float | None = None,
                 display_scale: float = 1.0, save_paths: tuple[str | os.PathLike, str | os.PathLike] | None = None,
                 on_save: Callable[[Path | None, Path | None], None] | None = None):
        self.state = state
        self.epsilon = float(epsilon)
        self.threshold = threshold
        self.display_scale = float(display_scale)
        self.save_paths = save_paths
        self.on_save = on_save
        self.selected: int | None = None
        self.dragging = False
        self.message = ""

    # ------------------------------------------------------------------------------------------------------------
    def visible_indices(self) -> list[int]:
        return [int(i) for i in torch.nonzero(self.state.visible(self.threshold)).flatten()]

    def pick(self, x: float, y: float) -> int | None:
        """The nearest visible particle within epsilon display pixels of image point (x = col, y = row), or None."""
        visible = self.visible_indices()
        if not visible:
            return None
        pix = self.state.pixels()[visible]  # [n, 2] (row, col)
        dist = torch.hypot(pix[:, 0] - float(y), pix[:, 1] - float(x)) * self.display_scale
        j = int(dist.argmin())
        return visible[j] if float(dist[j]) <= self.epsilon else None

    def select(self, i: int | None) -> bool:
        if i is not None:
            self.state._check_index(int(i))
            i = int(i)
        changed = i != self.selected
        self.selected = i
        self.describe()
        return changed

    def describe(self) -> None:
        """Update `message` with the selected particle's position, confidence and on/off state."""
        i = self.selected
        if i is None:
            self.message = "click a particle to select it; drag to move it"
            return
        row, col = (float(v) for v in self.state.pixels()[i])
        conf = float(self.state.confidence()[i])
        on = "on" if bool(self.state.is_on()[i]) else "off"
        self.message = f"particle {i}: row {row:.1f}, col {col:.1f}, confidence {conf:.3g}, {on}"

    # ------------------------------------------------------------------------------------------------------------
    def on_press(self, x: float | None, y: float | None, button: int = 1) -> bool:
        if x is None or y is None or button != 1:
            return False
        i = self.pick(x, y)
        if i is None:
            return False
        self.select(i)
        self.dragging = True
        return True

    def on_motion(self, x: float | None, y: float | None) -> bool:
        if not self.dragging or self.selected is None or x is None or y is None:
            return False
        self.state.move(self.selected, y, x)
        self.describe()
        return True

    def on_release(self) -> bool:
        was = self.dragging
        self.dragging = False
        return was

    def on_slider(self, name: str, value: float) -> bool:
        value = float(value)
        if name == "threshold":
            self.threshold = value
            if self.selected is not None and self.selected not in self.visible_indices():
                self.select(None)
            return True
        i = self.selected
        if i is None:
            return False
        if re.fullmatch(r"f\d+", name):
            d = int(name[1:])
            if float(self.state.features[i, d]) == value:
                return False
            self.state.set_feature(i, d, value)
        elif name in ("x", "y"):
            row, col = (float(v) for v in self.state.pixels()[i])
            self.state.move(i, value if name == "y" else row, value if name == "x" else col)
        elif name in {spec[0] for spec in self.state.slider_specs()}:
            if self.state.slider_value(i, name) == value:
                return False
            if name == "obj_on":
                self.state.set_presence(i, value)
            else:
                attribute, component = re.fullmatch(r"(.*?)(\d+)", name).groups()
                self.state.set_attribute(i, attribute, value, int(component))
        else:
            raise ValueError(f"unknown slider {name!r}; use threshold, x, y, f0, f1, ... or "
                             f"{', '.join(spec[0] for spec in self.state.slider_specs()) or 'none other'}.")
        self.describe()
        return True

    def on_key(self, key: str | None) -> bool:
        if key is None:
            return False
        if key in ("t", " "):
            if self.selected is None:
                return False
            self.state.toggle(self.selected)
            self.describe()
            return True
        if key == "r":
            self.state.reset()
            self.describe()
            return True
        if key == "escape":
            return self.select(None)
        if key in ("n", "right", "tab", "p", "left"):
            visible = self.visible_indices()
            if not visible:
                return False
            step = -1 if key in ("p", "left") else 1
            if self.selected in visible:
                nxt = visible[(visible.index(self.selected) + step) % len(visible)]
            else:
                nxt = visible[0] if step > 0 else visible[-1]
            return self.select(nxt)
        if key == "s":
            return self.save()
        return False

    def save(self) -> bool:
        if self.save_paths is None:
            return False
        png, js = self.state.save(*self.save_paths, threshold=self.threshold)
        self.message = f"saved {png} and {js}"
        if self.on_save is not None:
            self.on_save(png, js)
        return True
