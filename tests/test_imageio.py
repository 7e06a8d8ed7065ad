"""Decoding: every image becomes HxWx3 uint8 RGB; incomplete and damaged files are caught."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from paddy.data.cache import shrink
from paddy.data.imageio import (
    ImageDecodeError,
    check_and_decode,
    check_image_file,
    jpeg_reduction,
    read_image,
    to_rgb_uint8,
)


def test_colour_jpeg_is_rgb(tmp_path: Path):
    bgr = np.zeros((10, 12, 3), np.uint8)
    bgr[..., 2] = 255  # red in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    image = read_image(tmp_path / "red.png")
    assert image.shape == (10, 12, 3) and image.dtype == np.uint8
    assert image[0, 0].tolist() == [255, 0, 0]


@pytest.mark.parametrize("kind", ["gray", "rgba", "gray16", "rgb16"])
def test_unusual_images_become_rgb_uint8(tmp_path: Path, kind: str):
    arrays = {
        "gray": np.full((9, 7), 200, np.uint8),
        "rgba": np.dstack([np.full((9, 7, 3), 100, np.uint8), np.full((9, 7), 50, np.uint8)]),
        "gray16": np.full((9, 7), 51400, np.uint16),
        "rgb16": np.full((9, 7, 3), 51400, np.uint16),
    }
    path = tmp_path / f"{kind}.png"
    cv2.imwrite(str(path), arrays[kind])
    image = read_image(path)
    assert image.shape == (9, 7, 3) and image.dtype == np.uint8
    expected = {"gray": 200, "rgba": 100, "gray16": 200, "rgb16": 200}[kind]
    assert int(image[0, 0, 0]) == expected
    assert check_image_file(path) is None


def test_truncated_jpeg_is_reported(tmp_path: Path):
    rng = np.random.default_rng(0)
    ok, buf = cv2.imencode(".jpg", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = buf.tobytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])
    (tmp_path / "no_eoi.jpg").write_bytes(data[:-2])
    (tmp_path / "good.jpg").write_bytes(data)
    assert "truncated" in check_image_file(tmp_path / "cut.jpg")
    assert "truncated" in check_image_file(tmp_path / "no_eoi.jpg")
    assert check_image_file(tmp_path / "good.jpg") is None


def test_truncated_png_garbage_and_empty_files(tmp_path: Path):
    ok, buf = cv2.imencode(".png", np.zeros((16, 16, 3), np.uint8))
    (tmp_path / "cut.png").write_bytes(buf.tobytes()[:-20])
    (tmp_path / "text.jpg").write_text("not an image at all")
    (tmp_path / "empty.png").write_bytes(b"")
    assert "truncated PNG" in check_image_file(tmp_path / "cut.png")
    assert "cannot decode" in check_image_file(tmp_path / "text.jpg")
    assert check_image_file(tmp_path / "empty.png") == "empty file"
    assert check_image_file(tmp_path / "absent.png") == "file not found"
    with pytest.raises(ImageDecodeError, match="text.jpg"):
        read_image(tmp_path / "text.jpg")


# ------------------------------------------------------------------ damaged JPEGs that libjpeg decodes


def photo(height: int = 96, width: int = 128) -> np.ndarray:
    """BGR content that compresses like a photo (shading, shapes, noise), unlike flat test colours."""
    rng = np.random.default_rng(height * width)
    y, x = np.mgrid[0:height, 0:width]
    image = np.dstack([128 + 60 * np.sin(x / (9 + 4 * c) + c) * np.cos(y / 11) for c in range(3)])
    for _ in range(8):
        centre = (int(rng.integers(width)), int(rng.integers(height)))
        cv2.circle(image, centre, int(rng.integers(4, 24)), rng.integers(0, 256, 3).tolist(), -1)
    return np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)


def jpeg_bytes(image: np.ndarray, progressive: bool = False) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)])
    assert ok
    return buf.tobytes()


def opencv_pixels(path: Path) -> np.ndarray:
    """What check_and_decode returned before JPEGs got a strict decoder: OpenCV's pixels."""
    return to_rgb_uint8(cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH))


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.9])
@pytest.mark.parametrize("progressive", [False, True], ids=["baseline", "progressive"])
def test_jpeg_cut_short_with_end_marker_appended_is_refused(tmp_path: Path, progressive: bool, cut: float):
    data = jpeg_bytes(photo(), progressive)
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: int(len(data) * cut)] + b"\xff\xd9")
    assert opencv_pixels(path).shape == (96, 128, 3)  # OpenCV "decodes" it: grey or blurry below the cut
    reasons = {"corrupt JPEG data (premature end of data segment)"}
    if progressive:  # cut before the last scans: those are missing, whatever libjpeg says
        reasons.add("truncated JPEG (scans missing)")
    assert check_image_file(path) in reasons
    with pytest.raises(ImageDecodeError, match="cut.jpg: (corrupt|truncated) JPEG"):
        read_image(path)


