"""Grafana dashboards for eg3d training, built as code with grafana-foundation-sdk.

`python -m monitoring.dashboards` writes monitoring/dashboards/*.json (and, through monitoring.kubernetes, the
ConfigMap in k8s/monitoring/ that carries them); the JSON is committed and tests/test_monitoring.py checks it
equals `build()`. Two dashboards:
  eg3d-training  one run at a glance: ranks aggregated (run-wide gauges that every rank exports
                 identically -> max, per-rank means -> avg, counters -> sum of rates, memory -> max)
  eg3d-rank      the same families split by rank, to find the slow, stalled or leaking worker
Panel descriptions end with the catalog's help text (monitoring.metrics), so they cannot drift apart.
"""

import argparse
import json
from pathlib import Path

from grafana_foundation_sdk.builders import common, stat, timeseries
from grafana_foundation_sdk.builders.dashboard import (
    Dashboard, DashboardLink, DatasourceVariable, QueryVariable, Row, ThresholdsConfig,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BigValueGraphMode, GraphDrawStyle, LegendDisplayMode, LegendPlacement, SortOrder, StackingMode,
    TooltipDisplayMode,
)
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync, DashboardLinkType, DataSourceRef, DynamicConfigValue, Threshold, ThresholdsMode,
    VariableRefresh, VariableSort,
)

from monitoring import kubernetes
from monitoring.metrics import BY_NAME

OUTPUT_DIR = Path(__file__).parent / "dashboards"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
RUN = '{run="$run"}'
RANKS = '{run="$run", rank=~"$rank"}'
WINDOW = "[$__rate_interval]"
# Grafana unit ids; "suffix:<text>" shows the value followed by a space and the text.
IMAGES_PER_SECOND = "suffix:img/s"
PIXELS = "suffix:px"
DASHED_LINE = DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]})

SAME_ON_EVERY_RANK = "Max over ranks (every rank exports the same run-wide value)."
RANK_MEAN = "Mean over ranks of each worker's own interval mean."
RANDOM_IS_NOT_FID = ('extractor="inception_v3" is the real FID/KID; extractor="random" is a seeded random-feature '
                     "network used when no Inception weights are configured: a random-feature distance, NOT FID/KID, "
                     "not comparable with published numbers.")
EVALUATOR = ("Measured at snapshots by the evaluator trained on the dataset (pose and depth from one image); "
             f'eg3d_quality_images_seen{{extractor="evaluator"}} says at which. {SAME_ON_EVERY_RANK}')


def describe(note: str, *metrics: str) -> str:
    """`note`, then the catalog help of every metric the panel reads."""
    helps = [f"{name}: {BY_NAME[name].help}" for name in metrics]
    return " ".join([note, *helps] if note else helps)


def query(expr: str, legend: str, ref_id: str) -> Dataquery:
    return Dataquery().expr(expr).legend_format(legend).ref_id(ref_id).datasource(DATASOURCE)


def with_targets(panel, targets: list[tuple[str, str]]):
    for index, (expr, legend) in enumerate(targets):
        panel = panel.with_target(query(expr, legend, chr(ord("A") + index)))
    return panel


def graph(title: str, description: str, unit: str, targets: list[tuple[str, str]], *, width: int = 12,
          stacked: bool = False, bars: bool = False, min_value: float | None = None,
          max_value: float | None = None) -> timeseries.Panel:
    panel = (
        timeseries.Panel().title(title).description(description).unit(unit).datasource(DATASOURCE)
        .span(width).height(8).fill_opacity(10).line_width(1)
        .legend(common.VizLegendOptions().display_mode(LegendDisplayMode.LIST)
                .placement(LegendPlacement.BOTTOM).show_legend(True))
        .tooltip(common.VizTooltipOptions().mode(TooltipDisplayMode.MULTI).sort(SortOrder.DESCENDING))
    )
    if stacked:
        panel = panel.stacking(common.StackingConfig().mode(StackingMode.NORMAL))
    if bars:
        panel = panel.draw_style(GraphDrawStyle.BARS)
    if min_value is not None:
        panel = panel.min(min_value)
    if max_value is not None:
        panel = panel.max(max_value)
    return with_targets(panel, targets)


