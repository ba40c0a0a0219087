"""refseg.io.images: every odd image a benchmark folder can hold, built here."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from refseg.errors import DataError
from refseg.io import images
from refseg.io.images import check_image, image_size, load_image


def _pattern(h=6, w=8):
    """(h, w, 3) uint8 with distinct values per pixel and channel."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([y * 30, x * 20, (y + x) * 10], axis=2).astype(np.uint8)


def test_rgb_png_round_trip(tmp_path):
    rgb = _pattern()
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (6, 8, 3)
    np.testing.assert_array_equal(out, rgb)
    assert image_size(tmp_path / "a.png") == (6, 8)


def test_exif_orientation_6_returns_the_rotated_picture(tmp_path):
    # Stored 4 rows x 6 columns, displayed rotated 90 degrees clockwise: 6 rows x 4 columns.
    stored = np.zeros((4, 6, 3), dtype=np.uint8)
    stored[0, 0] = (255, 0, 0)  # stored top-left, red
    stored[3, 0] = (0, 0, 255)  # stored bottom-left, blue
    exif = Image.Exif()
    exif[0x0112] = 6
    big = np.kron(stored, np.ones((8, 8, 1), dtype=np.uint8))  # 8x8 blocks survive JPEG
    Image.fromarray(big).save(tmp_path / "r.jpg", quality=95, exif=exif.tobytes())
    out = load_image(tmp_path / "r.jpg")
    assert out.shape == (48, 32, 3)
    assert image_size(tmp_path / "r.jpg") == (48, 32)
    # Rotating clockwise puts the stored left column on top, its bottom end at the left.
    top_right = out[:8, -8:].reshape(-1, 3).mean(axis=0)
    top_left = out[:8, :8].reshape(-1, 3).mean(axis=0)
    assert top_right[0] > 200 and top_right[2] < 60
    assert top_left[2] > 200 and top_left[0] < 60
    np.testing.assert_array_equal(out, load_image(Image.open(tmp_path / "r.jpg")))


# What to store so that an orientation tag displays the upright picture: the inverse of
# the transpose the tag asks for (EXIF 6 = rotate 270 to display, so store it rotated 90).
_STORE = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
          4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
          6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
          8: Image.Transpose.ROTATE_270}


@pytest.mark.parametrize("fmt, suffix", [("TIFF", "tif"), ("PNG", "png"), ("WEBP", "webp")])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_gives_the_displayed_size_and_pixels(tmp_path, fmt, suffix,
                                                               orientation):
    # Pillow's TIFF reader already reports the displayed size; the others do not.
    upright = (np.arange(3 * 5 * 3).reshape(3, 5, 3) * 5).astype(np.uint8)
    image = Image.fromarray(upright)
    if _STORE[orientation] is not None:
        image = image.transpose(_STORE[orientation])
    exif = image.getexif()
    exif[0x0112] = orientation
    path = tmp_path / f"o.{suffix}"
    image.save(path, format=fmt, exif=exif, **({"lossless": True} if fmt == "WEBP" else {}))
    np.testing.assert_array_equal(load_image(path), upright)
    assert image_size(path) == (3, 5)


