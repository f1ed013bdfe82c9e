"""python -m eg3d.generate and python -m eg3d.video on an untrained micro generator saved as a snapshot."""

import argparse
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from safetensors.torch import save

from model_helpers import micro_config
from dataloading import storage
from eg3d import generate, sample_grid, video
from eg3d.networks import camera, orbit
from eg3d.networks.generator import TriPlaneGenerator
from eg3d.networks.sample_grid import code_sheet, grid_cameras, to_uint8
from eg3d.networks.snapshot import WEIGHTS_HASH_KEY, load_generator, render
from s3_fixtures import BUCKET, moto_server, no_aws_credentials  # noqa: F401 - the fixtures

imageio = pytest.importorskip("imageio.v2")
imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")

FOCAL = camera.focal_from_fov(generate.FFHQ_FOV_DEGREES)


@pytest.fixture(scope="module")
def snapshot(micro_snapshot):
    return micro_snapshot


def png(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def direct(G, seed: int, c: torch.Tensor, psi: float = 0.7) -> dict:
    """The command's render of `seed`, built by hand: z from the seed's own generator, frontal conditioning."""
    z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.model_config.z_dim)).float()
    return render(G, z, c, c_condition=camera.orbit_camera(math.pi / 2, math.pi / 2, focal=FOCAL),
                  truncation_psi=psi, truncation_cutoff=14)


def test_a_seed_gives_the_same_image_alone_or_among_others_and_equals_a_direct_render(snapshot, tmp_path):
    assert generate.main([snapshot, "--seeds", "0-7", "--batch", "3", "--out", str(tmp_path / "many"),
                          "--yaw", "0.3", "--pitch", "-0.1", "--depth"]) == 0
    assert generate.main([snapshot, "--seeds", "5", "--out", str(tmp_path / "one"), "--yaw", "0.3",
                          "--pitch", "-0.1"]) == 0
    alone = png(tmp_path / "one/seed0005.png")
    np.testing.assert_array_equal(png(tmp_path / "many/seed0005.png"), alone)

    G = load_generator(snapshot)
    c = camera.orbit_camera(math.pi / 2 + 0.3, math.pi / 2 - 0.1, focal=FOCAL)
    out = direct(G, 5, c)
    assert np.abs(alone.astype(int) - to_uint8(out["image"])[0]).max() <= 1
    depth = np.load(tmp_path / "many/seed0005-depth.npy")
    assert depth.shape == tuple(out["image_depth"].shape[-2:]) and depth.dtype == np.float32
    np.testing.assert_allclose(depth, out["image_depth"][0, 0].numpy(), atol=1e-4)
    depth_png = Image.open(tmp_path / "many/seed0005-depth.png")
    assert depth_png.size == depth.shape[::-1] and np.asarray(depth_png).dtype == np.uint16
    assert not (tmp_path / "one/seed0005-depth.png").exists()


def test_snapshot_from_s3(snapshot, tmp_path, moto_server):  # noqa: F811 - the fixture
    url = f"s3://{BUCKET}/runs/x/snapshots/snapshot-000000000"
    for name in ("G_ema.safetensors", "config.json"):
        storage.write_bytes_atomic(f"{url}/{name}", (Path(snapshot) / name).read_bytes())
    assert generate.main([url, "--seeds", "4", "--out", str(tmp_path / "s3")]) == 0
    assert generate.main([snapshot, "--seeds", "4", "--out", str(tmp_path / "local")]) == 0
    np.testing.assert_array_equal(png(tmp_path / "s3/seed0004.png"), png(tmp_path / "local/seed0004.png"))
    with pytest.raises(SystemExit) as error:
        generate.main([f"s3://{BUCKET}/nothing", "--seeds", "4", "--out", str(tmp_path / "x")])
    assert error.value.code == 2


def test_label_renders_from_the_dataset_camera(snapshot, tmp_path):
    cameras = camera.orbit_camera(torch.tensor([1.2, 1.9]), torch.tensor([1.5, 1.7]), focal=FOCAL)
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"labels": [[f"00000/img{i:08d}.png", c.tolist()] for i, c in enumerate(cameras)]}))
    assert generate.main([snapshot, "--seeds", "2", "--out", str(tmp_path / "out"),
                          "--label", f"{tmp_path / 'dataset.json'}:1"]) == 0
    expected = to_uint8(direct(load_generator(snapshot), 2, cameras[1:2])["image"])[0]
    assert np.abs(png(tmp_path / "out/seed0002.png").astype(int) - expected).max() <= 1
    with pytest.raises(SystemExit) as error:
        generate.main([snapshot, "--seeds", "2", "--out", str(tmp_path / "x"), "--label", f"{tmp_path}/dataset.json:9"])
    assert error.value.code == 2