def with_floor(title: str, note: str, unit: str, metric: str, floor: str) -> timeseries.Panel:
    """A 3D quality metric of G and, dashed, the same metric of the evaluator on real images: its floor."""
    panel = graph(title, describe(f"{note} {EVALUATOR}", metric, floor), unit,
                  [(f"max by (run) ({metric}{RUN})", "generator"),
                   (f"max by (run) ({floor}{RUN})", "evaluator floor (real images)")], min_value=0)
    return panel.override_by_query("B", [DASHED_LINE])


def single_value(title: str, description: str, unit: str, targets: list[tuple[str, str]], *, decimals: int = 0,
                 warn_at: float | None = None, bad_at: float | None = None) -> stat.Panel:
    steps = [Threshold(value=None, color="green")]
    steps += [Threshold(value=value, color=color) for value, color in ((warn_at, "orange"), (bad_at, "red"))
              if value is not None]
    panel = (
        stat.Panel().title(title).description(description).unit(unit).decimals(decimals).datasource(DATASOURCE)
        .span(6).height(4).graph_mode(BigValueGraphMode.AREA)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .thresholds(ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(steps))
    )
    return with_targets(panel, targets)


def variables(dashboard: Dashboard, *, with_rank: bool) -> Dashboard:
    dashboard = (
        dashboard
        .with_variable(DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
        .with_variable(QueryVariable("run").label("Run").datasource(DATASOURCE)
                       .query("label_values(eg3d_images_seen, run)")
                       .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC))
    )
    if with_rank:
        dashboard = dashboard.with_variable(
            QueryVariable("rank").label("Rank").datasource(DATASOURCE)
            .query('label_values(eg3d_images_seen{run="$run"}, rank)')
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.NUMERICAL_ASC)
            .multi(True).include_all(True).all_value(".*"))
    return dashboard


def new_dashboard(title: str, uid: str, description: str) -> Dashboard:
    return (
        Dashboard(title).uid(uid).description(description).tags(["eg3d", "training"])
        .time("now-6h", "now").refresh("30s").tooltip(DashboardCursorSync.CROSSHAIR).editable()
    )


def link(title: str, uid: str) -> DashboardLink:
    return (DashboardLink(title).type(DashboardLinkType.LINK).url(f"/d/{uid}")
            .include_vars(True).keep_time(True).icon("dashboard"))


def add_rows(dashboard: Dashboard, rows: dict[str, list]) -> Dashboard:
    for title, panels in rows.items():
        dashboard = dashboard.with_row(Row(title))
        for panel in panels:
            dashboard = dashboard.with_panel(panel)
    return dashboard


