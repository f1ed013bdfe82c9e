"""python -m dataloading.faces and dataloading.face_alignment: geometry on synthetic landmarks (expected values
derived by hand), then MediaPipe on the real photos scikit-image ships (astronaut, camera, the LFW subset, and a
cat as a photo without a human face), then the command end to end into dataloading.build.

The geometry tests need neither MediaPipe nor scikit-image; the others are skipped without them
(`pip install -e '.[faces]'`; tests/run.sh installs it)."""

import io
import json
import math
import zipfile

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from dataloading import face_alignment as fa
from dataloading.build import build
from dataloading.camera_checks import CameraCheck, check_cameras
from dataloading.faces import faces, main
from s3_fixtures import BUCKET, moto_server  # noqa: F401 - the fixture

FRONTAL_FFHQ = [1, 0, 0, 0, 0, -1, 0, 0, 0, 0, -1, 2.7, 0, 0, 0, 1, 4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1]
# Deep3DFaceRecon's load_lm3d applied to BFM/similarity_Lm3D_all.mat, computed from the file, rounded.
REFERENCE_FIVE_POINTS = [[-0.3115, 0.2904, 0.1338], [0.3098, 0.2897, 0.1318], [0.0033, -0.0462, 0.5524],
                         [-0.2522, -0.3813, 0.2241], [0.2485, -0.3813, 0.2224]]
PIXELS_PER_UNIT_512 = 300 * 512 / 700  # the reference: rescale_factor 300 on a 1024 image, centre 700 -> 512
CAMERA_VIEW = np.diag([1.0, -1.0, -1.0])  # head frame (x subject's left, y up, z out of the face) -> camera axes


def head_to_camera(yaw, pitch, roll):
    """The rotation from the template's frame to camera axes, written from the docs' definition with scipy:
    Rz(roll) Rx(-pitch) Ry(yaw) in viewer axes (x right, y up, z towards the viewer)."""
    return CAMERA_VIEW @ Rotation.from_euler("ZXY", [roll, -pitch, yaw], degrees=True).as_matrix()


def synthetic_landmarks(yaw=0.0, pitch=0.0, roll=0.0, *, scale=100.0, centre=(300.0, 240.0)):
    """Face-mesh landmarks [478, 3] in pixels of a head shaped like the template, at this pose (only the points
    the library reads are set; the two corners of each eye share the eye's centre when asked through five_points)."""
    landmarks = np.zeros((fa.LANDMARK_COUNT, 3))
    points = fa.TEMPLATE_POINTS[:, 2:] @ head_to_camera(yaw, pitch, roll).T * scale + [*centre, 1000.0]
    landmarks[fa.TEMPLATE_POINTS[:, 1].astype(int)] = points
    return landmarks


# --- geometry, without MediaPipe ------------------------------------------------------------------------------

def test_five_point_template_is_the_references():
    np.testing.assert_allclose(fa.FIVE_POINT_TEMPLATE, REFERENCE_FIVE_POINTS, atol=1e-4)


@pytest.mark.parametrize("yaw, pitch, roll", [(0, 0, 0), (30, 0, 0), (0, 20, 0), (0, 0, -25), (-40, 15, 10)])
def test_head_pose_of_synthetic_heads(yaw, pitch, roll):
    pose = fa.head_pose(synthetic_landmarks(yaw, pitch, roll))
    assert (pose.yaw, pose.pitch, pose.roll) == pytest.approx((yaw, pitch, roll), abs=1e-6)
    assert pose.residual < 1e-9
    np.testing.assert_allclose(fa.pose_rotation(yaw, pitch, roll), head_to_camera(yaw, pitch, roll), atol=1e-12)


def test_pose_signs_mean_what_the_docs_say():
    """Yaw > 0: the nose tip moves to the photo's right of the eyes' midpoint; pitch > 0: it moves up (y down);
    roll > 0: the eye line turns counterclockwise on screen (the right eye rises)."""
    def nose_offset(**pose):
        landmarks = synthetic_landmarks(**pose)
        eyes = fa.five_points(landmarks)[:2].mean(0)
        return landmarks[4, :2] - eyes
    assert nose_offset(yaw=20)[0] > nose_offset()[0] + 10
    assert nose_offset(pitch=20)[1] < nose_offset()[1] - 10
    left, right = fa.five_points(synthetic_landmarks(roll=20))[:2]
    assert right[1] < left[1]


