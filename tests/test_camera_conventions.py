"""Labels in a wrong convention, caught for the data set as a whole: hand-derived figures, each common mistake
built from a correct label set and named with its fix, correct sets (synthetic, FFHQ-, ShapeNet-like) passing,
and the checks in dataloading.build, dataloading.convert --matrices and eg3d.train's data preparation."""

import json

import numpy as np
import pytest
import torch

from model_helpers import micro_config
from dataloading.build import build, main as build_main
from dataloading.camera_checks import flip_yz
from dataloading.camera_conventions import (ACCEPT_FLAG, check_conventions, check_label_conventions, measure,
                                            origin_in_view, spread_deg)
from dataloading.convert import convert
from dataloading.synthetic import generate_dataset, random_camera
from eg3d.networks.camera import FFHQ_FOCAL, intrinsics, look_at, make_label, orbit_camera
from eg3d.train import prepare_data

SHAPENET_FOCAL = 1.7074
Y_TO_Z = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # a quarter turn about x: +y -> +z
Y_TO_MINUS_Z = Y_TO_Z.T  # +y -> -z
UPSIDE_DOWN = np.diag([-1.0, -1.0, 1.0])  # a half turn about z: +y -> -y


def labels_looking_at(origins, targets=(0.0, 0.0, 0.0), focal=FFHQ_FOCAL) -> np.ndarray:
    origins = torch.tensor(np.asarray(origins, dtype=np.float64).reshape(-1, 3))
    targets = torch.tensor(np.asarray(targets, dtype=np.float64).reshape(-1, 3)).expand_as(origins)
    return make_label(look_at(origins, targets), intrinsics(focal).double().expand(len(origins), 3, 3)).numpy()


def synthetic_labels(count=200) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.stack([random_camera(rng) for _ in range(count)]).astype(np.float64)


def ffhq_like() -> np.ndarray:
    """FFHQ's cameras: radius 2.7 around the origin looking at the pivot (0, 0, 0.2), yaw and pitch spread."""
    rng = np.random.default_rng(1)
    return orbit_camera(np.pi / 2 + rng.normal(0, 0.4, 300), np.pi / 2 + rng.normal(0, 0.2, 300),
                        pivot=(0.0, 0.0, 0.2)).double().numpy()


