"""Presets: functions returning a complete `TrainConfig`. The reference's settings plus `tiny`."""

import dataclasses

from .schema import (AugmentConfig, DataConfig, EmaConfig, EvaluatorConfig, LossConfig, MetricsConfig, ModelConfig,
                     OptimizerConfig, RenderingConfig, RunConfig, TrainConfig)

# pytorch-fid's Inception-v3 weights (eg3d.metrics.inception loads them), the default of the FID presets
PYTORCH_FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                           "pt_inception-2015-12-05-6726825d.pth")
PYTORCH_FID_WEIGHTS_SHA256_PREFIX = "6726825d"  # pytorch-fid names its files after their digest's first 8 digits


def ffhq512() -> TrainConfig:
    """The reference's FFHQ stage 1 at its batch of 32. `--batch` scales the EMA half-life and the blur fade with
    the batch, as the reference does, and the checkpoint interval (eg3d.config.batch_rule: 80, 1600 and 1600 kimg
    at 256)."""
    return TrainConfig(
        preset="ffhq512",
        model=ModelConfig(),
        rendering=RenderingConfig(),
        loss=LossConfig(r1_gamma=1.0, gpc_prob=0.5, blur_fade_kimg=200.0),
        optimizer=OptimizerConfig(),
        ema=EmaConfig(ema_kimg=10.0),
        data=DataConfig(xflip=True),
        run=RunConfig(total_kimg=25000, batch_size=32, micro_batch=4),
        metrics=inception_fid50k(),
        evaluator=evaluator_512(),
    )


def evaluator_512() -> EvaluatorConfig:
    """The dataset-trained evaluator of the 512 presets: at 128x128, 500 kimg (about 7 epochs of FFHQ's 70k)."""
    return EvaluatorConfig(resolution=128, kimg=500)


def inception_fid50k() -> MetricsConfig:
    """FID and KID against the whole dataset with 50k generated images, as in the paper."""
    return MetricsConfig(extractor="inception_v3", inception_weights=PYTORCH_FID_WEIGHTS_URL,
                         inception_sha256=PYTORCH_FID_WEIGHTS_SHA256_PREFIX, num_generated=50000)


def ffhq512_stage2() -> TrainConfig:
    """Stage 2: fine-tune a stage-1 run (`--init-from` it) while the neural rendering resolution fades from 64 to
    128 over its first 1000 kimg. 2000 kimg in all, as the reference trained its released ffhq512-128 network
    (`--neural_rendering_resolution_final=128 --kimg=2000`, in its docs/models.md): the fade, then as long at 128."""
    config = ffhq512()
    config.preset = "ffhq512_stage2"
    config.rendering.neural_rendering_resolution_final = 128
    config.run.total_kimg = 2000
    return config


def afhq512() -> TrainConfig:
    config = ffhq512()
    config.preset = "afhq512"
    config.loss.r1_gamma = 5.0
    config.loss.gpc_prob = 0.8
    config.rendering.neural_rendering_resolution_final = 128  # the paper's AFHQ run fades 64 -> 128
    config.augment = AugmentConfig(kind="ada", p=0.0, target=0.6, ada_kimg=500.0)
    return config


def shapenet128() -> TrainConfig:
    """ShapeNet Cars at 128: the 512 presets' schedules with a 2x super-resolution, more depth samples, the cars'
    camera range and a white background, R1 gamma 0.3 and no pose-conditioning swap."""
    config = ffhq512()
    config.preset = "shapenet128"
    config.model = dataclasses.replace(config.model, image_resolution=128, sr_input_resolution=64,
                                       sr_channels=(128, 64))
    config.rendering = dataclasses.replace(config.rendering, depth_resolution=64, depth_resolution_importance=64,
                                           ray_start=0.1, ray_end=2.6, box_warp=1.6, white_background=True)
    config.loss.r1_gamma = 0.3
    config.loss.gpc_prob = None
    config.data.xflip = False
    return config


