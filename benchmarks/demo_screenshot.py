"""Render the README screenshot of `dlp demo` (docs/demo.png) on an official CelebA sample image.

    python benchmarks/demo_screenshot.py                          # trains a small masked model on celeba-mini first
    python benchmarks/demo_screenshot.py --checkpoint best.pt     # any face checkpoint of ours

Without --checkpoint a `celeba64`-style masked model is trained for --steps steps on ../shared/data/celeba-mini (a few
minutes on a CPU; the checkpoint is kept in --work-dir). The demo figure is drawn off-screen (the same
`DemoWindow` as the interactive demo) after a scripted edit: the most confident particle is selected and dragged, so
the figure shows the original ring, the dashed move and the changed reconstruction. The PNG is palette-quantised to
stay small. Calling it again with a larger --steps trains the kept model on (the docs image: 900 steps).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def train_masked_model(work_dir: Path, steps: int, image_size: int, data_root: Path) -> Path:
    from dlp.data.landmarks import LandmarkFolderDataset
    from dlp.engine.trainer import RunOptions, Trainer
    from dlp.registry import get_preset

    preset = get_preset("celeba64")
    model_config = preset.model_config(image_size=image_size)
    train_config = preset.train_config(dataset="landmarks", data_root=str(data_root), batch_size=16, num_epochs=1000,
                                       eval_freq=1000, lr=1e-3, beta_kl=40.0)
    dataset = LandmarkFolderDataset(data_root, split="train", image_size=image_size, verify_images=False)
    run = work_dir / "screenshot-model"
    last = run / "checkpoints" / "last.pt"
    resume = None
    if last.is_file():  # a previous call's model: reuse it, or train it on to --steps
        from dlp.checkpoint import read_checkpoint

        done = int(read_checkpoint(last).get("step", 0))
        if done >= steps:
            print(f"reusing {last} ({done} steps)")
            return last
        resume = str(run)
    options = RunOptions(output_dir=str(work_dir), name="screenshot-model", device="cpu", max_steps=steps,
                         progress=True, resume=resume)
    start = time.time()
    Trainer(model_config, train_config, options, train_dataset=dataset, eval_fn=lambda *a, **k: {}).fit()
    print(f"trained {steps} steps in {time.time() - start:.0f} s")
    return last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a trained face checkpoint (default: train one)")
    parser.add_argument("--image", default=str(SHARED / "samples" / "celeb" / "1.jpg"))
    parser.add_argument("--data-root", default=str(SHARED / "celeba-mini"))
    parser.add_argument("--steps", type=int, default=400, help="training steps when no checkpoint is given")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--work-dir", default="runs/demo-screenshot")
    parser.add_argument("--output", default=str(REPO / "docs" / "demo.png"))
    parser.add_argument("--dpi", type=int, default=90)
    args = parser.parse_args()

    from PIL import Image

    from dlp.checkpoint import load_checkpoint
    from dlp.data.common import load_rgb
    from dlp.demo import DemoState
    from dlp.demo.cli import preprocess
    from dlp.demo.window import DemoWindow

    checkpoint = Path(args.checkpoint) if args.checkpoint else train_masked_model(
        Path(args.work_dir), args.steps, args.image_size, Path(args.data_root))
    model = load_checkpoint(checkpoint)
    image = preprocess(load_rgb(args.image), model.config.image_size, "celeba")
    state = DemoState(model, image)

    conf = state.confidence()
    threshold = float(conf.quantile(0.3))  # hide the least confident 30 %
    window = DemoWindow(state, threshold=threshold, headless=True,
                        title=f"dlp demo --checkpoint {checkpoint.name} -d celeba -i {Path(args.image).stem}")
    # the drag to show: of the confident particles in the middle of the image, the one whose move changes the
    # reconstruction most
    h = state.size - 1
    pix = state.pixels()
    central = ((pix > 0.25 * h) & (pix < 0.75 * h)).all(-1) & state.visible(threshold)
    candidates = [int(i) for i in conf.argsort(descending=True) if central[i]][:10] or [int(conf.argmax())]
    original = state.reconstruction()
    effect = {}
    for i in candidates:
        row, col = (float(v) for v in pix[i])
        state.move(i, row - 0.12 * h, col + 0.12 * h)
        effect[i] = float((state.reconstruction() - original).abs().sum())
        state.reset()
    best = max(effect, key=effect.get)
    row, col = (float(v) for v in pix[best])
    window.controller.select(best)
    state.move(best, row - 0.12 * h, col + 0.12 * h)
    window.refresh(draw=False)
    out = Path(args.output)
    window.save_figure(out, dpi=args.dpi)
    with Image.open(out) as img:
        img.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    print(f"wrote {out} ({os.path.getsize(out) / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
