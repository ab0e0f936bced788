"""Reading images for the image captioner, with clear errors.

Every image, whatever its format or colour mode, becomes a ``uint8`` array of
shape ``(3, size, size)``: RGB, channel first. Transparency is composited on
white (the captioning data set is emoji drawn on white), EXIF orientation is
applied, and a non-square image is fitted inside a white square. Anything a
user can get wrong (a missing or corrupt file, a decompression bomb, Pillow not
installed) raises :class:`~genrnn.errors.GenrnnError` with one line naming the
file. Pillow and numpy are imported only when an image is read, and no global
Pillow setting is ever changed.
"""

from __future__ import annotations

import io
import os
import re
import stat
import struct
import warnings
from typing import TYPE_CHECKING, Iterable, Union

from .errors import GenrnnError

if TYPE_CHECKING:
    import numpy

PathLike = Union[str, "os.PathLike[str]"]

IMAGE_SIZE = 64
MAX_FILE_BYTES = 64 * 1024 * 1024  # refuse bigger files before reading them
MAX_PIXELS = 40_000_000  # refuse bigger images before decoding them
MAX_SIZE = 4096  # the largest output side; bigger is surely a mistake
WHITE = (255, 255, 255)
_HINT = "re-export it as PNG or JPEG, or remove it"
_LIMIT = f"{MAX_PIXELS // 1_000_000} megapixel limit"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def require_pillow():
    """Return the ``PIL.Image`` module, or raise a GenrnnError saying how to install Pillow."""
    try:
        from PIL import Image
    except ImportError:
        raise GenrnnError("reading images needs Pillow: pip install 'genrnn[images]'") from None
    return Image


def load_image(path: PathLike, size: int = IMAGE_SIZE) -> numpy.ndarray:
    """Read an image file as a ``uint8`` array of shape ``(3, size, size)``, RGB, channel first."""
    _check_size(size)
    return _decode(_read_file(path), size, str(path))


def decode_image(data: bytes, size: int = IMAGE_SIZE, name: str = "image") -> numpy.ndarray:
    """Like :func:`load_image`, from the bytes of an image file; ``name`` is used in error messages."""
    _check_size(size)
    if isinstance(data, str):
        raise GenrnnError(f"{name}: expected the image file's bytes, got text; decode base64 data first")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise GenrnnError(f"{name}: expected the image file's bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise GenrnnError(f"{name}: empty image data (0 bytes); send the image file's contents")
    if len(data) > MAX_FILE_BYTES:
        raise GenrnnError(f"{name}: {len(data):,} bytes of image data, over the {_mib(MAX_FILE_BYTES)} limit; "
                          "shrink or recompress the image")
    return _decode(data, size, name)


def load_images(paths: Iterable[PathLike], size: int = IMAGE_SIZE) -> numpy.ndarray:
    """Read image files as one ``uint8`` array of shape ``(N, 3, size, size)``; errors name the failing path."""
    import numpy as np

    if isinstance(paths, (str, bytes, os.PathLike)):
        raise GenrnnError(f"load_images takes a list of paths, got the single path {os.fsdecode(paths)!r}; "
                          "use load_image for one image")
    _check_size(size)
    paths = list(paths)
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = _decode(_read_file(path), size, str(path))
    return out


def _check_size(size) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_SIZE:
        raise GenrnnError(f"image size must be a whole number from 1 to {MAX_SIZE}, got {size!r}")


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):g} MiB"