def training_overview() -> Dashboard:
    images_seen = f"max by (run) (eg3d_images_seen{RUN})"
    target = f"max by (run) (eg3d_target_images{RUN})"
    rows = {
        "Progress": [
            single_value("Images seen (kimg)", describe(f"kimg = images / 1000. {SAME_ON_EVERY_RANK}", "eg3d_images_seen"),
                         "short", [(f"{images_seen} / 1000", "kimg")], decimals=1),
            single_value("Progress (% of target)", describe(SAME_ON_EVERY_RANK, "eg3d_images_seen", "eg3d_target_images"),
                         "percentunit", [(f"{images_seen} / {target}", "progress")], decimals=1),
            single_value("ETA at current throughput",
                         describe("Images still to train / the last reported global images per second.",
                                  "eg3d_target_images", "eg3d_images_seen", "eg3d_images_per_second"),
                         "dtdurations",
                         [(f"({target} - {images_seen}) / max by (run) (eg3d_images_per_second{RUN} > 0)", "ETA")]),
            single_value("World size (workers)", describe(SAME_ON_EVERY_RANK, "eg3d_world_size"),
                         "none", [(f"max by (run) (eg3d_world_size{RUN})", "workers")]),
            single_value("Epochs", describe("Images seen / images in the dataset.", "eg3d_images_seen", "eg3d_dataset_images"),
                         "none", [(f"{images_seen} / max by (run) (eg3d_dataset_images{RUN})", "epochs")], decimals=2),
            single_value("Dataset images", describe("Exported by the driver.", "eg3d_dataset_images"),
                         "short", [(f"max by (run) (eg3d_dataset_images{RUN})", "images")], decimals=1),
            single_value("Time since run start or resume",
                         describe("Now minus the driver's start time.", "eg3d_run_start_timestamp_seconds"),
                         "dtdurations", [(f"time() - max by (run) (eg3d_run_start_timestamp_seconds{RUN})", "running")]),
            single_value("Data preparation (driver)", describe("", "eg3d_data_preparation_seconds"), "s",
                         [(f"max by (run) (eg3d_data_preparation_seconds{RUN})", "preparation")], decimals=1),
            graph("Images seen vs target (kimg)", describe(SAME_ON_EVERY_RANK, "eg3d_images_seen", "eg3d_target_images"),
                  "short", [(f"{images_seen} / 1000", "images seen"), (f"{target} / 1000", "target")], min_value=0),
            graph("World size and accumulation steps",
                  describe(f"Elastic resizes show as steps. {SAME_ON_EVERY_RANK}", "eg3d_world_size", "eg3d_accumulation_steps"),
                  "none", [(f"max by (run) (eg3d_world_size{RUN})", "workers"),
                           (f"max by (run) (eg3d_accumulation_steps{RUN})", "micro-batches per worker per step")],
                  min_value=0),
        ],
        "Throughput": [
            graph("Training throughput (img/s)",
                  describe("Reported: the run's own figure for the last log interval (checkpoint and snapshot time "
                           "excluded). Counted: sum over workers of the rate of trained images (all wall time).",
                           "eg3d_images_per_second", "eg3d_trained_images_total"),
                  IMAGES_PER_SECOND,
                  [(f"max by (run) (eg3d_images_per_second{RUN})", "reported"),
                   (f"sum by (run) (rate(eg3d_trained_images_total{RUN}{WINDOW}))", "counted (sum over workers)")],
                  min_value=0),
            graph("Optimizer steps per second",
                  describe("Every worker takes part in every global step, so this is the mean over workers, not the sum.",
                           "eg3d_steps_total"),
                  "short", [(f"avg by (run) (rate(eg3d_steps_total{RUN}{WINDOW}))", "steps/s")], min_value=0),
            graph("Worker-seconds per image by phase",
                  describe("Seconds all workers spent in each phase per trained image (sum over workers / global "
                           "images); stacked, the total is the training cost of one image.",
                           "eg3d_phase_seconds_total", "eg3d_trained_images_total"),
                  "s",
                  [(f"sum by (run, phase) (rate(eg3d_phase_seconds_total{RUN}{WINDOW})) / ignoring (phase) group_left "
                    f"sum by (run) (rate(eg3d_trained_images_total{RUN}{WINDOW}))", "{{phase}}")],
                  stacked=True, min_value=0),
            graph("Data-wait fraction",
                  describe("Share of wall time a worker waits for its next batch: mean and worst worker. Above 50% "
                           "for 10m fires EG3DDataStall.", "eg3d_data_wait_seconds_total"),
                  "percentunit",
                  [(f"avg by (run) (rate(eg3d_data_wait_seconds_total{RUN}{WINDOW}))", "mean over workers"),
                   (f"max by (run) (rate(eg3d_data_wait_seconds_total{RUN}{WINDOW}))", "worst worker")],
                  min_value=0),
        ],
        "GAN health": [
            graph("Losses", describe(RANK_MEAN, "eg3d_loss"), "none",
                  [(f"avg by (run, loss) (eg3d_loss{RUN})", "{{loss}}")]),
            graph("Discriminator scores (real / fake)", describe(RANK_MEAN, "eg3d_discriminator_score"), "none",
                  [(f"avg by (run, kind) (eg3d_discriminator_score{RUN})", "{{kind}}")], width=6),
            graph("Discriminator signs (real / fake)", describe(RANK_MEAN, "eg3d_discriminator_sign"), "none",
                  [(f"avg by (run, kind) (eg3d_discriminator_sign{RUN})", "{{kind}}")], width=6,
                  min_value=-1, max_value=1),
            graph("Gradient norms by phase", describe(RANK_MEAN, "eg3d_gradient_norm"), "none",
                  [(f"avg by (run, phase) (eg3d_gradient_norm{RUN})", "{{phase}}")], min_value=0),
            graph("Non-finite skipped steps",
                  describe("Skipped steps per second, summed over workers (a step every worker skips counts once per "
                           "worker). Any increase in 10m fires EG3DNonFiniteLoss.", "eg3d_nonfinite_steps_total"),
                  "short", [(f"sum by (run, network) (rate(eg3d_nonfinite_steps_total{RUN}{WINDOW}))", "{{network}}")],
                  bars=True, min_value=0),
        ],
        "Quality": [
            graph("Frechet distance by extractor (FID only for inception_v3; random is NOT FID)",
                  describe(f"{RANDOM_IS_NOT_FID} {SAME_ON_EVERY_RANK}", "eg3d_frechet_distance"), "none",
                  [(f"max by (run, extractor) (eg3d_frechet_distance{RUN})", "{{extractor}}")], min_value=0),
            graph("Kernel distance by extractor (KID only for inception_v3; random is NOT KID)",
                  describe(f"{RANDOM_IS_NOT_FID} {SAME_ON_EVERY_RANK}", "eg3d_kernel_distance"), "none",
                  [(f"max by (run, extractor) (eg3d_kernel_distance{RUN})", "{{extractor}}")]),
            graph("Quality measured at (kimg)", describe(f"kimg = images / 1000. {SAME_ON_EVERY_RANK}", "eg3d_quality_images_seen"),
                  "short", [(f"max by (run, extractor) (eg3d_quality_images_seen{RUN}) / 1000", "{{extractor}}")],
                  min_value=0),
            graph("Quality computation time", describe(SAME_ON_EVERY_RANK, "eg3d_quality_seconds"), "s",
                  [(f"max by (run, extractor) (eg3d_quality_seconds{RUN})", "{{extractor}}")], min_value=0),
        ],
        "3D quality": [
            graph("Frechet distance in the evaluator's features (fd_data, NOT FID)",
                  describe(f"Two computations in a row above 1.1x its 6h minimum fire EG3DQualityWorsening. "
                           f"{EVALUATOR}", "eg3d_fd_data"), "none",
                  [(f"max by (run) (eg3d_fd_data{RUN})", "fd_data")], min_value=0),
            with_floor("Camera pose error (degrees) and its floor",
                       "Two computations in a row above 1.1x its 6h minimum and 1 degree above it fire "
                       "EG3DQualityWorsening.", "degree", "eg3d_pose_error_degrees", "eg3d_pose_error_floor_degrees"),
            with_floor("Depth error and its floor (0 perfect, ~2 uncorrelated)",
                       "No data for data sets without depth ground truth. Two computations in a row above 1.1x its "
                       "6h minimum and 0.05 above it fire EG3DQualityWorsening.", "none",
                       "eg3d_depth_error", "eg3d_depth_error_floor"),
            graph("Multi-view consistency error (raw vs final)",
                  describe(f"The gap between final and raw is the inconsistency the super-resolution adds. {EVALUATOR}",
                           "eg3d_consistency_error"), "none",
                  [(f"max by (run, image) (eg3d_consistency_error{RUN})", "{{image}}")], min_value=0),
        ],
        "Schedules": [
            graph("Learning rates", describe(SAME_ON_EVERY_RANK, "eg3d_learning_rate"), "sci",
                  [(f"max by (run, network) (eg3d_learning_rate{RUN})", "{{network}}")], width=8, min_value=0),
            graph("R1 gamma", describe(SAME_ON_EVERY_RANK, "eg3d_r1_gamma"), "none",
                  [(f"max by (run) (eg3d_r1_gamma{RUN})", "gamma")], width=8, min_value=0),
            graph("Discriminator blur sigma", describe(SAME_ON_EVERY_RANK, "eg3d_blur_sigma_pixels"), PIXELS,
                  [(f"max by (run) (eg3d_blur_sigma_pixels{RUN})", "sigma")], width=8, min_value=0),
            graph("Generator pose conditioning (GPC) probability", describe(SAME_ON_EVERY_RANK, "eg3d_gpc_probability"),
                  "percentunit", [(f"max by (run) (eg3d_gpc_probability{RUN})", "swap probability")], width=8,
                  min_value=0, max_value=1),
            graph("Augmentation probability (ADA p)",
                  describe(f"ADA raises p while D's mean sign on reals is above augment.target. {SAME_ON_EVERY_RANK}",
                           "eg3d_augment_probability"),
                  "percentunit", [(f"max by (run) (eg3d_augment_probability{RUN})", "p")], width=8,
                  min_value=0, max_value=1),
            graph("Neural rendering resolution",
                  describe(SAME_ON_EVERY_RANK, "eg3d_neural_rendering_resolution_pixels"), PIXELS,
                  [(f"max by (run) (eg3d_neural_rendering_resolution_pixels{RUN})", "resolution")], width=8,
                  min_value=0),
        ],
        "Memory": [
            graph("Resident memory (largest worker)", describe("Max over workers.", "eg3d_resident_memory_bytes"),
                  "bytes", [(f"max by (run) (eg3d_resident_memory_bytes{RUN})", "RSS")], min_value=0),
            graph("GPU memory (largest worker)",
                  describe("Max over workers.", "eg3d_gpu_memory_allocated_bytes", "eg3d_gpu_memory_reserved_bytes",
                           "eg3d_gpu_memory_peak_bytes"),
                  "bytes", [(f"max by (run) (eg3d_gpu_memory_allocated_bytes{RUN})", "allocated"),
                            (f"max by (run) (eg3d_gpu_memory_reserved_bytes{RUN})", "reserved"),
                            (f"max by (run) (eg3d_gpu_memory_peak_bytes{RUN})", "peak allocated")],
                  min_value=0),
        ],
        "Reliability": [
            single_value("Restarts", describe(SAME_ON_EVERY_RANK, "eg3d_restarts"), "none",
                         [(f"max by (run) (eg3d_restarts{RUN})", "restarts")], warn_at=1, bad_at=5),
            single_value("Workers up / world size",
                         describe('Scrape targets of this run that answer (up{job="eg3d"}, the driver excluded) '
                                  "against the world size the workers report; fewer fires EG3DWorkerLost.",
                                  "eg3d_world_size"),
                         "none", [('sum by (run) (up{job="eg3d", run="$run", rank!="driver"})', "up"),
                                  (f"max by (run) (eg3d_world_size{RUN})", "world size")]),
            single_value("Seconds since last heartbeat (oldest worker)",
                         describe("Now minus the oldest worker's last log time.", "eg3d_last_log_timestamp_seconds"),
                         "s", [(f"time() - min by (run) (eg3d_last_log_timestamp_seconds{RUN})", "age")],
                         warn_at=300, bad_at=900),
            single_value("Last published checkpoint (kimg)",
                         describe(f"kimg = images / 1000. {SAME_ON_EVERY_RANK}", "eg3d_last_checkpoint_images_seen"),
                         "short", [(f"max by (run) (eg3d_last_checkpoint_images_seen{RUN}) / 1000", "kimg")],
                         decimals=1),
            graph("Checkpoint and snapshot write time",
                  describe("Worker-seconds spent writing per second of wall time, summed over workers.",
                           "eg3d_checkpoint_upload_seconds_total", "eg3d_snapshot_upload_seconds_total"),
                  "s", [(f"sum by (run) (rate(eg3d_checkpoint_upload_seconds_total{RUN}{WINDOW}))", "checkpoints"),
                        (f"sum by (run) (rate(eg3d_snapshot_upload_seconds_total{RUN}{WINDOW}))", "snapshots")],
                  width=8, min_value=0),
            graph("Checkpoint and snapshot write throughput",
                  describe("Bytes written per second, summed over workers.",
                           "eg3d_checkpoint_upload_bytes_total", "eg3d_snapshot_upload_bytes_total"),
                  "Bps", [(f"sum by (run) (rate(eg3d_checkpoint_upload_bytes_total{RUN}{WINDOW}))", "checkpoints"),
                          (f"sum by (run) (rate(eg3d_snapshot_upload_bytes_total{RUN}{WINDOW}))", "snapshots")],
                  width=8, min_value=0),
            graph("Checkpoints and snapshots written",
                  describe("Writes per interval, summed over workers (each worker writes its own files).",
                           "eg3d_checkpoints_total", "eg3d_snapshots_total"),
                  "short", [(f"sum by (run) (increase(eg3d_checkpoints_total{RUN}{WINDOW}))", "checkpoints"),
                            (f"sum by (run) (increase(eg3d_snapshots_total{RUN}{WINDOW}))", "snapshots")],
                  width=8, bars=True, min_value=0),
        ],
    }
    dashboard = new_dashboard("EG3D training", "eg3d-training",
                              "One EG3D training run: progress, throughput, GAN health, quality, 3D quality, schedules, "
                              "memory and reliability, aggregated over ranks.")
    dashboard = variables(dashboard, with_rank=False).link(link("Per-rank drill-down", "eg3d-rank"))
    return add_rows(dashboard, rows)