def shapenet_like(upper_only: bool) -> np.ndarray:
    """ShapeNet cars' cameras: radius 1.3 on the sphere (or its upper half) looking at the origin, y-up."""
    directions = np.random.default_rng(2).normal(size=(400, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    if upper_only:
        directions[:, 1] = np.abs(directions[:, 1])
    return labels_looking_at(1.3 * directions, focal=SHAPENET_FOCAL)


def with_matrices(labels: np.ndarray, change) -> np.ndarray:
    changed = labels.copy()
    changed[:, :16] = np.stack([change(m) for m in labels[:, :16].reshape(-1, 4, 4)]).reshape(-1, 16)
    return changed


def inverted(labels):
    return with_matrices(labels, np.linalg.inv)


def transposed(labels):
    def change(matrix):
        matrix = matrix.copy()
        matrix[:3, :3] = matrix[:3, :3].T
        return matrix
    return with_matrices(labels, change)


def turned(rotation):
    """The world turned by `rotation`: camera axes and centres alike (a proper rotation: each camera stays valid)."""
    def change(labels):
        def move(matrix):
            matrix = matrix.copy()
            matrix[:3, :3] = rotation @ matrix[:3, :3]
            matrix[:3, 3] = rotation @ matrix[:3, 3]
            return matrix
        return with_matrices(labels, move)
    return change


def opengl_view_matrices(labels):
    """What an OpenGL view matrix holds: world2cam in OpenGL camera axes."""
    return inverted(flip_yz(labels))


# --- hand-derived figures -------------------------------------------------------------------------------

def test_origin_in_view_at_the_edge_of_the_picture():
    # A camera at (0, 0, 2.7) looking at (x0, 0, 0) sees the origin tan = x0/2.7 off its axis, at normalized
    # u = 0.5 - 4.2647 * x0 / 2.7: inside [0, 1] while x0 <= 0.5 * 2.7 / 4.2647 = 0.3166.
    labels = labels_looking_at([[0, 0, 2.7]] * 4, [[0.30, 0, 0], [0.33, 0, 0], [-0.30, 0, 0], [0, 0, 5.0]])
    assert origin_in_view(labels).tolist() == [True, False, True, False]  # the last looks away from it


def test_spread_is_the_median_angle_from_the_mean_direction():
    assert spread_deg(np.array([[1.0, 0, 0], [0, 2.0, 0]])) == pytest.approx(45.0)
    assert spread_deg(np.array([[1.0, 0, 0], [-1.0, 0, 0]])) == 90.0  # they cancel
    assert spread_deg(np.array([[0, 0, 2.7]] * 3)) == 0.0


def test_inverted_look_at_cameras_all_sit_at_one_spot():
    # cam2world [R | c] with c = -r * forward inverts to [R^T | -R^T c] = [R^T | (0, 0, r)].
    labels = synthetic_labels(50)
    matrices = inverted(labels)[:, :16].reshape(-1, 4, 4)
    np.testing.assert_allclose(matrices[:, :3, 3], np.tile([0, 0, 2.7], (50, 1)), atol=1e-5)
    figures = measure(inverted(labels))
    assert figures.position_spread_deg < 0.01 and figures.axis_spread_deg > 10
    assert figures.axis_spread_deg == pytest.approx(measure(labels).axis_spread_deg, abs=0.1)


def test_up_figures_of_level_and_rolled_cameras():
    frontal = labels_looking_at([[0, 0, 2.7]])
    assert measure(frontal).up == pytest.approx((0, 1, 0)) and measure(frontal).up_agreement == pytest.approx(1)
    rolled = frontal.copy()  # rolled a quarter turn: down (-1, 0, 0), forward (0, 0, -1), right = down x forward
    rolled[0, :16] = np.array([[0, -1, 0, 0], [-1, 0, 0, 0], [0, 0, -1, 2.7], [0, 0, 0, 1]], dtype=float).ravel()
    figures = measure(np.concatenate([frontal, rolled]))  # ups +y and +x: mean (0.5, 0.5, 0)
    assert figures.up_agreement == pytest.approx(np.sqrt(0.5)) and figures.up_from_y_deg == pytest.approx(45)
    report = check_conventions(np.concatenate([frontal, rolled]))
    assert report.problem() is None and "45 deg from EG3D's up" in report.problem(strict=True)
    assert "--up auto" in report.problem(strict=True)  # (0.71, 0.71, 0) is no world axis


# --- correct sets pass; each mistake is caught and named --------------------------------------------------

@pytest.mark.parametrize("labels", [synthetic_labels(), ffhq_like(), shapenet_like(False), shapenet_like(True),
                                    labels_looking_at([[0, 0, 2.7]])],
                         ids=["synthetic", "ffhq-like", "shapenet-sphere", "shapenet-upper-half", "one-camera"])
def test_correct_label_sets_pass_even_strict(labels):
    report = check_conventions(labels)
    assert report.findings == [] and report.problem(strict=True) is None


MISTAKES = {  # name: (mistake, words naming the cause, the convert options that fix it)
    "inverted": (inverted, "the matrices are world2cam", "--matrices world2cam "),
    "transposed": (transposed, "the 3x3 rotations are transposed", "--matrices transposed "),
    "opengl axes": (flip_yz, "the camera axes are OpenGL/Blender's", "--axes opengl "),
    "opengl view matrices": (opengl_view_matrices, "the matrices are world2cam (each camera's inverse), not "
                             "cam2world; and the camera axes are OpenGL", "--matrices world2cam --axes opengl "),
    "y and z swapped": (turned(Y_TO_Z), "the world's up is +z: a z-up world", "--up +z "),
    "y and -z swapped": (turned(Y_TO_MINUS_Z), "the world's up is -z", "--up -z "),
    "upside down": (turned(UPSIDE_DOWN), "the world's up is -y: an upside-down world", "--up -y "),
}


@pytest.mark.parametrize("correct", [synthetic_labels(), ffhq_like(), shapenet_like(True)],
                         ids=["synthetic", "ffhq-like", "shapenet-upper-half"])
@pytest.mark.parametrize("mistake", MISTAKES)
def test_each_mistake_is_refused_naming_its_cause_and_fix(correct, mistake):
    change, cause, options = MISTAKES[mistake]
    problem = check_conventions(change(correct)).problem()
    assert problem is not None and "the camera labels look wrong for the data set as a whole" in problem
    assert f"Likely cause: {cause}" in problem
    assert f"python -m dataloading.convert DATASET OUT {options}(DATASET" in problem
    assert f"pass {ACCEPT_FLAG}" in problem


def test_a_set_no_correction_explains_names_the_usual_causes():
    # Cameras 2.7 from (3, 0, 0) looking at it: none sees the origin, and no fix of the matrices helps.
    yaw = np.linspace(-0.4, 0.4, 5)
    labels = labels_looking_at(np.array([3.0, 0, 0]) + 2.7 * np.stack([np.sin(yaw), 0 * yaw, np.cos(yaw)], 1),
                               [3.0, 0, 0])
    problem = check_conventions(labels).problem()
    assert "in the picture of only 0% of the 5 cameras" in problem
    assert "none of the usual mistakes" in problem and "--recenter --radius 2.7" in problem


def test_unusual_sets_warn_and_fail_only_when_strict():
    labels = synthetic_labels(10)
    labels[:2] = flip_yz(labels[:2])  # 8 of 10 cameras have the origin in view
    labels[2, [3, 7, 11]] *= 5  # one camera 13.5 from the origin, still looking at it
    report = check_conventions(labels)
    assert [f.severity for f in report.findings] == ["warning", "warning"]
    assert report.problem() is None
    strict = report.problem(strict=True)
    assert "in the picture of only 80% of the 10 cameras" in strict and "2.7 to 13.5 from the origin" in strict


def test_cameras_rolled_every_way_warn_that_their_ups_disagree():
    labels = synthetic_labels(36)
    for index, angle in enumerate(np.linspace(0, 2 * np.pi, 36, endpoint=False)):  # roll about the optical axis
        roll = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
        matrix = labels[index, :16].reshape(4, 4).copy()
        matrix[:3, :3] = matrix[:3, :3] @ roll
        labels[index, :16] = matrix.ravel()
    report = check_conventions(labels)
    assert report.figures.up_agreement < 0.1 and report.diagnosis is None
    assert [f.severity for f in report.findings] == ["warning"] and report.problem() is None
    assert "the cameras' up vectors disagree (agreement 0.0" in report.problem(strict=True)


def test_the_training_check_refuses_unless_accepted():
    labels = turned(Y_TO_Z)(synthetic_labels(20))
    with pytest.raises(ValueError, match=rf"^data x: the camera labels look wrong.*--up \+z.*{ACCEPT_FLAG}"):
        check_label_conventions(labels, where="data x")
    logged = []
    check_label_conventions(labels, where="data x", accept=True, log=logged.append)
    assert logged[0].startswith(f"warning: data x: camera conventions (error, accepted with {ACCEPT_FLAG}): the "
                                f"cameras' up vectors (their -y axes) agree on")
    assert logged[1].startswith("warning: data x: Likely cause: the world's up is +z") and "--up +z" in logged[1]


# --- in the build, convert and training ------------------------------------------------------------------

def relabelled(folder, change):
    """A 6-image synthetic data set of 32 px (the micro config's size) whose labels went through `change`."""
    generate_dataset(folder, count=6, resolution=32, seed=1, progress_every=10**9)
    metadata = json.loads((folder / "dataset.json").read_text())
    labels = change(np.array([label for _, label in metadata["labels"]]))
    metadata["labels"] = [[name, label.tolist()] for (name, _), label in zip(metadata["labels"], labels)]
    (folder / "dataset.json").write_text(json.dumps(metadata))
    return folder


def test_build_refuses_inverted_labels_and_convert_matrices_world2cam_fixes_them(tmp_path):
    source = relabelled(tmp_path / "source", inverted)
    with pytest.raises(SystemExit) as error:
        build_main([str(source), str(tmp_path / "shards"), "--workers", "1"])
    message = str(error.value)
    assert "the cameras sit within 0.0 deg of each other" in message and "--matrices world2cam" in message
    assert ACCEPT_FLAG in message and not (tmp_path / "shards" / "manifest.json").exists()

    convert(source, tmp_path / "fixed", matrices="world2cam", progress=False)
    original = json.loads((relabelled(tmp_path / "original", lambda x: x) / "dataset.json").read_text())["labels"]
    fixed = json.loads((tmp_path / "fixed" / "dataset.json").read_text())["labels"]
    np.testing.assert_allclose([label for _, label in fixed], [label for _, label in original], atol=1e-6)
    manifest = build(tmp_path / "fixed", tmp_path / "shards", workers=1, progress=False)
    assert manifest["cameras"]["conventions"]["findings"] == [] and manifest["sample_count"] == 6


def test_build_accepts_a_z_up_world_knowingly_and_train_refuses_it_unless_accepted(tmp_path, capsys):
    source = relabelled(tmp_path / "source", turned(Y_TO_Z))
    with pytest.raises(ValueError, match=r"the world's up is \+z.*--up \+z"):
        build(source, tmp_path / "refused", workers=1, progress=False)
    build_main([str(source), str(tmp_path / "shards"), "--workers", "1", ACCEPT_FLAG])
    out = capsys.readouterr().out
    assert f"warning: camera conventions (error, accepted with {ACCEPT_FLAG}): the cameras' up vectors " in out
    assert "Likely cause: the world's up is +z" in out and "--up +z" in out
    record = json.loads((tmp_path / "shards" / "manifest.json").read_text())["cameras"]["conventions"]
    assert record["accepted"] and record["figures"]["up"] == pytest.approx([0, 0, 1], abs=0.02)

    with pytest.raises(ValueError, match=rf"data {tmp_path / 'shards'}.*the world's up is \+z.*{ACCEPT_FLAG}"):
        prepare_data(micro_config(), str(tmp_path / "shards"), str(tmp_path / "run"))
    prepare_data(micro_config(), str(tmp_path / "shards"), str(tmp_path / "run"), accept_camera_conventions=True)
    assert "warning: data" in capsys.readouterr().out


def test_strict_build_fails_on_warnings(tmp_path):
    def one_looking_away(labels):
        labels = labels.copy()
        labels[:1] = flip_yz(labels[:1])
        return labels
    source = relabelled(tmp_path / "source", one_looking_away)
    with pytest.raises(SystemExit, match=r"(?s)--strict.*in the picture of only 83% of the 6 cameras"):
        build_main([str(source), str(tmp_path / "strict"), "--workers", "1", "--strict"])
    manifest = build(source, tmp_path / "shards", workers=1, progress=False)
    assert [f["severity"] for f in manifest["cameras"]["conventions"]["findings"]] == ["warning"]
