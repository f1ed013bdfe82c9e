"""Import a network pickle of the reference implementation (NVIDIA's released networks) as one of our snapshots.

    python -m eg3d.import_pickle ffhq512-128.pkl snapshots/ffhq512 [--preset ffhq512] [--modern-plane-order]

Nothing in the pickle is executed: tensors and settings are read as data (eg3d.networks.reference_pickle).
The architecture (channel widths, depths, resolutions, mapping layers) is the pickle's, whatever the
reference's train.py built; the preset supplies only the training settings. The snapshot (G_ema + config)
then works with every tool that takes a snapshot.
"""

import argparse
import pickle
import sys

from dataloading import storage

from .config.presets import PRESETS, get_preset
from .networks.generator import TriPlaneGenerator
from .networks.reference_pickle import apply_to_config, changed_fields, read_reference_pickle
from .networks.snapshot import save_snapshot

BAD_INPUT_EXIT_CODE = 2  # as eg3d.train's CONFIG_ERROR_EXIT_CODE
PRESET_BY_RESOLUTION = {512: "ffhq512", 128: "shapenet128"}
DEFAULT_PRESET = "ffhq512"  # training settings for networks of other sizes


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m eg3d.import_pickle", description=__doc__.splitlines()[0])
    parser.add_argument("pickle", help="reference network pickle: path or any fsspec URL")
    parser.add_argument("out", help="snapshot directory to write")
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="preset whose training settings the snapshot keeps; the architecture is the pickle's "
                             "(default: shapenet128 for 128x128 networks, else ffhq512)")
    parser.add_argument("--modern-plane-order", action="store_true",
                        help="sample the planes as XY/XZ/YZ instead of the XY/XZ/ZX the network was trained with")
    return parser.parse_args(argv)


def import_pickle(source: str, out: str, *, preset: str | None = None, legacy_plane_order: bool = True) -> list[str]:
    """Write the snapshot; returns the lines to print. ValueError / pickle.UnpicklingError on bad input."""
    networks = read_reference_pickle(storage.read_bytes(source), legacy_plane_order=legacy_plane_order)
    preset = preset or PRESET_BY_RESOLUTION.get(networks.model["image_resolution"], DEFAULT_PRESET)
    base = get_preset(preset)
    config = apply_to_config(base, networks)
    G_ema = TriPlaneGenerator(config.model, config.rendering)
    G_ema.load_state_dict(networks.state["G_ema"])
    save_snapshot(G_ema, config, out, metadata={"imported_from": source, "notes": networks.notes})
    return [f"imported {source} with the training settings of preset {preset}: wrote snapshot {out}",
            *networks.notes, *changed_fields(base, config)]


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        lines = import_pickle(args.pickle, args.out, preset=args.preset,
                              legacy_plane_order=not args.modern_plane_order)
    except (ValueError, pickle.UnpicklingError, FileNotFoundError, EOFError) as error:
        print(f"error: {args.pickle}: {error}", file=sys.stderr)
        return BAD_INPUT_EXIT_CODE
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
