"""Every numeric option of eg3d.generate, video, shapes, invert, sample_grid and viewer: nan, inf and out-of-range
(too large as well as too small) values are argparse errors (exit 2) naming the option and the value, before any
snapshot is opened."""

import argparse

import pytest

from eg3d import generate, invert, sample_grid, shapes, video, viewer
from eg3d.cli.arguments import FIELD_OF_VIEW, Interval, real_number, whole_number

SNAPSHOT = "no-snapshot-is-opened"  # every value below is refused before the snapshot is read
COMMON = {"--trunc": ["nan", "inf", "-inf", "x", "1e30", "10.5", "-11"], "--trunc-cutoff": ["-1", "1.5"],
          "--radius": ["0", "-1", "nan", "inf", "1e30", "100.5"], "--fov": ["0", "180", "-5", "nan"],
          "--batch": ["0", "-2"]}
# command -> (the arguments it needs besides the option, the values refused per numeric option)
COMMANDS = {
    generate: (["--seeds", "0", "--out", "out"], {
        **COMMON, "--yaw": ["nan", "inf"], "--pitch": ["1.5708", "-2", "nan"], "--mix-seed": ["-1", "4294967296"],
        "--mix-layers": ["-1"]}),
    video: (["--seeds", "0", "--out", "out.mp4"], {
        **COMMON, "--frames": ["0", "10001"], "--fps": ["0", "nan", "241"], "--yaw-range": ["nan", "inf"],
        "--pitch-range": ["-0.1", "1.6", "nan"], "--quality": ["-1", "11", "nan"]}),
    shapes: (["--out", "out"], {
        "--resolution": ["7", "nan", "1025", "100000"], "--level": ["nan", "inf"], "--border": ["-1", "127"],
        "--trunc": ["nan", "inf", "1e30"], "--trunc-cutoff": ["-1"], "--chunk": ["0", "16777217"], "--faces": ["3"]}),
    invert: (["target.png", "--camera", "frontal", "--out", "out"], {
        "--steps": ["0"], "--lr": ["nan", "inf", "0", "-0.01", "1.5"], "--tune-steps": ["-1"],
        "--tune-lr": ["nan", "0", "1e30"], "--frames": ["-1", "10001"], "--mesh-resolution": ["5", "-1", "1025"]}),
    sample_grid: (["--out", "out.png"], {
        "--rows": ["0", "65"], "--cameras": ["0", "33"], "--yaw-range": ["nan", "inf"],
        "--seed": ["-1", "4294967296"], "--psi": ["nan", "inf", "1e30", "-11"]}),
    viewer: ([], {"--port": ["-1", "65536"]}),
}
NOT_NUMERIC = {"--seeds", "--grid", "--out"}
CASES = [(command, option, value) for command, (_, table) in COMMANDS.items() for option, values in table.items()
         for value in values]


def numeric_options(command) -> set[str]:
    """The options of the command's parser that convert their value (a type), less the non-numeric ones."""
    return {action.option_strings[0] for action in command.build_parser()._actions
            if action.type is not None and action.option_strings} - NOT_NUMERIC


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: command.__name__)
def test_the_table_covers_every_numeric_option(command):
    assert numeric_options(command) == set(COMMANDS[command][1])


@pytest.mark.parametrize("command, option, value", CASES,
                         ids=[f"{command.__name__}{option}={value}" for command, option, value in CASES])
def test_a_value_out_of_range_exits_2_naming_the_option_and_the_value(command, option, value, tmp_path, capsys,
                                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    required = COMMANDS[command][0]
    with pytest.raises(SystemExit) as exit_info:
        command.main([SNAPSHOT, *required, f"{option}={value}"])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2
    assert option in error and value in error and "expected" in error, error
    assert not (tmp_path / "out").exists()


def test_mix_layers_without_mix_seed_exits_2_before_the_snapshot_is_opened(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        generate.main([SNAPSHOT, "--seeds", "0", "--out", str(tmp_path / "out"), "--mix-layers", "4"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "python -m eg3d.generate: error: --mix-layers 4: expected --mix-seed too (the seed whose finest layers are "
        "mixed in)")


def test_the_types_accept_their_ranges_and_nothing_else():
    fov = real_number(FIELD_OF_VIEW)
    assert fov("18.837") == 18.837 and fov("179.9") == 179.9
    half_open = real_number(Interval(0, 1, high_open=True))
    assert half_open("0") == 0.0
    for parse, text, message in [(fov, "180", "> 0 and < 180 \\(degrees\\)"), (half_open, "1", ">= 0 and < 1"),
                                 (real_number(), "nan", "a finite number"), (whole_number(1), "2.0", ">= 1"),
                                 (whole_number(0, 9), "10", "in 0..9")]:
        with pytest.raises(argparse.ArgumentTypeError, match=f"{text!r}: expected .*{message}"):
            parse(text)
