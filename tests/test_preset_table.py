"""docs/training.md against the code, so that they cannot drift apart: the table of preset recipes against
`eg3d.config.presets`, the table of settings against the config's fields, and the large-batch table against
what `--preset P --batch N` resolves to."""

import dataclasses
import pathlib
import re

import pytest

from eg3d.config import SCALED_WITH_BATCH
from eg3d.config.batch_rule import field_value
from eg3d.config.presets import PRESETS
from eg3d.config.schema import TrainConfig
from eg3d.train import build_config, parse_args

TABLE_PAGE = pathlib.Path(__file__).resolve().parent.parent / "docs" / "training.md"
TABLE_HEADING = "## Presets: the recipes"


def number(x) -> str:
    return f"{x:g}"


def fade(start, end, kimg) -> str:
    return f"{number(start)} -> {number(end)} over {number(kimg)} kimg"


def rendering_resolution(c) -> str:
    r = c.rendering
    if r.neural_rendering_resolution_final is None:
        return number(r.neural_rendering_resolution_initial)
    return fade(r.neural_rendering_resolution_initial, r.neural_rendering_resolution_final,
                r.neural_rendering_resolution_fade_kimg)


def bound(x) -> str:
    return "auto" if x is None else number(x)


# Row label -> the cell's text for a config. Rows not here are the documentation's own (the paper's FID) or
# read from config fields that do not exist on this branch yet (augmentation), and are only required to be there.
ROWS = {
    "image resolution": lambda c: number(c.model.image_resolution),
    "neural rendering resolution": rendering_resolution,
    "tri-plane resolution": lambda c: number(c.model.backbone_resolution),
    "depth + importance samples": lambda c: f"{c.rendering.depth_resolution} + {c.rendering.depth_resolution_importance}",
    "ray start / end": lambda c: f"{bound(c.rendering.ray_start)} / {bound(c.rendering.ray_end)}",
    "box_warp": lambda c: number(c.rendering.box_warp),
    "white background": lambda c: "yes" if c.rendering.white_background else "no",
    "batch / micro-batch": lambda c: f"{c.run.batch_size} / {'whole share' if c.run.micro_batch is None else c.run.micro_batch}",
    "R1 gamma / interval": lambda c: f"{number(c.loss.r1_gamma)} / {c.loss.r1_interval}",
    "density reg weight / interval": lambda c: f"{number(c.loss.density_reg)} / {c.loss.density_reg_interval}",
    "pose-conditioning swap probability": lambda c: ("off" if c.loss.gpc_prob is None
                                                    else fade(1, c.loss.gpc_prob, c.loss.gpc_fade_kimg)),
    "blur sigma": lambda c: fade(c.loss.blur_init_sigma, 0, c.loss.blur_fade_kimg),
    "EMA half-life / ramp-up": lambda c: f"{number(c.ema.ema_kimg)} kimg / {'off' if c.ema.rampup is None else number(c.ema.rampup)}",
    "learning rate G / D": lambda c: f"{number(c.optimizer.g_lr)} / {number(c.optimizer.d_lr)}",
    "total kimg": lambda c: number(c.run.total_kimg),
    "conv_clamp (SR and D)": lambda c: "off" if c.model.conv_clamp is None else number(c.model.conv_clamp),
}
AUGMENTATION, PAPER_FID = "augmentation", "paper's FID"


