import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

from edgevlm.image import ImageError, load_image
from edgevlm.models.internvl3 import candidate_grids, choose_grid, load_tiles, tile_image
from edgevlm.testing.reference import image_processor
from helpers import picture

REF = image_processor()


noise = picture


def assert_tiles_match_reference(img, min_tiles=1, max_tiles=12):
    ref = image_processor(min_tiles, max_tiles) if (min_tiles, max_tiles) != (1, 12) else REF
    out = ref(img, return_tensors="np")
    mine = tile_image(img, min_tiles=min_tiles, max_tiles=max_tiles)
    assert mine.pixels.dtype == np.float32
    assert mine.count == int(out["num_patches"][0]) == out["pixel_values"].shape[0], img.size
    np.testing.assert_allclose(mine.pixels, out["pixel_values"], atol=1e-5, rtol=0, err_msg=str(img.size))


def _boundary_sizes():
    """Every grid's exact aspect, just either side of it, and the half-area tie-break edges."""
    sizes = set()
    for cols, rows in candidate_grids(1, 12):
        for scale in (1, 2):
            sizes.add((cols * 100 * scale, rows * 100 * scale))
        sizes.add((cols * 448 // 2 + 1, rows * 448 // 2 + 1))  # just over half the canvas
        sizes.add((cols * 100 + 1, rows * 100))
        sizes.add((cols * 100, rows * 100 + 1))
    return sorted(sizes)


@pytest.mark.parametrize("size", _boundary_sizes())
def test_grid_choice_matches_reference_at_boundaries(size):
    w, h = size
    assert choose_grid(w, h) == get_optimal_tiled_canvas((h, w), (448, 448), 1, 12)


@settings(max_examples=2000, deadline=None)
@given(st.integers(1, 20000), st.integers(1, 20000), st.integers(1, 12), st.integers(1, 12))
def test_grid_choice_matches_reference(w, h, lo, hi):
    lo, hi = min(lo, hi), max(lo, hi)
    assert choose_grid(w, h, min_tiles=lo, max_tiles=hi) == get_optimal_tiled_canvas((h, w), (448, 448), lo, hi)


@pytest.mark.parametrize(
    "size",
    [(1, 1), (2, 3), (448, 448), (449, 448), (800, 600), (600, 800), (896, 448), (1344, 448), (1000, 1000),
     (4000, 50), (50, 4000), (5376, 448), (300, 200), (1920, 1080), (1080, 1920), (640, 427)],
)  # fmt: skip
def test_tiles_match_reference(size):
    assert_tiles_match_reference(noise(*size, seed=size[0] * 7 + size[1]))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 3000), st.integers(1, 3000))
def test_tiles_match_reference_random_sizes(w, h):
    assert_tiles_match_reference(noise(w, h, seed=w + h))


@pytest.mark.parametrize(("lo", "hi"), [(1, 1), (1, 6), (2, 4), (4, 12), (12, 12)])
def test_min_and_max_tiles_match_reference(lo, hi):
    assert_tiles_match_reference(noise(1000, 700, seed=lo * hi), lo, hi)


def test_tiles_are_row_major_with_thumbnail_last():
    img = noise(1344, 896, seed=3)  # exactly 3 x 2 tiles, no resampling needed
    t = tile_image(img)
    assert t.grid == (3, 2) and t.count == 7
    arr = np.asarray(img, dtype=np.float32) / 255
    top_right = arr[0:448, 896:1344]
    expect = ((top_right - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(2, 0, 1)
    np.testing.assert_allclose(t.pixels[2], expect, atol=1e-5)
    thumb = tile_image(img.resize((448, 448), Image.BICUBIC), max_tiles=1).pixels[0]
    np.testing.assert_allclose(t.pixels[6], thumb, atol=1e-6)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"])
def test_formats_from_path_and_bytes(tmp_path, fmt):
    img = noise(64, 48)
    path = tmp_path / f"x.{fmt.lower()}"
    img.save(path, format=fmt)
    for source in (path, str(path), path.read_bytes()):
        out = load_image(source)
        assert out.mode == "RGB" and out.size == (64, 48)
    if fmt in ("PNG", "BMP", "TIFF"):  # lossless: exact pixels
        assert np.array_equal(np.asarray(load_image(path)), np.asarray(img))


def test_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    assert load_image(tmp_path / "a.gif").getpixel((8, 8)) == (255, 0, 0)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L", "I;16", "CMYK", "1", "I", "F"])
def test_every_mode_becomes_rgb_as_pil_converts(mode):
    base = noise(32, 24, seed=5)
    img = base.convert(mode) if mode != "I;16" else Image.fromarray(np.asarray(base.convert("L")).astype("<u2") * 257)
    out = load_image(img)
    assert out.mode == "RGB"
    assert np.array_equal(np.asarray(out), np.asarray(img.convert("RGB")))


def test_exif_orientation_is_applied(tmp_path):
    img = noise(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "phone.jpg", exif=exif)
    assert load_image(tmp_path / "phone.jpg").size == (20, 40)
    assert load_tiles(tmp_path / "phone.jpg").size == (20, 40)


def _png_header_only(width, height):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


def test_bad_inputs_are_image_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    buf = io.BytesIO()
    noise(200, 200).save(buf, format="PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    buf = io.BytesIO()
    noise(200, 200).save(buf, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[:600])
    (tmp_path / "bomb.png").write_bytes(_png_header_only(100_000, 100_000))
    (tmp_path / "big.png").write_bytes(_png_header_only(9000, 9000))
    cases = {
        tmp_path / "missing.jpg": "no such file",
        tmp_path / "notes.txt": "not an image",
        tmp_path / "cut.png": "truncated or corrupt",
        tmp_path / "cut.jpg": "truncated or corrupt",
        tmp_path / "bomb.png": "pixels",
        tmp_path / "big.png": "more than the limit",
        tmp_path: "not a file",
    }
    for source, reason in cases.items():
        with pytest.raises(ImageError, match=reason) as e:
            load_tiles(source)
        assert source.name in str(e.value)
    with pytest.raises(ImageError, match="<image bytes>: not an image"):
        load_tiles(b"\x00\x01garbage")
    with pytest.raises(ImageError, match="zero-sized"):
        load_tiles(Image.new("RGB", (0, 5)))
    with pytest.raises(ImageError, match="more than the limit of 100 pixels"):
        load_tiles(noise(20, 20), max_pixels=100)


@pytest.mark.parametrize(("lo", "hi"), [(1, 0), (3, 2), (0, 4)])
def test_tile_counts_out_of_range(lo, hi):
    with pytest.raises(ValueError, match="tiles must be"):
        load_tiles(noise(10, 10), min_tiles=lo, max_tiles=hi)


def test_a_request_can_lower_the_tile_limit_never_raise_it():
    from edgevlm.models.internvl3 import Tiling

    assert Tiling(1, 2).capped(6) == Tiling(1, 2) and Tiling(2, 6).capped(1) == Tiling(1, 1)
    assert Tiling(1, 6).capped(None) == Tiling(1, 6)
