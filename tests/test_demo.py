"""The particle demo: editing logic, event handling, headless CLI, and a real window under Xvfb."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dlp
from dlp.checkpoint import save_checkpoint
from dlp.cli import main
from dlp.demo import DemoController, DemoState, EditError, parse_edit
from dlp.demo.cli import default_samples_dir, packaged_samples_dir, preprocess, sample_path
from dlp.models.dlp_v1.model import DLP
from tests.conftest import DATA_DIR, REPO, tiny_config

SAMPLES = DATA_DIR / "samples"
KINDS = ("object", "masked")


def make_state(kind: str, seed: int = 0) -> tuple[DLP, torch.Tensor, DemoState]:
    torch.manual_seed(seed)
    model = DLP(tiny_config(kind)).eval()
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return model, image, DemoState(model, image)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is faster than several, and does not oversubscribe small CI runners."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    paths = {}
    for kind in KINDS:
        torch.manual_seed(1)
        paths[kind] = save_checkpoint(root / f"{kind}.pt", DLP(tiny_config(kind)))
    return paths


def changed(a: torch.Tensor, b: torch.Tensor) -> bool:
    return not torch.equal(a, b)


# ----------------------------------------------------------------------------------------------------------------
# DemoState

def test_encodes_once_and_decodes_the_forward_pass(kind):
    model, image, state = make_state(kind)
    ref = model(image[None], deterministic=True).rec[0].clamp(0, 1)
    torch.testing.assert_close(state.reconstruction(), ref, rtol=0, atol=1e-6)
    assert state.positions.shape == (4, 2) and state.features.shape == (4, 3) and state.background.shape == (3,)
    assert (state.obj_on is not None) == (kind == "object")
    calls = []
    original = model.decode
    model.decode = lambda *a, **k: calls.append(1) or original(*a, **k)
    state.reconstruction()
    assert calls == []  # cached
    state.move(0, 3.0, 4.0)
    state.reconstruction()
    state.reconstruction()
    assert len(calls) == 1  # one decode per edit, never an encode


def test_pixel_convention_and_clamping(kind):
    _, _, state = make_state(kind)
    state.move(1, 0.0, 31.0)
    torch.testing.assert_close(state.positions[1], torch.tensor([-1.0, 1.0]))
    torch.testing.assert_close(state.pixels()[1], torch.tensor([0.0, 31.0]))
    state.move(1, -50.0, 99.0)  # outside the image: clamped to its border
    torch.testing.assert_close(state.positions[1], torch.tensor([-1.0, 1.0]))


def test_toggle_object_and_masked_semantics(kind):
    _, _, state = make_state(kind)
    rec = state.reconstruction()
    assert state.toggle(2) is False and not bool(state.is_on()[2])
    assert changed(state.reconstruction(), rec)
    if kind == "object":
        assert float(state.obj_on[2]) == 0.0
    else:
        decoded = state.model.apply_view(state.particles, state.current_view(), switched_off=state.off[None])
        assert float(decoded.mu[0, 2].abs().max()) > 1.0  # parked just outside the image
        assert torch.equal(state.positions[2], state.original_positions[2])  # remembered for switching back on
    assert state.toggle(2) is True
    torch.testing.assert_close(state.reconstruction(), rec, rtol=0, atol=1e-6)


def test_reset_restores_original_exactly(kind):
    model, image, state = make_state(kind)
    rec = state.reconstruction()
    state.move(0, 2.0, 30.0)
    state.set_feature(1, 0, 4.0)
    state.set_feature(4, 2, -3.0)  # the background particle
    state.toggle(3)
    assert state.edited and changed(state.reconstruction(), rec)
    state.reset()
    assert not state.edited
    assert torch.equal(state.reconstruction(), rec)
    assert torch.equal(state.reconstruction(), DemoState(model, image).reconstruction())


def test_visible_threshold_and_table(kind):
    _, _, state = make_state(kind)
    conf = state.confidence()
    threshold = float(conf.median())
    assert torch.equal(state.visible(threshold), conf >= threshold)
    assert bool(state.visible(None).all())
    table = state.particle_table(threshold)
    assert [r["index"] for r in table] == [0, 1, 2, 3]
    assert [r["visible"] for r in table] == (conf >= threshold).tolist()
    assert all(len(r["features"]) == 3 and not r["edited"] for r in table)
    assert (table[0]["obj_on"] is None) == (kind == "masked")


def test_save_writes_png_and_json(tmp_path, kind):
    _, _, state = make_state(kind)
    state.move(0, 5.0, 6.0)
    png, js = state.save(tmp_path / "out" / "rec.png", tmp_path / "out" / "rec.json", threshold=0.0)
    with Image.open(png) as im:
        assert im.size == (32, 32) and im.mode == "RGB"
        saved = torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255
    assert (saved - state.reconstruction()).abs().max() <= 0.5 / 255 + 1e-6
    data = json.loads(js.read_text())
    assert data["model"] == kind and data["n_particles"] == 4 and data["edited"] is True
    first = data["particles"][0]
    assert first["edited"] and abs(first["row"] - 5.0) < 1e-4 and abs(first["col"] - 6.0) < 1e-4
    assert len(data["background"]["features"]) == 3


def test_parse_and_apply_edits():
    _, _, state = make_state("object")
    before = state.positions[3].clone()
    state.apply(parse_edit("3:dx=0.2,dy=-0.1"))
    torch.testing.assert_close(state.positions[3], (before + torch.tensor([-0.1, 0.2])).clamp(-1, 1))
    state.apply(parse_edit("0: x=10, y=12, f1=0.5, on=0"))
    torch.testing.assert_close(state.pixels()[0], torch.tensor([12.0, 10.0]))
    assert float(state.features[0, 1]) == 0.5 and not bool(state.is_on()[0])
    state.apply(parse_edit("bg:f2=1.5"))
    assert float(state.background[2]) == 1.5
    for bad in ("3", "3:dx", "x:dx=1", "3:dx=abc", "3:on=2", "3:dx=nan"):
        with pytest.raises(EditError):
            parse_edit(bad)
    for bad in ("4:dx=0.1", "0:f3=1", "bg:dx=1"):
        with pytest.raises(EditError):
            state.apply(parse_edit(bad))


def test_unknown_edit_key_names_the_key_and_the_valid_ones():
    _, _, state = make_state("object")
    before = state.positions.clone()
    with pytest.raises(EditError, match=r"unknown edit key 'dz' .*valid keys for this model: dx, dy, x, y, f0..f2, on"):
        state.apply(parse_edit("3:dx=0.5,dz=1"))
    assert torch.equal(state.positions, before)  # nothing applied: every key is checked first


# ----------------------------------------------------------------------------------------------------------------
# DemoController (no screen)

def test_drag_moves_particle_and_changes_reconstruction(kind):
    _, _, state = make_state(kind)
    ctrl = DemoController(state, display_scale=10.0)
    rec = state.reconstruction()
    row, col = (float(v) for v in state.pixels()[2])
    assert ctrl.on_press(col + 0.3, row - 0.3)  # within 10 display px (= 1 image px at scale 10)
    i = ctrl.selected
    assert i is not None and ctrl.dragging
    assert ctrl.on_motion(20.0, 8.0) and ctrl.on_motion(25.0, 6.0)
    assert ctrl.on_release() and not ctrl.dragging
    torch.testing.assert_close(state.pixels()[i], torch.tensor([6.0, 25.0]))
    assert changed(state.reconstruction(), rec)
    assert not ctrl.on_motion(1.0, 1.0)  # released: moving does nothing
    assert ctrl.selected == i  # the selection stays for the sliders


def test_press_selects_only_within_epsilon_display_pixels():
    _, _, state = make_state("object")
    state.move(0, 2.0, 2.0)
    ctrl = DemoController(state, display_scale=4.0)  # 10 display px = 2.5 image px
    assert not ctrl.on_press(2.0, 5.0) and ctrl.selected is None  # 3 image px away
    assert ctrl.on_press(2.0, 4.0) and ctrl.selected == 0
    assert not ctrl.on_press(None, None) and not ctrl.on_press(2.0, 2.0, button=3)


def test_sliders_keys_and_threshold(kind):
    _, _, state = make_state(kind)
    ctrl = DemoController(state)
    rec = state.reconstruction()
    assert not ctrl.on_slider("f0", 2.0)  # nothing selected
    assert ctrl.on_key("n") and ctrl.selected == 0
    assert ctrl.on_key("p") and ctrl.selected == 3
    assert ctrl.on_slider("f1", 4.0)
    assert float(state.features[3, 1]) == 4.0 and changed(state.reconstruction(), rec)
    assert not ctrl.on_slider("f1", 4.0)  # same value: no redraw
    assert ctrl.on_slider("y", 3.0) and abs(float(state.pixels()[3, 0]) - 3.0) < 1e-4
    assert ctrl.on_key("t") and not bool(state.is_on()[3])
    assert ctrl.on_key("r") and not state.edited and torch.equal(state.reconstruction(), rec)
    conf = state.confidence()
    hidden = int(conf.argmin())
    ctrl.select(hidden)
    assert ctrl.on_slider("threshold", float(conf.max()))
    assert ctrl.selected is None and ctrl.visible_indices() == [int(conf.argmax())]
    assert ctrl.on_key("escape") is False and ctrl.on_key("q") is False


def test_key_s_saves(tmp_path):
    _, _, state = make_state("masked")
    ctrl = DemoController(state, save_paths=(tmp_path / "a.png", tmp_path / "a.json"))
    assert ctrl.on_key("s") and (tmp_path / "a.png").is_file() and (tmp_path / "a.json").is_file()
    assert not DemoController(state).on_key("s")


# ----------------------------------------------------------------------------------------------------------------
# the window's wiring on an off-screen canvas (real matplotlib MouseEvents, no display)

def test_headless_window_wires_mouse_events(kind):
    from matplotlib.backend_bases import MouseEvent

    from dlp.demo.window import DemoWindow

    _, _, state = make_state(kind)
    window = DemoWindow(state, headless=True, title="test")
    canvas = window.fig.canvas
    canvas.draw()
    before = np.asarray(canvas.buffer_rgba()).copy()
    x, y = window.particle_display_xy(1)
    tx, ty = window.ax_in.transData.transform((4.0, 5.0))  # target: col 4, row 5
    for name, px, py in (("button_press_event", x, y), ("motion_notify_event", tx, ty),
                         ("button_release_event", tx, ty)):
        canvas.callbacks.process(name, MouseEvent(name, canvas, px, py, button=1))
    i = window.controller.selected
    assert i is not None
    torch.testing.assert_close(state.pixels()[i], torch.tensor([5.0, 4.0]), atol=0.05, rtol=0)
    assert window.sliders["f0"].val == pytest.approx(float(state.features[i, 0]))
    canvas.draw()
    assert (np.asarray(canvas.buffer_rgba()) != before).any()


# ----------------------------------------------------------------------------------------------------------------
# dlp demo (headless)

def test_cli_headless_edit_on_own_image(tmp_path, checkpoints, capsys):
    img = tmp_path / "img.png"
    Image.fromarray((np.random.default_rng(0).random((48, 40, 3)) * 255).astype(np.uint8)).save(img)
    out = tmp_path / "edited.png"
    rc = main(["demo", "--checkpoint", str(checkpoints["object"]), "--image", str(img), "--edit", "1:dx=0.2,dy=-0.1",
               "--edit", "2:on=0", "--edit", "0:f2=0.5", "--save", str(out), "--device", "cpu"])
    assert rc == 0
    with Image.open(out) as im:
        assert im.size == (32, 32)
    data = json.loads(out.with_suffix(".json").read_text())
    p = data["particles"]
    assert abs((p[1]["x"] - p[1]["original_x"]) - 0.2) < 1e-5 or abs(p[1]["x"]) == 1.0
    assert p[2]["on"] is False and p[2]["obj_on"] == 0.0 and p[0]["features"][2] == 0.5
    assert "reconstruction:" in capsys.readouterr().out


def test_cli_headless_on_celeb_sample(tmp_path, checkpoints):
    if not (SAMPLES / "celeb" / "1.jpg").is_file():
        pytest.skip(f"the official sample images are not in {SAMPLES}")
    out = tmp_path / "celeb.png"
    rc = main(["demo", "--checkpoint", str(checkpoints["masked"]), "--image", str(SAMPLES / "celeb" / "1.jpg"),
               "-d", "celeba", "--edit", "3:x=5,y=6", "--save", str(out), "--figure", str(tmp_path / "fig.png"),
               "--device", "cpu"])
    assert rc == 0 and (tmp_path / "fig.png").is_file()
    p = json.loads(out.with_suffix(".json").read_text())["particles"][3]
    assert abs(p["col"] - 5) < 1e-4 and abs(p["row"] - 6) < 1e-4
    # -d/-i picks the same file from --samples-dir, pre-processed the same way
    rc = main(["demo", "--checkpoint", str(checkpoints["masked"]), "-d", "celeba", "-i", "1", "--samples-dir",
               str(SAMPLES), "--edit", "3:x=5,y=6", "--save", str(tmp_path / "same.png"), "--device", "cpu"])
    assert rc == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(tmp_path / "same.png")))


@pytest.mark.parametrize("dataset, index, name", [("celeba", 2, "2.jpg"), ("traffic", 1, "1.webp"),
                                                  ("clevrer", 2, "2.webp")])
def test_cli_on_the_packaged_samples_from_an_empty_directory(tmp_path, checkpoints, monkeypatch, dataset, index, name):
    """No $DLP_SAMPLES_DIR, no ../shared: the sample images shipped in the package are used."""
    work = tmp_path / "empty"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("DLP_SAMPLES_DIR", raising=False)
    packaged = packaged_samples_dir()
    assert packaged is not None and default_samples_dir() == packaged
    assert packaged.is_relative_to(Path(dlp.__file__).parent)  # inside the package, not ../shared
    folder = {"celeba": "celeb"}.get(dataset, dataset)
    assert sample_path(packaged, dataset, index) == packaged / folder / name
    rc = main(["demo", "--checkpoint", str(checkpoints["masked"]), "-d", dataset, "-i", str(index), "--save",
               "out.png", "--device", "cpu"])
    assert rc == 0
    with Image.open(work / "out.png") as im:
        assert im.size == (32, 32)
    assert sorted(p.name for p in work.iterdir()) == ["out.json", "out.png"]


def test_samples_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("DLP_SAMPLES_DIR", str(tmp_path))
    assert default_samples_dir() == tmp_path
    monkeypatch.delenv("DLP_SAMPLES_DIR")
    assert default_samples_dir() == packaged_samples_dir()


def test_packaged_samples_are_the_official_pixels():
    if not SAMPLES.is_dir():
        pytest.skip(f"the official sample images are not in {SAMPLES}")
    packaged = packaged_samples_dir()
    files = sorted(p.relative_to(packaged) for p in packaged.glob("*/*"))
    assert len(files) == 7 and sum((packaged / f).stat().st_size for f in files) < 500_000
    for rel in files:
        original = next((SAMPLES / rel.parent).glob(f"{rel.stem}.*"))
        with Image.open(packaged / rel) as a, Image.open(original) as b:
            assert np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB"))), rel


def test_sample_selection_and_preprocessing(tmp_path, capsys):
    folder = tmp_path / "celeb"
    folder.mkdir()
    for n in (1, 2, 10):
        Image.new("RGB", (178, 218), (n, 0, 0)).save(folder / f"{n}.jpg")
    assert sample_path(tmp_path, "celeba", 10).name == "10.jpg"
    assert sample_path(tmp_path, "celeba", 2).name == "2.jpg"
    assert sample_path(tmp_path, "celeba", 99).name == "10.jpg"  # clamped to the last image, with a note
    assert "out of range" in capsys.readouterr().err
    # the official geometry: CelebA rows 30..207 -> 160 -> centre 128; traffic (60, 0, 480, 420); clevrer whole frame
    face = Image.new("RGB", (178, 218), (255, 255, 255))
    face.paste((255, 0, 0), (0, 0, 178, 30))  # the 30 rows above the square are cut
    assert preprocess(face, 128, "celeba").shape == (3, 128, 128)
    assert preprocess(face, 128, "celeba")[1].min() > 0.99
    traffic = Image.new("RGB", (512, 512), (0, 0, 255))
    traffic.paste((255, 255, 255), (60, 0, 480, 420))
    assert preprocess(traffic, 64, "traffic")[2].min() > 0.99
    assert preprocess(Image.new("RGB", (480, 320)), 64, "clevrer").shape == (3, 64, 64)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--checkpoint", "{missing}", "--image", "{img}"], "does not exist"),
        (["--checkpoint", "{ckpt}", "--image", "{tmp}/nope.png"], "does not exist"),
        (["--checkpoint", "{ckpt}", "-d", "celeba", "--samples-dir", "{tmp}/nowhere"], "samples folder"),
        (["--checkpoint", "{ckpt}", "-d", "celeba", "-i", "0", "--samples-dir", "{tmp}"], "1-based"),
        (["--checkpoint", "{ckpt}", "--image", "{img}", "--edit", "3;dx=1"], "bad edit"),
        (["--checkpoint", "{ckpt}", "--image", "{img}", "--edit", "9:dx=1"], "out of range"),
        (["--checkpoint", "{ckpt}"], "no image given"),
    ],
)
def test_cli_errors_are_one_sentence(tmp_path, checkpoints, capsys, argv, message):
    img = tmp_path / "img.png"
    Image.new("RGB", (40, 40)).save(img)
    (tmp_path / "celeb").mkdir()
    Image.new("RGB", (40, 40)).save(tmp_path / "celeb" / "1.png")
    subs = {"missing": tmp_path / "missing.pt", "img": img, "tmp": tmp_path, "ckpt": checkpoints["object"]}
    argv = [a.format(**subs) for a in argv]
    assert main(["demo", *argv, "--save", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dlp demo: error:") and message in err and "\n" not in err


# ----------------------------------------------------------------------------------------------------------------
# a real window: Xvfb + TkAgg, mouse events through the X server (xdotool) or the canvas

WINDOW_DRIVER = textwrap.dedent(
    """
    import json, os, shutil, subprocess, sys, time
    import numpy as np
    import torch
    import matplotlib
    import matplotlib.pyplot as plt
    from matplotlib.backend_bases import MouseEvent
    from dlp.checkpoint import load_checkpoint
    from dlp.demo import DemoState
    from dlp.demo.window import DemoWindow

    out = sys.argv[2]
    assert matplotlib.get_backend().lower() == "tkagg", matplotlib.get_backend()
    model = load_checkpoint(sys.argv[1])
    torch.manual_seed(0)
    state = DemoState(model, torch.rand(3, 32, 32))
    window = DemoWindow(state, title="window test")
    window.show(block=False)

    def pump(seconds):
        end = time.time() + seconds
        while time.time() < end:
            plt.pause(0.02)

    def screenshot(name):
        try:
            from PIL import ImageGrab
            img = ImageGrab.grab(xdisplay=os.environ["DISPLAY"])
        except Exception:  # Pillow without XCB: the rendered canvas instead
            from PIL import Image
            window.fig.canvas.draw()
            img = Image.fromarray(np.asarray(window.fig.canvas.buffer_rgba())[..., :3])
        img.save(os.path.join(out, name))
        return np.asarray(img)

    canvas = window.fig.canvas
    widget = canvas.get_tk_widget()
    presses = []
    canvas.mpl_connect("button_press_event", lambda e: presses.append((e.x, e.y, e.inaxes is window.ax_in)))
    geometry, stable, deadline = None, 0, time.time() + 15
    while stable < 3 and time.time() < deadline:  # until the window is mapped and its size has settled
        pump(0.15)
        now = (widget.winfo_ismapped(), widget.winfo_rootx(), widget.winfo_rooty(), widget.winfo_width(),
               widget.winfo_height(), tuple(window.fig.bbox.bounds))
        stable = stable + 1 if now[0] and now == geometry else 0
        geometry = now
    before = screenshot("before.png")
    x, y = window.particle_display_xy(1)
    tx, ty = window.ax_in.transData.transform((4.0, 5.0))  # drag to col 4, row 5
    if shutil.which("xdotool"):
        # matplotlib display y runs up from the figure's bottom edge (TkAgg: y = figure height - Tk y)
        root_x, root_y, height = widget.winfo_rootx(), widget.winfo_rooty(), window.fig.bbox.height
        screen = lambda px, py: (str(round(root_x + px)), str(round(root_y + height - py)))
        mid = ((x + tx) / 2, (y + ty) / 2)
        cmd = ["xdotool", "mousemove", "--sync", *screen(x, y), "sleep", "0.1", "mousedown", "1", "sleep", "0.1",
               "mousemove", "--sync", *screen(*mid), "sleep", "0.1", "mousemove", "--sync", *screen(tx, ty),
               "sleep", "0.1", "mouseup", "1"]
        proc = subprocess.Popen(cmd)
        while proc.poll() is None:
            pump(0.05)
        assert proc.returncode == 0
        how = "xdotool"
    else:
        for name, px, py in (("button_press_event", x, y), ("motion_notify_event", tx, ty),
                             ("button_release_event", tx, ty)):
            canvas.callbacks.process(name, MouseEvent(name, canvas, px, py, button=1))
        how = "canvas events"
    pump(0.3)
    after = screenshot("after.png")
    i = window.controller.selected
    print("window", geometry, "particle at", (x, y), "presses seen", presses)
    print("RESULT", json.dumps({"how": how, "selected": i,
                                "row_col": [float(v) for v in state.pixels()[i]] if i is not None else None,
                                "changed": int((before != after).any(-1).sum())}))
    plt.close("all")
    """
)


@pytest.fixture(scope="module")
def xvfb_display():
    """A virtual X display (skips when Xvfb or tkinter is missing)."""
    if shutil.which("Xvfb") is None:
        pytest.skip("the Xvfb binary is missing (apt-get install xvfb) - cannot open a real window without a display")
    probe = subprocess.run([sys.executable, "-c", "import tkinter"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("tkinter is not available in this Python (apt-get install python3-tk) - TkAgg cannot be used")
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
                            pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_fd)
    with os.fdopen(read_fd) as f:
        number = f.readline().strip()
    try:
        if not number:
            pytest.skip("Xvfb did not start")
        yield f":{number}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _gui_env(display: str) -> dict[str, str]:
    return {**os.environ, "DISPLAY": display, "MPLBACKEND": "TkAgg", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}


def test_real_window_drag_changes_pixels(tmp_path, checkpoints, xvfb_display):
    script = tmp_path / "driver.py"
    script.write_text(WINDOW_DRIVER)
    run = subprocess.run([sys.executable, str(script), str(checkpoints["object"]), str(tmp_path)],
                         env=_gui_env(xvfb_display), capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    line = next(line for line in run.stdout.splitlines() if line.startswith("RESULT"))
    result = json.loads(line.removeprefix("RESULT "))
    how, i = result["how"], result["selected"]
    assert i is not None, f"no particle was selected by the {how} drag: {run.stdout}"
    row, col = result["row_col"]
    assert abs(row - 5.0) < 1.0 and abs(col - 4.0) < 1.0, f"particle {i} ended at {row, col} after the {how} drag"
    assert result["changed"] > 500, f"only {result['changed']} screen pixels changed"
    assert (tmp_path / "before.png").is_file() and (tmp_path / "after.png").is_file()


def test_cli_opens_a_window(tmp_path, checkpoints, xvfb_display):
    """`dlp demo` without --edit/--save opens the interactive window (closed again by the test)."""
    img = tmp_path / "img.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(img)
    proc = subprocess.Popen([sys.executable, "-m", "dlp", "demo", "--checkpoint", str(checkpoints["masked"]),
                             "--image", str(img), "--backend", "TkAgg", "--device", "cpu"],
                            env=_gui_env(xvfb_display), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if ready else ""  # printed once the window exists, before the event loop
        assert "Drag particles" in line, line + proc.stderr.read() if proc.poll() is not None else line
        if shutil.which("xdotool"):
            found = subprocess.run(["xdotool", "search", "--sync", "--name", "DLP demo"], capture_output=True,
                                   text=True, timeout=20, env=_gui_env(xvfb_display))
            assert found.stdout.strip(), "no X window named 'DLP demo'"
        assert proc.poll() is None  # still running its event loop
    finally:
        proc.terminate()
        proc.wait(timeout=10)
