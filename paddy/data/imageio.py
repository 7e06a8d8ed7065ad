"""Image decoding, and the checks that catch damaged files a lenient decoder would accept.

Every image comes out as an ``H x W x 3`` ``uint8`` RGB array, whatever it was on disk: grayscale is
replicated to three channels, an alpha channel is dropped, 16-bit and float images are rescaled to
8 bits, EXIF orientation is applied.

A damaged JPEG can decode "successfully": libjpeg pads missing rows with grey, decodes garbage into
garbage blocks, and only prints a warning to stderr, which OpenCV neither returns nor exposes (a file
cut short with an end-of-image marker appended passes any check of how the file ends). So 8-bit
JPEGs are decoded by libjpeg-turbo through ``simplejpeg`` in strict mode, where those warnings
raise, per call and so thread-safely; it is also faster than ``cv2.imdecode`` and gives the same
pixels. A walk over the JPEG markers finds the EXIF orientation, a missing end-of-image marker, and
a progressive file whose last scans are missing (that one decodes without any warning). Other
formats go through OpenCV; a PNG must end with its IEND chunk.

Scaled decoding: a caller that shrinks the image right after decoding passes ``min_side``, the shorter
side it needs, and a JPEG is decoded at 1/2, 1/4 or 1/8 of its size (libjpeg's DCT scaling, through
the same strict ``simplejpeg`` call), the largest reduction whose shorter side is still at least
``min_side`` (:func:`jpeg_reduction`, the one place that decides it). The whole file is still
entropy-decoded, so a truncated or corrupt file is refused exactly as at full size; EXIF orientation
is applied to the smaller image the same way. A 4000x3000 photo reaches a 256-px cache entry several
times faster; the pixels after the caller's resize differ from full decode + resize by about 1-1.5
on the 0-255 scale (mean absolute difference, ``python -m paddy.benchmark mode=loader``). OpenCV's
``IMREAD_REDUCED_COLOR_*`` does the same DCT scaling about as fast, but cannot be made strict.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import simplejpeg

from paddy.errors import PaddyError

# Decode with the file's own channel count and depth; EXIF orientation is still applied.
_DECODE_FLAGS = cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

_JPEG_SIGNATURE = b"\xff\xd8\xff"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A JPEG marker: 0xFF and a code that is not a stuffed zero or a restart marker (both occur inside
# the entropy-coded data of a scan), nor another 0xFF (fill bytes may precede a marker).
_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_EOI, _APP1, _SOS = 0xD9, 0xE1, 0xDA
_NO_LENGTH = (0x01, 0xD8)  # TEM, SOI: markers without a segment body
_NOT_FRAMES = (0xC4, 0xC8, 0xCC)  # DHT, JPG, DAC share the SOFn code range
_DCT_FRAMES = (0xC0, 0xC1, 0xC2, 0xC9, 0xCA)  # sequential/progressive, Huffman/arithmetic coded
_PROGRESSIVE_FRAMES = (0xC2, 0xCA)
_STRICT_FRAMES = (0xC0, 0xC1, 0xC2)  # what simplejpeg decodes (8-bit Huffman); the rest: OpenCV
_ALL_COEFFICIENTS = (1 << 64) - 1
# libjpeg warnings that say the pixel data is damaged.
_DAMAGE_WARNINGS = ("Corrupt JPEG data", "Premature end of JPEG file", "Inconsistent progression")
# libjpeg warnings that leave the pixels intact, and TurboJPEG ("tjDecompressHeader3(): ...")
# refusing what libjpeg itself decodes (unusual subsampling): such files go to OpenCV, as before.
_HARMLESS_WARNINGS = (
    "unknown JFIF revision",
    "Unknown Adobe color transform",
    "Invalid SOS parameters",
    "bad ICC marker",
    "(): ",
)
_OPENCV_REFUSAL = "OpenCV cannot decode it (not an image, or corrupt)"
JPEG_REDUCTIONS = (8, 4, 2)  # libjpeg's power-of-two DCT scalings (SIMD IDCTs; 3/8, 5/8... are slower C code)
_SMALLEST_REDUCED_SIDE = 8  # never below 8 px: from there on no other libjpeg scaling gives the same size


class ImageDecodeError(PaddyError):
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


def jpeg_reduction(height: int, width: int, min_side: int | None) -> int:
    """The factor (1, 2, 4 or 8) a ``height x width`` JPEG is decoded smaller by when the next step needs
    a shorter side of at least ``min_side`` (None: the full size): the largest whose result, libjpeg's
    ``ceil(side / factor)``, still has a shorter side >= ``min_side`` (and >= 8 px).

    >>> jpeg_reduction(3000, 4000, 256), jpeg_reduction(480, 640, 224), jpeg_reduction(480, 640, 256)
    (8, 2, 1)
    """
    if not min_side or min_side <= 0:
        return 1
    need = max(int(min_side), _SMALLEST_REDUCED_SIDE)
    for factor in JPEG_REDUCTIONS:
        if min(math.ceil(height / factor), math.ceil(width / factor)) >= need:
            return factor
    return 1


def decode_image(data: bytes | np.ndarray, where: str = "<bytes>", min_side: int | None = None) -> np.ndarray:
    """Decode encoded image bytes to RGB uint8 after checking the file is whole and undamaged;
    raise :class:`ImageDecodeError` naming ``where`` and the reason.

    ``min_side``: the shorter side the caller needs (it shrinks the image next); a JPEG may then come
    out 2, 4 or 8 times smaller (:func:`jpeg_reduction`), checked exactly as strictly. Other formats,
    and ``None``, give the full size."""
    data = data.tobytes() if isinstance(data, np.ndarray) else data
    if not data:
        raise ImageDecodeError(f"{where}: empty file")
    if data.startswith(_JPEG_SIGNATURE):
        return _decode_jpeg(data, where, min_side)
    if data.startswith(_PNG_SIGNATURE) and b"IEND" not in data[-32:]:
        raise ImageDecodeError(f"{where}: truncated PNG (no IEND chunk)")
    return _decode_with_opencv(data, where)


def _decode_with_opencv(data: bytes, where: str, refusal: str = _OPENCV_REFUSAL) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _DECODE_FLAGS)
    if image is None:
        raise ImageDecodeError(f"{where}: {refusal}")
    return to_rgb_uint8(image)


def read_image(path: str | Path, min_side: int | None = None) -> np.ndarray:
    """Read one image file as ``H x W x 3`` uint8 RGB, with the checks of :func:`decode_image`
    (they cost nothing: the strict JPEG decoder is faster than OpenCV's); ``min_side``: see there."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ImageDecodeError(f"{path}: cannot read ({err.strerror or err})") from err
    return decode_image(data, str(path), min_side)


# ---------------------------------------------------------------------------------------------- JPEG


@dataclass
class _JpegLayout:
    """What a walk over a JPEG's markers found."""

    frame: int = 0  # SOFn code: 0xC0 baseline, 0xC2 progressive, ...
    precision: int = 8
    height: int = 0  # as stored (before the EXIF orientation)
    width: int = 0
    components: tuple[int, ...] = ()
    orientation: int = 1  # EXIF orientation; 1: as stored
    finished: dict[int, int] = field(default_factory=dict)  # component -> mask of fully decoded coefficients
    problem: str | None = None


def _decode_jpeg(data: bytes, where: str, min_side: int | None = None) -> np.ndarray:
    """Decode a JPEG (at 1/:func:`jpeg_reduction` of its size), refusing it when it is incomplete or
    libjpeg reports damaged data."""
    layout = _parse_jpeg(data)
    if layout.problem:
        raise ImageDecodeError(f"{where}: {layout.problem}")
    if layout.frame not in _STRICT_FRAMES or layout.precision != 8:
        return _decode_with_opencv(data, where)  # 12-bit, lossless, arithmetic: rare, unchecked
    factor = jpeg_reduction(layout.height, layout.width, min_side)
    # simplejpeg picks the smallest libjpeg scaling whose result is at least this big: exactly 1/factor.
    least = {"min_height": math.ceil(layout.height / factor), "min_width": math.ceil(layout.width / factor)} \
        if factor > 1 else {}
    try:
        image = simplejpeg.decode_jpeg(data, "RGB", strict=True, **least)  # strict: a libjpeg warning raises
    except ValueError as err:
        message = str(err)
        detail = _libjpeg_detail(message)
        if any(sign in message for sign in _HARMLESS_WARNINGS):
            return _decode_with_opencv(data, where, f"cannot decode JPEG ({detail})")
        verdict = "corrupt JPEG data" if message.startswith(_DAMAGE_WARNINGS) else "cannot decode JPEG"
        raise ImageDecodeError(f"{where}: {verdict} ({detail})") from None
    return _apply_orientation(image, layout.orientation)


def _libjpeg_detail(message: str) -> str:
    """``Corrupt JPEG data: premature end of data segment`` -> ``premature end of data segment``."""
    detail = message.removeprefix("Corrupt JPEG data: ").split("(): ")[-1].strip()
    return detail[:1].lower() + detail[1:]


def _parse_jpeg(data: bytes) -> _JpegLayout:
    """Walk a JPEG's markers from SOI to EOI: segments are skipped by their length, the entropy-coded
    data after a scan header by searching for the next marker."""
    layout, pos = _JpegLayout(), 2
    while True:
        found = _MARKER.search(data, pos)
        if found is None:
            layout.problem = _ran_off_the_end(data)
            return layout
        pos, code = found.start(), data[found.start() + 1]
        if code == _EOI:
            break
        if code in _NO_LENGTH:
            pos += 2
            continue
        if code < 0xC0:  # a reserved code: garbage in the entropy-coded data
            layout.problem = f"corrupt JPEG data (unsupported marker type 0x{code:02x})"
            return layout
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if end > len(data) or pos + 4 > len(data):
            layout.problem = _ran_off_the_end(data)
            return layout
        _read_segment(layout, code, data[pos + 4 : end])
        pos = max(end, pos + 4)
    layout.problem = _missing_scans(layout)
    return layout


def _ran_off_the_end(data: bytes) -> str:
    """The verdict on a JPEG whose marker walk never met the end-of-image marker."""
    # No end-of-image marker near the end (writers may pad after it): the file was cut short.
    if b"\xff\xd9" not in data[-64:]:
        return "truncated JPEG (no end-of-image marker)"
    # There is one, but a segment runs past it: cut short with the marker appended, or garbage that
    # looks like a marker.
    return "corrupt JPEG (a marker segment runs past the end-of-image marker)"


def _read_segment(layout: _JpegLayout, code: int, body: bytes) -> None:
    """Note what ``layout`` needs from one marker segment: frame header, scan header, EXIF."""
    if 0xC0 <= code <= 0xCF and code not in _NOT_FRAMES and len(body) >= 6:
        layout.frame, layout.precision = code, body[0]
        layout.height, layout.width = int.from_bytes(body[1:3], "big"), int.from_bytes(body[3:5], "big")
        layout.components = tuple(body[6 : 6 + 3 * body[5] : 3])
    elif code == _SOS and body and len(body) >= 1 + 2 * body[0] + 3:
        count = body[0]
        first, last, approximation = body[1 + 2 * count : 4 + 2 * count]
        if layout.frame not in _PROGRESSIVE_FRAMES:  # libjpeg ignores these fields there
            first, last, approximation = 0, 63, 0
        if approximation & 0x0F == 0 and first <= last <= 63:  # the scan that sends the last bit
            coefficients = ((1 << (last + 1)) - 1) ^ ((1 << first) - 1)
            for component in body[1 : 1 + 2 * count : 2]:  # component selectors
                layout.finished[component] = layout.finished.get(component, 0) | coefficients
    elif code == _APP1 and body.startswith(b"Exif\0\0") and layout.orientation == 1:
        layout.orientation = _exif_orientation(body[6:])


def _missing_scans(layout: _JpegLayout) -> str | None:
    """Why the scans leave a coefficient of a component unfinished, or None.

    A progressive JPEG cut at a scan boundary, with an end-of-image marker appended, decodes without
    any libjpeg warning (as a blurrier image): only its missing refinement scans give it away."""
    if layout.frame not in _DCT_FRAMES:
        return None  # no frame header (the decoder will say so) or a lossless/hierarchical one
    if any(layout.finished.get(c, 0) != _ALL_COEFFICIENTS for c in layout.components):
        return "truncated JPEG (scans missing)"
    return None


def _exif_orientation(tiff: bytes) -> int:
    """The orientation tag (1..8) of the TIFF structure in an EXIF segment; 1 when absent or odd."""
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None:
        return 1
    ifd = int.from_bytes(tiff[4:8], order)
    count = min(int.from_bytes(tiff[ifd : ifd + 2], order), (len(tiff) - ifd) // 12)
    tag = (0x0112).to_bytes(2, order)
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        if tiff[entry : entry + 2] == tag:
            value = int.from_bytes(tiff[entry + 8 : entry + 10], order)
            return value if 1 <= value <= 8 else 1
    return 1


def _apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Turn a decoded image upright the way OpenCV's ``imdecode`` does for an EXIF orientation."""
    if orientation in (5, 6, 7, 8):
        image = cv2.transpose(image)
    flip = {2: 1, 3: -1, 4: 0, 6: 1, 7: -1, 8: 0}.get(orientation)
    return image if flip is None else cv2.flip(image, flip)


# ------------------------------------------------------------------------------------------ checking


def check_image_file(path: str | Path) -> str | None:
    """Fully verify one image file. Return None when it is good, else a short reason.

    A JPEG is decoded at 1/8 of its size: every byte is still entropy-decoded and checked, only the
    pixels, which nobody looks at, are smaller."""
    return check_and_decode(path, min_side=_SMALLEST_REDUCED_SIDE)[0]


def check_and_decode(path: str | Path, min_side: int | None = None) -> tuple[str | None, np.ndarray | None]:
    """:func:`check_image_file` that also returns the decoded pixels of a good file: ``(None, image)``
    when it is good, ``(reason, None)`` when not; ``min_side``: see :func:`decode_image`."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return "file not found", None
    except OSError as err:
        return f"cannot read ({err.strerror or err})", None
    if not data:
        return "empty file", None
    try:
        image = decode_image(data, str(path), min_side)
    except ImageDecodeError as err:
        return str(err).split(": ", 1)[-1], None
    if image.shape[0] < 2 or image.shape[1] < 2:
        return f"image is only {image.shape[1]}x{image.shape[0]} px", None
    return None, image