def test_progressive_jpeg_cut_between_scans_is_refused(tmp_path: Path):
    # libjpeg does not even warn: the scans it got decode to a blurrier, complete-looking image.
    data = jpeg_bytes(photo(), progressive=True)
    (tmp_path / "cut.jpg").write_bytes(data[: data.rfind(b"\xff\xda")] + b"\xff\xd9")
    assert check_image_file(tmp_path / "cut.jpg") == "truncated JPEG (scans missing)"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_jpeg_with_garbage_in_the_middle_is_refused(tmp_path: Path, seed: int):
    data = bytearray(jpeg_bytes(photo()))
    middle = len(data) // 2
    data[middle : middle + 64] = np.random.default_rng(seed).integers(0, 256, 64, dtype=np.uint8).tobytes()
    (tmp_path / "garbage.jpg").write_bytes(data)
    assert check_image_file(tmp_path / "garbage.jpg").startswith("corrupt JPEG")


def pil_jpeg(path: Path, image: Image.Image, **options: object) -> Path:
    image.save(path, "JPEG", **options)
    return path


def test_good_images_keep_opencv_pixels(tmp_path: Path):
    bgr = photo(37, 53)  # odd sizes: partial blocks at the edges
    rgb = Image.fromarray(bgr[..., ::-1].copy())
    files = [tmp_path / "baseline.jpg", tmp_path / "progressive.jpg", tmp_path / "gray.jpg", tmp_path / "p.png"]
    (tmp_path / "baseline.jpg").write_bytes(jpeg_bytes(bgr))
    (tmp_path / "progressive.jpg").write_bytes(jpeg_bytes(bgr, progressive=True))
    (tmp_path / "gray.jpg").write_bytes(jpeg_bytes(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)))
    cv2.imwrite(str(tmp_path / "p.png"), bgr)
    files.append(pil_jpeg(tmp_path / "pil.jpg", rgb, quality=95, subsampling=0, optimize=True))
    files.append(pil_jpeg(tmp_path / "cmyk.jpg", rgb.convert("CMYK")))
    for orientation in range(1, 9):  # EXIF-rotated: turned upright exactly as OpenCV does
        exif = Image.Exif()
        exif[0x0112] = orientation
        files.append(pil_jpeg(tmp_path / f"exif{orientation}.jpg", rgb, exif=exif, progressive=orientation > 4))
    for path in files:
        reason, image = check_and_decode(path)
        assert reason is None, (path.name, reason)
        assert np.array_equal(image, opencv_pixels(path)), path.name
        assert np.array_equal(read_image(path), image), path.name
    assert check_and_decode(tmp_path / "exif6.jpg")[1].shape == (53, 37, 3)


def test_harmless_jpeg_oddities_are_accepted(tmp_path: Path):
    data = jpeg_bytes(photo())
    trailer = tmp_path / "trailer.jpg"  # e.g. a motion photo: a video after the end-of-image marker
    trailer.write_bytes(data + b"\x00\x00\x00\x18ftypmp42" + bytes(4096))
    jfif = tmp_path / "jfif2.jpg"  # libjpeg warns "unknown JFIF revision number 2.01", pixels are fine
    at = data.index(b"JFIF\x00") + 5
    jfif.write_bytes(data[:at] + b"\x02" + data[at + 1 :])
    for path in (trailer, jfif):
        reason, image = check_and_decode(path)
        assert reason is None, (path.name, reason)
        assert np.array_equal(image, opencv_pixels(trailer)), path.name


# ------------------------------------------------------------------------------------ scaled decoding


