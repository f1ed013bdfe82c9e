"""bench/time_to_result.py on run folders written here: one row per measured snapshot with the values each
measurement logged (the evaluator's 3D quality ones included), and the curves' panels."""

import json
from pathlib import Path

import pytest
from PIL import Image

from bench_scripts import load_bench_script

START = 1000.0  # starts.json's time; minutes count from here
EVALUATOR_800 = {"fd_data": 90.0, "pose_error_deg": 20.0, "depth_error": 1.2, "consistency_raw": 0.1,
                 "consistency_final": 0.15, "evaluator_floor/pose_error_deg": 3.5,
                 "evaluator_floor/depth_error": 0.3}
EVALUATOR_2000 = {**EVALUATOR_800, "fd_data": 60.0, "pose_error_deg": 10.0, "depth_error": 0.8,
                  "consistency_raw": 0.08, "consistency_final": 0.11}


@pytest.fixture(scope="module")
def time_to_result():
    return load_bench_script("time_to_result")


def write_run(folder: Path, records: list[dict]) -> str:
    folder.mkdir()
    (folder / "starts.json").write_text(json.dumps([{"time": START, "world_size": 1, "nimg": 0}]))
    (folder / "log.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    return str(folder)


def record(nimg: int, seconds: float, **values) -> dict:
    return {"nimg": nimg, "kimg": nimg / 1000, "timestamp": START + seconds, "images_per_second": nimg / seconds,
            "loss/G": 0.5, **values}


@pytest.fixture
def runs(tmp_path) -> dict[str, str]:
    """Run "a": the random-feature distance at 800 and 1600 images, the evaluator at 800 and 2000 (less often),
    every measurement repeated in the records after it as the training loop does. Run "b": a data set
    without depth ground truth (no depth error or its floor), the evaluator only."""
    random_800 = {"quality_nimg/random": 800, "frechet_distance/random": 40.0, "kernel_distance/random": 0.5}
    random_1600 = {"quality_nimg/random": 1600, "frechet_distance/random": 30.0, "kernel_distance/random": 0.25}
    evaluator_800 = {"quality_nimg/evaluator": 800, "quality_seconds/evaluator": 12.0, **EVALUATOR_800}
    evaluator_2000 = {"quality_nimg/evaluator": 2000, "quality_seconds/evaluator": 12.0, **EVALUATOR_2000}
    a = [record(400, 60), record(800, 180, **random_800, **evaluator_800),
         record(1200, 300, **random_800, **evaluator_800), record(1600, 420, **random_1600, **evaluator_800),
         record(2000, 540, **random_1600, **evaluator_2000)]
    no_depth = {k: v for k, v in EVALUATOR_800.items() if "depth" not in k}
    b = [record(800, 120, **{"quality_nimg/evaluator": 800, **no_depth}),
         record(1600, 240, **{"quality_nimg/evaluator": 1600, **no_depth, "fd_data": 70.0, "pose_error_deg": 12.0})]
    return {"a": write_run(tmp_path / "a", a), "b": write_run(tmp_path / "b", b)}


def test_one_row_per_measured_snapshot_with_each_measurements_values(time_to_result, runs):
    rows = time_to_result.snapshot_rows(runs["a"])
    assert rows == [
        {"kimg": 0.8, "nimg": 800, "minutes": 3.0, "images_per_second": 800 / 180, "frechet_distance/random": 40.0,
         "kernel_distance/random": 0.5, **EVALUATOR_800},
        {"kimg": 1.6, "nimg": 1600, "minutes": 7.0, "images_per_second": 1600 / 420, "frechet_distance/random": 30.0,
         "kernel_distance/random": 0.25},  # the evaluator's values in that record belong to 800
        {"kimg": 2.0, "nimg": 2000, "minutes": 9.0, "images_per_second": 2000 / 540, **EVALUATOR_2000},
    ]
    no_depth = time_to_result.snapshot_rows(runs["b"])
    assert [(row["minutes"], row["fd_data"], row["pose_error_deg"]) for row in no_depth] == [(2.0, 90.0, 20.0),
                                                                                           (4.0, 70.0, 12.0)]
    assert not any("depth_error" in key for row in no_depth for key in row)


def test_the_table_has_a_column_per_value(time_to_result, runs, capsys):
    time_to_result.main([runs["a"], runs["b"]])
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.split() == ["run", "kimg", "minutes", "img/s", "consistency_final", "consistency_raw",
                              "depth_error", "evaluator_floor/depth_error", "evaluator_floor/pose_error_deg",
                              "fd_data", "frechet_distance/random", "kernel_distance/random", "pose_error_deg"]
    assert [line.split()[:2] for line in lines] == [["a", "0.800"], ["a", "1.600"], ["a", "2.000"],
                                                    ["b", "0.800"], ["b", "1.600"]]
    assert lines[2].split()[4:] == ["0.110", "0.080", "0.800", "0.300", "3.500", "60.000", "nan", "nan", "10.000"]


def test_curves_one_panel_per_value_runs_overlaid_floors_dashed(time_to_result, runs, tmp_path):
    pytest.importorskip("matplotlib")
    figure = time_to_result.curves({url: time_to_result.snapshot_rows(url) for url in runs.values()})
    panels = {ax.get_title(): ax for ax in figure.axes if ax.get_visible()}
    assert sorted(panels) == ["consistency_final", "consistency_raw", "depth_error", "fd_data",
                              "frechet_distance/random", "kernel_distance/random", "pose_error_deg"]
    assert len(figure.axes) == 9  # 3 x 3, two cells hidden

    def lines(title):
        return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()), line.get_linestyle())
                for line in panels[title].get_lines()}

    assert lines("pose_error_deg") == {"a": ([3.0, 9.0], [20.0, 10.0], "-"),
                                       "a evaluator floor": ([0, 1], [3.5, 3.5], "--"),
                                       "b": ([2.0, 4.0], [20.0, 12.0], "-"),
                                       "b evaluator floor": ([0, 1], [3.5, 3.5], "--")}
    assert lines("depth_error") == {"a": ([3.0, 9.0], [1.2, 0.8], "-"),
                                    "a evaluator floor": ([0, 1], [0.3, 0.3], "--")}
    assert lines("frechet_distance/random") == {"a": ([3.0, 7.0], [40.0, 30.0], "-")}  # no floor
    assert [text.get_text() for text in panels["fd_data"].get_legend().get_texts()] == ["a", "b"]

    out = tmp_path / "curves.png"
    time_to_result.main([runs["a"], runs["b"], "--curves", str(out)])
    with Image.open(out) as image:
        assert image.size == (3 * 400, 3 * 300)  # PANEL_INCHES at DPI, three panels a row


def test_curves_against_images_seen(time_to_result, runs):
    pytest.importorskip("matplotlib")
    figure = time_to_result.curves({url: time_to_result.snapshot_rows(url) for url in runs.values()}, x="kimg")
    panel = next(ax for ax in figure.axes if ax.get_visible() and ax.get_title() == "pose_error_deg")
    points = {line.get_label(): list(line.get_xdata()) for line in panel.get_lines() if "floor" not in line.get_label()}
    assert points == {"a": [0.8, 2.0], "b": [0.8, 1.6]}  # the snapshots' kimg, not their minutes
    assert panel.get_xlabel().startswith("kimg")