def per_rank() -> Dashboard:
    def rate_by_rank(metric: str, by: str = "") -> str:
        return f"sum by (run, rank{by}) (rate({metric}{RANKS}{WINDOW}))"

    rows = {
        "Throughput": [
            graph("Trained images per second by rank", describe("", "eg3d_trained_images_total"), IMAGES_PER_SECOND,
                  [(rate_by_rank("eg3d_trained_images_total"), "rank {{rank}}")], min_value=0),
            graph("Optimizer steps per second by rank", describe("", "eg3d_steps_total"), "short",
                  [(rate_by_rank("eg3d_steps_total"), "rank {{rank}}")], min_value=0),
            graph("Seconds per image by phase and rank",
                  describe("Seconds a worker spent in each phase per image it trained.",
                           "eg3d_phase_seconds_total", "eg3d_trained_images_total"),
                  "s", [(f"{rate_by_rank('eg3d_phase_seconds_total', ', phase')} / ignoring (phase) group_left "
                         f"{rate_by_rank('eg3d_trained_images_total')}", "rank {{rank}} {{phase}}")], min_value=0),
            graph("Data-wait fraction by rank", describe("Share of wall time spent waiting.", "eg3d_data_wait_seconds_total"),
                  "percentunit", [(rate_by_rank("eg3d_data_wait_seconds_total"), "rank {{rank}}")], min_value=0),
        ],
        "GAN health": [
            graph("Losses by rank", describe("", "eg3d_loss"), "none", [(f"eg3d_loss{RANKS}", "rank {{rank}} {{loss}}")]),
            graph("Gradient norms by rank", describe("", "eg3d_gradient_norm"), "none",
                  [(f"eg3d_gradient_norm{RANKS}", "rank {{rank}} {{phase}}")], min_value=0),
        ],
        "Memory": [
            graph("Resident memory by rank", describe("", "eg3d_resident_memory_bytes"), "bytes",
                  [(f"eg3d_resident_memory_bytes{RANKS}", "rank {{rank}}")], min_value=0),
            graph("GPU memory allocated by rank", describe("", "eg3d_gpu_memory_allocated_bytes"), "bytes",
                  [(f"eg3d_gpu_memory_allocated_bytes{RANKS}", "rank {{rank}}")], min_value=0),
            graph("GPU memory reserved by rank", describe("", "eg3d_gpu_memory_reserved_bytes"), "bytes",
                  [(f"eg3d_gpu_memory_reserved_bytes{RANKS}", "rank {{rank}}")], min_value=0),
            graph("GPU peak memory by rank", describe("", "eg3d_gpu_memory_peak_bytes"), "bytes",
                  [(f"eg3d_gpu_memory_peak_bytes{RANKS}", "rank {{rank}}")], min_value=0),
        ],
        "Reliability": [
            graph("Checkpoint and snapshot write time by rank",
                  describe("Share of the worker's wall time spent writing.",
                           "eg3d_checkpoint_upload_seconds_total", "eg3d_snapshot_upload_seconds_total"),
                  "percentunit",
                  [(rate_by_rank("eg3d_checkpoint_upload_seconds_total"), "rank {{rank}} checkpoints"),
                   (rate_by_rank("eg3d_snapshot_upload_seconds_total"), "rank {{rank}} snapshots")],
                  width=8, min_value=0),
            graph("Checkpoint and snapshot write throughput by rank",
                  describe("", "eg3d_checkpoint_upload_bytes_total", "eg3d_snapshot_upload_bytes_total"),
                  "Bps", [(rate_by_rank("eg3d_checkpoint_upload_bytes_total"), "rank {{rank}} checkpoints"),
                          (rate_by_rank("eg3d_snapshot_upload_bytes_total"), "rank {{rank}} snapshots")],
                  width=8, min_value=0),
            graph("Seconds since last heartbeat by rank",
                  describe("Now minus the worker's last log time.", "eg3d_last_log_timestamp_seconds"), "s",
                  [(f"time() - eg3d_last_log_timestamp_seconds{RANKS}", "rank {{rank}}")], width=8, min_value=0),
        ],
    }
    dashboard = new_dashboard("EG3D training per rank", "eg3d-rank",
                              "One EG3D training run split by worker rank: throughput, phase time, data wait, "
                              "losses, memory, uploads and heartbeats.")
    dashboard = variables(dashboard, with_rank=True).link(link("Training overview", "eg3d-training"))
    return add_rows(dashboard, rows)