def test_frontal_face_gets_the_reference_frontal_camera():
    pose = fa.head_pose(synthetic_landmarks())
    np.testing.assert_allclose(fa.camera_label(pose.yaw, pose.pitch), FRONTAL_FFHQ, atol=1e-6)


@pytest.mark.parametrize("yaw, pitch", [(0, 0), (35, 0), (-50, 10), (20, -25), (80, 30)])
def test_cameras_sit_at_2_7_and_look_at_the_pivot_without_roll(yaw, pitch):
    label = fa.camera_label(yaw, pitch).astype(np.float64)
    cam2world = label[:16].reshape(4, 4)
    centre, right, forward = cam2world[:3, 3], cam2world[:3, 0], cam2world[:3, 2]
    assert np.linalg.norm(centre) == pytest.approx(2.7, abs=1e-5)
    to_pivot = np.array([0, 0, 0.2]) - centre
    np.testing.assert_allclose(forward, to_pivot / np.linalg.norm(to_pivot), atol=1e-5)
    assert abs(right[1]) < 1e-6  # no roll: the camera's x axis is level
    # hand-derived position: azimuth -yaw about +y from +z, elevation -pitch
    a, e = math.radians(-yaw), math.radians(-pitch)
    expected = 2.7 * np.array([math.cos(e) * math.sin(a), math.sin(e), math.cos(e) * math.cos(a)])
    np.testing.assert_allclose(centre, expected, atol=1e-5)
    assert fa.label_angles(label) == pytest.approx((yaw, pitch), abs=1e-3)
    np.testing.assert_allclose(label[16:], FRONTAL_FFHQ[16:], atol=1e-6)


@pytest.mark.parametrize("roll", [0.0, 17.0, -33.0])
def test_alignment_puts_the_five_points_where_the_reference_does(roll):
    """A frontal template face: the crop maps each template point p to the centre + (x, -y) * 219.4 pixels,
    whatever the photo's scale, place and roll (the crop is upright)."""
    landmarks = synthetic_landmarks(roll=roll, scale=73.0, centre=(410.0, 180.0))
    transform, side = fa.alignment_transform(landmarks, roll, 512)
    mapped = np.column_stack([fa.five_points(landmarks), np.ones(5)]) @ transform.T
    expected = 256 + np.array(REFERENCE_FIVE_POINTS)[:, :2] * [1, -1] * PIXELS_PER_UNIT_512
    np.testing.assert_allclose(mapped, expected, atol=0.05)
    assert side == pytest.approx(512 / PIXELS_PER_UNIT_512 * 73.0, rel=1e-3)


def reference_crop(image: Image.Image, points: np.ndarray) -> Image.Image:
    """The reference's in-the-wild crop as its scripts describe it, written independently: y flipped to y-up
    (H - 1 - y), the 8-unknown affine fit to the template, resize by 300 / s, crop 1024 around the template's
    origin, centre 700, Lanczos to 512 (pixel-index coordinates, integer rounding as there)."""
    width, height = image.size
    up = np.column_stack([points[:, 0], height - 1 - points[:, 1]])
    rows = []
    for (x, y, z), (u, v) in zip(REFERENCE_FIVE_POINTS, up):
        rows += [[x, y, z, 1, 0, 0, 0, 0], [0, 0, 0, 0, x, y, z, 1]]
    k = np.linalg.lstsq(np.array(rows), up.reshape(-1), rcond=None)[0]
    s = 300 / ((np.linalg.norm(k[0:3]) + np.linalg.norm(k[4:7])) / 2)
    tx, ty = k[3], k[7]
    w, h = int(width * s), int(height * s)
    left = int(w / 2 - 512 + (tx - width / 2) * s)
    top = int(h / 2 - 512 + (height / 2 - ty) * s)
    aligned = image.resize((w, h), Image.Resampling.BICUBIC).crop((left, top, left + 1024, top + 1024))
    return aligned.crop((162, 162, 862, 862)).resize((512, 512), Image.Resampling.LANCZOS)


def smooth_photo(width=640, height=480) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width] / 40.0
    rgb = np.stack([np.sin(x) * np.cos(y), np.sin(0.7 * x + 0.5 * y), np.cos(0.3 * x - 0.9 * y)], -1)
    return Image.fromarray(((rgb + 1) * 127.5).round().astype(np.uint8))


