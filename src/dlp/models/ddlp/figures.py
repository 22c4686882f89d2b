"""The DDLP training figure: a clip, its reconstruction with the particles, and a rollout."""

from __future__ import annotations

from typing import Any

import torch

from dlp.viz import draw_particles, make_grid, particle_colors


def clip_figure(video: torch.Tensor, out: Any, rollout: Any, *, max_frames: int = 12) -> torch.Tensor:
    """One clip (the first of the batch) as rows of frames [3, H', W']:

    1. the ground truth; 2. the reconstruction; 3. the ground truth with the posterior particles (coloured by index,
    switched-off ones (obj_on < 0.5) hidden); 4. the rollout (`rollout.cond_steps` reconstructed conditioning frames,
    then the prediction); 5. the rollout's particles on the predicted frames.
    """
    t = min(max_frames, video.shape[1])
    frames = video[0, :t]  # [t, C, H, W]
    k = out.z.shape[2]
    colors = particle_colors(k, device=video.device)
    on = out.obj_on[0, :t] >= 0.5  # [t, K]
    positions = out.z[0, :t].detach().float().clamp(-1, 1)
    shown = [draw_particles(frames[i:i + 1], positions[i:i + 1, on[i]], colors=colors[on[i]]) for i in range(t)]
    predicted = rollout.frames[0, :t].detach().clamp(0, 1)
    trajectory = rollout.particles.position[0, :t].detach().float().clamp(-1, 1)
    rollout_on = rollout.particles.obj_on[0, :t] >= 0.5
    predicted_particles = [draw_particles(predicted[i:i + 1], trajectory[i:i + 1, rollout_on[i]],
                                          colors=colors[rollout_on[i]]) for i in range(t)]
    return make_grid([frames, out.rec[0, :t].detach().clamp(0, 1), torch.cat(shown), predicted,
                      torch.cat(predicted_particles)],
                     labels=["clip", "reconstruction", "particles", f"rollout ({rollout.cond_steps} given)",
                             "rollout particles"])
