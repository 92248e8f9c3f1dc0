"""Image loading and InternVL's dynamic tiling.

An image becomes min..max tiles (1..12 for InternVL3) of the model's tile size (448 px) chosen by
aspect ratio, plus a thumbnail of the whole image when there is more than one tile, normalised with
the model's mean and std (ImageNet's for InternVL3): exactly the preprocessing InternVL was trained
with (transformers' GotOcr2 processor with crop_to_patches). Every figure comes from the bundle.

Unlike the reference, EXIF orientation is applied, so phone photos are seen upright.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import imagenet

TILE = 448  # InternVL3's, the default of the functions below; a bundle says its own
MAX_TILES = 12
DEFAULT_MAX_PIXELS = 64_000_000  # a 64 MP photo is ~200 MB as RGB; above that is likely a bomb

ImageSource = str | Path | bytes | bytearray | memoryview | Image.Image


class ImageError(ValueError):
    """An image that cannot be used: the message names the image and the reason."""


@dataclass(frozen=True)
class Tiles:
    """The tiles of one image: pixels [N,3,tile,tile] float32 (thumbnail last) and the grid."""

    pixels: np.ndarray
    grid: tuple[int, int]  # (columns, rows)
    size: tuple[int, int]  # (width, height) of the image after orientation

    @property
    def count(self) -> int:
        return int(self.pixels.shape[0])


# --------------------------------------------------------------------------------------------
# Loading


def _open(source: ImageSource) -> tuple[Image.Image, str]:
    if isinstance(source, Image.Image):
        return source, "<PIL image>"
    if isinstance(source, (bytes, bytearray, memoryview)):
        name, fp = "<image bytes>", io.BytesIO(bytes(source))
    else:
        name = str(source)
        if not Path(source).is_file():
            raise ImageError(f"{name}: {'not a file' if Path(source).exists() else 'no such file'}")
        fp = source
    try:
        return Image.open(fp), name
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image (or not a format Pillow can read)") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: too many pixels ({e})") from None
    except OSError as e:
        raise ImageError(f"{name}: truncated or corrupt ({e})") from None


def load_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image (path, bytes or PIL) to upright RGB, checking its size before decoding."""
    img, name = _open(source)
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError(f"{name}: zero-sized image ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(f"{name}: {width}x{height} is more than the limit of {max_pixels:,} pixels")
    try:
        img.load()  # an opened animation sits on its first frame, which is the one used
        img = ImageOps.exif_transpose(img)
        return img.convert("RGB")
    except (OSError, SyntaxError, ValueError) as e:  # Pillow reports truncation and bad data as these
        raise ImageError(f"{name}: truncated or corrupt ({e})") from None


# --------------------------------------------------------------------------------------------
# Tiling


@lru_cache(maxsize=64)
def candidate_grids(min_tiles: int, max_tiles: int) -> tuple[tuple[int, int], ...]:
    """(columns, rows) with min <= columns*rows <= max, by tile count (stable, columns first)."""
    grids = [
        (c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1) if min_tiles <= c * r <= max_tiles
    ]
    return tuple(sorted(grids, key=lambda g: g[0] * g[1]))


def choose_grid(
    width: int, height: int, *, min_tiles: int = 1, max_tiles: int = MAX_TILES, tile: int = TILE
) -> tuple[int, int]:
    """The grid whose aspect ratio is closest to the image's; on a tie the larger grid wins only
    while the image has more than half the pixels of that grid's canvas."""
    aspect, area = width / height, width * height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in candidate_grids(min_tiles, max_tiles):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * tile * tile * cols * rows:
            best = (cols, rows)
    return best


Norm = tuple[tuple[float, float, float], tuple[float, float, float]]  # per-channel mean and std
IMAGENET: Norm = (imagenet.MEAN, imagenet.STD)


def normalize(img: Image.Image, norm: Norm = IMAGENET) -> np.ndarray:
    """RGB image -> float32 [3,H,W], scaled to [0,1] and normalised with `norm`'s mean and std."""
    arr = np.asarray(img, dtype=np.float32) * np.float32(1 / 255)
    mean, std = (np.asarray(v, dtype=np.float32) for v in norm)
    return ((arr - mean) / std).transpose(2, 0, 1)


def _check_counts(min_tiles: int, max_tiles: int) -> None:
    if max_tiles < 1:
        raise ValueError(f"max_tiles must be at least 1, got {max_tiles}")
    if not 1 <= min_tiles <= max_tiles:
        raise ValueError(f"min_tiles must be between 1 and max_tiles ({max_tiles}), got {min_tiles}")


def tile_image(img: Image.Image, *, min_tiles: int = 1, max_tiles: int = MAX_TILES, use_thumbnail: bool = True,
               tile: int = TILE, norm: Norm = IMAGENET) -> Tiles:  # fmt: skip
    """Split an RGB image into InternVL's dynamic tiles (row-major), thumbnail last."""
    _check_counts(min_tiles, max_tiles)
    width, height = img.size
    if max_tiles == 1:  # the reference skips the grid search: one resized tile
        return Tiles(normalize(img.resize((tile, tile), Image.BICUBIC), norm)[None], (1, 1), img.size)
    cols, rows = choose_grid(width, height, min_tiles=min_tiles, max_tiles=max_tiles, tile=tile)
    canvas = normalize(img.resize((cols * tile, rows * tile), Image.BICUBIC), norm)
    tiles = canvas.reshape(3, rows, tile, cols, tile).transpose(1, 3, 0, 2, 4).reshape(rows * cols, 3, tile, tile)
    if use_thumbnail and rows * cols > 1:
        tiles = np.concatenate([tiles, normalize(img.resize((tile, tile), Image.BICUBIC), norm)[None]])
    return Tiles(np.ascontiguousarray(tiles), (cols, rows), img.size)


@dataclass(frozen=True)
class Tiling:
    """How a model wants its images tiled (a bundle's manifest says), capped per request."""

    min_tiles: int = 1
    max_tiles: int = MAX_TILES
    use_thumbnail: bool = True
    tile: int = TILE  # pixels per side of a tile
    norm: Norm = IMAGENET

    def __post_init__(self) -> None:
        _check_counts(self.min_tiles, self.max_tiles)

    def capped(self, max_tiles: int | None) -> Tiling:
        """At most `max_tiles` tiles (None: the model's own limit); it never raises the model's limit."""
        if not max_tiles or max_tiles >= self.max_tiles:
            return self
        return replace(self, min_tiles=min(self.min_tiles, max_tiles), max_tiles=max_tiles)

    def load(self, source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Tiles:
        """Load an image and tile it: the one entry point from a file, bytes or PIL image to pixels."""
        return tile_image(load_image(source, max_pixels=max_pixels), min_tiles=self.min_tiles,
                          max_tiles=self.max_tiles, use_thumbnail=self.use_thumbnail, tile=self.tile,
                          norm=self.norm)  # fmt: skip


def load_tiles(source: ImageSource, *, min_tiles: int = 1, max_tiles: int = MAX_TILES, use_thumbnail: bool = True,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Tiles:  # fmt: skip
    """InternVL3's tiling of an image (448 px tiles, ImageNet normalisation)."""
    return Tiling(min_tiles, max_tiles, use_thumbnail).load(source, max_pixels=max_pixels)