def test_style_mixing_zero_layers_is_the_seed_all_layers_the_mix_seed(snapshot, tmp_path):
    num_ws = load_generator(snapshot).num_ws
    runs = {"plain": ["--seeds", "3"], "none": ["--seeds", "3", "--mix-seed", "9", "--mix-layers", "0"],
            "all": ["--seeds", "3", "--mix-seed", "9", "--mix-layers", str(num_ws)], "mix": ["--seeds", "9"],
            "half": ["--seeds", "3", "--mix-seed", "9", "--mix-layers", "2"]}
    images = {}
    for name, arguments in runs.items():
        assert generate.main([snapshot, *arguments, "--out", str(tmp_path / name)]) == 0
        images[name] = png(next((tmp_path / name).glob("*.png")))
    np.testing.assert_array_equal(images["none"], images["plain"])
    np.testing.assert_array_equal(images["all"], images["mix"])
    assert not np.array_equal(images["half"], images["plain"]) and not np.array_equal(images["half"], images["mix"])


@pytest.mark.parametrize("arguments, named", [(["--seeds", "0-x"], "--seeds"), (["--seeds", "3,,"], "--seeds"),
                                              (["--seeds", "1", "--mix-layers", "99"], "--mix-layers"),
                                              (["--seeds", "1", "--batch", "0"], "--batch")])
def test_bad_input_exits_2_naming_the_argument(snapshot, tmp_path, capsys, arguments, named):
    with pytest.raises(SystemExit) as error:
        generate.main([snapshot, *arguments, "--out", str(tmp_path)])
    assert error.value.code == 2 and named in capsys.readouterr().err


def test_seeds_syntax():
    assert generate.seeds_list("0-3") == [0, 1, 2, 3]
    assert generate.seeds_list("1,5,9") == [1, 5, 9]
    assert generate.seeds_list("0-1,7") == [0, 1, 7]
    assert generate.seeds_list(str(2 ** 32 - 1)) == [2 ** 32 - 1]
    for text, message in (("7-3", "the range 7-3 is empty"), (str(2 ** 32), "each in 0..4294967295")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            generate.seeds_list(text)


def test_orbit_path_follows_the_documented_formula():
    yaw, pitch = orbit.orbit_angles(8, yaw_range=0.35, pitch_range=0.25)
    # t = 0: sin 0 = 0, cos 0 = 1; t = 1/4: sin(pi/2) = 1, cos(pi/2) = 0.
    assert yaw[0].item() == pytest.approx(math.pi / 2) and pitch[0].item() == pytest.approx(math.pi / 2 + 0.25)
    assert yaw[2].item() == pytest.approx(math.pi / 2 + 0.35) and pitch[2].item() == pytest.approx(math.pi / 2)
    path = orbit.orbit_path(8, radius=2.7, focal=FOCAL)
    torch.testing.assert_close(path[[0, 2]], camera.orbit_camera(torch.tensor([math.pi / 2, math.pi / 2 + 0.35]),
                                                                 torch.tensor([math.pi / 2 + 0.25, math.pi / 2]),
                                                                 radius=2.7, focal=FOCAL))


def test_interpolation_passes_through_the_keyframes_and_loops():
    keyframes = torch.tensor([[0.0], [1.0], [3.0]])
    walk = orbit.interpolate_keyframes(keyframes, 6)
    torch.testing.assert_close(walk[:, 0], torch.tensor([0.0, 0.5, 1.0, 2.0, 3.0, 1.5]))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255 ** 2 / max(mse, 1e-10))


def test_video_is_h264_with_the_frames_of_the_orbit(snapshot, tmp_path):
    out = tmp_path / "orbit.mp4"
    assert video.main([snapshot, "--seeds", "0-1", "--frames", "6", "--fps", "12", "--batch", "4",
                       "--out", str(out)]) == 0
    reader = imageio.get_reader(out)
    meta = reader.get_meta_data()
    assert meta["codec"] == "h264" and meta["fps"] == 12 and meta["size"] == (64, 32)
    assert imageio_ffmpeg.count_frames_and_secs(str(out))[0] == 6
    first = reader.get_data(0)
    reader.close()
    G = load_generator(snapshot)
    expected = [to_uint8(direct(G, seed, orbit.orbit_path(6, focal=FOCAL)[:1])["image"])[0] for seed in (0, 1)]
    assert psnr(first, np.concatenate(expected, axis=1)) > 30


