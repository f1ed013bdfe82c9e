"""Reference network pickles: read without executing anything, renamed to our tensors exactly, checked
against the preset, and imported as a snapshot. The pickles are written by tests/reference_pickles.py."""

import builtins
import dataclasses
import io
import json
import os
import pickle
import re
import subprocess
import sys

import pytest
import torch

import reference_pickles
from eg3d import import_pickle
from eg3d.config import TrainConfig, apply_overrides
from eg3d.config.presets import tiny
from eg3d.networks import camera
from eg3d.networks.discriminator import DualDiscriminator
from eg3d.networks.generator import TriPlaneGenerator
from eg3d.networks.reference_pickle import apply_to_config, read_reference_pickle
from eg3d.networks.snapshot import load_generator, render

NEURAL_RENDERING_RESOLUTION = tiny().rendering.neural_rendering_resolution_initial  # what a snapshot renders at


def tiny_legacy():
    config = tiny()
    config.rendering.legacy_plane_order = True
    return config


@pytest.fixture(scope="module")
def networks():
    """Tiny G, D and G_ema, each with its own random weights."""
    config = tiny_legacy()
    torch.manual_seed(1)
    G, D, G_ema = TriPlaneGenerator(config.model, config.rendering), DualDiscriminator(config.model), \
        TriPlaneGenerator(config.model, config.rendering)
    for net in (G, G_ema):  # noise strengths and biases are zero at init: make them tell tensors apart
        with torch.no_grad():
            for name, p in net.named_parameters():
                if name.endswith(("noise_strength", "bias")):
                    p.uniform_(-0.1, 0.1)
            for name, b in net.named_buffers():
                if name.endswith("w_avg"):
                    b.normal_()
    return G, D, G_ema.eval()


@pytest.fixture(scope="module")
def written(networks):
    G, D, G_ema = networks
    return reference_pickles.reference_pickle(G, D, G_ema, neural_rendering_resolution=NEURAL_RENDERING_RESOLUTION)


def cameras(n=1):
    yaw, pitch = torch.tensor([0.3] * n), torch.tensor([1.4] * n)
    return camera.orbit_camera(yaw, pitch)


def assert_same_tensors(ours: torch.nn.Module, loaded: torch.nn.Module):
    expected, got = ours.state_dict(), loaded.state_dict()
    assert list(expected) == list(got)
    unequal = [name for name in expected if not torch.equal(expected[name], got[name])]
    assert not unequal, unequal


def test_round_trip_every_tensor_exactly(networks, written):
    G, D, G_ema = networks
    read = read_reference_pickle(written)
    assert "torch_utils" not in sys.modules and "training" not in sys.modules
    config = apply_to_config(tiny(), read)
    assert config.rendering.legacy_plane_order and config.model == tiny().model
    for key, ours, fresh in (("G", G, TriPlaneGenerator(config.model, config.rendering)),
                             ("D", D, DualDiscriminator(config.model)),
                             ("G_ema", G_ema, TriPlaneGenerator(config.model, config.rendering))):
        fresh.load_state_dict(read.state[key])
        assert_same_tensors(ours, fresh)
    assert not torch.equal(read.state["G"]["decoder.out.weight"], read.state["G_ema"]["decoder.out.weight"])
    assert any("legacy" in line for line in read.notes)


def test_settings_read_from_the_pickle(networks):
    G, D, _ = networks
    config = apply_overrides(tiny_legacy(), ["rendering.ray_start=null", "rendering.ray_end=null",
                                             "model.pose_conditioning=false", "model.camera_scale=2.0"])
    G_custom = TriPlaneGenerator(config.model, config.rendering)
    G_custom.load_state_dict(G.state_dict())
    read = read_reference_pickle(reference_pickles.reference_pickle(G_custom, None, G_custom,
                                                                     neural_rendering_resolution=16))
    assert read.rendering["ray_start"] is None and read.rendering["ray_end"] is None
    assert read.model["pose_conditioning"] is False and read.model["camera_scale"] == 2.0
    assert read.state["D"] is None and "disc_channel_base" not in read.model
    imported = apply_to_config(tiny(), read)
    assert imported.rendering.neural_rendering_resolution_initial == 16 and imported.rendering.ray_start is None
    assert read_reference_pickle(reference_pickles.dumps(
        {"G_ema": reference_pickles.generator(G_custom, neural_rendering_resolution=16)}),
        legacy_plane_order=False).rendering["legacy_plane_order"] is False


