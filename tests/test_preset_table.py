"""docs/training.md against the code, so that they cannot drift apart: the table of preset recipes against
`eg3d.config.presets`, the table of settings against the config's fields."""

import dataclasses
import pathlib
import re

from eg3d.config.presets import PRESETS
from eg3d.config.schema import TrainConfig

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


def readme_table() -> tuple[list[str], dict[str, list[str]]]:
    """(the header's preset names, {row label: cells}) of the first table after TABLE_HEADING."""
    lines = TABLE_PAGE.read_text().splitlines()
    start = lines.index(TABLE_HEADING)
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("|"):
            rows.append([cell.strip().strip("`") for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    header, _, *body = rows
    return header[1:], {row[0]: row[1:] for row in body}


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
