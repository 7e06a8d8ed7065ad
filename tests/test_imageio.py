"""Decoding: every image becomes HxWx3 uint8 RGB; incomplete files are caught."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from paddy.data.imageio import ImageDecodeError, check_image_file, read_image


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
