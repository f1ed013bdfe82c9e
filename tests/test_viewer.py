"""python -m eg3d.viewer: the renders behind the page, then the page itself in Debian's headless Chromium; the
photo inversion on scikit-image's astronaut with MediaPipe (the faces extra), through its handler and the page."""

import io
import json
import math
import shlex
import shutil
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from model_helpers import face_photos, micro_config
from distributed_helpers import free_port
from dataloading import face_alignment
from eg3d import generate, invert, viewer
from eg3d.networks import camera, orbit
from eg3d.networks.generator import TriPlaneGenerator
from eg3d.networks.sample_grid import to_uint8
from eg3d.networks.snapshot import SnapshotError, load_generator, render, save_snapshot

imageio = pytest.importorskip("imageio.v2")
pytest.importorskip("gradio")

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
# An off-centre view with every control away from its default.
VIEW = viewer.View(seed=5, truncation_psi=0.6, yaw=20.0, pitch=-10.0, fov=21.5, radius=2.9)


@pytest.fixture(scope="module")
def snapshot(micro_snapshot):
    return micro_snapshot


@pytest.fixture
def view_server(snapshot, tmp_path):
    return viewer.Viewer(load_generator(snapshot), snapshot, "cpu", tmp_path)


def by_hand(G, view: viewer.View) -> np.ndarray:
    """The view rendered without the viewer: z from the seed's RandomState, frontal conditioning, cutoff 14."""
    focal = camera.focal_from_fov(view.fov)
    z = torch.from_numpy(np.random.RandomState(view.seed).randn(1, G.model_config.z_dim)).float()
    c = camera.orbit_camera(math.pi / 2 + math.radians(view.yaw), math.pi / 2 + math.radians(view.pitch),
                            radius=view.radius, focal=focal)
    condition = camera.orbit_camera(math.pi / 2, math.pi / 2, radius=view.radius, focal=focal)
    out = render(G, z, c, c_condition=condition, truncation_psi=view.truncation_psi, truncation_cutoff=14)
    return to_uint8(out["image"])[0]


def run_generate_command(command: str, out: Path) -> np.ndarray:
    """Run the page's eg3d.generate command line (its --out replaced by `out`); the seed's PNG."""
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "eg3d.generate"]
    argv = argv[3:]
    argv[argv.index("--out") + 1] = str(out)
    assert generate.main(argv) == 0
    return np.asarray(Image.open(next(p for p in out.glob("seed*.png") if not p.stem.endswith("-depth"))))


def test_a_view_equals_a_render_by_hand_and_the_generate_command_it_shows(view_server, tmp_path):
    image, depth = view_server.render(VIEW)
    np.testing.assert_array_equal(image, by_hand(view_server.G, VIEW))
    np.testing.assert_array_equal(image, run_generate_command(view_server.generate_command(VIEW), tmp_path / "gen"))
    frontal, _ = view_server.render(viewer.View(seed=5, truncation_psi=0.6))
    assert np.abs(frontal.astype(int) - image).mean() > 1  # the camera controls move the camera

    png, depth_png, npy = view_server.view_files(VIEW, image, depth)
    np.testing.assert_array_equal(np.asarray(Image.open(png)), image)
    np.testing.assert_array_equal(np.load(npy), depth)
    assert np.asarray(Image.open(depth_png)).dtype == np.uint16


def test_out_of_range_controls_are_refused_with_their_names(view_server):
    for bad, name in [(viewer.View(fov=0), "field of view"), (viewer.View(radius=-1), "camera distance"),
                      (viewer.View(seed=-3), "seed")]:
        with pytest.raises(ValueError, match=name):
            view_server.render(bad)


FRONTAL = (0, 0.7, 0.0, 0.0, 18.837, 2.7)  # seed, psi, yaw, pitch, fov, radius: the page's controls in order
BAD_CONTROLS = {  # control index -> (its name in the page, values it refuses)
    0: ("seed", [-3, 1.5, math.nan, None, 2 ** 32]), 1: ("truncation psi", [math.nan, math.inf, None, "x", 1e30]),
    2: ("yaw", [math.nan, -math.inf]), 3: ("pitch", [90, -90, math.nan]), 4: ("field of view", [0, 180, math.nan]),
    5: ("camera distance", [0, -1, math.nan, math.inf, 1e30]),
}
BAD_VIEWS = [(index, name, value) for index, (name, values) in BAD_CONTROLS.items() for value in values]