def test_cmyk_jpeg(tmp_path):
    cmyk = Image.new("CMYK", (8, 6), (0, 255, 255, 0))  # no cyan, full magenta+yellow: red
    cmyk.save(tmp_path / "c.jpg", quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    out = load_image(tmp_path / "c.jpg")
    assert out.shape == (6, 8, 3)
    r, g, b = out.reshape(-1, 3).mean(axis=0)
    assert r > 220 and g < 40 and b < 40


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = load_image(tmp_path / "g16.png")
    assert out.shape == (1, 4, 3)
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_float_and_int32_modes():
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    np.testing.assert_array_equal(load_image(f)[0, :, 0], [0, 128, 255])
    wide = Image.fromarray(np.array([[-100, 0, 100]], dtype=np.int32))  # mode I, out of 16-bit
    np.testing.assert_array_equal(load_image(wide)[0, :, 1], [0, 128, 255])


def test_rgba_drops_alpha(tmp_path):
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[0, 0, 3] = 0  # fully transparent pixel keeps its stored colour
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert (out == np.array([10, 20, 30], dtype=np.uint8)).all()
    la = Image.fromarray(np.array([[[7, 0], [9, 255]]], dtype=np.uint8), "LA")
    np.testing.assert_array_equal(load_image(la)[0, :, 1], [7, 9])


def test_palette_with_transparency(tmp_path):
    pal = Image.new("P", (3, 2), 1)
    pal.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    pal.info["transparency"] = 1
    pal.save(tmp_path / "p.png", transparency=1)
    out = load_image(tmp_path / "p.png")
    assert (out == np.array([200, 100, 50], dtype=np.uint8)).all()


def test_grey_and_bilevel(tmp_path):
    Image.fromarray(np.array([[0, 77]], dtype=np.uint8), "L").save(tmp_path / "l.png")
    np.testing.assert_array_equal(load_image(tmp_path / "l.png")[0], [[0, 0, 0], [77, 77, 77]])
    bw = Image.fromarray(np.array([[True, False]]))
    assert bw.mode == "1"
    np.testing.assert_array_equal(load_image(bw)[0, :, 0], [255, 0])


def test_arrays():
    rgb = _pattern()
    np.testing.assert_array_equal(load_image(rgb), rgb)
    np.testing.assert_array_equal(load_image(rgb[..., 0])[..., 2], rgb[..., 0])
    rgba = np.concatenate([rgb, np.zeros_like(rgb[..., :1])], axis=2)
    np.testing.assert_array_equal(load_image(rgba), rgb)
    with pytest.raises(DataError, match="array"):
        load_image(np.zeros((2, 2, 2), dtype=np.uint8))
    with pytest.raises(DataError, match=r"empty image array \(0, 4, 3\)"):
        load_image(np.zeros((0, 4, 3), dtype=np.uint8))


def test_integer_arrays_are_read_by_their_range():
    rgb = _pattern()
    # np.array(picture, dtype=int) or a torch tensor's .numpy(): 8-bit values in int64
    np.testing.assert_array_equal(load_image(rgb.astype(np.int64)), rgb)
    np.testing.assert_array_equal(load_image(rgb.astype(np.int32)), rgb)
    # uint16 is 16-bit whatever its values; other integers above 255 are 16-bit too
    wide = rgb.astype(np.uint16) * 257
    np.testing.assert_array_equal(load_image(wide), rgb)
    np.testing.assert_array_equal(load_image(wide.astype(np.int64)), rgb)
    assert load_image(np.full((2, 2), 200, np.uint16)).max() == 1  # a dark 16-bit picture
    assert load_image(np.full((2, 2), 200, ">u2")).max() == 1  # big-endian alike


def test_16bit_pictures_read_the_same_in_every_byte_order_and_mode(tmp_path):
    dark = np.array([[0, 100, 200, 65535]], dtype=np.uint16)
    expected = [0, 0, 1, 255]
    big = Image.frombytes("I;16B", (4, 1), dark.astype(">u2").tobytes())
    little = Image.frombytes("I;16", (4, 1), dark.astype("<u2").tobytes())
    as_i = Image.fromarray(dark.astype(np.int32))  # mode I, as some TIFF readers give
    assert (big.mode, little.mode, as_i.mode) == ("I;16B", "I;16", "I")
    for img in (big, little, as_i):
        np.testing.assert_array_equal(load_image(img)[0, :, 0], expected)
    big.save(tmp_path / "big.tif")
    np.testing.assert_array_equal(load_image(tmp_path / "big.tif")[0, :, 0], expected)


def test_float_arrays_in_the_8bit_range_are_kept():
    rgb = _pattern()
    np.testing.assert_array_equal(load_image(rgb.astype(np.float32)), rgb)
    np.testing.assert_array_equal(load_image(np.full((2, 2), 128.0)), np.full((2, 2, 3), 128))
    np.testing.assert_array_equal(load_image(np.array([[-1.0, 0.0, 300.0]]))[0, :, 0],
                                  [0, 1, 255])  # out of range: stretched


@pytest.mark.parametrize("thing", [b"\x89PNG", [[1, 2]], None, 3.5])
def test_other_objects_are_named_errors(thing):
    with pytest.raises(DataError, match=f"expected a path, a PIL image or a numpy array, got "
                                        f"{type(thing).__name__}"):
        load_image(thing)


def test_truncated_file(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        tmp_path / "full.jpg", quality=90
    )
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.jpg.*truncated"):
        load_image(tmp_path / "cut.jpg")
    assert "truncated" in check_image(tmp_path / "cut.jpg")
    assert image_size(tmp_path / "cut.jpg") == (64, 64)  # the header is intact


def test_not_an_image_and_missing(tmp_path):
    (tmp_path / "notes.jpg").write_text("these are not pixels\n")
    with pytest.raises(DataError, match=r"notes\.jpg: not an image"):
        load_image(tmp_path / "notes.jpg")
    with pytest.raises(DataError, match=r"nope\.png: file not found"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "empty.png").write_bytes(b"")  # a download that wrote nothing
    with pytest.raises(DataError, match=r"empty\.png: empty file \(0 bytes\)"):
        load_image(tmp_path / "empty.png")
    assert "empty file" in check_image(tmp_path / "empty.png")
    with pytest.raises(DataError, match="folder"):
        load_image(tmp_path)


def test_pixel_limit(tmp_path, monkeypatch):
    Image.fromarray(_pattern(20, 20)).save(tmp_path / "big.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 399)
    with pytest.raises(DataError, match=r"big\.png: 20x20 image .* over the limit"):
        load_image(tmp_path / "big.png")


def test_check_image_size_mismatch(tmp_path):
    Image.fromarray(_pattern(6, 8)).save(tmp_path / "a.png")
    assert check_image(tmp_path / "a.png", (6, 8)) is None
    assert "annotations say 8x6" in check_image(tmp_path / "a.png", (8, 6))


@pytest.mark.parametrize("size", [(0, 0), (0, 5), (5, 0)])
def test_an_empty_pil_image_is_an_error(size):
    with pytest.raises(DataError, match=rf"^blank: empty image \({size[0]}x{size[1]} pixels\)"):
        load_image(Image.new("RGB", size), where="blank")
    with pytest.raises(DataError, match="empty image"):
        load_image(Image.new("I;16", size))


def test_unconvertible_mode_names_the_mode():
    with pytest.raises(DataError, match="mode La"):
        load_image(Image.new("La", (2, 2)), where="odd.tif")