def test_video_grid_depth_and_interpolation(snapshot, tmp_path):
    out = tmp_path / "walk.mp4"
    assert video.main([snapshot, "--seeds", "0-3", "--grid", "1x2", "--interpolate", "--depth", "--frames", "4",
                       "--out", str(out)]) == 0
    reader = imageio.get_reader(out)
    assert reader.get_meta_data()["size"] == (128, 32)
    reader.close()
    with pytest.raises(SystemExit) as error:
        video.main([snapshot, "--seeds", "0-3", "--grid", "1x2", "--out", str(out)])
    assert error.value.code == 2


# --- snapshots that are not what they should be --------------------------------------------------------------

def copy_snapshot(snapshot, folder: Path, *, keep_hash: bool = True) -> Path:
    """A copy of the snapshot; without keep_hash, as one written before config.json recorded the weights' hash."""
    folder.mkdir()
    for name in ("G_ema.safetensors", "config.json"):
        (folder / name).write_bytes((Path(snapshot) / name).read_bytes())
    if not keep_hash:
        document = json.loads((folder / "config.json").read_text())
        del document[WEIGHTS_HASH_KEY]
        (folder / "config.json").write_text(json.dumps(document))
    return folder


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # the lowest mantissa bit of the last weight: a finite, plausible, wrong value
    path.write_bytes(bytes(data))


def flip_a_name_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[20] ^= ord("l") ^ ord("9")  # in the header: backbone.blocks.0.const becomes backbone.b9ocks.0.const
    path.write_bytes(bytes(data))


def with_nan(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-4:] = np.float32(np.nan).tobytes()  # the last float32 weight
    path.write_bytes(bytes(data))


def other_presets_weights(path: Path) -> None:
    config = micro_config("model.plane_channels=4", "model.mapping_layers=1")
    G = TriPlaneGenerator(config.model, config.rendering)
    path.write_bytes(save({k: v.contiguous() for k, v in G.state_dict().items()}))


def one_error_line(err: str, command: str = "generate", about: str = "SNAPSHOT ") -> str:
    """The argparse error line after the usage, about `about` (by default the snapshot; "" for any option),
    asserting that nothing else (no traceback) was printed."""
    lines = err.strip().splitlines()
    assert lines[0].startswith("usage:") and "Traceback" not in err and lines[-1].startswith(
        f"python -m eg3d.{command}: error: {about}"), err
    return lines[-1]


DAMAGES = {  # name -> (keep the recorded hash, what is done to which file, what the message says)
    "flipped bit": (True, "G_ema.safetensors", flip_last_byte, "G_ema.safetensors: damaged: its SHA-256 is not"),
    "truncated": (False, "G_ema.safetensors", lambda p: p.write_bytes(p.read_bytes()[:-1000]),
                  "G_ema.safetensors: damaged, not a whole safetensors file"),
    "header bytes": (False, "G_ema.safetensors", lambda p: p.write_bytes(b"\x07" + p.read_bytes()[1:]),
                     "G_ema.safetensors: damaged, not a whole safetensors file"),
    "nan weight": (False, "G_ema.safetensors", with_nan, "holds NaN or infinite values"),
    "another preset's weights": (False, "G_ema.safetensors", other_presets_weights,
                                 r"G_ema.safetensors does not fit .*config.json: weights of another architecture"),
    "flipped byte in a tensor's name": (True, "G_ema.safetensors", flip_a_name_byte,
                                        r"G_ema.safetensors: damaged: its SHA-256 is not the one config.json records "
                                        r"\(the file changed after it was written; its tensors missing: "
                                        r"backbone.blocks.0.const; unexpected: backbone.b9ocks.0.const\)"),
    "config not json": (True, "config.json", lambda p: p.write_text('{"config": {'), "config.json: damaged, not JSON"),
}


OUTPUTS = {generate: ["--seeds", "0", "--out", "out"], sample_grid: ["--out", "out.png"]}  # command -> its arguments