def with_control(index: int, value) -> tuple:
    return tuple(value if i == index else default for i, default in enumerate(FRONTAL))


def page_actions(view_server) -> dict:
    """The page's handlers by name, as Gradio calls them (the errors they raise are the page's messages)."""
    import gradio as gr  # noqa: F401 - build_app's
    return {function.name: function.fn for function in viewer.build_app(view_server).fns.values()}


@pytest.mark.parametrize("index, name, value", BAD_VIEWS, ids=[f"{n}={v}" for _, n, v in BAD_VIEWS])
def test_every_control_refuses_values_out_of_range_by_name(index, name, value):
    with pytest.raises(ValueError, match=f"^{name} .*: expected "):
        viewer.read_view(*with_control(index, value))


def test_the_page_answers_bad_controls_and_bad_snapshots_with_a_message(view_server, snapshot, tmp_path):
    import gradio as gr
    actions = page_actions(view_server)
    assert viewer.read_view(*FRONTAL) == viewer.View(seed=0, truncation_psi=0.7, fov=18.837, radius=2.7)
    for action, arguments, message in [
        ("show", with_control(1, math.nan), "truncation psi nan: expected a finite number"),
        ("show", with_control(4, 0), r"field of view 0.0: expected a finite number > 0 and < 180 \(degrees\)"),
        ("make_orbit", with_control(3, 90), "pitch 90.0: expected"),
        ("make_mesh", (4, *FRONTAL), "mesh grid resolution 4.0: expected a finite number >= 8"),
        ("make_mesh", (64, *with_control(5, math.inf)), "camera distance inf"),
    ]:
        with pytest.raises(gr.Error, match=message):
            actions[action](*arguments)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "config.json").write_bytes((Path(snapshot) / "config.json").read_bytes())
    (damaged / "G_ema.safetensors").write_bytes((Path(snapshot) / "G_ema.safetensors").read_bytes()[:-10])
    with pytest.raises(gr.Error, match=f"{damaged}/G_ema.safetensors: damaged, not a whole safetensors file"):
        actions["load"](str(damaged), *FRONTAL)
    assert view_server.url == snapshot  # the current snapshot stays


def test_the_orbit_preview_is_an_mp4_of_image_and_depth_along_the_video_path(view_server):
    frames = imageio.mimread(view_server.orbit(VIEW, frames=12, fps=12))
    size = view_server.G.model_config.image_resolution
    assert len(frames) == 12 and frames[0].shape == (size, 2 * size, 3)
    # Frame 0 is the orbit's first camera, the one eg3d.video starts at: compare its image half (H.264 is lossy).
    yaw, pitch = orbit.orbit_angles(12)
    start = viewer.View(seed=VIEW.seed, truncation_psi=VIEW.truncation_psi, fov=VIEW.fov, radius=VIEW.radius,
                        yaw=math.degrees(yaw[0] - math.pi / 2), pitch=math.degrees(pitch[0] - math.pi / 2))
    expected = by_hand(view_server.G, start).astype(float)
    assert np.abs(frames[0][:, :size].astype(float) - expected).mean() < 8


def test_the_mesh_files_hold_the_same_coloured_surface(view_server):
    paths, status = view_server.mesh(VIEW, resolution=32)
    glb, ply, obj = (trimesh.load(p, force="mesh") for p in paths)
    assert len(ply.faces) > 0 and len(glb.faces) == len(ply.faces) == len(obj.faces)
    half = view_server.G.rendering_config.box_warp / 2
    assert np.abs(ply.vertices).max() <= half + 1e-6  # inside the tri-plane box, in world units
    assert ply.visual.vertex_colors.shape == (len(ply.vertices), 4)
    assert f"{len(ply.faces)} faces" in status


# --- a face photo, inverted ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """skimage's astronaut (a face) and chelsea (a cat) as JPEGs, and the astronaut's face found by the library."""
    folder = face_photos(tmp_path_factory.mktemp("photos"))
    with face_alignment.FaceLandmarker() as model:
        face = face_alignment.align_face(face_alignment.load_photo(folder / "astronaut.jpg"), model)
    return {"folder": folder, "astronaut": folder / "astronaut.jpg", "chelsea": folder / "chelsea.jpg", "face": face}