@pytest.fixture(scope="module")
def big_photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 4000x3000 photo-like JPEG (quality 90) for the module: generating it takes about a second."""
    from paddy.benchmark.loader import photo_like

    path = tmp_path_factory.mktemp("big") / "big.jpg"
    cv2.imwrite(str(path), photo_like(np.random.default_rng(0), 4000, 3000), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return path


def test_the_reduction_is_the_largest_that_still_gives_the_needed_side():
    assert jpeg_reduction(3000, 4000, 256) == 8  # 375x500
    assert jpeg_reduction(3000, 4000, 375) == 8 and jpeg_reduction(3000, 4000, 376) == 4  # 750x1000
    assert jpeg_reduction(480, 640, 224) == 2  # 240x320 >= 224
    assert jpeg_reduction(480, 640, 256) == 1  # 240 < 256: the full size
    assert jpeg_reduction(640, 480, 224) == 2  # portrait alike
    assert jpeg_reduction(3000, 4000, None) == jpeg_reduction(3000, 4000, 0) == 1
    assert jpeg_reduction(60, 80, 1) == 8 and jpeg_reduction(56, 80, 1) == 4  # never below 8 px: 14x20, not 7x10
    for height, width in ((3000, 4000), (480, 640), (481, 641), (37, 53), (1080, 1920)):
        for need in (1, 32, 64, 224, 256, 300, 512, 1000, 5000):
            factor = jpeg_reduction(height, width, need)
            shorter = min(-(-height // factor), -(-width // factor))
            assert factor == 1 or shorter >= need, (height, width, need, factor)
            if factor < 8:  # the next reduction would have been too small
                assert min(-(-height // (2 * factor)), -(-width // (2 * factor))) < max(need, 8)


def test_scaled_decode_shape_and_pixels(big_photo: Path):
    full = read_image(big_photo)
    scaled = read_image(big_photo, 256)
    assert full.shape == (3000, 4000, 3) and scaled.shape == (375, 500, 3)
    a, b = shrink(full, 256), shrink(scaled, 256)
    assert a.shape == b.shape == (256, 341, 3)
    assert np.abs(a.astype(np.int16) - b.astype(np.int16)).mean() < 3.0  # about 1 in 255 on photos
    reason, checked = check_and_decode(big_photo, 600)
    assert reason is None and checked.shape == (750, 1000, 3)
    png = big_photo.with_suffix(".png")  # other formats: the full size, as before
    cv2.imwrite(str(png), cv2.resize(cv2.imread(str(big_photo)), (640, 480)))
    assert read_image(png, 100).shape == (480, 640, 3)


def test_scaled_decode_refuses_damaged_big_jpegs(big_photo: Path, tmp_path: Path):
    data = big_photo.read_bytes()
    cut, garbage = tmp_path / "cut.jpg", tmp_path / "garbage.jpg"
    cut.write_bytes(data[: len(data) // 2])
    middle, rng = len(data) // 2, np.random.default_rng(0)
    garbage.write_bytes(data[:middle] + rng.integers(0, 255, 4096, np.uint8).tobytes() + data[middle + 4096 :])
    appended = tmp_path / "appended.jpg"  # cut short, the end-of-image marker put back
    appended.write_bytes(data[: int(len(data) * 0.7)] + b"\xff\xd9")
    for path in (cut, garbage, appended):
        for side in (None, 256, 1):
            with pytest.raises(ImageDecodeError, match=f"{path.name}: (corrupt|truncated) JPEG"):
                read_image(path, side)
        assert check_image_file(path).startswith(("corrupt JPEG", "truncated JPEG"))
    # Exactly as strict: a little garbage that libjpeg may or may not notice gets the same verdict at every scale.
    for seed in range(3):
        small = tmp_path / f"small{seed}.jpg"
        noise = np.random.default_rng(seed).integers(0, 255, 64, np.uint8).tobytes()
        small.write_bytes(data[:middle] + noise + data[middle + 64 :])
        verdicts = {check_and_decode(small, side)[0] for side in (None, 256, 1)}
        assert len(verdicts) == 1, verdicts


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_scaled_decode_keeps_the_exif_orientation(tmp_path: Path, orientation: int):
    bgr = cv2.resize(photo(), (640, 480))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = pil_jpeg(tmp_path / "rotated.jpg", Image.fromarray(bgr[..., ::-1].copy()), exif=exif, quality=90)
    full, scaled = read_image(path), read_image(path, 224)
    assert np.array_equal(full, opencv_pixels(path))  # upright as OpenCV turns it
    assert scaled.shape == (full.shape[0] // 2, full.shape[1] // 2, 3)
    expected = cv2.resize(full, scaled.shape[1::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(scaled.astype(np.int16) - expected.astype(np.int16)).mean() < 3.0
    wrong = cv2.resize(cv2.rotate(full, cv2.ROTATE_180), scaled.shape[1::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(scaled.astype(np.int16) - wrong.astype(np.int16)).mean() > 10.0
