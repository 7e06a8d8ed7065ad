"""Image decoding with OpenCV, and the structural checks that catch files OpenCV would accept.

Every image comes out as an ``H x W x 3`` ``uint8`` RGB array, whatever it was on disk: grayscale is
replicated to three channels, an alpha channel is dropped, 16-bit and float images are rescaled to
8 bits. A truncated JPEG can decode "successfully" (libjpeg pads the missing rows with grey and only
prints a warning), so :func:`check_image_file` also checks that the file ends the way its format
says it must (JPEG EOI marker, PNG IEND chunk) before decoding it.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

# Decode with the file's own channel count and depth; EXIF orientation is still applied.
_DECODE_FLAGS = cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class ImageDecodeError(ValueError):
    """An image file that cannot be turned into pixels."""


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Convert an OpenCV-decoded array (BGR/BGRA/gray, any depth) to ``H x W x 3`` uint8 RGB."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype in (np.float32, np.float64):
        scale = 255.0 if float(np.nanmax(image, initial=0.0)) <= 1.0 else 1.0
        image = np.clip(np.nan_to_num(image) * scale, 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageDecodeError(f"unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    channels = image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    raise ImageDecodeError(f"unsupported channel count {channels}")


def decode_image(data: bytes | np.ndarray, where: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes to RGB uint8; raise :class:`ImageDecodeError` naming ``where``."""
    buffer = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else data
    if buffer.size == 0:
        raise ImageDecodeError(f"{where}: empty file")
    image = cv2.imdecode(buffer, _DECODE_FLAGS)
    if image is None:
        raise ImageDecodeError(f"{where}: OpenCV cannot decode it (not an image, or corrupt)")
    return to_rgb_uint8(image)


def read_image(path: str | Path) -> np.ndarray:
    """Read one image file as ``H x W x 3`` uint8 RGB."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as err:
        raise ImageDecodeError(f"{path}: cannot read ({err.strerror or err})") from err
    return decode_image(data, str(path))


def _structural_problem(data: bytes) -> str | None:
    """Return why an encoded image is incomplete, judged from its format's framing, or None."""
    if data[:3] == b"\xff\xd8\xff":
        # Some writers pad after the End Of Image marker, so look near the end, not only at it.
        if b"\xff\xd9" not in data[-64:]:
            return "truncated JPEG (no end-of-image marker)"
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        if b"IEND" not in data[-32:]:
            return "truncated PNG (no IEND chunk)"
    return None


def check_image_file(path: str | Path) -> str | None:
    """Fully verify one image file. Return None when it is good, else a short reason."""
    return check_and_decode(path)[0]


def check_and_decode(path: str | Path) -> tuple[str | None, np.ndarray | None]:
    """:func:`check_image_file` that also returns the decoded pixels of a good file: ``(None, image)``
    when it is good, ``(reason, None)`` when not."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return "file not found", None
    except OSError as err:
        return f"cannot read ({err.strerror or err})", None
    if not data:
        return "empty file", None
    problem = _structural_problem(data)
    if problem:
        return problem, None
    try:
        image = decode_image(data, str(path))
    except ImageDecodeError as err:
        return str(err).split(": ", 1)[-1], None
    if image.shape[0] < 2 or image.shape[1] < 2:
        return f"image is only {image.shape[1]}x{image.shape[0]} px", None
    return None, image
