"""Schedules by images seen: blur, pose-conditioning fade and neural rendering resolution (`Schedule.at`), so a
resume continues them exactly."""

from dataclasses import dataclass

import numpy as np

from eg3d.config import TrainConfig


@dataclass
class Schedule:
    """Schedule values at a given number of images seen."""

    blur_sigma: float
    gpc_prob: float | None
    neural_rendering_resolution: int

    @classmethod
    def at(cls, config: TrainConfig, nimg: int) -> "Schedule":
        loss, r = config.loss, config.rendering
        kimg = nimg / 1000
        blur = max(1 - kimg / loss.blur_fade_kimg, 0) * loss.blur_init_sigma if loss.blur_fade_kimg > 0 else 0.0
        gpc = None
        if loss.gpc_prob is not None:
            a = min(kimg / loss.gpc_fade_kimg, 1.0) if loss.gpc_fade_kimg > 0 else 1.0
            gpc = (1 - a) * 1.0 + a * loss.gpc_prob
        resolution = r.neural_rendering_resolution_initial
        if r.neural_rendering_resolution_final is not None:
            a = min(kimg / r.neural_rendering_resolution_fade_kimg, 1.0)
            resolution = int(np.rint(resolution * (1 - a) + r.neural_rendering_resolution_final * a))
        return cls(blur_sigma=blur, gpc_prob=gpc, neural_rendering_resolution=resolution)
