"""`python -m eg3d.evaluate` on a data set folder, a zip and S3 shards (moto), and its errors."""

import json
import shutil

import pytest

from dataloading import storage
from dataloading.build import build
from dataloading.synthetic import generate_dataset
from eg3d import evaluate
from s3_fixtures import BUCKET, moto_server  # noqa: F401 - the fixture

OPTIONS = ["--num-generated", "8", "--objects", "1", "--batch", "4", "--quiet"]
VALUES = ("fd_data", "pose_error_deg", "depth_error", "consistency_raw", "consistency_final")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate-data")
    generate_dataset(root / "folder", count=16, resolution=32, seed=4)
    generate_dataset(root / "data.zip", count=16, resolution=32, seed=4)
    return root


def run(capsys, *argv) -> tuple[int, str, str]:
    code = evaluate.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_folder_a_zip_and_s3_shards_give_the_same_measurement(data, micro_snapshot, tmp_path, capsys,
                                                                  moto_server):  # noqa: F811 - the fixture
    s3_shards = f"s3://{BUCKET}/evaluate/shards"
    build(str(data / "folder"), s3_shards, workers=1, progress=False)
    results, logs = [], []
    for source in (data / "folder", data / "data.zip", s3_shards):
        out = tmp_path / f"{len(results)}.json"
        code, printed, err = run(capsys, micro_snapshot, "--data", source, "--json", out, "--cache", tmp_path / "cache",
                                 *OPTIONS)
        assert code == 0, err
        result = json.loads(out.read_text())
        logs.append(err)
        assert all(name in printed for name in VALUES) and "floor" in printed
        results.append(result)
    first = results[0]
    assert first["num_generated"] == 8 and set(first["floor"]) >= {"pose_error_deg", "depth_error", "fd_data"}
    assert 0 <= first["pose_error_deg"] <= 180 and 0 <= first["depth_error"] <= 4 and first["fd_data"] >= 0
    for other in results[1:]:  # the same images give the same shards, so the same evaluator and values
        assert {k: other[k] for k in VALUES} == {k: first[k] for k in VALUES}
    # The same content, so the same evaluator: trained once, beside the folder's shards and in this machine's
    # cache, where the zip's and the S3 shards' measurements find it.
    assert ["training the evaluator" in log for log in logs] == [True, False, False]
    assert len(list((tmp_path / "cache").rglob("evaluator-*.pt"))) == 1
    assert not [name for name in storage.list(s3_shards) if name.startswith("evaluator-")]


def test_another_seed_draws_other_images(data, micro_snapshot, tmp_path, capsys):
    values = []
    for seed in (0, 1):
        out = tmp_path / f"{seed}.json"
        assert run(capsys, micro_snapshot, "--data", data / "folder", "--json", out, "--seed", seed,
                   "--cache", tmp_path / "cache", *OPTIONS)[0] == 0
        values.append(json.loads(out.read_text()))
    assert values[0]["fd_data"] != values[1]["fd_data"] and values[0]["seed"] == 0 and values[1]["seed"] == 1


def test_data_of_another_resolution_is_refused(micro_snapshot, tmp_path, capsys):
    generate_dataset(tmp_path / "big", count=8, resolution=64, seed=0)
    code, _, err = run(capsys, micro_snapshot, "--data", tmp_path / "big", "--cache", tmp_path / "cache", *OPTIONS)
    assert code == 2 and "makes 32x32 images" in err and "64x64" in err


def test_data_without_labels_is_refused_naming_the_file(data, micro_snapshot, tmp_path, capsys):
    shutil.copytree(data / "folder", tmp_path / "unlabelled")
    (tmp_path / "unlabelled" / "dataset.json").unlink()
    code, _, err = run(capsys, micro_snapshot, "--data", tmp_path / "unlabelled", "--cache", tmp_path / "cache",
                       *OPTIONS)
    assert code == 2 and "dataset.json" in err


def test_bad_options_are_argparse_errors(micro_snapshot, tmp_path, capsys):
    for option in (["--num-generated", "0"], ["--seed", "-1"], ["--objects", "two"]):
        with pytest.raises(SystemExit) as exit_info:
            evaluate.main([micro_snapshot, "--data", str(tmp_path), *option])
        assert exit_info.value.code == 2
    code, _, err = run(capsys, micro_snapshot, "--data", tmp_path / "missing", *OPTIONS)
    assert code == 2 and "no such file or folder" in err