@pytest.mark.slow
def test_an_uploaded_photo_gives_its_crop_camera_previews_and_3d_result(view_server, photos):
    shown_before = view_server.render(VIEW)[0]
    face = photos["face"]
    crop, camera_text = page_actions(view_server)["show_face"](str(photos["astronaut"]))
    np.testing.assert_array_equal(np.asarray(crop), np.asarray(face.image))
    assert camera_text == invert.camera_angles(face)
    assert f"yaw {face.pose.yaw:+.1f}, pitch {face.pose.pitch:+.1f} degrees" in camera_text

    reports = list(page_actions(view_server)["invert_photo"](str(photos["astronaut"]), 4, 2, 32))
    statuses = [report[3] for report in reports]
    assert statuses[:-1] == [f"fitting the latent: step {i} of 4" for i in range(5)] + [
        f"tuning the generator: step {i} of 2" for i in (1, 2)]
    assert statuses[-1].startswith("done: MSE")
    assert all(report[1] == camera_text for report in reports)
    assert reports[0][2].shape == (32, 32, 3) and reports[1][2].shape == (32, 2 * 32, 3)  # target | current fit
    crop, _, preview, _, files, video, model, mesh_files, mesh_status = reports[-1]
    assert preview.shape == (32, 3 * 32, 3)  # target | inverted | tuned
    np.testing.assert_array_equal(preview[:, :32], to_uint8(invert.image_tensor(face.image, 32))[0])
    assert [Path(f).name for f in files] == ["crop.png", "camera.json", "w.pt"]
    np.testing.assert_array_equal(np.float32(json.loads(Path(files[1]).read_text())["label"]), face.label)
    assert torch.equal(torch.load(files[2])["camera"], torch.from_numpy(face.label)[None])
    frames = imageio.mimread(video)
    assert len(frames) == 48 and frames[0].shape == (32, 2 * 32, 3)  # image | depth
    assert model == mesh_files[0] and len(trimesh.load(mesh_files[1]).faces) > 0
    assert mesh_status.startswith("astronaut.jpg (inverted): ")
    np.testing.assert_array_equal(view_server.render(VIEW)[0], shown_before)  # the viewer's generator stays


def test_a_photo_without_a_face_is_answered_with_a_message(view_server, photos):
    import gradio as gr
    actions, cat = page_actions(view_server), str(photos["chelsea"])
    message = "chelsea.jpg: no face found; use a photo where a human face is clearly visible"
    with pytest.raises(gr.Error, match=message):
        actions["show_face"](cat)
    with pytest.raises(gr.Error, match=message):
        list(actions["invert_photo"](cat, 10, 0, 32))
    with pytest.raises(gr.Error, match="inversion steps 0.0: expected a finite number >= 1"):
        list(actions["invert_photo"](str(photos["astronaut"]), 0, 0, 32))


def test_without_mediapipe_the_page_says_how_to_install_it(snapshot, tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "mediapipe", None)
    app = viewer.build_app(viewer.Viewer(load_generator(snapshot), snapshot, "cpu", tmp_path))
    notes = [block.value for block in app.blocks.values() if getattr(block, "elem_id", None) == "faces-missing"]
    assert len(notes) == 1 and "pip install -e '.[faces]'" in notes[0]
    assert "invert_photo" not in {function.name for function in app.fns.values()}


# --- the page, in a real browser ---------------------------------------------------------------------------

@pytest.fixture
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Debian's chromium and chromium-driver are not installed (tests/run.sh installs them)")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1300"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(condition, what: str, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"the page never showed {what} within {timeout} s")


def image_src(driver, element_id: str) -> str | None:
    from selenium.webdriver.common.by import By
    found = driver.find_elements(By.CSS_SELECTOR, f"#{element_id} img")
    return found[0].get_attribute("src") if found else None


def fetch_png(url: str) -> np.ndarray:
    with urllib.request.urlopen(url, timeout=30) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"))


def set_slider(driver, element_id: str, value: float) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    box = driver.find_element(By.CSS_SELECTOR, f"#{element_id} input[type=number]")
    box.clear()
    box.send_keys(str(value), Keys.ENTER)


