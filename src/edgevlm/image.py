"""Image loading shared by every family: decode, orientation, size limits, normalisation.

A family's image processor (its tiling or patching, in its module under edgevlm.models) turns the
decoded image into tiles. Unlike the references, EXIF orientation is applied, so phone photos are
seen upright.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import imagenet
from .prompt import ImageLayout

if TYPE_CHECKING:
    from .video import FrameSampling, VideoInfo

DEFAULT_MAX_PIXELS = 64_000_000  # a 64 MP photo is ~200 MB as RGB; above that is likely a bomb

ImageSource = str | Path | bytes | bytearray | memoryview | Image.Image


class ImageError(ValueError):
    """An image that cannot be used: the message names the image and the reason."""


@dataclass(frozen=True)
class Tiles:
    """The tiles of one image: pixels [N,3,tile,tile] float32 (thumbnail last) and the grid; or, for a
    family that takes an image whole as patches (Qwen2-VL), its patches [N, patch values] as one tile."""

    pixels: np.ndarray
    grid: tuple[int, int]  # (columns, rows): of tiles, or of the cells that become image tokens
    size: tuple[int, int]  # (width, height) of the image after orientation
    whole: bool = False  # the pixels are one image's patches, not tiles

    @property
    def count(self) -> int:
        return 1 if self.whole else int(self.pixels.shape[0])

    def per_tile(self) -> list[dict[str, np.ndarray]]:
        """A tile graph's inputs for these tiles: one run per tile (a tile's features then never depend on
        the tiles beside it, which an int8 graph's per-run activation scale would make them)."""
        return [{"pixel_values": tile[None]} for tile in self.pixels]

    @property
    def layout(self) -> ImageLayout:
        """What the prompt needs of these tiles."""
        return ImageLayout(self.count, self.grid)


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


Norm = tuple[tuple[float, float, float], tuple[float, float, float]]  # per-channel mean and std
IMAGENET: Norm = (imagenet.MEAN, imagenet.STD)


def normalize(img: Image.Image, norm: Norm = IMAGENET) -> np.ndarray:
    """RGB image -> float32 [3,H,W], scaled to [0,1] and normalised with `norm`'s mean and std."""
    arr = np.asarray(img, dtype=np.float32) * np.float32(1 / 255)
    mean, std = (np.asarray(v, dtype=np.float32) for v in norm)
    return ((arr - mean) / std).transpose(2, 0, 1)


def tile_cap(max_tiles: int | None, max_pixels: int | None, tile: int) -> int | None:
    """The tighter of a tile count and a resized-area bound (in whole tiles, at least one); None: neither."""
    caps = [c for c in (max_tiles, None if max_pixels is None else max(1, max_pixels // tile**2)) if c]
    return min(caps) if caps else None


class ImageProcessor(Protocol):
    """A family's image processing: an image in, normalised tiles out (what its vision graph takes); and a
    clip's frames: which to take, and what the vision graph runs on (a unit per `frame_group` frames)."""

    tile: int  # pixels per side of a tile
    frame_group: int  # video frames per vision run

    def capped(self, max_tiles: int | None, max_pixels: int | None = None) -> ImageProcessor: ...
    # at most that many tiles, and images resized to at most that area: never more than the model's own
    def load(self, source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Tiles: ...
    def sample(self, info: VideoInfo, sampling: FrameSampling) -> list[int]: ...  # the frames to take, by index
    def frames(self, images: list[Image.Image]) -> list[Tiles]: ...  # the taken frames as vision runs
