"""Configuration: the typed config (`schema`) and the presets (`presets`), both re-exported here."""

from .presets import PRESETS, afhq512, ffhq512, ffhq512_stage2, get_preset, inception_fid50k, shapenet128, tiny
from .schema import (AugmentConfig, BatchSplit, DataConfig, DistributedConfig, EmaConfig, EvaluatorConfig, LossConfig,
                     MetricsConfig,
                     ModelConfig, OptimizerConfig, RenderingConfig, RunConfig, TelemetryConfig, TrainConfig, apply_overrides,
                     batch_split, validate)
from .stages import apply_init_from_adjustments, describe_adjustments, init_from_adjustments

__all__ = ["AugmentConfig", "BatchSplit", "DataConfig", "DistributedConfig", "EmaConfig", "EvaluatorConfig", "LossConfig", "MetricsConfig", "ModelConfig",
           "OptimizerConfig", "PRESETS", "RenderingConfig", "RunConfig", "TelemetryConfig", "TrainConfig",
           "afhq512", "apply_init_from_adjustments", "apply_overrides", "batch_split", "describe_adjustments", "ffhq512",
           "ffhq512_stage2", "get_preset", "inception_fid50k", "init_from_adjustments", "shapenet128", "tiny",
           "validate"]