def _read_file(path: PathLike) -> bytes:
    """The bytes of ``path``, after checking it is a readable, non-empty file of sane size."""
    if not isinstance(path, (str, os.PathLike)):
        raise GenrnnError(f"an image path must be a string or a Path, got {type(path).__name__}: {path!r}")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise GenrnnError(f"{path}: no such file; check the image path") from None
    except PermissionError:
        raise GenrnnError(f"{path}: permission denied; make the file readable (chmod +r)") from None
    except OSError as exc:
        raise GenrnnError(f"{path}: cannot read ({exc.strerror or exc}); check the image path") from None
    if stat.S_ISDIR(st.st_mode):
        raise GenrnnError(f"{path}: is a folder, not an image file; give the path of an image file")
    if not stat.S_ISREG(st.st_mode):
        raise GenrnnError(f"{path}: not a regular file; give the path of an image file")
    if st.st_size == 0:
        raise GenrnnError(f"{path}: empty file (0 bytes); {_HINT}")
    if st.st_size > MAX_FILE_BYTES:
        raise GenrnnError(f"{path}: file is {st.st_size:,} bytes, over the {_mib(MAX_FILE_BYTES)} limit for images; "
                          "shrink or recompress it")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)  # the file may have grown since stat
    except PermissionError:
        raise GenrnnError(f"{path}: permission denied; make the file readable (chmod +r)") from None
    except OSError as exc:
        raise GenrnnError(f"{path}: cannot read ({exc.strerror or exc}); check the file") from None
    if not data:
        raise GenrnnError(f"{path}: empty file (0 bytes); {_HINT}")
    if len(data) > MAX_FILE_BYTES:
        raise GenrnnError(f"{path}: file is over the {_mib(MAX_FILE_BYTES)} limit for images; shrink or recompress it")
    return data


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _decode(data: bytes, size: int, name: str) -> numpy.ndarray:
    """Decode image file bytes to ``(3, size, size)`` uint8; every failure is a GenrnnError naming ``name``."""
    import numpy as np

    Image = require_pillow()
    from PIL import ImageOps, UnidentifiedImageError

    def bomb(exc):
        found = re.search(r"\((\d+) pixels\)", str(exc))  # Pillow says "Image size (N pixels) exceeds ..."
        how_big = f"{int(found.group(1)) / 1e6:.0f} megapixels, " if found else ""
        return GenrnnError(f"{name}: image too large to decode safely ({how_big}over the {_LIMIT}); resize it first")

    with warnings.catch_warnings():
        # Local to this block: Pillow's bomb warning becomes an error without touching Image.MAX_IMAGE_PIXELS.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            if data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR" and b"\0\0\0\0" in (data[16:20], data[20:24]):
                width, height = struct.unpack(">II", data[16:24])
                raise GenrnnError(f"{name}: image has no pixels ({width}x{height}); {_HINT}") from None
            raise GenrnnError(f"{name}: not an image Pillow can read (not an image file, an unknown format, "
                              f"or a damaged header); {_HINT}") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise bomb(exc) from None
        except Exception as exc:  # Pillow's decoders raise many kinds on damaged data
            raise GenrnnError(f"{name}: corrupt image header ({_reason(exc)}); {_HINT}") from None
        with img:
            width, height = img.size
            if width <= 0 or height <= 0:
                raise GenrnnError(f"{name}: image has no pixels ({width}x{height}); {_HINT}")
            if width * height > MAX_PIXELS:
                raise GenrnnError(f"{name}: image is {width}x{height} ({width * height / 1e6:.0f} megapixels), "
                                  f"over the {_LIMIT}; resize it first")
            try:
                if img.format == "JPEG":  # let the decoder shrink big photos by 2, 4 or 8 (per image, not global)
                    scale = size / max(width, height)
                    img.draft(None, (max(1, round(width * scale)), max(1, round(height * scale))))
                img.load()  # force a full decode so truncated or corrupt data is caught here
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise bomb(exc) from None
            except Exception as exc:
                raise GenrnnError(f"{name}: truncated or corrupt image data ({_reason(exc)}); {_HINT}") from None
            try:
                rgb = _fit(_to_rgb(ImageOps.exif_transpose(img)), size)
                pixels = np.asarray(rgb, dtype=np.uint8)  # before the with block closes img (rgb may be img)
            except Exception as exc:
                raise GenrnnError(f"{name}: cannot convert image (mode {img.mode}) to RGB ({_reason(exc)}); "
                                  f"{_HINT}") from None
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def _to_rgb(img):
    """``img`` in RGB: transparency composited on white, 16-bit grey scaled to 8 bits."""
    import numpy as np
    from PIL import Image

    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode == "I" or img.mode.startswith("I;16"):  # 16-bit grey (Pillow's own convert clips at 255)
        grey = np.asarray(img).astype(np.int64)
        img = Image.fromarray(((np.clip(grey, 0, 65535) + 128) // 257).astype(np.uint8), "L")
    has_alpha = (img.mode in ("RGBA", "LA", "PA", "RGBa") or "transparency" in img.info
                 or (img.mode == "P" and getattr(img.palette, "mode", "RGB") == "RGBA"))
    if not has_alpha:
        return img.convert("RGB")
    rgba = img.convert("RGBA")
    out = Image.new("RGB", rgba.size, WHITE)
    out.paste(rgba.convert("RGB"), (0, 0), rgba.getchannel("A"))
    return out


def _fit(img, size: int):
    """``img`` scaled to fit a white ``size`` x ``size`` square, centred (letterbox); exact if already that size."""
    from PIL import Image

    width, height = img.size
    if (width, height) == (size, size):
        return img
    side = max(width, height)
    new_w, new_h = max(1, round(width * size / side)), max(1, round(height * size / side))
    if (new_w, new_h) != (width, height):
        filters = getattr(Image, "Resampling", Image)  # Image.Resampling is Pillow >= 9.1
        resample = filters.LANCZOS if side > size else filters.BICUBIC
        img = img.resize((new_w, new_h), resample)
    if (new_w, new_h) == (size, size):
        return img
    out = Image.new("RGB", (size, size), WHITE)
    out.paste(img, ((size - new_w) // 2, (size - new_h) // 2))
    return out
