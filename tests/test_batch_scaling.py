"""bench/batch_scaling.py: the runs it configures (the --batch rule, the square-root learning-rate rule,
micro-batches of 8) and its report, on logs written by hand (no training here)."""

import json
import math
from pathlib import Path

import pytest

from eg3d.config.presets import tiny

from bench_scripts import load_bench_script


@pytest.fixture(scope="module")
def bench():
    return load_bench_script("batch_scaling")


def test_batch_rule_and_micro_batches(bench):
    preset = tiny()
    config = bench.run_config(128, "none", 2, 12.0)
    assert config.run.batch_size == 128 and config.run.micro_batch == 8 and config.run.seed == 2
    assert config.ema.ema_kimg == pytest.approx(preset.ema.ema_kimg * 16)  # 2.5 kimg at 8 -> 40 at 128
    assert config.loss.blur_fade_kimg == pytest.approx(preset.loss.blur_fade_kimg * 16)
    assert (config.optimizer.g_lr, config.optimizer.d_lr) == (preset.optimizer.g_lr, preset.optimizer.d_lr)
    base = bench.run_config(8, "none", 0, 12.0)
    assert base.run.micro_batch is None and base.ema.ema_kimg == preset.ema.ema_kimg


def test_square_root_learning_rate_rule(bench):
    preset = tiny()
    config = bench.run_config(32, "sqrt", 0, 12.0)
    assert config.optimizer.g_lr == pytest.approx(2 * preset.optimizer.g_lr)  # sqrt(32 / 8) = 2
    assert config.optimizer.d_lr == pytest.approx(2 * preset.optimizer.d_lr)
    assert bench.run_config(128, "sqrt", 0, 12.0).optimizer.g_lr == pytest.approx(math.sqrt(16) * preset.optimizer.g_lr)


def write_log(folder: Path, points: list[tuple[int, float, float, float]]) -> None:
    folder.mkdir(parents=True)
    lines = [json.dumps({"nimg": 100, "images_per_second": 10.0})]  # a record without a measurement
    lines += [json.dumps({"nimg": nimg + 8, "quality_nimg/evaluator": nimg, "fd_data": fd, "pose_error_deg": pose,
                          "depth_error": depth}) for nimg, fd, pose, depth in points]
    (folder / "log.jsonl").write_text("\n".join(lines) + "\n")


def test_report_means_spreads_and_ratios_at_equal_images(bench, tmp_path):
    write_log(tmp_path / "batch8-none-seed0", [(2000, 100.0, 10.0, 1.5), (4000, 60.0, 8.0, 1.2)])
    write_log(tmp_path / "batch8-none-seed1", [(2000, 120.0, 12.0, 1.7), (4000, 80.0, 10.0, 1.4)])
    # batch 32's snapshots land on multiples of 32 images: 2016 and 4000 are the 2 and 4 kimg points
    write_log(tmp_path / "batch32-none-seed0", [(2016, 165.0, 22.0, 1.6), (4000, 105.0, 9.0, 1.3)])
    (tmp_path / "batch32-none-seed0.log").write_text("a run's console log, not a run")
    table = bench.collect(str(tmp_path))
    assert table[(8, "none")][2.0]["fd_data"] == [100.0, 120.0]
    assert table[(32, "none")][2.0]["pose_error_deg"] == [22.0]
    text = bench.report(table)
    rows = {tuple(line.split()[:3]): line for line in text.splitlines()[1:]}
    assert "110.00 [100.00-120.00] n2" in rows[("8", "none", "2")]
    assert "x1.50" in rows[("32", "none", "2")]  # 165 / mean(100, 120)
    assert "x2.00" in rows[("32", "none", "2")]  # pose 22 / 11
    assert "x1.50" in rows[("32", "none", "4")]  # fd 105 / 70
    assert "x" not in rows[("8", "none", "4")].split("n2")[1]  # no ratio of batch 8 to itself
