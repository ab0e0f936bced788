"""Reading images for the captioner: conversions, letterboxing, and one clear error per user mistake.

Every test draws its own small images with Pillow into ``tmp_path``. The bomb
tests craft PNG headers that claim huge sizes, so nothing big is ever decoded.
"""

from __future__ import annotations

import builtins
import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from genrnn.errors import GenrnnError
from genrnn.images import IMAGE_SIZE, MAX_FILE_BYTES, decode_image, load_image, load_images, require_pillow

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def save(img: Image.Image, path: Path, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


def noise(size=(64, 64), seed=0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def png_header(width: int, height: int) -> bytes:
    """A tiny valid PNG whose IHDR claims ``width`` x ``height`` (1-bit grey); its data is far too short."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def hwc(array: np.ndarray) -> np.ndarray:
    """(3, H, W) -> (H, W, 3), for comparing with Pillow's layout."""
    return array.transpose(1, 2, 0)


# --- conversions -------------------------------------------------------------------------------------------------


def test_rgb_png_of_the_right_size_round_trips_exactly(tmp_path):
    img = noise()
    out = load_image(save(img, tmp_path / "a.png"))
    assert out.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and out.dtype == np.uint8
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(hwc(out), np.asarray(img))


def test_rgba_is_composited_on_white(tmp_path):
    pixels = np.zeros((64, 64, 4), dtype=np.uint8)  # fully transparent black
    pixels[:32] = (255, 0, 0, 255)  # top half opaque red
    pixels[40:, :, :] = (0, 0, 0, 128)  # half-transparent black: mid grey on white
    out = hwc(load_image(save(Image.fromarray(pixels, "RGBA"), tmp_path / "a.png")))
    assert (out[:32] == RED).all()
    assert (out[32:40] == WHITE).all()
    assert (abs(out[40:].astype(int) - 127) <= 1).all()


def test_rgb_with_a_transparent_colour_is_composited_on_white(tmp_path):
    img = Image.new("RGB", (64, 64), (0, 0, 0))
    img.paste(RED, (0, 0, 64, 8))
    path = save(img, tmp_path / "a.png", transparency=(0, 0, 0))
    assert "transparency" in Image.open(path).info
    out = hwc(load_image(path))
    assert (out[:8] == RED).all() and (out[8:] == WHITE).all()


def test_greyscale_alpha_is_composited_on_white(tmp_path):
    img = Image.new("LA", (64, 64), (0, 0))
    img.paste((0, 255), (0, 0, 64, 10))
    out = hwc(load_image(save(img, tmp_path / "a.png")))
    assert (out[:10] == 0).all() and (out[10:] == 255).all()


def test_palette_with_transparency_is_composited_on_white(tmp_path):
    img = Image.new("P", (64, 64), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (3 * 254))
    img.paste(1, (0, 0, 64, 20))
    path = save(img, tmp_path / "a.png", transparency=0)
    assert Image.open(path).mode == "P"
    out = hwc(load_image(path))
    assert (out[:20] == RED).all() and (out[20:] == WHITE).all()


@pytest.mark.parametrize("mode,colour,expected", [("P", None, None), ("L", 77, (77, 77, 77)), ("1", 1, WHITE),
                                                  ("CMYK", (0, 255, 255, 0), RED)])
def test_other_modes_become_rgb(tmp_path, mode, colour, expected):
    if mode == "P":
        img = Image.new("RGB", (64, 64), BLUE).convert("P")
        expected = BLUE
    else:
        img = Image.new(mode, (64, 64), colour)
    ext = "jpg" if mode == "CMYK" else "png"
    out = hwc(load_image(save(img, tmp_path / f"a.{ext}", **({"quality": 100} if ext == "jpg" else {}))))
    assert out.shape == (64, 64, 3)
    assert (abs(out.astype(int) - expected) <= 2).all()


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    pixels = np.array([[0, 1000, 32768, 65535]] * 4, dtype=np.uint16)
    path = save(Image.fromarray(pixels), tmp_path / "a.png")
    assert Image.open(path).mode.startswith("I")
    out = load_image(path, size=4)
    assert out[0, 0].tolist() == [0, 4, 128, 255]
    assert (out[0] == out[1]).all() and (out[1] == out[2]).all()


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (64, 32), BLUE)
    img.paste(RED, (0, 0, 32, 32))  # stored: red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: left becomes top
    out = hwc(load_image(save(img, tmp_path / "a.png", exif=exif)))
    assert (out[:32, 16:48] == RED).all() and (out[32:, 16:48] == BLUE).all()
    assert (out[:, :16] == WHITE).all() and (out[:, 48:] == WHITE).all()


def test_animated_image_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (64, 64), RED), Image.new("RGB", (64, 64), BLUE)]
    path = save(frames[0], tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(path).n_frames == 2
    assert (hwc(load_image(path)) == RED).all()


# --- letterbox and resize ----------------------------------------------------------------------------------------


def test_wide_image_is_letterboxed_exactly_when_no_resize_is_needed(tmp_path):
    img = noise((40, 20))
    out = hwc(load_image(save(img, tmp_path / "a.png"), size=40))
    assert (out[:10] == WHITE).all() and (out[30:] == WHITE).all()
    np.testing.assert_array_equal(out[10:30], np.asarray(img))


def test_wide_image_is_letterboxed_and_resized(tmp_path):
    out = hwc(load_image(save(Image.new("RGB", (40, 20), RED), tmp_path / "a.png")))
    assert out.shape == (64, 64, 3)
    assert (out[:16] == WHITE).all() and (out[48:] == WHITE).all()
    assert (abs(out[17:47].astype(int) - RED) <= 2).all()


def test_tall_image_is_centred_horizontally(tmp_path):
    out = hwc(load_image(save(Image.new("RGB", (20, 40), BLUE), tmp_path / "a.png"), size=40))
    assert (out[:, :10] == WHITE).all() and (out[:, 30:] == WHITE).all() and (out[:, 10:30] == BLUE).all()


def test_large_image_is_shrunk(tmp_path):
    colour = (30, 140, 220)
    out = load_image(save(Image.new("RGB", (128, 128), colour), tmp_path / "a.png"))
    assert out.shape == (3, 64, 64) and out.dtype == np.uint8
    assert (abs(hwc(out).astype(int) - colour) <= 2).all()


def test_small_image_is_enlarged(tmp_path):
    out = load_image(save(Image.new("RGB", (8, 8), RED), tmp_path / "a.png"), size=32)
    assert out.shape == (3, 32, 32) and (abs(hwc(out).astype(int) - RED) <= 2).all()


def test_large_jpeg_is_shrunk(tmp_path):
    colour = (200, 60, 20)
    out = load_image(save(Image.new("RGB", (1024, 512), colour), tmp_path / "a.jpg", quality=95))
    assert (hwc(out)[:16] == WHITE).all()
    assert (abs(hwc(out)[18:46].astype(int) - colour) <= 4).all()


# --- decode_image and load_images ------------------------------------------------------------------------------


def test_decode_image_equals_load_image(tmp_path):
    path = save(noise((50, 30)).convert("RGBA"), tmp_path / "a.png")
    data = path.read_bytes()
    for size in (64, 17):
        np.testing.assert_array_equal(decode_image(data, size), load_image(path, size))
    np.testing.assert_array_equal(decode_image(bytearray(data)), load_image(path))


def test_load_images_stacks(tmp_path):
    paths = [save(noise(seed=i), tmp_path / f"{i}.png") for i in range(3)]
    out = load_images(paths)
    assert out.shape == (3, 3, 64, 64) and out.dtype == np.uint8
    for i, path in enumerate(paths):
        np.testing.assert_array_equal(out[i], load_image(path))
    assert load_images(iter(paths), size=8).shape == (3, 3, 8, 8)
    assert load_images([]).shape == (0, 3, 64, 64)


def test_load_images_names_the_failing_path(tmp_path):
    good = save(noise(), tmp_path / "good.png")
    bad = tmp_path / "bad.png"
    bad.write_text("hello")
    with pytest.raises(GenrnnError, match="bad.png"):
        load_images([good, bad, good])


def test_load_images_refuses_a_single_path(tmp_path):
    with pytest.raises(GenrnnError, match="load_image for one"):
        load_images(str(tmp_path / "a.png"))


# --- errors ------------------------------------------------------------------------------------------------------


def check_error(exc_info, name, *words):
    message = str(exc_info.value)
    assert str(name) in message, message
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_missing_file(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(GenrnnError) as exc_info:
        load_image(path)
    check_error(exc_info, path, "no such file")


def test_folder(tmp_path):
    with pytest.raises(GenrnnError) as exc_info:
        load_image(tmp_path)
    check_error(exc_info, tmp_path, "folder")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file(tmp_path):
    path = save(noise(), tmp_path / "locked.png")
    path.chmod(0)
    try:
        with pytest.raises(GenrnnError) as exc_info:
            load_image(path)
    finally:
        path.chmod(0o644)
    check_error(exc_info, path, "permission denied")


def test_unreadable_file_simulated(tmp_path, monkeypatch):
    path = save(noise(), tmp_path / "locked.png")
    real_open = builtins.open

    def fake_open(file, *args, **kwargs):
        if os.fspath(file) == str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    with pytest.raises(GenrnnError) as exc_info:
        load_image(path)
    check_error(exc_info, path, "permission denied")


def test_text_file_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image at all\n")
    with pytest.raises(GenrnnError) as exc_info:
        load_image(path)
    check_error(exc_info, path, "not an image")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(GenrnnError) as exc_info:
        load_image(path)
    check_error(exc_info, path, "empty")


def test_file_over_the_size_limit_is_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    with open(path, "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: no real disk or memory used
    monkeypatch.setattr(builtins, "open", lambda *a, **k: pytest.fail("read a file over the limit"))
    with pytest.raises(GenrnnError) as exc_info:
        load_image(path)
    check_error(exc_info, path, "64 MiB")


def test_truncated_png(tmp_path):
    data = save(noise(), tmp_path / "full.png").read_bytes()
    path = tmp_path / "half.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(GenrnnError) as exc_info:
        load_image(path)
    check_error(exc_info, path, "truncated")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_corrupt_png_data(tmp_path):
    data = bytearray(save(noise(), tmp_path / "good.png").read_bytes())
    start = data.index(b"IDAT") + 4
    data[start + 100: start + 200] = bytes(100)
    path = tmp_path / "bad.png"
    path.write_bytes(bytes(data))
    with pytest.raises(GenrnnError) as exc_info:
        load_image(path)
    check_error(exc_info, path, "corrupt")


def test_truncated_jpeg(tmp_path):
    data = save(noise(), tmp_path / "full.jpg").read_bytes()
    path = tmp_path / "half.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(GenrnnError) as exc_info:
        load_image(path)
    check_error(exc_info, path, "truncated")


@pytest.mark.parametrize("side", [7000, 10000, 20000])  # ours (49 MP), Pillow's warning (100 MP), its error
def test_decompression_bomb(tmp_path, side):
    path = tmp_path / f"bomb{side}.png"
    path.write_bytes(png_header(side, side))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning may escape
        with pytest.raises(GenrnnError) as exc_info:
            load_image(path)
    check_error(exc_info, path, "megapixels", "over the 40 megapixel limit")


def test_bomb_is_refused_even_if_pillow_limit_is_off(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header(20000, 20000))
    with pytest.raises(GenrnnError, match="megapixel limit"):
        load_image(path)


def test_zero_sized_png(tmp_path):
    path = tmp_path / "zero.png"
    path.write_bytes(png_header(0, 0))
    with pytest.raises(GenrnnError) as exc_info:
        load_image(path)
    check_error(exc_info, path, "no pixels (0x0)")


def test_zero_sized_image_from_a_lenient_decoder(tmp_path, monkeypatch):
    # Pillow's own plugins refuse 0x0 headers; a plugin that accepted one must still give a clear error.
    monkeypatch.setattr(Image, "open", lambda fp, *a, **k: Image.new("RGB", (0, 0)))
    with pytest.raises(GenrnnError) as exc_info:
        decode_image(b"anything", name="upload.png")
    check_error(exc_info, "upload.png", "no pixels")


def test_decode_image_errors_use_the_name():
    for data, words in [(b"", "empty"), (b"GIF89a nonsense", "not an image"), ("aGVsbG8=", "base64"),
                        (png_header(20000, 20000), "megapixels")]:
        with pytest.raises(GenrnnError) as exc_info:
            decode_image(data, name="upload #3")
        check_error(exc_info, "upload #3", words)


def test_decode_image_over_the_size_limit():
    with pytest.raises(GenrnnError) as exc_info:
        decode_image(bytes(MAX_FILE_BYTES + 1), name="big upload")
    check_error(exc_info, "big upload", "64 MiB")


@pytest.mark.parametrize("size", [0, -1, 1.5, True, 10**6])
def test_bad_size(tmp_path, size):
    path = save(noise(), tmp_path / "a.png")
    with pytest.raises(GenrnnError, match="image size"):
        load_image(path, size=size)


def test_no_global_state_changes(tmp_path):
    filters = list(warnings.filters)
    limit = Image.MAX_IMAGE_PIXELS
    good = save(noise(), tmp_path / "a.png")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(10000, 10000))
    load_image(good)
    with pytest.raises(GenrnnError):
        load_image(bomb)
    assert warnings.filters == filters
    assert Image.MAX_IMAGE_PIXELS == limit
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# --- Pillow --------------------------------------------------------------------------------------------------------


def test_require_pillow_returns_pil_image():
    assert require_pillow() is Image


@pytest.mark.parametrize("how", ["sys.modules", "__import__"])
def test_pillow_missing_gives_the_install_hint(tmp_path, monkeypatch, how):
    path = save(noise(), tmp_path / "a.png")
    if how == "sys.modules":
        for name in ("PIL", "PIL.Image", "PIL.ImageOps"):
            monkeypatch.setitem(sys.modules, name, None)
    else:
        real_import = builtins.__import__

        def fake_import(name, *args, **kwargs):
            if name == "PIL" or name.startswith("PIL."):
                raise ImportError(f"No module named {name!r}")
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", fake_import)
    for call in (require_pillow, lambda: load_image(path), lambda: decode_image(b"x")):
        with pytest.raises(GenrnnError, match=r"needs Pillow: pip install 'genrnn\[images\]'"):
            call()


def test_import_is_light():
    code = "import sys, genrnn.images; print(sorted(m for m in ('PIL', 'numpy', 'torch') if m in sys.modules))"
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.strip() == "[]"


def test_string_paths_work_like_paths(tmp_path):
    path = save(noise(), tmp_path / "a.png")
    np.testing.assert_array_equal(load_image(str(path)), load_image(path))
