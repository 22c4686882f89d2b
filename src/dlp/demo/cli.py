"""`dlp demo`: move, switch and re-style the particles of one image and watch the reconstruction follow.

    dlp demo --checkpoint runs/x/checkpoints/best.pt -d celeba -i 3            # window on samples/celeb/3.jpg
    dlp demo --checkpoint model.pt --image face.jpg --backend TkAgg             # window on your own image
    dlp demo --checkpoint model.pt -d clevrer -i 1 --edit "3:dx=0.2,dy=-0.1" --edit "5:on=0" --save out.png

With --edit or --save nothing is shown: the edits are applied and the reconstruction (PNG) and the particle table
(JSON, next to the PNG) are written; --figure also renders the whole demo figure without a screen.

Sample images are pre-processed as in the official demo: celeba -> the CelebA face square (rows 30..207 of a
178x218 image) resized to 160 and cropped 16 px per side (128 px; other model sizes proportionally), traffic -> the
crop (60, 0, 480, 420) of a 512x512 frame, clevrer -> the whole frame; both resized (bicubic) to the model's size.

A video model (DDLP) is edited on a clip ("what if"): an edit changes a particle in all conditioning frames alike (a
move shifts its whole conditioning trajectory, so that the dynamics see a consistent motion), and the model rolls out
from the edited particles (`dlp.demo.clip_state`):

    dlp demo --checkpoint ddlp.pt --video video_10000.mp4 --cond-frames 4 --horizon 20                   # window
    dlp demo --checkpoint ddlp.pt --data-root clevrer_valid.npy --index 2 --edit "3:dx=0.3" --save what_if.gif
    dlp demo --checkpoint ddlp.pt -d balls --edit "1:on=0" --save what_if.mp4

Headless (--edit/--save) it writes the video (GIF or MP4 by the extension of --save, default dlp_demo.gif): ground
truth | the unedited prediction | the edited one, side by side with the particles' trajectories, and the particle
table (JSON) next to it. The clip comes from --video (pre-processed like the training data, as in `dlp predict`),
from --data-root with --index N (0-based clip of --split, as `dlp predict` counts), or, with -d alone, from the
training data recorded in the checkpoint (or a generated dataset). --cond-frames and --horizon default to the
checkpoint's cond_steps and rollout_horizon. The window shows the first conditioning frame with draggable particles
and plays the rollout of the edits (Play).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from dlp.data.common import DatasetError

PREPROCESS = ("auto", "celeba", "traffic", "clevrer", "center")


def video_datasets() -> list[str]:
    """The datasets of video clips (a DDLP's clip can come from them)."""
    from dlp.data.registry import dataset_info, list_datasets

    return [name for name in list_datasets() if dataset_info(name).videos]


def sample_datasets() -> dict[str, str]:
    """Datasets with official demo images -> their folder under the samples directory (from the dataset registry)."""
    from dlp.data.registry import dataset_info, list_datasets

    return {name: dataset_info(name).sample_folder for name in list_datasets() if dataset_info(name).sample_folder}


def dataset_preprocess(dataset: str | None) -> str:
    """How images of `dataset` are cropped for the demo (the registry's `demo_preprocess`; "center" otherwise)."""
    from dlp.data.registry import _DATASETS

    info = _DATASETS.get(dataset or "")
    return info.demo_preprocess if info is not None and info.demo_preprocess else "center"


class DemoError(ValueError):
    """Bad `dlp demo` arguments (one sentence: what is wrong and how to fix it)."""


def configure_parser(subparsers, argv: list[str] | None = None) -> None:
    p = subparsers.add_parser(
        "demo", help="interactive particle demo (or headless edits with --edit/--save)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="a checkpoint written by dlp train or "
                   "dlp convert-official (the model config is read from it)")
    src = p.add_argument_group("image (one of)")
    src.add_argument("--image", metavar="FILE", help="an image file of yours")
    src.add_argument("-d", "--dataset", choices=sorted(set(sample_datasets()) | set(video_datasets())),
                     help="use an official sample image of this dataset (with --image: pre-process the file like "
                          "this dataset); for a video model: the dataset of the clip")
    src.add_argument("-i", "--index", type=int, default=None, metavar="N",
                     help="the N-th sample image, 1-based (1 = 1.jpg; default 1); clamped to the samples there; for "
                          "a video model with --data-root: the clip, 0-based (default 0)")
    clip = p.add_argument_group("clip of a video model (DDLP)")
    clip.add_argument("--video", metavar="FILE", help="a video file or a folder of frames")
    clip.add_argument("--data-root", metavar="DIR", help="a prepared .npy frame array or episode folders; the clip "
                      "is --index")
    clip.add_argument("--split", choices=("heldout", "train", "valid", "test", "all"), default="heldout",
                      help="split of --data-root (default: the dataset's held-out split)")
    clip.add_argument("--cond-frames", type=int, default=None, metavar="C",
                      help="conditioning frames (default: the checkpoint's cond_steps)")
    clip.add_argument("--horizon", type=int, default=None, metavar="H",
                      help="predicted frames (default: the checkpoint's rollout_horizon)")
    clip.add_argument("--frameskip", type=int, default=None, metavar="N",
                      help="keep every N-th frame of --video (default: as the training data)")
    clip.add_argument("--start-frame", type=int, default=None, metavar="N", help="skip the first N frames of --video")
    clip.add_argument("--fps", type=float, default=8.0, help="frames per second of the video (default 8)")
    p.add_argument("--samples-dir", metavar="DIR", help="folder with celeb/, traffic/, clevrer/ sample images "
                   "(default: $DLP_SAMPLES_DIR, else the official samples shipped with the package)")
    p.add_argument("--preprocess", choices=PREPROCESS, default="auto",
                   help="pre-processing of --image: auto (from -d or the checkpoint's training dataset, else center), "
                        "celeba, traffic, clevrer, center (centre square crop)")
    p.add_argument("--edit", action="append", default=[], metavar="SPEC",
                   help='edit a particle, e.g. "3:dx=0.2,dy=-0.1", "0:x=40,y=12" (pixels), "5:f2=0.5", "2:on=0", '
                        '"bg:f0=1" (background features); repeatable; runs headless')
    p.add_argument("--save", metavar="PNG", help="write the reconstruction here and the particle table next to it "
                   "(.json); runs headless (default with --edit: dlp_demo.png); for a video model a .gif or .mp4 "
                   "(default dlp_demo.gif)")
    p.add_argument("--figure", metavar="PNG", help="also render the whole demo figure to this file (headless)")
    p.add_argument("--threshold", type=float, default=None, metavar="T",
                   help="hide particles whose confidence (obj_on for object models, -sum logvar for masked ones) "
                        "is below T")
    p.add_argument("--backend", metavar="NAME", help="matplotlib backend for the window, e.g. TkAgg, QtAgg, "
                   "MacOSX (default: matplotlib's choice / $MPLBACKEND)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where the model runs")
    p.set_defaults(func=run)


# ----------------------------------------------------------------------------------------------------------------
# images

def packaged_samples_dir() -> Path | None:
    """The official sample images shipped inside the package (celeb/1-4, clevrer/1-2, traffic/1)."""
    from importlib import resources

    try:
        folder = resources.files("dlp.demo") / "samples"
    except (ModuleNotFoundError, TypeError):
        return None
    return folder if isinstance(folder, Path) and folder.is_dir() else None  # a real folder in any pip install


def default_samples_dir() -> Path | None:
    """$DLP_SAMPLES_DIR, else the sample images shipped in the package (found from any working directory)."""
    env = os.environ.get("DLP_SAMPLES_DIR")
    if env:
        return Path(env).expanduser()
    return packaged_samples_dir()


def sample_path(samples_dir: Path | None, dataset: str, index: int | None) -> Path:
    """The `index`-th (1-based) sample image of `dataset`: the file named `<index>.*` or else the index-th in order.

    An index past the last image is clamped to it (as the official demo does), with a note on stderr.
    """
    from dlp.data.common import frame_sort_key, is_image_file

    if samples_dir is None:
        raise DemoError("no samples folder found; pass --samples-dir DIR, set DLP_SAMPLES_DIR, or use --image FILE.")
    folder = Path(samples_dir) / sample_datasets()[dataset]
    if not folder.is_dir():
        raise DemoError(f"the samples folder {folder} does not exist; point --samples-dir at the folder holding "
                        f"{folder.name}/ or use --image FILE.")
    files = sorted((p for p in folder.iterdir() if p.is_file() and is_image_file(p)), key=frame_sort_key)
    if not files:
        raise DemoError(f"{folder} holds no images; add some or use --image FILE.")
    index = 1 if index is None else index
    if index < 1:
        raise DemoError(f"sample index {index} is out of range: indices are 1-based (1 = {files[0].name}, "
                        f"up to {len(files)}).")
    if index > len(files):
        print(f"dlp demo: sample index {index} is out of range for {folder} ({len(files)} images); "
              f"using {len(files)}.", file=sys.stderr)
        index = len(files)
    named = [p for p in files if p.stem == str(index)]
    return named[0] if named else files[index - 1]


def preprocess(img, size: int, how: str) -> torch.Tensor:
    """PIL RGB image -> [3, size, size] float in [0, 1], the official demo's pre-processing for `how`."""
    from PIL import Image

    from dlp.data.common import (
        TRAFFIC_ALIGN,
        TRAFFIC_SIDE_FRACTION,
        crop_resize,
        face_transform,
        pil_to_tensor,
        square_box,
    )

    bicubic = Image.Resampling.BICUBIC
    if how == "celeba":
        return face_transform(size)(img)["image"]
    if how == "traffic":
        box = square_box(img.width, img.height, side_fraction=TRAFFIC_SIDE_FRACTION, align=TRAFFIC_ALIGN)
        return pil_to_tensor(crop_resize(img, box, size, bicubic))
    if how == "clevrer":
        return pil_to_tensor(crop_resize(img, None, size, bicubic))
    if how == "center":
        return pil_to_tensor(crop_resize(img, square_box(img.width, img.height), size, bicubic))
    raise DemoError(f"unknown pre-processing {how!r}; use one of {', '.join(PREPROCESS)}.")


def load_image(args: argparse.Namespace, size: int, train_dataset: str | None) -> tuple[torch.Tensor, Path]:
    from dlp.data.common import load_rgb

    if args.image is not None:
        if args.index is not None:
            raise DemoError("--index picks a sample image and cannot be combined with --image; drop one of them.")
        path = Path(args.image).expanduser()
        if not path.is_file():
            raise DemoError(f"image {path} does not exist; check the path.")
        how = args.preprocess
        if how == "auto":
            how = dataset_preprocess(args.dataset or train_dataset)
    elif args.dataset is not None:
        if args.dataset not in sample_datasets():
            raise DemoError(f"dataset {args.dataset!r} has no sample images; use -d "
                            f"{'|'.join(sorted(sample_datasets()))} or --image FILE.")
        samples = Path(args.samples_dir).expanduser() if args.samples_dir else default_samples_dir()
        if args.samples_dir and not samples.is_dir():
            raise DemoError(f"the samples folder {samples} does not exist; check --samples-dir.")
        path = sample_path(samples, args.dataset, args.index)
        how = dataset_preprocess(args.dataset) if args.preprocess == "auto" else args.preprocess
    else:
        raise DemoError("no image given; pass --image FILE or -d celeba|traffic|clevrer [-i N].")
    return preprocess(load_rgb(path), size, how), path


# ----------------------------------------------------------------------------------------------------------------
def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise DemoError("--device cuda was requested but no CUDA device is available; use --device cpu.")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _interactive_backend() -> bool:
    import matplotlib

    backend = matplotlib.get_backend().lower()
    try:
        from matplotlib.backends import BackendFilter, backend_registry

        interactive = {b.lower() for b in backend_registry.list_builtin(BackendFilter.INTERACTIVE)}
        if backend in interactive:
            return True
    except ImportError:  # matplotlib < 3.9
        from matplotlib import rcsetup

        if backend in {b.lower() for b in rcsetup.interactive_bk}:
            return True
    return backend.startswith("module://") and "inline" not in backend


def run(args: argparse.Namespace) -> int:
    from dlp.checkpoint import model_from_checkpoint, read_checkpoint
    from dlp.demo.state import DemoState, parse_edit

    edits = [parse_edit(text) for text in args.edit]  # syntax errors before any heavy work
    checkpoint = Path(args.checkpoint).expanduser()
    if not checkpoint.is_file():
        raise DemoError(f"checkpoint {checkpoint} does not exist; pass a .pt file written by `dlp train`.")
    device = _device(args.device)
    payload = read_checkpoint(checkpoint, map_location=device)
    payload_dataset = (payload.get("train_config") or {}).get("dataset")
    model = model_from_checkpoint(payload, device, source=checkpoint)
    from dlp.predict import is_video_model

    if is_video_model(model):
        return run_clip_demo(args, payload, model, checkpoint, edits)
    clip_options = ("video", "data_root", "cond_frames", "horizon", "frameskip", "start_frame")
    given = [f"--{name.replace('_', '-')}" for name in clip_options if getattr(args, name) is not None]
    if given:
        raise DemoError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for video models (DDLP), but "
                        f"{checkpoint.name} holds a {payload.get('arch')!r} model of single images; pass --image FILE "
                        "or -d DATASET.")
    cfg = model.config
    if cfg.in_channels != 3:
        raise DemoError(f"the demo shows RGB images, but this model has {cfg.in_channels} input channels.")
    try:
        image, image_path = load_image(args, cfg.image_size, payload_dataset)
    except DatasetError as exc:
        raise DemoError(str(exc)) from None
    state = DemoState(model, image)
    for edit in edits:
        state.apply(edit)
    title = f"{checkpoint.name} on {image_path.name}"

    headless = bool(edits or args.save or args.figure)
    if headless:
        if args.save or edits:
            png = Path(args.save or "dlp_demo.png")
            png, js = state.save(png, png.with_suffix(".json"), threshold=args.threshold)
            print(f"reconstruction: {png}\nparticles: {js}")
        if args.figure:
            from dlp.demo.window import DemoWindow

            window = DemoWindow(state, threshold=args.threshold, title=title, headless=True)
            print(f"figure: {window.save_figure(args.figure)}")
        return 0

    plt = _pyplot(args)
    from dlp.demo.window import DemoWindow

    window = DemoWindow(state, threshold=args.threshold, title=title)
    print(f"{title}: {state.n_particles} particles ({'object' if state.is_object_model else 'masked'} model). "
          "Drag particles, use the sliders; keys: t toggle, r reset, n/p next/previous, s save.", flush=True)
    window.show()
    plt.close(window.fig)
    return 0


