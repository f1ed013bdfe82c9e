"""Configuration: the typed config (`schema`), the presets (`presets`), the --batch rule (`batch_rule`) and the
stage adjustments (`stages`), re-exported here."""

from .batch_rule import SCALED_WITH_BATCH, apply_batch_rule, batch_rule, describe_batch_rule
from .presets import PRESETS, afhq512, ffhq512, ffhq512_stage2, get_preset, inception_fid50k, shapenet128, tiny
from .schema import (AugmentConfig, BatchSplit, DataConfig, DistributedConfig, EmaConfig, EvaluatorConfig, LossConfig,
                     MetricsConfig,
                     ModelConfig, OptimizerConfig, RenderingConfig, RunConfig, TelemetryConfig, TrainConfig, apply_overrides,
                     batch_split, validate)
from .stages import apply_init_from_adjustments, describe_adjustments, init_from_adjustments

__all__ = ["afhq512", "apply_batch_rule", "apply_init_from_adjustments", "apply_overrides", "AugmentConfig",
           "batch_rule", "batch_split", "BatchSplit", "DataConfig", "describe_adjustments", "describe_batch_rule",
           "DistributedConfig", "EmaConfig", "EvaluatorConfig", "ffhq512", "ffhq512_stage2", "get_preset",
           "inception_fid50k", "init_from_adjustments", "LossConfig", "MetricsConfig", "ModelConfig",
           "OptimizerConfig", "PRESETS", "RenderingConfig", "RunConfig", "SCALED_WITH_BATCH", "shapenet128",
           "TelemetryConfig", "tiny", "TrainConfig", "validate"]