def test_g_ema_renders_the_same_image(networks, written):
    _, _, G_ema = networks
    config = apply_to_config(tiny(), read := read_reference_pickle(written))
    loaded = TriPlaneGenerator(config.model, config.rendering).eval()
    loaded.load_state_dict(read.state["G_ema"])
    z, c = torch.randn(1, 64, generator=torch.Generator().manual_seed(3)), cameras()
    expected = render(G_ema, z, c, neural_rendering_resolution=NEURAL_RENDERING_RESOLUTION)
    got = render(loaded, z, c, neural_rendering_resolution=NEURAL_RENDERING_RESOLUTION)
    for key in ("image", "image_raw", "image_depth"):
        assert torch.equal(expected[key], got[key]), key


def with_module_src(obj, source: str):
    """Every persistent module under `obj` carrying `source` as its module_src."""
    if isinstance(obj, reference_pickles.Persistent):
        obj.meta["module_src"] = source
        state = obj.meta["state"]
    else:
        state = getattr(obj, "__dict__", {})
    for child in (state.get("_modules") or {}).values():
        with_module_src(child, source)
    return obj


def test_module_source_is_never_executed(networks, tmp_path):
    G, _, G_ema = networks
    marker = tmp_path / "executed"
    source = f"import os\nopen({str(marker)!r}, 'w').write('the module source ran')\nos.system('true')\n"
    snapshot = {"G": None, "D": None, "augment_pipe": None,
                "G_ema": with_module_src(reference_pickles.generator(G_ema, neural_rendering_resolution=32), source)}
    data = reference_pickles.dumps(snapshot)
    assert source.encode() in data  # the file really carries the source
    read = read_reference_pickle(data)
    assert not marker.exists()
    fresh = TriPlaneGenerator(tiny_legacy().model, tiny_legacy().rendering)
    fresh.load_state_dict(read.state["G_ema"])
    assert_same_tensors(G_ema, fresh)


class _Call:
    """Pickles as a direct call of `function(*args)`, as a malicious file would."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@pytest.mark.parametrize("function", [os.system, builtins.eval], ids=["os.system", "builtins.eval"])
def test_a_direct_global_is_refused(written, tmp_path, function):
    marker = tmp_path / "executed"
    argument = f"touch {marker}" if function is os.system else f"open({str(marker)!r}, 'w')"
    data = reference_pickles.dumps({"G_ema": None, "augment_pipe": _Call(function, argument)})
    with pytest.raises(pickle.UnpicklingError, match=rf"{function.__name__} is not allowed.*not a plain reference"):
        read_reference_pickle(data)
    assert not marker.exists()


ANOTHER_ARCHITECTURE = ["model.mapping_layers=3", "model.backbone_channel_base=1024", "model.backbone_channel_max=32",
                        "model.image_resolution=32", "model.sr_input_resolution=16", "model.sr_channels=[16,8]",
                        "model.disc_channel_base=512", "model.disc_channel_max=64", "model.disc_mapping_layers=1"]


def test_a_pickle_of_another_architecture_imports_with_the_presets_training_settings(tmp_path, capsys):
    """Widths, depths, resolutions and mapping layers other than any preset's: the architecture is read from the
    pickle, the training settings are the preset's, and the snapshot renders what the pickled generator does."""
    config = apply_overrides(tiny_legacy(), ANOTHER_ARCHITECTURE)
    torch.manual_seed(2)
    G, D = TriPlaneGenerator(config.model, config.rendering).eval(), DualDiscriminator(config.model)
    (tmp_path / "other.pkl").write_bytes(reference_pickles.reference_pickle(G, D, G, neural_rendering_resolution=16))
    assert import_pickle.main([str(tmp_path / "other.pkl"), str(tmp_path / "snapshot"), "--preset", "tiny"]) == 0
    printed = capsys.readouterr().out
    assert "model.mapping_layers: 2 in the preset -> 3 from the pickle" in printed
    assert "model.sr_channels: (32, 16) in the preset -> (16, 8) from the pickle" in printed
    imported = TrainConfig.from_dict(json.loads((tmp_path / "snapshot" / "config.json").read_text())["config"])
    assert imported.model == config.model
    assert dataclasses.replace(imported, model=tiny().model, rendering=tiny().rendering) == tiny()
    z, c = torch.randn(1, 64, generator=torch.Generator().manual_seed(4)), cameras()
    assert torch.equal(render(G, z, c)["image"], render(load_generator(tmp_path / "snapshot"), z, c)["image"])