def to_dict(dashboard: Dashboard) -> dict:
    model = json.loads(JSONEncoder().encode(dashboard.build()))
    for panel_id, panel in enumerate(model["panels"], start=1):  # the SDK leaves every id at 0
        panel["id"] = panel_id
    return model


def build() -> dict[str, dict]:
    """File name -> dashboard JSON model."""
    return {"eg3d-training.json": to_dict(training_overview()), "eg3d-rank.json": to_dict(per_rank())}


def to_json(model: dict) -> str:
    return json.dumps(model, sort_keys=True, indent=2) + "\n"


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, PromQL) for every target of every panel."""
    return [(model["uid"], panel["title"], target["expr"])
            for model in build().values() for panel in model["panels"] for target in panel.get("targets", [])]


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(prog="python -m monitoring.dashboards",
                            description="Regenerate the Grafana dashboards (monitoring/dashboards/*.json) from the "
                                        "metric catalog, then the Kubernetes objects that carry them "
                                        "(k8s/monitoring/).").parse_args(argv)
    OUTPUT_DIR.mkdir(exist_ok=True)
    for file_name, model in build().items():
        (OUTPUT_DIR / file_name).write_text(to_json(model))
        print(f"wrote {OUTPUT_DIR / file_name}")
    kubernetes.main([])  # k8s/monitoring/grafana-dashboards.yaml carries the JSON just written


if __name__ == "__main__":
    main()
