"""`python -m eg3d.summary --preset NAME`: parameter counts and estimated FLOPs as one JSON object.

FLOPs are counted from tensor shapes, without computing anything: the networks run on PyTorch's
meta device under `FlopCounterMode` (matmuls and convolutions), plus an analytic term for the
tri-plane lookups (bilinear: 4 taps x 3 planes x channels, a multiply and an add each), which the
counter does not see. Elementwise activations are not counted.
"""

import argparse
import json
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

from .config import TrainConfig, apply_overrides
from .config.presets import PRESETS, get_preset
from .networks.discriminator import DualDiscriminator
from .networks.generator import TriPlaneGenerator


def parameter_counts(module: torch.nn.Module) -> dict:
    count = lambda m: sum(p.numel() for p in m.parameters())
    return {"params": count(module),
            "modules": {name: count(child) for name, child in module.named_children() if count(child) > 0}}


def _counted(fn) -> dict[str, int]:
    """FLOPs per module path of whatever `fn` runs."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return {name: sum(table.values()) for name, table in counter.get_flop_counts().items()}


def flops_per_image(config: TrainConfig) -> dict[str, int]:
    m, r = config.model, config.rendering
    resolution = r.neural_rendering_resolution_final or r.neural_rendering_resolution_initial
    with torch.device("meta"):
        G, D = TriPlaneGenerator(m, r).eval(), DualDiscriminator(m)
        z, c = torch.zeros(1, m.z_dim), torch.zeros(1, m.c_dim)
        g = _counted(lambda: G(z, c, neural_rendering_resolution=resolution))
        image, raw = torch.zeros(1, 3, m.image_resolution, m.image_resolution), torch.zeros(1, 3, resolution, resolution)
        d = _counted(lambda: D(image, raw, c))
    points = resolution ** 2 * (r.depth_resolution + r.depth_resolution_importance)
    triplane_lookups = points * 3 * 4 * m.plane_channels * 2
    top = type(G).__name__
    part = lambda name: g.get(f"{top}.{name}", 0)
    rendering = part("decoder") + triplane_lookups
    return {
        "G_forward": g["Global"] + triplane_lookups,
        "G_mapping": part("mapping"),
        "G_backbone": part("backbone"),
        "G_rendering": rendering,
        "G_superresolution": part("superresolution"),
        "D_forward": d["Global"],
        "neural_rendering_resolution": resolution,
        "points_per_image": points,
    }


def summary(config: TrainConfig) -> dict:
    with torch.device("meta"):
        G, D = TriPlaneGenerator(config.model, config.rendering), DualDiscriminator(config.model)
    return {"preset": config.preset, "G": parameter_counts(G), "D": parameter_counts(D),
            "flops_per_image": flops_per_image(config)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eg3d.summary", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="ffhq512", choices=sorted(PRESETS))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    args = parser.parse_args(argv)
    try:
        config = apply_overrides(get_preset(args.preset), args.overrides)
    except ValueError as error:
        parser.error(str(error))
    print(json.dumps(summary(config), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