@pytest.mark.parametrize("command", OUTPUTS, ids=lambda command: command.__name__)
@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_snapshot_is_one_line_naming_the_file_and_the_fault(snapshot, tmp_path, capsys, monkeypatch,
                                                                       damage, command):
    keep_hash, name, change, message = DAMAGES[damage]
    folder = copy_snapshot(snapshot, tmp_path / "snapshot", keep_hash=keep_hash)
    change(folder / name)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        command.main([str(folder), *OUTPUTS[command]])
    line = one_error_line(capsys.readouterr().err, command.__name__.rpartition(".")[2])
    assert exit_info.value.code == 2 and re.search(message, line) and str(folder) in line, line
    assert not (tmp_path / OUTPUTS[command][-1]).exists()


def test_sample_grid_a_missing_snapshot_is_one_line(tmp_path, capsys):
    folder = tmp_path / "no-such-snapshot"
    with pytest.raises(SystemExit) as exit_info:
        sample_grid.main([str(folder), "--out", str(tmp_path / "grid.png")])
    line = one_error_line(capsys.readouterr().err, "sample_grid")
    assert exit_info.value.code == 2
    assert line.startswith(f"python -m eg3d.sample_grid: error: SNAPSHOT {folder}: expected a snapshot folder"), line


def test_sample_grid_has_rows_by_twice_cameras_tiles(snapshot, tmp_path):
    assert sample_grid.main([str(snapshot), "--out", str(tmp_path / "grid.png"), "--rows", "2", "--cameras", "3",
                             "--device", "cpu"]) == 0
    resolution = load_generator(snapshot).model_config.image_resolution
    assert Image.open(tmp_path / "grid.png").size == (2 * 3 * resolution, 2 * resolution)


