"""Training: losses and schedules, the trainer, the worker loop, checkpoints and statistics.

Import the modules themselves (`eg3d.training.trainer`, `eg3d.training.loop`, ...); this package re-exports nothing.
"""
