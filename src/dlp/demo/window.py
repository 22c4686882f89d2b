"""The demo window: matplotlib drawing wired to `DemoController`.

Panels: the input image with its particles (colour per particle, marker size and opacity by confidence, hollow rings
at the encoded positions, a dashed line to moved particles, a cross on switched-off ones), the reconstruction decoded
from the current particles, and for object models the decoded glimpses (framed in the particle's colour; switched-off
ones faded). Controls: a confidence threshold slider that hides low-confidence particles, one slider per feature
dimension of the selected particle plus its row / column, Toggle, Reset and Save buttons.

Mouse: press on a particle (within 10 display pixels) selects it, dragging moves it in x and y; clicking a glimpse
selects its particle. Keys: t / space toggle, r reset, n / p (or arrows, tab) next / previous particle, escape
deselect, s save. matplotlib's own key bindings are switched off for this figure.

The backend is whatever matplotlib picks (your default, `MPLBACKEND`, or `dlp demo --backend NAME`); this module
never calls `matplotlib.use` and imports pyplot only when an on-screen window is created. `DemoWindow(...,
headless=True)` draws on a private Agg canvas instead (for `dlp demo --figure` and screenshots).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from dlp.demo.state import DemoController, DemoState

__all__ = ["DemoWindow", "glimpse_mosaic"]

LEFT_WIDTH = 0.70  # figure fraction used by the image panels
PANEL_BOTTOM, PANEL_TOP = 0.2, 0.88


def _hwc(image) -> np.ndarray:
    """[3, H, W] tensor in [0, 1] -> [H, W, 3] numpy."""
    return image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def glimpse_mosaic(glimpses, obj_on=None, *, padding: int = 2, background: float = 1.0,
                   faded: float = 0.35) -> tuple[np.ndarray, list[tuple[int, int]], int]:
    """Tile decoded RGBA glimpses [K, 4, S, S] (alpha first) into one RGB image, composited over `background`.

    Glimpses whose `obj_on` is 0 are faded towards the background by `faded`. Returns (image [h, w, 3], the (top, left)
    pixel corner of each tile, tile side S).
    """
    g = glimpses.detach().float().clamp(0, 1).cpu().numpy()  # [K, 4, S, S]
    k, _, s, _ = g.shape
    ncol = max(1, math.ceil(math.sqrt(k)))
    nrow = max(1, math.ceil(k / ncol))
    h, w = padding + nrow * (s + padding), padding + ncol * (s + padding)
    mosaic = np.full((h, w, 3), background, dtype=np.float32)
    corners = []
    for i in range(k):
        alpha, rgb = g[i, :1], g[i, 1:]
        tile = (rgb * alpha + background * (1 - alpha)).transpose(1, 2, 0)
        if obj_on is not None and float(obj_on[i]) <= 0:
            tile = faded * tile + (1 - faded) * background
        top, left = padding + (i // ncol) * (s + padding), padding + (i % ncol) * (s + padding)
        mosaic[top:top + s, left:left + s] = tile
        corners.append((top, left))
    return mosaic, corners, s


class DemoWindow:
    """The interactive demo figure for a `DemoState`.

    Args:
        state: the particles to edit.
        controller: event handling (default: a new `DemoController(state, threshold=threshold, save_paths=...)`).
        threshold: initial confidence threshold (None: show every particle).
        save_paths: (png, json) written by the Save button / the s key.
        title: figure title.
        headless: draw on a private Agg canvas (no pyplot, no window); use `save_figure`.
    """

    def __init__(self, state: DemoState, *, controller: DemoController | None = None, threshold: float | None = None,
                 save_paths: tuple[str | os.PathLike, str | os.PathLike] = ("dlp_demo.png", "dlp_demo.json"),
                 title: str | None = None, headless: bool = False, figsize: tuple[float, float] | None = None):
        from matplotlib.collections import LineCollection
        from matplotlib.widgets import Button, Slider

        self.state = state
        self.controller = controller or DemoController(state, threshold=threshold, save_paths=save_paths)
        if self.controller.save_paths is None:
            self.controller.save_paths = save_paths
        self.colors = self._palette(state.n_particles)
        self._syncing = False

        obj = state.is_object_model
        n_panels = 3 if obj else 2
        if figsize is None:
            width_in = 3.9 * n_panels + 3.4
            panel_in = (LEFT_WIDTH / n_panels - 0.015) * width_in
            figsize = (width_in, max(4.6, panel_in / (PANEL_TOP - PANEL_BOTTOM) + 0.3))
        if headless:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure

            self.fig = Figure(figsize=figsize)
            FigureCanvasAgg(self.fig)
        else:
            import matplotlib.pyplot as plt

            self.fig = plt.figure(figsize=figsize)
            manager = self.fig.canvas.manager
            handler = getattr(manager, "key_press_handler_id", None)
            if handler is not None:  # our keys (r, s, p, arrows) must not trigger matplotlib's navigation
                self.fig.canvas.mpl_disconnect(handler)
            if manager is not None and title:
                manager.set_window_title(f"DLP demo - {title}")
        fig = self.fig
        if title:
            fig.suptitle(title, fontsize=10, y=0.99)

        # ---- image panels
        width = LEFT_WIDTH / n_panels
        rect = lambda j: [0.01 + j * width, PANEL_BOTTOM, width - 0.015, PANEL_TOP - PANEL_BOTTOM]  # noqa: E731
        self.ax_in = fig.add_axes(rect(0))
        self.ax_rec = fig.add_axes(rect(1))
        self.ax_obj = fig.add_axes(rect(2)) if obj else None
        kind = "object" if obj else "masked"
        self.ax_in.set_title(f"input + particles ({kind} model)", fontsize=9)
        self.ax_rec.set_title("reconstruction from the particles", fontsize=9)
        size = state.size
        self.ax_in.imshow(_hwc(state.image), interpolation="nearest")
        self.im_rec = self.ax_rec.imshow(_hwc(state.reconstruction()), interpolation="nearest")
        for ax in (self.ax_in, self.ax_rec):
            ax.set_xlim(-0.5, size - 0.5)
            ax.set_ylim(size - 0.5, -0.5)
            ax.set_xticks([])
            ax.set_yticks([])
        self.links = LineCollection([], linestyles="dashed", linewidths=1.0)
        self.ax_in.add_collection(self.links)
        empty = np.zeros((0, 2))
        self.sc_orig = self.ax_in.scatter(empty[:, 0], empty[:, 1], s=28, facecolors="none", linewidths=1.0)
        self.sc_cur = self.ax_in.scatter(empty[:, 0], empty[:, 1], edgecolors="black", linewidths=0.6, zorder=3)
        self.sc_off = self.ax_in.scatter(empty[:, 0], empty[:, 1], marker="x", s=60, linewidths=2.0, zorder=4)
        self.sc_sel = self.ax_in.scatter(empty[:, 0], empty[:, 1], s=260, facecolors="none", edgecolors="white",
                                         linewidths=2.0, zorder=5)
        if obj:
            self.ax_obj.set_title("decoded glimpses", fontsize=9)
            self.ax_obj.set_xticks([])
            self.ax_obj.set_yticks([])
            mosaic, self._tiles, self._tile = glimpse_mosaic(state.glimpses(), state.obj_on)
            self.im_obj = self.ax_obj.imshow(mosaic, interpolation="nearest")
            from matplotlib.patches import Rectangle

            self.frames = []
            for i, (top, left) in enumerate(self._tiles):
                r = Rectangle((left - 1.0, top - 1.0), self._tile + 1.0, self._tile + 1.0, fill=False,
                              edgecolor=self.colors[i], linewidth=1.2)
                self.ax_obj.add_patch(r)
                self.frames.append(r)

        # ---- right column: the selected particle's position, transparency, the family's attributes and features
        d = state.feature_dim
        limit = state.feature_limit()
        ranges = {"y": ("row", 0.0, float(size - 1)), "x": ("col", 0.0, float(size - 1))}
        ranges.update({name: (name, lo, hi) for name, lo, hi in state.slider_specs()})
        ranges.update({f"f{j}": (f"f{j}", -limit, limit) for j in range(d)})
        row_h = min(0.05, 0.72 / len(ranges))
        fig.text(0.79, 0.95, "selected particle", fontsize=9, weight="bold")
        self.sliders: dict[str, Any] = {}
        for j, (name, (label, lo, hi)) in enumerate(ranges.items()):
            ax = fig.add_axes([0.80, 0.92 - (j + 1) * row_h, 0.15, row_h * 0.6])
            slider = Slider(ax, label, lo, hi, valinit=(lo + hi) / 2, valfmt="%.3g")
            slider.label.set_fontsize(8)
            slider.valtext.set_fontsize(8)
            slider.on_changed(lambda value, name=name: self._on_slider(name, value))
            self.sliders[name] = slider

        # ---- bottom: threshold, buttons, status
        conf = state.confidence()
        lo, hi = float(conf.min()), float(conf.max())
        if obj:
            lo, hi = 0.0, 1.0
        elif hi - lo < 1e-6:
            lo, hi = lo - 1.0, hi + 1.0
        self.conf_range = (lo, hi)
        init = lo if self.controller.threshold is None else min(max(self.controller.threshold, lo), hi)
        ax_thr = fig.add_axes([0.10, 0.085, 0.30, 0.035])
        what = "obj_on" if obj else "-sum logvar"
        self.threshold_slider = Slider(ax_thr, f"threshold\n({what})", lo, hi, valinit=init, valfmt="%.3g")
        self.threshold_slider.label.set_fontsize(8)
        self.threshold_slider.on_changed(lambda value: self._on_slider("threshold", value))
        self.buttons = {}
        for j, (name, action) in enumerate((("Toggle (t)", "t"), ("Reset (r)", "r"), ("Save (s)", "s"))):
            ax = fig.add_axes([0.50 + j * 0.085, 0.07, 0.075, 0.06])
            button = Button(ax, name)
            button.label.set_fontsize(8)
            button.on_clicked(lambda _event, action=action: self._on_key_action(action))
            self.buttons[action] = button
        self.status = fig.text(0.01, 0.015, "", fontsize=8)

        canvas = fig.canvas
        self._cids = [
            canvas.mpl_connect("button_press_event", self._on_press),
            canvas.mpl_connect("motion_notify_event", self._on_motion),
            canvas.mpl_connect("button_release_event", self._on_release),
            canvas.mpl_connect("key_press_event", self._on_key),
        ]
        self.controller.select(None)
        self.refresh(draw=False)

    # ------------------------------------------------------------------------------------------------------------
    @staticmethod
    def _palette(n: int) -> np.ndarray:
        from dlp.viz import particle_colors

        return particle_colors(n).numpy()

    def update_display_scale(self) -> float:
        """Display pixels per image pixel on the input panel (used for the 10-pixel pick radius)."""
        ax = self.ax_in
        ax.apply_aspect()
        bbox = ax.get_window_extent()
        x0, x1 = ax.get_xlim()
        scale = bbox.width / abs(x1 - x0) if bbox.width > 0 else 1.0
        self.controller.display_scale = scale
        return scale

    def particle_display_xy(self, i: int) -> tuple[float, float]:
        """Display coordinates (matplotlib: pixels from the bottom-left of the canvas) of particle i."""
        row, col = (float(v) for v in self.state.pixels()[i])
        x, y = self.ax_in.transData.transform((col, row))
        return float(x), float(y)

    # ------------------------------------------------------------------------------------------------------------
    # events
    def _toolbar_busy(self) -> bool:
        toolbar = getattr(self.fig.canvas, "toolbar", None)
        return bool(getattr(toolbar, "mode", ""))

    def _on_press(self, event) -> None:
        if self._toolbar_busy():
            return
        button = int(event.button) if event.button is not None else 0
        if event.inaxes is self.ax_in:
            self.update_display_scale()
            if self.controller.on_press(event.xdata, event.ydata, button=button):
                self.refresh()
        elif self.ax_obj is not None and event.inaxes is self.ax_obj and button == 1:
            i = self._tile_at(event.xdata, event.ydata)
            if i is not None and self.controller.select(i):
                self.refresh()

    def _tile_at(self, x: float | None, y: float | None) -> int | None:
        if x is None or y is None:
            return None
        for i, (top, left) in enumerate(self._tiles):
            if left - 1 <= x <= left + self._tile and top - 1 <= y <= top + self._tile:
                return i
        return None

    def _on_motion(self, event) -> None:
        if not self.controller.dragging or event.inaxes is not self.ax_in:
            return
        if self.controller.on_motion(event.xdata, event.ydata):
            self.refresh()

    def _on_release(self, event) -> None:
        if self.controller.on_release():
            self.refresh()

    def _on_key(self, event) -> None:
        self._on_key_action(event.key)

    def _on_key_action(self, key: str | None) -> None:
        if self.controller.on_key(key):
            self.refresh()

    def _on_slider(self, name: str, value: float) -> None:
        if self._syncing:
            return
        if self.controller.on_slider(name, value):
            self.refresh()

    # ------------------------------------------------------------------------------------------------------------
    # drawing
    def refresh(self, draw: bool = True) -> None:
        """Redraw every artist from the state and controller."""
        state, ctrl = self.state, self.controller
        pix = state.pixels().numpy()  # [K, 2] (row, col)
        orig = state.pixels(state.original_positions).numpy()
        visible = state.visible(ctrl.threshold).numpy()
        on = state.is_on().numpy()
        conf = state.confidence().numpy()
        lo, hi = self.conf_range
        strength = np.clip((conf - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
        idx = np.nonzero(visible)[0]
        xy = lambda p: p[:, ::-1]  # (row, col) -> (x, y)  # noqa: E731

        faces = np.concatenate([self.colors[idx], (0.35 + 0.65 * strength[idx])[:, None]], axis=1)
        self.sc_cur.set_offsets(xy(pix[idx]) if len(idx) else np.zeros((0, 2)))
        self.sc_cur.set_sizes(25 + 110 * strength[idx])
        self.sc_cur.set_facecolors(faces)
        self.sc_orig.set_offsets(xy(orig[idx]) if len(idx) else np.zeros((0, 2)))
        self.sc_orig.set_edgecolors(np.concatenate([self.colors[idx], np.full((len(idx), 1), 0.6)], axis=1))
        moved = [i for i in idx if np.abs(pix[i] - orig[i]).max() > 1e-3]
        self.links.set_segments([np.stack([xy(orig[i:i + 1])[0], xy(pix[i:i + 1])[0]]) for i in moved])
        self.links.set_color([self.colors[i] for i in moved])
        off = [i for i in idx if not on[i]]
        self.sc_off.set_offsets(xy(pix[off]) if off else np.zeros((0, 2)))
        self.sc_off.set_color([self.colors[i] for i in off] if off else "white")
        sel = ctrl.selected
        self.sc_sel.set_offsets(xy(pix[[sel]]) if sel is not None else np.zeros((0, 2)))

        self.im_rec.set_data(_hwc(state.reconstruction()))
        if self.ax_obj is not None:
            mosaic, _, _ = glimpse_mosaic(state.glimpses(), state.obj_on)
            self.im_obj.set_data(mosaic)
            for i, frame in enumerate(self.frames):
                frame.set_linewidth(3.0 if i == sel else 1.2)
                frame.set_linestyle("-" if on[i] else ":")
                frame.set_visible(bool(visible[i]) or i == sel)

        ctrl.describe()
        self._sync_sliders()
        n_vis = int(visible.sum())
        edited = "edited" if state.edited else "as encoded"
        self.status.set_text(f"{n_vis}/{state.n_particles} particles shown, {edited}.  {ctrl.message}")
        if draw:
            self.fig.canvas.draw_idle()

    def _sync_sliders(self) -> None:
        """Show the selected particle's values on the sliders without triggering edits."""
        i = self.controller.selected
        if i is None:
            return
        self._syncing = True
        try:
            state = self.state
            row, col = (float(v) for v in state.pixels()[i])
            orow, ocol = (float(v) for v in state.pixels(state.original_positions)[i])
            values = {"y": (row, orow), "x": (col, ocol)}
            values.update({name: (state.slider_value(i, name), state.slider_value(i, name, original=True))
                           for name, _, _ in state.slider_specs()})
            values.update({f"f{j}": (float(v), float(o)) for j, (v, o) in
                           enumerate(zip(state.features[i], state.original_features[i]))})
            for name, (value, original) in values.items():
                slider = self.sliders[name]
                slider.vline.set_xdata([original, original])  # the red tick marks the encoded value
                if abs(slider.val - value) > 1e-9:
                    slider.set_val(min(max(value, slider.valmin), slider.valmax))
        finally:
            self._syncing = False

    # ------------------------------------------------------------------------------------------------------------
    def save_figure(self, path: str | os.PathLike, dpi: int = 100) -> Path:
        """Render the whole demo figure to an image file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fig.savefig(path, dpi=dpi)
        return path

    def show(self, block: bool = True) -> None:
        """Open the window (pyplot's event loop; returns when it is closed unless block=False)."""
        import matplotlib.pyplot as plt

        plt.show(block=block)

    def close(self) -> None:
        for cid in self._cids:
            self.fig.canvas.mpl_disconnect(cid)
        if self.fig.canvas.manager is not None:
            import matplotlib.pyplot as plt

            plt.close(self.fig)
