"""Source images -> the 8-bit RGB pixels every reader sees: the one conversion of this project.

Shard images are stored as 8-bit RGB without an orientation tag, because decoders disagree on
everything else: DALI's decoder applies the EXIF orientation and PIL's does not, and 16-bit,
palette and alpha images come out differently (PIL's `convert("RGB")` clips 16-bit grayscale at 255).
The shard builder converts with `to_rgb8` and re-encodes what changed; `ReferenceDataset` reads
through the same function, so the reference reader and the shards agree pixel for pixel.

- EXIF orientation: applied (the image is turned upright), and the tag dropped.
- 16-bit samples (grayscale modes I;16*, and I with values in 0..65535; 16-bit RGB(A) PNGs, which PIL
  decodes to the high byte of each sample) keep their high byte, v >> 8: 0..65535 onto 0..255 in 256
  equal bins, the same rule for gray and colour.
- Grayscale, bilevel, palette, CMYK and YCbCr become RGB.
- Alpha (RGBA, LA, PA, or a palette/RGB/L transparent colour) is composited over `background`
  (white unless the build asks otherwise): round((rgb * a + background * (255 - a)) / 255).
- Other modes (float F, HSV, LAB) are an UnsupportedPixelFormat error.
"""

import numpy as np
from PIL import Image, ImageOps

WHITE = (255, 255, 255)
EXIF_ORIENTATION = 0x0112
SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_CONVERTIBLE_MODES = {"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr"} | _ALPHA_MODES | SIXTEEN_BIT_MODES
_ROTATED_ORIENTATIONS = {5, 6, 7, 8}  # transpose, rotate 270, transverse, rotate 90: width and height swap


class UnsupportedPixelFormat(ValueError):
    """An image whose pixels have no faithful 8-bit RGB form here (e.g. 32-bit float)."""


def orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright, 2..8 = mirrored and/or turned), 1 when there is none."""
    return int(image.getexif().get(EXIF_ORIENTATION, 1))


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of the image once turned upright by its EXIF orientation."""
    width, height = image.size
    return (height, width) if orientation(image) in _ROTATED_ORIENTATIONS else (width, height)


def to_rgb8(image: Image.Image, background: tuple[int, int, int] = WHITE, *,
            apply_orientation: bool = True) -> tuple[Image.Image, bool]:
    """(upright 8-bit RGB image, whether any pixel or tag differs from the source's plain RGB decode).

    `image` must be freshly opened (not yet loaded): the bit depth is read from the decoder's raw mode.
    `background` is the RGB colour (0..255 each) that transparent pixels are composited over.
    `apply_orientation=False` keeps the stored pixel layout (the tag is dropped all the same): for images
    whose cameras were calibrated on the stored pixels, as COLMAP and NeRF tools do.
    Raises UnsupportedPixelFormat for modes without an 8-bit RGB form, and ValueError for a mode "I"
    image with values outside 0..65535.
    """
    if image.mode not in _CONVERTIBLE_MODES:
        raise UnsupportedPixelFormat(f"unsupported pixel format (PIL mode {image.mode}); expected 8- or 16-bit "
                                     f"RGB, RGBA, grayscale or palette: convert it to 8-bit RGB")
    sixteen_bit = any(";16" in str(tile.args) for tile in image.tile)  # only known before load()
    image.load()
    turned = orientation(image) if apply_orientation else 1
    changed = sixteen_bit or turned != 1 or image.mode != "RGB" or "transparency" in image.info
    if turned != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode in SIXTEEN_BIT_MODES:
        image = _high_byte(image)
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        return _over(image, background), changed
    return (image if image.mode == "RGB" else image.convert("RGB")), changed


def _high_byte(image: Image.Image) -> Image.Image:
    """16-bit grayscale -> 8-bit grayscale L, v >> 8."""
    values = np.asarray(image).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError(f"grayscale values span {values.min()}..{values.max()}, expected a 16-bit image "
                         f"(0..65535); convert it to 8-bit RGB")
    return Image.fromarray((values >> 8).astype(np.uint8), "L")


def _over(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """RGB of `image` composited over a solid `background`, rounded to the nearest integer."""
    rgba = np.asarray(image.convert("RGBA")).astype(np.uint32)
    alpha = rgba[..., 3:]
    mixed = (rgba[..., :3] * alpha + np.asarray(background, dtype=np.uint32) * (255 - alpha) + 127) // 255
    return Image.fromarray(mixed.astype(np.uint8), "RGB")