@pytest.mark.parametrize("scale", [60.0, 230.0])  # the crop enlarges, and shrinks
def test_crop_matches_an_independent_reference_crop(scale):
    photo = smooth_photo()
    landmarks = synthetic_landmarks(yaw=12, pitch=-6, scale=scale, centre=(330.0, 250.0))
    transform, _ = fa.alignment_transform(landmarks, 0.0, 512)
    ours = np.asarray(fa.warp(photo, transform, 512)[0], dtype=np.float64)
    theirs = np.asarray(reference_crop(photo, fa.five_points(landmarks)), dtype=np.float64)
    inside = theirs.sum(-1) > 0  # both fill outside the photo black; compare where the reference has pixels
    assert inside.mean() > 0.5
    assert np.abs(ours - theirs)[inside].mean() < 4.0  # resampling and the reference's half-pixel rounding


def test_warp_reports_what_lies_outside_the_photo():
    photo = Image.new("RGB", (100, 100), (200, 200, 200))
    shift = np.array([[1.0, 0, 50], [0, 1.0, 0]])  # photo x in 0..100 -> crop x in 50..150 of a 100 crop
    crop, outside = fa.warp(photo, shift, 100)
    assert outside == pytest.approx(0.5, abs=0.02)
    pixels = np.asarray(crop)
    assert pixels[:, :48].max() == 0 and pixels[:, 52:].min() == 200


def test_load_photo_applies_exif_orientation_and_names_unreadable_files(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # left half white
    stored = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6  # viewers turn it 90 degrees clockwise
    buffer = io.BytesIO()
    stored.save(buffer, format="PNG", exif=exif)
    upright = np.asarray(fa.load_photo(buffer.getvalue()))
    assert upright.shape == (40, 20, 3) and upright[:20].min() == 255 and upright[20:].max() == 0
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.raises(fa.FaceError, match="broken.jpg: cannot read it as an image") as error:
        fa.load_photo(tmp_path / "broken.jpg")
    assert error.value.kind == "unreadable"


def test_missing_mediapipe_says_how_to_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "mediapipe", None)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[faces\]'"):
        fa.FaceLandmarker()


def test_newer_mediapipe_without_a_model_says_how_to_give_one(monkeypatch):
    import types
    import sys
    newer = types.ModuleType("mediapipe")
    newer.__version__ = "1.2.3"
    monkeypatch.setitem(sys.modules, "mediapipe", newer)
    monkeypatch.setitem(sys.modules, "mediapipe.python", None)
    with pytest.raises(ImportError, match="mediapipe 1.2.3 has no legacy face solutions.*--landmarker PATH_OR_URL"):
        fa.FaceLandmarker()