def test_sample_grid_codes_layout_tiles_are_direct_renders_of_their_code_and_column_camera(snapshot, tmp_path):
    """--layout codes: rows x cameras tiles, tile (r, k) latent code r*C+k of the seed's draw seen from camera k
    and conditioned on the middle camera; each compared with a render of that code alone (the sheet renders in
    batches, so a tile must not depend on its batch)."""
    rows, columns, seed = 3, 4, 5
    out = tmp_path / "sheet.png"
    assert sample_grid.main([str(snapshot), "--out", str(out), "--layout", "codes", "--rows", str(rows), "--cameras",
                             str(columns), "--seed", str(seed), "--psi", "1", "--device", "cpu"]) == 0
    G = load_generator(snapshot)
    resolution = G.model_config.image_resolution
    sheet = png(out).astype(int)
    assert sheet.shape == (rows * resolution, columns * resolution, 3)
    z = torch.randn(rows * columns, G.model_config.z_dim, generator=torch.Generator().manual_seed(seed))
    yaw = math.pi / 2 + torch.linspace(-0.5, 0.5, columns)
    cameras = camera.orbit_camera(yaw, torch.full_like(yaw, math.pi / 2), radius=camera.FFHQ_RADIUS,
                                  focal=camera.FFHQ_FOCAL)
    tiles = []
    for r in range(rows):
        for k in range(columns):
            image = render(G, z[r * columns + k][None], cameras[k][None], c_condition=cameras[columns // 2][None],
                           truncation_psi=1.0, truncation_cutoff=14)["image"]
            tile = sheet[r * resolution:(r + 1) * resolution, k * resolution:(k + 1) * resolution]
            assert np.abs(tile - to_uint8(image)[0].astype(int)).max() <= 1, (r, k)
            tiles.append(tile)
    assert min(np.abs(a - b).mean() for i, a in enumerate(tiles) for b in tiles[i + 1:]) > 0  # all tiles differ


def test_code_sheet_refuses_codes_that_do_not_fill_its_rows(snapshot):
    G = load_generator(snapshot)
    with pytest.raises(ValueError, match="7 latent codes do not fill rows of 3 cameras"):
        code_sheet(G, torch.randn(7, G.model_config.z_dim), grid_cameras(3))


@pytest.mark.parametrize("out, message", [
    ("folder", r"argument --out: '.*folder' is a folder: expected an image file name such as '.*folder/grid.png'"),
    ("grid.nope", r"argument --out: '.*grid.nope': expected an image file name ending in .png"),
    ("no-extension", r"argument --out: '.*no-extension': expected an image file name ending in .png"),
])
def test_sample_grid_checks_its_output_file_before_opening_the_snapshot(tmp_path, capsys, out, message):
    (tmp_path / "folder").mkdir()
    with pytest.raises(SystemExit) as exit_info:  # the snapshot does not exist: --out is refused first
        sample_grid.main([str(tmp_path / "no-such-snapshot"), "--out", str(tmp_path / out)])
    assert exit_info.value.code == 2
    assert re.search(message, one_error_line(capsys.readouterr().err, "sample_grid", about=""))


def test_sample_grid_creates_the_folder_of_its_output_file(snapshot, tmp_path):
    out = tmp_path / "new" / "deeper" / "sheet.png"
    assert sample_grid.main([str(snapshot), "--out", str(out), "--layout", "codes", "--rows", "1", "--cameras", "2",
                             "--device", "cpu"]) == 0
    assert Image.open(out).size[0] == 2 * load_generator(snapshot).model_config.image_resolution


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch has CUDA")
@pytest.mark.parametrize("device, message", [("cuda", "--device cuda: this torch sees no CUDA GPU; use --device cpu"),
                                             ("banana", "--device banana: not a torch device")])
def test_a_device_this_torch_cannot_use_is_one_line(snapshot, tmp_path, capsys, device, message):
    with pytest.raises(SystemExit) as exit_info:
        sample_grid.main([str(snapshot), "--out", str(tmp_path / "grid.png"), "--device", device])
    assert exit_info.value.code == 2
    assert message in one_error_line(capsys.readouterr().err, "sample_grid", about="")


def test_help_shows_a_default_of_zero():
    assert "seed of the latent codes (default: 0)" in " ".join(sample_grid.build_parser().format_help().split())


def test_a_path_that_is_not_a_snapshot_folder_says_what_it_is(snapshot, tmp_path, capsys):
    """A missing path, one of a snapshot's files, a run's snapshots/ folder: each one line saying what to pass."""
    run = tmp_path / "run"
    (run / "snapshots").mkdir(parents=True)
    copy_snapshot(snapshot, run / "snapshots" / "snapshot-000004000")
    newest = copy_snapshot(snapshot, run / "snapshots" / "snapshot-000008000")
    cases = {tmp_path / "no-such-snapshot": "expected a snapshot folder (config.json and G_ema.safetensors): no such "
                                            "file or folder",
             newest / "config.json": f"this is one of a snapshot's files: pass its folder, {newest}",
             run / "snapshots": f"a run's folder of snapshots, not a snapshot: pass one of them, such as the newest, "
                                f"{newest}"}
    for path, message in cases.items():
        with pytest.raises(SystemExit) as exit_info:
            sample_grid.main([str(path), "--out", str(tmp_path / "grid.png")])
        line = one_error_line(capsys.readouterr().err, "sample_grid")
        assert exit_info.value.code == 2 and line.endswith(message), (path, line)
    assert not (tmp_path / "grid.png").exists()


def test_an_older_snapshot_without_a_recorded_hash_still_loads(snapshot, tmp_path):
    folder = copy_snapshot(snapshot, tmp_path / "old", keep_hash=False)
    torch.testing.assert_close(load_generator(folder).state_dict(), load_generator(snapshot).state_dict())


@pytest.mark.usefixtures("no_aws_credentials")
def test_missing_object_storage_credentials_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # never reached: signing fails first
    url = "s3://bucket/runs/x/snapshots/snapshot-000000000"
    with pytest.raises(SystemExit) as exit_info:
        generate.main([url, "--seeds", "0", "--out", str(tmp_path / "out")])
    line = one_error_line(capsys.readouterr().err)
    assert exit_info.value.code == 2
    assert f"SNAPSHOT {url}: no object-storage credentials" in line and "AWS_ACCESS_KEY_ID" in line


def test_a_run_folder_names_its_newest_snapshot(snapshot, tmp_path, capsys):
    """A run's folder (its config.json is the run's, not a snapshot's) passed as SNAPSHOT: the newest complete
    snapshot folder is named; an unfinished one (no config.json yet) is not."""
    run = tmp_path / "r1"
    for folder in ("checkpoints", "snapshots"):
        (run / folder).mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": {}}))
    for nimg in (4000, 8000):
        copy_snapshot(snapshot, run / "snapshots" / f"snapshot-{nimg:09d}")
    (run / "snapshots" / "snapshot-000012000").mkdir()  # being written: no config.json yet
    with pytest.raises(SystemExit) as exit_info:
        generate.main([str(run), "--seeds", "0", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert one_error_line(capsys.readouterr().err).endswith(
        f"SNAPSHOT {run}: a training run's folder, not a snapshot: pass one of its snapshot folders, such as the "
        f"newest, {run}/snapshots/snapshot-000008000")