def table_after(heading: str) -> tuple[list[str], dict[str, list[str]]]:
    """(the header's cells after the first, {row label: cells}) of the first table after `heading`."""
    lines = TABLE_PAGE.read_text().splitlines()
    start = lines.index(heading)
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("|"):
            rows.append([cell.strip().strip("`") for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    header, _, *body = rows
    return header[1:], {row[0]: row[1:] for row in body}


def readme_table() -> tuple[list[str], dict[str, list[str]]]:
    """(the header's preset names, {row label: cells}) of the preset table."""
    return table_after(TABLE_HEADING)


def test_the_preset_table_in_docs_matches_the_presets():
    presets, table = readme_table()
    assert presets == list(PRESETS)
    assert set(table) == set(ROWS) | {AUGMENTATION, PAPER_FID}
    for name, cells in zip(presets, zip(*table.values())):
        config, row = PRESETS[name](), dict(zip(table, cells))
        for label, cell_of in ROWS.items():
            assert row[label] == cell_of(config), f"docs/training.md preset table, {name}: {label}"
        if hasattr(config, "augment"):  # the augmentation section, where this branch has it
            assert row[AUGMENTATION].lower() == str(config.augment.kind).lower(), f"docs/training.md preset table, {name}: augmentation"


def documented_fields(text: str) -> list[str]:
    """The first column of docs/training.md's field table: rows that start with a `section.field` in backticks."""
    return re.findall(r"^\| `([a-z_]+\.[a-z0-9_]+)` \|", text, flags=re.MULTILINE)


def test_the_field_table_in_docs_lists_every_config_field_once():
    fields = [f"{section.name}.{f.name}" for section in dataclasses.fields(TrainConfig) if section.name != "preset"
              for f in dataclasses.fields(section.type)]
    documented = documented_fields(TABLE_PAGE.read_text())
    assert "loss.r1_gamma" in documented and len(fields) > 90  # the pattern finds the table
    assert sorted(documented) == sorted(set(documented)), "a field is listed twice"
    assert set(documented) == set(fields), (f"missing from the table: {sorted(set(fields) - set(documented))}; "
                                            f"not a config field: {sorted(set(documented) - set(fields))}")


LARGE_BATCH_HEADING = "## Large batches: 16 to 64 GPUs"
# Rows of the large-batch table that are not fields: the cell's value for a config at its batch.
DERIVED_ROWS = {
    "ADA's change of p per adjustment": lambda c: c.run.batch_size * c.augment.interval / (c.augment.ada_kimg * 1000),
    "optimizer steps per 1000 kimg": lambda c: 1_000_000 / c.run.batch_size,
    "most workers": lambda c: c.run.batch_size // c.model.disc_mbstd_group,
}


def large_batch_table() -> tuple[list[int], dict[str, tuple[list[str], str, list[str]]]]:
    """(the batches of the columns, {row label: (the fields it lists, its rule, its cells per batch)})."""
    header, table = table_after(LARGE_BATCH_HEADING)
    assert header[:2] == ["field", "at another batch"], header
    batches = [int(text.removeprefix("batch ")) for text in header[2:]]
    return batches, {label: (re.findall(r"([a-z_]+\.[a-z0-9_]+)", cells[0]), cells[1], cells[2:])
                     for label, cells in table.items()}


@pytest.mark.parametrize("preset", ["ffhq512", "afhq512"])
def test_the_large_batch_table_is_what_the_batch_flag_resolves_to(preset):
    batches, rows = large_batch_table()
    assert batches == [32, 128, 256]
    for column, batch in enumerate(batches):
        config = build_config(parse_args(["--preset", preset, "--batch", str(batch)]), log=lambda _: None)
        for label, (fields, _, cells) in rows.items():
            if label in DERIVED_ROWS:
                expected = number(DERIVED_ROWS[label](config))
            else:
                assert fields, f"docs/training.md large-batch table, {label}: no field named"
                expected = " / ".join(number(field_value(config, key)) for key in fields)
            assert cells[column] == expected, f"docs/training.md large-batch table, {label}, batch {batch}"


def test_the_large_batch_table_names_each_schedule_and_the_rule_it_follows():
    """Every schedule in images or steps has a row (outside the evaluator, which trains on its own); the rows that
    scale are exactly the batch rule's fields, with the hand-derived values at 256."""
    _, rows = large_batch_table()
    listed = {f for fields, _, _ in rows.values() for f in fields}
    schedules = {f"{section.name}.{f.name}" for section in dataclasses.fields(TrainConfig) if section.name != "preset"
                 for f in dataclasses.fields(section.type) if re.search(r"(kimg|interval)$", f.name)}
    assert schedules - {"evaluator.kimg"} <= listed, sorted(schedules - listed)
    scaled = {f for fields, rule, _ in rows.values() if rule.startswith("x batch") for f in fields}
    assert scaled == set(SCALED_WITH_BATCH) == {"ema.ema_kimg", "loss.blur_fade_kimg", "run.checkpoint_kimg"}
    at_256 = {fields[0]: cells[-1] for label, (fields, _, cells) in rows.items() if label not in DERIVED_ROWS}
    # 10, 200 and 200 x 256 / 32
    assert (at_256["ema.ema_kimg"], at_256["loss.blur_fade_kimg"], at_256["run.checkpoint_kimg"]) == ("80", "1600", "1600")