def test_landmarker_bundles_are_checked_and_cached(tmp_path):
    bundle = tmp_path / "face_landmarker.task"
    with zipfile.ZipFile(bundle, "w") as archive:
        archive.writestr("face_detector.tflite", b"detector")
        archive.writestr("face_landmarks_detector.tflite", b"landmarks")
    digest = __import__("hashlib").sha256(bundle.read_bytes()).hexdigest()
    assert fa.resolve_landmarker(str(bundle), digest[:12]) == str(bundle)
    with pytest.raises(ValueError, match="SHA-256 mismatch"):
        fa.resolve_landmarker(str(bundle), "0" * 64)
    url = bundle.as_uri()
    cached = fa.resolve_landmarker(url, digest, cache_dir=str(tmp_path / "cache"))
    assert cached.startswith(str(tmp_path / "cache")) and open(cached, "rb").read() == bundle.read_bytes()
    bundle.unlink()
    assert fa.resolve_landmarker(url, digest, cache_dir=str(tmp_path / "cache")) == cached  # from the cache
    (tmp_path / "model.task").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a MediaPipe face landmarker bundle"):
        fa.resolve_landmarker(str(tmp_path / "model.task"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        fa.resolve_landmarker(str(tmp_path / "absent.task"))


# --- MediaPipe on real photos ------------------------------------------------------------------------------------

def photos_of_faces() -> dict[str, Image.Image]:
    """astronaut, camera (a profile) and the 100 faces of skimage's LFW subset (25x25 gray, bicubic to 256)."""
    data = pytest.importorskip("skimage.data")
    photos = {"astronaut": Image.fromarray(data.astronaut()), "camera": Image.fromarray(data.camera()).convert("RGB")}
    for index, face in enumerate(data.lfw_subset()[:100]):
        small = Image.fromarray((face * 255).round().astype(np.uint8))
        photos[f"lfw{index:03d}"] = small.resize((256, 256), Image.Resampling.BICUBIC).convert("RGB")
    return photos


@pytest.fixture(scope="module")
def model():
    pytest.importorskip("mediapipe")
    with fa.FaceLandmarker() as landmarker:
        yield landmarker


@pytest.fixture(scope="module")
def aligned(model):
    """name -> AlignedFace of every face photo and of its mirror image (name + '/mirror'), or the FaceError."""
    results = {}
    for name, photo in photos_of_faces().items():
        for suffix, image in (("", photo), ("/mirror", photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT))):
            try:
                results[name + suffix] = fa.align_face(image, model, name=name + suffix)
            except fa.FaceError as error:
                results[name + suffix] = error
    return results


@pytest.mark.slow
def test_landmarks_on_face_photos(aligned):
    for name in ("astronaut", "camera"):
        assert aligned[name].face.landmarks.shape == (478, 3)
    lfw = [aligned[f"lfw{index:03d}"] for index in range(100)]
    usable = [face for face in lfw if isinstance(face, fa.AlignedFace)]
    assert len(usable) >= 90, [str(face) for face in lfw if not isinstance(face, fa.AlignedFace)]
    assert all(isinstance(face, fa.AlignedFace) or face.kind in ("no face", "no landmarks") for face in lfw)
    astronaut = aligned["astronaut"]
    assert abs(astronaut.pose.yaw) < 10 and abs(astronaut.pose.pitch) < 10 and astronaut.outside == 0
    assert aligned["camera"].pose.yaw > 30  # the cameraman looks to the photo's right, into his camera


@pytest.mark.slow
def test_mirroring_negates_the_yaw(aligned):
    pairs = [(aligned[name], aligned[name + "/mirror"]) for name in aligned if not name.endswith("/mirror")]
    turned = [(a.pose.yaw, b.pose.yaw) for a, b in pairs
              if isinstance(a, fa.AlignedFace) and isinstance(b, fa.AlignedFace) and abs(a.pose.yaw) > 5]
    assert len(turned) >= 20
    opposite = sum(np.sign(a) == -np.sign(b) for a, b in turned)
    assert opposite >= 0.95 * len(turned), turned
    agree = [abs(a + b) for a, b in turned]
    assert np.median(agree) < 4  # |yaw| about the same both ways


def eye_line_degrees(face: fa.AlignedFace) -> float:
    left, right = np.column_stack([fa.five_points(face.face.landmarks)[:2], np.ones(2)]) @ face.transform.T
    return math.degrees(math.atan2(-(right[1] - left[1]), right[0] - left[0]))


@pytest.mark.slow
@pytest.mark.parametrize("angle", [-30, -12, 15, 40])
def test_rotating_the_photo_moves_the_roll_and_the_crop_stays_upright(model, aligned, angle):
    upright = aligned["astronaut"]
    photo = Image.fromarray(pytest.importorskip("skimage.data").astronaut())
    turned = fa.align_face(photo.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True), model)
    assert turned.pose.roll - upright.pose.roll == pytest.approx(angle, abs=2)  # PIL turns counterclockwise
    assert (turned.pose.yaw, turned.pose.pitch) == pytest.approx((upright.pose.yaw, upright.pose.pitch), abs=3)
    assert abs(eye_line_degrees(turned)) < 2
    again = fa.align_face(turned.image, model)  # the crop's own pixels: the head is upright in them
    assert abs(again.pose.roll) < 2


@pytest.mark.slow
def test_a_cat_a_tiny_photo_and_a_face_too_small(model):
    data = pytest.importorskip("skimage.data")
    with pytest.raises(fa.FaceError, match="chelsea: no face found") as error:
        fa.align_face(data.chelsea(), model, name="chelsea")
    assert error.value.kind == "no face"
    with pytest.raises(fa.FaceError, match="16x16 pixels") as error:
        fa.align_face(np.full((16, 16, 3), 128, np.uint8), model)
    assert error.value.kind == "too small"
    with pytest.raises(fa.FaceError, match="crop is 15. photo pixels wide") as error:
        fa.align_face(data.astronaut(), model, min_face_size=400)
    assert error.value.kind == "too small"