def _pyplot(args: argparse.Namespace):
    """matplotlib.pyplot on an interactive backend (--backend, else matplotlib's choice), or a DemoError."""
    import matplotlib

    try:
        # without --backend pyplot resolves the user's default / $MPLBACKEND, else TkAgg, QtAgg, MacOSX ... when a
        # display is there, Agg when not
        import matplotlib.pyplot as plt

        if args.backend:
            plt.switch_backend(args.backend)
    except (ImportError, ValueError) as exc:
        what = f"matplotlib backend {args.backend!r}" if args.backend else "matplotlib's default backend"
        raise DemoError(f"{what} cannot be used here ({exc}); try another --backend (TkAgg, QtAgg) or run headless "
                        "with --edit/--save/--figure.") from None

    if not _interactive_backend():
        raise DemoError(f"matplotlib has no interactive backend here (it uses {matplotlib.get_backend()}): run it "
                        "where a display is available, install tkinter or PyQt, pass --backend, or work headless "
                        "with --edit/--save/--figure.")
    return plt


# ----------------------------------------------------------------------------------------------------------------
# video models: the "what if" demo on a clip

def run_clip_demo(args: argparse.Namespace, payload: dict, model, checkpoint: Path, edits: list) -> int:
    """`dlp demo` on a video model: edit the conditioning particles of a clip and roll out (`ClipDemoState`)."""
    from dlp.demo.clip_state import ClipDemoState, ClipDemoWindow
    from dlp.predict import load_clip, rollout_lengths
    from dlp.video_io import VIDEO_SUFFIXES

    # argument checks first: nothing is encoded or rolled out for a run that cannot be written
    if args.image is not None:
        raise DemoError(f"{checkpoint.name} holds a video model (DDLP), which is edited on a clip: pass --video FILE, "
                        "--data-root DIR [--index N] or -d DATASET instead of --image.")
    if args.preprocess != "auto" or args.samples_dir:
        raise DemoError("--preprocess and --samples-dir are for image models; a video model's --video is "
                        "pre-processed like its training data (see --frameskip, --start-frame).")
    if args.video is not None and args.index is not None:
        raise DemoError("--index picks a clip of --data-root; a --video is read from its start (see --start-frame).")
    if args.fps <= 0:
        raise DemoError(f"--fps must be positive, got {args.fps}.")
    save = Path(args.save or "dlp_demo.gif").expanduser() if (args.save or edits) else None
    if save is not None and save.suffix.lower() not in VIDEO_SUFFIXES:
        raise DemoError(f"a video model's demo writes a video: give --save a name ending in .gif or .mp4, not "
                        f"{save.name}.")
    train_config = payload.get("train_config") or {}
    cond_frames, horizon = rollout_lengths(train_config, args.cond_frames, args.horizon)
    try:
        clip = load_clip(image_size=model.config.image_size, num_frames=cond_frames + horizon, video=args.video,
                         data_root=args.data_root, dataset=args.dataset, index=args.index or 0,
                         split=None if args.split == "all" else args.split, frameskip=args.frameskip,
                         start_frame=args.start_frame, train_config=train_config)
    except DatasetError as exc:
        raise DemoError(str(exc)) from None
    state = ClipDemoState(model, clip.frames, cond_frames, horizon)
    for edit in edits:
        state.apply(edit)
    title = f"{checkpoint.name} on {clip.source}"
    threshold = 0.5 if args.threshold is None else args.threshold

    if edits or args.save or args.figure:
        if save is not None:
            video = state.save_video(save, fps=args.fps, threshold=threshold)
            table = state.save_json(save.with_suffix(".json"))
            print(f"rollout: {video} (ground truth | prediction | what if; {cond_frames} conditioning + {horizon} "
                  f"predicted frames)\nparticles: {table}")
        if args.figure:
            window = ClipDemoWindow(state, threshold=args.threshold, title=title, fps=args.fps, headless=True)
            print(f"figure: {window.save_figure(args.figure)}")
        return 0

    plt = _pyplot(args)
    window = ClipDemoWindow(state, threshold=args.threshold, title=title, fps=args.fps)
    print(f"{title}: {state.n_particles} particles, {cond_frames} conditioning + {horizon} predicted frames. Drag "
          "particles (they move in every conditioning frame), then Play; keys: t toggle, r reset, space play.",
          flush=True)
    window.show()
    plt.close(window.fig)
    return 0
