"""Stages: a run started from another network's weights (run.init_from) changes its schedules as the reference
does when it resumes from a network pickle. Its images are counted from 0, so the neural rendering resolution
fades from its initial to its final value from the stage's start (eg3d.training.schedules); the fades meant for
a network trained from scratch are switched off. A second stage inside one run (the same run resumed with another
rendering.neural_rendering_resolution_*) is refused where it would make the resolution jump
(eg3d.training.loop.resolution_jump): it is a new run from the first one's weights."""

import json

from .schema import TrainConfig, apply_overrides


def init_from_adjustments(config: TrainConfig) -> list[tuple[str, object]]:
    """The (section.field, value) changes of a run with run.init_from set; none without it.

    - loss.blur_init_sigma 0 and loss.gpc_fade_kimg 0: no blur fade, and the pose-conditioning swap at its
      final probability from the start (unless run.init_fades is true, the reference's --resume_blur);
    - ema.rampup null: the EMA runs at its full half-life from the first step (G_ema starts from trained weights);
    - augment.ada_kimg 100 under ADA: p adapts five times faster than from scratch (the reference's value when
      it resumes), as D meets a new dataset with a trained network.
    """
    if config.run.init_from is None:
        return []
    adjustments: list[tuple[str, object]] = [("ema.rampup", None)]
    if not config.run.init_fades:
        adjustments = [("loss.blur_init_sigma", 0.0), ("loss.gpc_fade_kimg", 0.0)] + adjustments
    if config.augment.kind == "ada":
        adjustments.append(("augment.ada_kimg", 100.0))
    return adjustments


def apply_init_from_adjustments(config: TrainConfig,
                                explicit: set[str]) -> tuple[TrainConfig, list[tuple[str, object]]]:
    """`config` with the adjustments of `init_from_adjustments` that the user did not set explicitly (the
    section.field keys in `explicit`, from --set), and the ones applied."""
    applied = [(key, value) for key, value in init_from_adjustments(config) if key not in explicit]
    return apply_overrides(config, [f"{key}={json.dumps(value)}" for key, value in applied]), applied


def describe_adjustments(applied: list[tuple[str, object]]) -> str:
    """One line for the log, e.g. "starting from other weights: loss.blur_init_sigma=0.0, ema.rampup=null"."""
    changes = ", ".join(f"{key}={json.dumps(value)}" for key, value in applied) or "nothing (all set with --set)"
    return (f"starting from other weights (run.init_from), as the reference does when it resumes from a network: "
            f"{changes}; --set run.init_fades=true keeps the blur and pose-conditioning fades")