def stand_in_bundle(folder) -> str:
    """A face_landmarker.task made of the legacy wheel's own detector and face-mesh models. The tasks graph reads
    the legacy mesh model's outputs differently, so its landmarks are not faces' (MediaPipe's real bundle is a
    download, which tests cannot make): this checks the tasks back end's plumbing, not its accuracy."""
    mediapipe = pytest.importorskip("mediapipe")
    modules = __import__("pathlib").Path(mediapipe.__file__).parent / "modules"
    detector = modules / "face_detection" / "face_detection_short_range.tflite"
    mesh = modules / "face_landmark" / "face_landmark.tflite"
    if not (detector.is_file() and mesh.is_file()):
        pytest.skip("this mediapipe ships no face models to make a stand-in task bundle of")
    path = folder / "face_landmarker.task"
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(detector, "face_detector.tflite")
        archive.write(mesh, "face_landmarks_detector.tflite")
    return str(path)


@pytest.mark.slow
def test_the_tasks_back_end_runs(tmp_path):
    photo = pytest.importorskip("skimage.data").astronaut()
    with fa.FaceLandmarker(landmarker=stand_in_bundle(tmp_path)) as tasks:
        assert tasks.backend == "tasks" and "face_landmarker.task" in tasks.describe()
        found = tasks.find_faces(photo)
    assert len(found) == 1
    assert found[0].landmarks.shape == (478, 3) and np.isfinite(found[0].landmarks).all()


