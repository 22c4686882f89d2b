"""Has a DDLP checkpoint's dynamics prior (PINT) learned the motion? One-step predictions in particle space.

    python benchmarks/ddlp_dynamics.py runs/ddlp-balls-quick/checkpoints/last.pt [--clips 64]

On held-out generated balls (clips of timestep_horizon + 1 frames), the deterministic forward pass gives the
posterior positions z_t of every particle and PINT's prediction of z_{t+1} from frames <= t. Prints, in pixels and
averaged over switched-on particles and frames 2 ... T-1, the error of PINT's prediction beside two baselines built
from the posterior itself: copying the last position and constant-velocity extrapolation (2 z_t - z_{t-1}); and the
mean predicted move against the true one. A PINT that has learned the motion beats both baselines.
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--clips", type=int, default=64)
    args = parser.parse_args()

    import dlp
    from dlp.data.registry import build_dataset

    model = dlp.load_checkpoint(args.checkpoint).eval()
    cfg = model.config
    clips = build_dataset("balls", data_root=None, image_size=cfg.image_size, split="test", num_images=args.clips,
                          clip_length=cfg.timestep_horizon + 1)
    x = torch.stack([clips[i]["video"] for i in range(len(clips))])
    with torch.no_grad():
        out = model(x, deterministic=True)
    pixels = (cfg.image_size - 1) / 2  # [-1, 1] -> pixels
    z = out.z  # [B, T, K, 2]
    on = (out.obj_on[:, 2:] > 0.5).float()  # frames 2 ... T-1

    def error(prediction: torch.Tensor) -> float:
        distance = (prediction - z[:, 2:]).norm(dim=-1) * pixels
        return float((distance * on).sum() / on.sum())

    print(f"one-step position error (px), {len(clips)} held-out clips, {int(on.sum())} particle-frames:")
    print(f"  PINT               {error(out.dynamics.mu[:, 1:]):.2f}")
    print(f"  copy last position {error(z[:, 1:-1]):.2f}")
    print(f"  constant velocity  {error(2 * z[:, 1:-1] - z[:, :-2]):.2f}")
    predicted_move = (out.dynamics.mu[:, 1:] - z[:, 1:-1]).norm(dim=-1) * pixels
    true_move = (z[:, 2:] - z[:, 1:-1]).norm(dim=-1) * pixels
    print(f"mean move (px): predicted {float((predicted_move * on).sum() / on.sum()):.2f}, "
          f"true {float((true_move * on).sum() / on.sum()):.2f}")
    position_std = (0.5 * out.logvar_offset).exp() * pixels
    print(f"posterior position std (px): median {float(position_std.median()):.2f}")


if __name__ == "__main__":
    main()
