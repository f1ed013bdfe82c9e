"""Argparse types shared by the commands, and the ranges of their numeric options.

Every numeric option takes a whole number or a finite real number in a stated range; anything else is an
argparse error (exit 2) naming the option, the value and the range, before a snapshot is opened. The viewer
checks its controls against the same ranges (`Interval.check`).
"""

import argparse
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from ..config.schema import MAX_SEED  # one bound for the commands' seeds and the training config's


@dataclass(frozen=True)
class Interval:
    """A range of finite real numbers; `low_open` / `high_open` leave the bound itself out."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    unit: str = ""

    def contains(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return math.isfinite(value) and above and below

    def expected(self) -> str:
        """'a finite number > 0 and < 180 (degrees)'."""
        bounds = []
        if self.low > -math.inf:
            bounds.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high < math.inf:
            bounds.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        unit = f" ({self.unit})" if self.unit else ""
        return " ".join(["a finite number", " and ".join(bounds)]).strip() + unit

    def check(self, value: float, what: str) -> float:
        """`value`, or a ValueError naming `what`, the value and the range."""
        if not self.contains(value):
            raise ValueError(f"{what} {value!r}: expected {self.expected()}")
        return value


ANY_NUMBER = Interval()
POSITIVE = Interval(0, low_open=True)
FIELD_OF_VIEW = Interval(0, 180, low_open=True, high_open=True, unit="degrees")  # 0 and 180 have no focal length
# The data sets' cameras sit 1.7 to 2.7 units from the origin, and a generator renders only between its
# rendering.ray_start and ray_end: far beyond that the image is background; 100 keeps the numbers sane.
CAMERA_DISTANCE = Interval(0, 100, low_open=True, unit="world units")
# Truncation moves w from the average towards (psi 0..1) or past (psi > 1, < 0) the sampled one; far past it
# the extrapolation saturates every layer, and nothing beyond +-10 is an image.
TRUNCATION = Interval(-10, 10)
# A density grid is resolution^3 float32 on the CPU, plus its marching-cubes mesh: 1024 takes 4 GiB and 2048
# would take 32 GiB before the mesh (the viewer's mesh button uses the same bound).
MAX_GRID_RESOLUTION = 1024
MAX_FRAMES = 10_000  # every frame's styles and camera are held in memory: 5.5 minutes at 30 fps
MAX_FPS = 240
# Adam moves each value by about the learning rate per step: w and weights are of order 1, so a step of more
# than 1 only leaves the generator's range.
LEARNING_RATE = Interval(0, 1, low_open=True)
ANGLE = Interval(unit="radians")
# Pitch from frontal: at +-pi/2 the camera looks straight down or up, where a look-at without roll is undefined.
PITCH = Interval(-math.pi / 2, math.pi / 2, low_open=True, high_open=True, unit="radians")


def real_number(interval: Interval = ANY_NUMBER) -> Callable[[str], float]:
    """An argparse type: a finite real number in `interval` (never nan or inf)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not interval.contains(value):
            raise argparse.ArgumentTypeError(f"{text!r}: expected {interval.expected()}")
        return value
    return parse


def whole_number(minimum: int = 0, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number in minimum..maximum (no maximum: any above minimum)."""
    expected = f"a whole number >= {minimum}" if maximum is None else f"a whole number in {minimum}..{maximum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected {expected}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"{text!r}: expected {expected}")
        return value
    return parse


def image_file(text: str) -> str:
    """An argparse type: a local image file to write, named with an extension Pillow writes (.png, .jpg, ...),
    not an existing folder. Checked before any work, so that a typo does not cost a finished picture; the caller
    creates a missing parent folder (`make_parent`)."""
    extension = os.path.splitext(text)[1].lower()
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a folder: expected an image file name such as "
                                         f"{os.path.join(text, 'grid.png')!r}")
    if Image.registered_extensions().get(extension) not in Image.SAVE:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an image file name ending in .png (or another "
                                         f"extension Pillow writes, such as .jpg)")
    return text


def make_parent(path: str) -> None:
    """Create the folder that will hold `path`, if it is missing."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def seeds_list(text: str) -> list[int]:
    """'0-63' or '1,5,9' (or both: '0-3,10') -> seeds; an argparse type."""
    seeds = []
    try:
        for part in text.split(","):
            first, dash, last = part.strip().partition("-")
            if dash and int(last) < int(first):
                raise argparse.ArgumentTypeError(f"{text!r}: the range {part.strip()} is empty (it ends before it starts)")
            seeds.extend(range(int(first), int(last) + 1) if dash else [int(first)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected seeds as a range '0-63' or a list '1,5,9'") from None
    if not seeds or min(seeds) < 0 or max(seeds) > MAX_SEED:
        raise argparse.ArgumentTypeError(f"{text!r}: expected at least one seed, each in 0..{MAX_SEED} "
                                         f"(NumPy's RandomState seeds)")
    return seeds


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each option's default, except where there is none (required options, flags)."""

    def _get_help_string(self, action):
        if action.required or action.default is None or action.default is False or action.help is None:
            return action.help
        return super()._get_help_string(action)
