"""Every Prometheus metric eg3d exports, and the log-record key each one comes from.

The training loop's stats reporter produces one flat record per log interval (the same dict that goes to
log.jsonl); `monitoring.exporter` turns it into these metrics on each worker's /metrics. Every metric
carries the labels `run` and `rank` (the worker's global rank, or "driver") besides those listed here.
Dashboards and alert rules are written against this table.

Record keys: "rank/..." keys come from this worker's own values (its means and totals), the
others from the run-wide record (means over all workers, progress, schedules). A metric with a `label` takes
its label value from the rest of the key after its `key` prefix (a rest without '/'), e.g. record key
"rank/loss/G" -> eg3d_loss{loss="G"}, "consistency_raw" -> eg3d_consistency_error{image="raw"}. Counters are incremented by the record's value, which is
the total over the interval (seconds, bytes, images) on this rank.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str  # "gauge" or "counter" (name ends in _total)
    help: str
    key: str  # record key; with `label`, a prefix "loss/" whose suffix is the label value
    label: str | None = None
    values: tuple[str, ...] = ()  # the label values a run can produce (documentation and tests)


METRICS = (
    # progress and throughput
    Metric("eg3d_images_seen", "gauge", "Images the run has trained on (global, all workers), as of the last log interval.", "nimg"),
    Metric("eg3d_target_images", "gauge", "Images the run trains on in total (run.total_kimg).", "target_nimg"),
    Metric("eg3d_images_per_second", "gauge", "Training images per second over the last log interval (global, checkpoint and snapshot time excluded).", "images_per_second"),
    Metric("eg3d_trained_images_total", "counter", "Images this worker trained on since its process started.", "rank/images"),
    Metric("eg3d_steps_total", "counter", "Optimizer steps (global batches) this worker took part in since its process started.", "rank/steps"),
    Metric("eg3d_world_size", "gauge", "Workers in the current worker group.", "world_size"),
    Metric("eg3d_accumulation_steps", "gauge", "Micro-batches per global batch on the worker with the largest share.", "accumulation_steps"),
    Metric("eg3d_restarts", "gauge", "Times this run's worker group started again (failure, elastic resize, resubmission).", "restarts"),
    Metric("eg3d_last_log_timestamp_seconds", "gauge", "Unix time of this worker's last log interval (a heartbeat).", "timestamp"),
    # the driver (rank="driver")
    Metric("eg3d_run_start_timestamp_seconds", "gauge", "Unix time the driver started (or resumed) the run.", "run_start_timestamp"),
    Metric("eg3d_dataset_images", "gauge", "Images in the training data's shard manifest.", "dataset_images"),
    Metric("eg3d_data_preparation_seconds", "gauge", "Seconds the driver spent preparing the data (synthetic render, shard build, checks) before starting workers.",
           "rank/data_preparation_seconds"),
    # GAN health
    Metric("eg3d_loss", "gauge", "Mean loss over the log interval on this worker.", "rank/loss/", "loss",
           ("G", "D", "D_r1", "r1_penalty", "density_reg")),
    Metric("eg3d_discriminator_score", "gauge", "Mean discriminator logit on real or generated images.", "rank/scores/", "kind", ("real", "fake")),
    Metric("eg3d_discriminator_sign", "gauge", "Mean sign of the discriminator logit on real or generated images.", "rank/signs/", "kind", ("real", "fake")),
    Metric("eg3d_gradient_norm", "gauge", "Mean L2 norm of this worker's gradient in a phase (its share of the batch), before the mean over workers.", "rank/grad_norm/", "phase",
           ("Gmain", "Greg", "Dmain", "Dreg")),
    Metric("eg3d_nonfinite_steps_total", "counter", "Optimizer steps skipped because a gradient was not finite.", "rank/skipped_steps/", "network", ("G", "D")),
    # schedules
    Metric("eg3d_learning_rate", "gauge", "Adam learning rate of a network (before lazy-regularization scaling).", "learning_rate/", "network", ("G", "D")),
    Metric("eg3d_r1_gamma", "gauge", "R1 regularization weight gamma.", "r1_gamma"),
    Metric("eg3d_blur_sigma_pixels", "gauge", "Standard deviation of the blur applied to images the discriminator sees.", "blur_sigma"),
    Metric("eg3d_gpc_probability", "gauge", "Probability of swapping the generator's conditioning pose (generator pose conditioning).", "gpc_prob"),
    Metric("eg3d_augment_probability", "gauge", "Probability p with which each discriminator augmentation fires (ADA moves it; 0 when off), mean over the log interval.", "augment/p"),
    Metric("eg3d_neural_rendering_resolution_pixels", "gauge", "Side of the volume-rendered raw image.", "neural_rendering_resolution"),
    # time
    Metric("eg3d_phase_seconds_total", "counter", "Wall seconds this worker spent in a training phase.", "rank/seconds/", "phase",
           ("Gmain", "Greg", "Dmain", "Dreg")),
    Metric("eg3d_data_wait_seconds_total", "counter", "Wall seconds this worker waited for the next batch of data.", "rank/data_wait_seconds"),
    # memory
    Metric("eg3d_resident_memory_bytes", "gauge", "Resident set size of the worker process.", "rank/memory/rss_bytes"),
    Metric("eg3d_gpu_memory_allocated_bytes", "gauge", "GPU memory held by tensors (torch.cuda.memory_allocated).", "rank/memory/gpu_allocated_bytes"),
    Metric("eg3d_gpu_memory_reserved_bytes", "gauge", "GPU memory reserved by the caching allocator.", "rank/memory/gpu_reserved_bytes"),
    Metric("eg3d_gpu_memory_peak_bytes", "gauge", "Peak GPU memory held by tensors since the process started.", "rank/memory/gpu_peak_bytes"),
    # checkpoints and snapshots
    Metric("eg3d_checkpoints_total", "counter", "Checkpoints this worker wrote its files for.", "rank/checkpoint/count"),
    Metric("eg3d_checkpoint_upload_seconds_total", "counter", "Wall seconds this worker spent writing checkpoint files.", "rank/checkpoint/seconds"),
    Metric("eg3d_checkpoint_upload_bytes_total", "counter", "Bytes of checkpoint files this worker wrote.", "rank/checkpoint/bytes"),
    Metric("eg3d_snapshots_total", "counter", "Snapshots (G_ema, config, sample grid) this worker exported.", "rank/snapshot/count"),
    Metric("eg3d_snapshot_upload_seconds_total", "counter", "Wall seconds this worker spent writing snapshots.", "rank/snapshot/seconds"),
    Metric("eg3d_snapshot_upload_bytes_total", "counter", "Bytes of snapshot files this worker wrote.", "rank/snapshot/bytes"),
    Metric("eg3d_last_checkpoint_images_seen", "gauge", "Images seen at the newest checkpoint this run published.", "checkpoint_nimg"),
    # image quality (computed at snapshots; extractor="inception_v3" is FID/KID, "random" is a seeded
    # random-feature network used when no Inception weights are configured and is not FID)
    Metric("eg3d_frechet_distance", "gauge", "Frechet distance between real and generated features (FID when extractor is inception_v3).",
           "frechet_distance/", "extractor", ("inception_v3", "random")),
    Metric("eg3d_kernel_distance", "gauge", "Kernel (MMD, cubic polynomial) distance between real and generated features (KID when extractor is inception_v3).",
           "kernel_distance/", "extractor", ("inception_v3", "random")),
    Metric("eg3d_quality_images_seen", "gauge", "Images seen by the snapshot the last quality metric was computed on "
           '(extractor="evaluator": the 3D quality metrics).', "quality_nimg/", "extractor", ("inception_v3", "random", "evaluator")),
    Metric("eg3d_quality_seconds", "gauge", "Wall seconds the last quality metric took (generated features, and real ones when not cached; "
           'extractor="evaluator": all the 3D quality metrics together).', "quality_seconds/", "extractor",
           ("inception_v3", "random", "evaluator")),
    # 3D quality (computed at snapshots by the evaluator trained on the dataset: camera pose and depth from one
    # image). The evaluator's own error on held-out real images is the floor its metrics cannot go below; a
    # floor has the unit of its metric, so each is a gauge of its own rather than one gauge with mixed units.
    Metric("eg3d_fd_data", "gauge", "Frechet distance between generated and real images in the features of the "
           "dataset-trained evaluator (not FID: another network); lower is better.", "fd_data"),
    Metric("eg3d_pose_error_degrees", "gauge", "Mean angle in degrees between the camera G was asked to render and the "
           "camera the evaluator sees in G's image; lower is better, down to eg3d_pose_error_floor_degrees.", "pose_error_deg"),
    Metric("eg3d_pose_error_floor_degrees", "gauge", "The evaluator's own mean camera angle error in degrees on held-out "
           "real images: the floor of eg3d_pose_error_degrees.", "evaluator_floor/pose_error_deg"),
    Metric("eg3d_depth_error", "gauge", "Scale- and shift-invariant error between G's rendered depth and the evaluator's "
           "depth estimate on G's image (0 perfect, about 2 uncorrelated); lower is better, down to eg3d_depth_error_floor. "
           "Only for data sets with depth ground truth.", "depth_error"),
    Metric("eg3d_depth_error_floor", "gauge", "The evaluator's own scale- and shift-invariant depth error on held-out "
           "real images: the floor of eg3d_depth_error.", "evaluator_floor/depth_error"),
    Metric("eg3d_consistency_error", "gauge", "Colour error when one object rendered from view B is warped into view A "
           "through A's rendered depth, over the error of the same warp through a flat picture (0 perfect, 1 no better than "
           "a 2D picture); image=\"raw\" is the neural rendering, \"final\" the super-resolved image (final above raw: "
           "what the super-resolution breaks); lower is better.",
           "consistency_", "image", ("raw", "final")),
)

BY_NAME = {metric.name: metric for metric in METRICS}