def tiny() -> TrainConfig:
    """The same architecture scaled down for CPU: 64x64 images from a 16x16 neural rendering through a 4x
    super-resolution (the paper's 64 -> 512 is 8x), tri-planes of 32x32 (the paper's 256x256 for 512x512
    images is 4x its neural rendering; here 2x), 12+12 depth samples, 16 kimg: about a quarter of an hour on 2 CPU
    cores.
    Rendering at 16 instead of 32 trains about 1.8x as many images per second on a CPU, with sample grids no
    worse at equal images seen; planes of 32 instead of 64 about 1.4x, with the same fd_data, pose and depth
    error at 4 kimg (docs/monitoring.md, 3D quality). The blur fades out over the first kimg instead of five, so that most
    of a short run sees the images unblurred. Learning rates twice the reference's (G 0.005, D 0.004): at 12 kimg,
    fd_data 50 and 64 (two runs) against 67, more of its objects recognised by the evaluator (tori 56 of 512
    against 3), pose and depth error no worse (docs/dev-log.md, 2026-12-07; 4x was worse). 16 kimg rather than 12,
    because the run is far from done at 12: the default run straight through goes from fd_data 64 at 12 kimg to 47
    at 16, and its tori from closed rings to rings with holes (a one-thread run of the same seed: 50 to 37); that
    one-thread run, continued to 36 kimg, levels off at about 17 from 24 kimg on (docs/dev-log.md, 2026-12-07,
    evening). Halving G's and D's channels to win the time back trains 1.4x the images per second but learns less
    per image (fd_data at 16 kimg 67 and 54 for seeds 0 and 1, against 37 for seed 0 at full width). These
    figures are from the synthetic data before its pairs changed; on today's, the default run's fd_data is 70 at
    12 kimg and 36 at 16, and its tori open between the two (docs/dev-log.md, 2026-12-07, night)."""
    batch_size = 8
    ema_kimg = 10 * batch_size / 32  # the reference's half-life at this batch (10 kimg per 32 images)
    return TrainConfig(
        preset="tiny",
        model=ModelConfig(z_dim=64, w_dim=64, mapping_layers=2, backbone_resolution=32, backbone_channel_base=2048,
                          backbone_channel_max=64, plane_channels=32, decoder_hidden=64, image_resolution=64,
                          sr_input_resolution=16, sr_channels=(32, 16), disc_channel_base=1024,
                          disc_channel_max=128, disc_mapping_layers=2),
        rendering=RenderingConfig(depth_resolution=12, depth_resolution_importance=12, ray_start=2.25,
                                  ray_end=3.3, box_warp=1.0, white_background=True,
                                  neural_rendering_resolution_initial=16),
        loss=LossConfig(r1_gamma=1.0, gpc_prob=0.5, gpc_fade_kimg=10, blur_init_sigma=2.0, blur_fade_kimg=1),
        optimizer=OptimizerConfig(g_lr=0.005, d_lr=0.004),
        ema=EmaConfig(ema_kimg=ema_kimg),
        data=DataConfig(xflip=False, synthetic_count=2000),
        # Snapshot grids without truncation, as the reference's training loop draws them: this early psi 0.7
        # pulls every object towards the average one, a rounded blob, and hides the kinds the generator draws.
        run=RunConfig(total_kimg=16, batch_size=batch_size, micro_batch=None, checkpoint_kimg=2, snapshot_kimg=2,
                      log_kimg=0.4, sample_truncation_psi=1.0),
        # No Inception weights on a fresh machine: the dataset-trained evaluator's metrics only (fd_data, pose,
        # depth, consistency), on a sample small enough for a CPU.
        metrics=MetricsConfig(extractor="none", num_generated=512, batch_size=64),
        evaluator=EvaluatorConfig(resolution=64, kimg=18.0, consistency_objects=32),
    )


PRESETS = {f.__name__: f for f in (ffhq512, ffhq512_stage2, afhq512, shapenet128, tiny)}


def get_preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()
