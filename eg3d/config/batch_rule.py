"""The --batch rule: what a preset's schedules become at another global batch.

Progress is counted in images seen. The reference keeps its learning rates at any batch, so an optimizer step
moves the weights by about as much at batch 256 as at 32 (Adam normalizes each step) while covering 8x the
images. Two schedules are meant per optimizer step and scale with the batch, as in the reference's train.py:

- ema.ema_kimg, the EMA's half-life (reference: 10 * batch / 32 kimg): the average spans as many steps, so as
  much of the weights' path, at any batch; ema.rampup, a fraction of the images seen, stays.
- loss.blur_fade_kimg, the blur of D's inputs (reference: 200 * batch / 32 kimg): D is protected for as many
  of its steps.

One more scales with the batch for the machine's sake (not in the reference, whose snapshots stay at 200 kimg):

- run.checkpoint_kimg: a checkpoint every as many optimizer steps, so every as many seconds at 4 images per GPU
  on any number of GPUs. Rank 0 uploads it while the others wait, a time that does not shrink with more GPUs:
  at 200 kimg on 64 GPUs an ffhq512 checkpoint (874 MB) would come every 22 s and take a quarter of the time
  (bench/scaling_model.py); at 1600 kimg, every 3 minutes. run.checkpoint_minutes still bounds the time
  between two.

Everything else stays, and docs/training.md ("Large batches") gives each one's reason: the learning rates, the
pose-conditioning and rendering-resolution fades and ADA's speed (all in images, as in the reference), the lazy
regularization intervals and ADA's adjustment interval (in steps, as in the reference), the minibatch-std
group and micro-batch (per GPU), and the snapshot and log intervals (in images: their cost is shared by the
ranks, so it keeps its share of the time at any size).

The rule applies to `--batch` (`python -m eg3d.train`), relative to the preset's own batch; a field set with
--set keeps its value, and `--set run.batch_size=N` changes the batch alone.
"""

import json

from .schema import TrainConfig, apply_overrides

SCALED_WITH_BATCH = ("ema.ema_kimg", "loss.blur_fade_kimg", "run.checkpoint_kimg")


def field_value(config: TrainConfig, key: str):
    """The value of "section.field" in `config`."""
    section, _, name = key.partition(".")
    return getattr(getattr(config, section), name)


def batch_rule(preset: TrainConfig, batch_size: int) -> list[tuple[str, float]]:
    """The (section.field, value) of each field in SCALED_WITH_BATCH at `batch_size`: the preset's value times
    batch_size / the preset's run.batch_size (ffhq512 at 256: ema.ema_kimg 10 -> 80, loss.blur_fade_kimg
    200 -> 1600, run.checkpoint_kimg 200 -> 1600)."""
    return [(key, field_value(preset, key) * batch_size / preset.run.batch_size) for key in SCALED_WITH_BATCH]


def apply_batch_rule(config: TrainConfig, preset: TrainConfig,
                     explicit: set[str]) -> tuple[TrainConfig, list[tuple[str, float]]]:
    """`config` (the preset with the flags and --set applied) with `batch_rule` at its run.batch_size for the
    fields not in `explicit` (the section.field keys set with --set), and the changes applied."""
    applied = [(key, value) for key, value in batch_rule(preset, config.run.batch_size) if key not in explicit]
    return apply_overrides(config, [f"{key}={json.dumps(value)}" for key, value in applied]), applied


def describe_batch_rule(config: TrainConfig, preset: TrainConfig, applied: list[tuple[str, float]]) -> str:
    """One line for the log: the batch, the preset's, the fields scaled and those --set kept."""
    scaled = ", ".join(f"{key}={json.dumps(value)}" for key, value in applied) or "nothing"
    applied_keys = {key for key, _ in applied}
    kept = [f"{key}={json.dumps(field_value(config, key))}" for key in SCALED_WITH_BATCH if key not in applied_keys]
    kept_text = f"; kept as set with --set: {', '.join(kept)}" if kept else ""
    return (f"--batch {config.run.batch_size} (preset {preset.preset} trains {preset.run.batch_size}) scales the "
            f"schedules the reference ties to optimizer steps, and the checkpoint interval: {scaled}{kept_text}; "
            f"the learning rates, the "
            f"regularization intervals and the other schedules stay (docs/training.md, \"Large batches: 16 to 64 "
            f"GPUs\")")