FOREIGN = {"StyleGAN2": (reference_pickles.stylegan2_pickle, "G_ema is a StyleGAN2 generator, not an EG3D one"),
           "StyleGAN3": (reference_pickles.stylegan3_pickle, "G_ema is a StyleGAN3 generator, not an EG3D one"),
           "PanoHead": (None, r"G_ema is a tri-grid \(PanoHead\) generator \(planes of depth 3.*not an EG3D one")}


@pytest.mark.parametrize("kind", FOREIGN)
def test_other_generators_pickles_are_named_as_such(networks, tmp_path, capsys, kind):
    write, message = FOREIGN[kind]
    data = write() if write else reference_pickles.trigrid_pickle(networks[2])
    with pytest.raises(ValueError, match=message):
        read_reference_pickle(data)
    (tmp_path / "net.pkl").write_bytes(data)
    assert import_pickle.main([str(tmp_path / "net.pkl"), str(tmp_path / "out")]) == 2
    assert re.search(f"^error: {tmp_path / 'net.pkl'}: {message}", capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_a_tensor_of_the_wrong_shape_is_named(networks):
    _, _, G_ema = networks
    G_bad = TriPlaneGenerator(tiny_legacy().model, tiny_legacy().rendering)
    G_bad.load_state_dict(G_ema.state_dict())
    G_bad.superresolution.block1.conv0.weight = torch.nn.Parameter(torch.zeros(16, 8, 3, 3))
    data = reference_pickles.reference_pickle(G_bad, None, G_bad, neural_rendering_resolution=32)
    with pytest.raises(ValueError, match=r"tensor superresolution\.block1\.conv0\.weight .*has shape \[16, 8, 3, 3\] "
                                         r"in the pickle but ours is \[16, 32, 3, 3\].*model\.sr_channels"):
        read_reference_pickle(data)


def test_an_unknown_tensor_is_named(networks):
    _, _, G_ema = networks
    G_pickled = reference_pickles.generator(G_ema, neural_rendering_resolution=32)
    G_pickled.meta["state"]["_modules"]["backbone"].meta["state"]["_buffers"]["mystery_scale"] = torch.ones(3)
    with pytest.raises(ValueError, match=r"no counterpart in our network: backbone\.mystery_scale"):
        read_reference_pickle(reference_pickles.dumps({"G_ema": G_pickled, "D": None}))


def test_the_command_writes_a_snapshot_that_renders_the_same(networks, written, tmp_path, capsys):
    _, _, G_ema = networks
    (tmp_path / "tiny.pkl").write_bytes(written)
    out = tmp_path / "snapshot"
    assert import_pickle.main([str(tmp_path / "tiny.pkl"), str(out), "--preset", "tiny"]) == 0
    printed = capsys.readouterr().out
    assert "wrote snapshot" in printed and "legacy XY/XZ/ZX" in printed
    loaded = load_generator(out)
    assert dataclasses.asdict(loaded.rendering_config)["legacy_plane_order"] is True
    z, c = torch.randn(2, 64, generator=torch.Generator().manual_seed(5)), cameras(2)
    expected, got = render(G_ema, z, c), render(loaded, z, c)
    assert torch.equal(expected["image"], got["image"])


def test_the_command_refuses_a_bad_file_with_exit_code_2(tmp_path):
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({"G_ema": _Call(os.system, "true")}))
    result = subprocess.run([sys.executable, "-m", "eg3d.import_pickle", str(bad), str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "bad.pkl" in result.stderr and "system is not allowed" in result.stderr
    assert not (tmp_path / "out").exists()


def test_files_that_are_not_pickles_are_named_as_such():
    buffer = io.BytesIO()
    torch.save({"G": torch.zeros(2)}, buffer)  # our checkpoints' format: a zip
    cases = [(b"# a README", "not a pickle, or a truncated one"), (b"", "not a pickle, or a truncated one"),
             (buffer.getvalue(), "a zip file \\(torch.save's format")]
    for data, message in cases:
        with pytest.raises(pickle.UnpicklingError, match=message):
            read_reference_pickle(data)