@pytest.mark.slow
def test_the_page_renders_follows_a_control_and_shows_what_a_direct_render_gives(view_server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    port = free_port()
    app = viewer.build_app(view_server)
    viewer.serve(app, host="127.0.0.1", port=port, workdir=tmp_path, block=False)
    try:
        browser.get(f"http://127.0.0.1:{port}")
        first = wait_for(lambda: image_src(browser, "image"), "an image")
        np.testing.assert_array_equal(fetch_png(first), view_server.render(viewer.View())[0])

        set_slider(browser, "yaw", 30)
        moved = wait_for(lambda: (src := image_src(browser, "image")) != first and src, "a new image after yaw 30")
        expected = viewer.View(yaw=30)
        shown = fetch_png(moved)
        np.testing.assert_array_equal(shown, by_hand(view_server.G, expected))
        assert np.abs(shown.astype(int) - fetch_png(first)).mean() > 1
        assert image_src(browser, "depth")
        command = browser.find_element(By.CSS_SELECTOR, "#command textarea").get_attribute("value")
        np.testing.assert_array_equal(run_generate_command(command, tmp_path / "gen"), shown)

        browser.find_element(By.CSS_SELECTOR, "#orbit-button").click()
        browser.find_element(By.CSS_SELECTOR, "#mesh-button").click()
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#orbit video[src]"), "the orbit video")
        status = wait_for(lambda: browser.find_element(By.CSS_SELECTOR, "#mesh-status textarea").get_attribute("value"),
                          "the mesh status")
        assert "faces" in status
        assert len(browser.find_elements(By.CSS_SELECTOR, "#mesh-files a")) == 3
        browser.save_screenshot(str(tmp_path / "viewer.png"))
    finally:
        app.close()


def textarea(driver, element_id: str) -> str:
    from selenium.webdriver.common.by import By
    return driver.find_element(By.CSS_SELECTOR, f"#{element_id} textarea").get_attribute("value")


@pytest.mark.slow
def test_the_page_inverts_an_uploaded_photo(view_server, browser, photos, tmp_path):
    from selenium.webdriver.common.by import By
    port = free_port()
    app = viewer.build_app(view_server)
    viewer.serve(app, host="127.0.0.1", port=port, workdir=tmp_path, block=False)
    try:
        browser.get(f"http://127.0.0.1:{port}")
        wait_for(lambda: image_src(browser, "image"), "the first render")
        browser.find_element(By.CSS_SELECTOR, "#photo input[type=file]").send_keys(str(photos["astronaut"]))
        face = photos["face"]
        assert wait_for(lambda: textarea(browser, "face-camera"), "the estimated camera") == invert.camera_angles(face)
        np.testing.assert_array_equal(fetch_png(wait_for(lambda: image_src(browser, "crop"), "the crop")),
                                      np.asarray(face.image))

        for element_id, value in (("invert-steps", 4), ("tune-steps", 2), ("mesh-resolution", 32)):
            set_slider(browser, element_id, value)
        browser.find_element(By.CSS_SELECTOR, "#invert-button").click()
        status = wait_for(lambda: (text := textarea(browser, "invert-status")).startswith("done") and text,
                          "the inversion's result", timeout=300)
        assert "4 + 2 steps" in status
        assert fetch_png(image_src(browser, "invert-preview")).shape == (32, 3 * 32, 3)  # target | inverted | tuned
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#orbit video[src]"), "the result's orbit video")
        assert textarea(browser, "mesh-status").startswith("astronaut.jpg (inverted): ")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#invert-files a")) == 3
    finally:
        app.close()


def test_load_switches_snapshots_and_a_wrong_url_keeps_the_current_one(view_server, snapshot, tmp_path):
    config = micro_config("rendering.neural_rendering_resolution_initial=12")
    torch.manual_seed(1)
    other = save_snapshot(TriPlaneGenerator(config.model, config.rendering), config, tmp_path / "other")
    before = view_server.render(VIEW)[0]
    assert "neural rendering at 12" in view_server.load(str(other))
    assert np.abs(view_server.render(VIEW)[0].astype(int) - before).mean() > 1  # other weights, other image
    with pytest.raises(SnapshotError, match="nothing-here: expected a snapshot folder .*no such file or folder"):
        view_server.load(str(tmp_path / "nothing-here"))
    assert view_server.url == str(other) and "neural rendering at 12" in view_server.describe()