# --- the command -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """A few photos as people have them: JPEG, PNG, WebP, an EXIF-turned JPEG, two faces in one photo, a cat,
    a 16x16 image and a corrupt file, in a folder with a subfolder."""
    data = pytest.importorskip("skimage.data")
    folder = tmp_path_factory.mktemp("photos")
    (folder / "more").mkdir()
    astronaut = Image.fromarray(data.astronaut())
    astronaut.save(folder / "astronaut.jpg", quality=95)
    Image.fromarray(data.camera()).save(folder / "more" / "camera.png")
    Image.fromarray(data.chelsea()).save(folder / "chelsea.webp")
    Image.new("RGB", (16, 16), (120, 100, 90)).save(folder / "tiny.png")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(200)))
    exif = Image.Exif()
    exif[0x0112] = 8  # viewers turn it 90 degrees counterclockwise
    astronaut.rotate(-90, expand=True).save(folder / "turned.jpg", exif=exif, quality=95)
    pair = Image.new("RGB", (1100, 512), (90, 90, 90))
    pair.paste(astronaut, (0, 0))
    pair.paste(astronaut.resize((300, 300)), (700, 100))
    pair.save(folder / "two.jpg", quality=95)
    (folder / "notes.txt").write_text("not a photo")
    return folder


@pytest.mark.slow
def test_command_end_to_end(photo_folder, tmp_path, capsys):
    pytest.importorskip("mediapipe")
    out = tmp_path / "faces"
    main([str(photo_folder), str(out), "--resolution", "256"])
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["photos_found"] == 7 and report["faces"] == 4
    skipped = {kind: [source.rsplit("/", 1)[-1] for source, _ in items] for kind, items in report["skipped"].items()}
    assert skipped == {"unreadable": ["corrupt.jpg"], "too small": ["tiny.png"], "no face": ["chelsea.webp"]}
    assert [(source.rsplit("/", 1)[-1], count) for source, count, _ in report["several_faces"]] == [("two.jpg", 2)]
    assert sum(report["histogram"]["yaw"]) == sum(report["histogram"]["pitch"]) == 4
    assert report["images_per_second"] > 0
    for line in ("4 faces from 7 photos", "skipped, unreadable: 1", "skipped, no face: 1", "several faces",
                 "yaw (degrees):", "photos in", "next: python -m dataloading.build"):
        assert line in printed

    metadata = json.loads((out / "dataset.json").read_text())
    names = [name for name, _ in metadata["labels"]]
    sources = dict(metadata["sources"])
    assert sorted(sources[name].rsplit("/", 1)[-1] for name in names) == ["astronaut.jpg", "camera.png", "turned.jpg",
                                                                            "two.jpg"]
    by_source = {sources[name].rsplit("/", 1)[-1]: Image.open(out / name) for name in names}
    assert all(image.size == (256, 256) and image.mode == "RGB" for image in by_source.values())
    difference = np.abs(np.asarray(by_source["astronaut.jpg"], float) - np.asarray(by_source["turned.jpg"], float))
    assert difference.mean() < 6  # EXIF orientation applied: the same crop, up to JPEG and resampling
    labels = np.array([label for _, label in metadata["labels"]])
    centres = labels[:, [3, 7, 11]]
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 2.7, atol=1e-5)
    forward = labels[:, [2, 6, 10]]
    towards_pivot = np.array([0, 0, 0.2]) - centres
    np.testing.assert_allclose(forward, towards_pivot / np.linalg.norm(towards_pivot, axis=1, keepdims=True), atol=1e-5)
    assert check_cameras(labels, CameraCheck(ray_start=2.25, ray_end=3.3)).problem(strict=True) is None

    manifest = build(str(out), str(tmp_path / "shards"), camera_check=CameraCheck(ray_start=2.25, ray_end=3.3),
                     workers=1, progress=False, strict=True)
    assert manifest["sample_count"] == 4 and manifest["resolution"] == 256

    # a rerun skips what is done and writes the same files
    before = {path: path.read_bytes() for path in out.rglob("*") if path.suffix in (".png", ".json")}
    again = faces(str(photo_folder), out, resolution=256, progress=False)
    assert again["processed_this_run"] == 0 and again["faces"] == 4
    after = {path: path.read_bytes() for path in out.rglob("*") if path.suffix in (".png", ".json")}
    assert before.keys() == after.keys()
    assert all(before[path] == after[path] for path in before if path.name != "report.json")

    with pytest.raises(SystemExit, match="other settings"):
        main([str(photo_folder), str(out), "--resolution", "512"])
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(SystemExit, match="not empty"):
        main([str(photo_folder), str(tmp_path / "taken")])
    with pytest.raises(SystemExit, match="absent: no such folder"):
        main([str(tmp_path / "absent"), str(tmp_path / "x")])


@pytest.mark.slow
def test_command_resumes_a_cut_run_and_reads_zips_with_workers(photo_folder, tmp_path):
    pytest.importorskip("mediapipe")
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(photo_folder.rglob("*")):
            if path.is_file():
                bundle.write(path, path.relative_to(photo_folder).as_posix())
    out = tmp_path / "faces"
    first = faces(str(archive), out, resolution=128, workers=2, progress=False)
    assert first["faces"] == 4 and first["processed_this_run"] == 7
    assert all(source.startswith("zip://") and source.endswith(f"::{archive}")
               for _, source in json.loads((out / "dataset.json").read_text())["sources"])
    # cut the run short: drop the last two records and one crop, as a crash would leave it
    log = (out / "faces.jsonl").read_text().splitlines()
    (out / "faces.jsonl").write_text("\n".join(log[:-2]) + "\n" + log[-1][:20])
    kept = json.loads(log[1])
    (out / kept["name"]).unlink(missing_ok=True)
    resumed = faces(str(archive), out, resolution=128, workers=1, progress=False)
    assert resumed["faces"] == 4 and resumed["photos_found"] == 7
    assert resumed["processed_this_run"] == 2 + (kept["status"] == "ok")
    labels = json.loads((out / "dataset.json").read_text())["labels"]
    assert all((out / name).is_file() for name, _ in labels) and len(labels) == 4


@pytest.mark.slow
def test_command_reads_photos_from_object_storage(moto_server, photo_folder, tmp_path):  # noqa: F811
    pytest.importorskip("mediapipe")
    from dataloading import storage

    for name in ("astronaut.jpg", "chelsea.webp"):
        storage.write_bytes_atomic(f"s3://{BUCKET}/photos/{name}", (photo_folder / name).read_bytes())
    report = faces(f"s3://{BUCKET}/photos", tmp_path / "faces", resolution=128, progress=False)
    assert report["faces"] == 1 and list(report["skipped"]) == ["no face"]
    sources = dict(json.loads((tmp_path / "faces" / "dataset.json").read_text())["sources"])
    assert list(sources.values()) == [f"s3://{BUCKET}/photos/astronaut.jpg"]
