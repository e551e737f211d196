"""Images load the way mmdet's loader (mmcv `imfrombytes`, flag `color`, cv2 backend) loads them:
uint8 BGR H x W x 3 whatever the file holds."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from model.preprocess import ImageReadError, load_image


@pytest.fixture
def rgb():
    img = np.zeros((41, 67, 3), dtype=np.uint8)
    img[:20, :30] = (200, 30, 40)
    img[20:, 30:] = (10, 220, 90)
    img[:20, 30:] = (120, 120, 250)
    img[20:, :30] = np.arange(30, dtype=np.uint8)[None, :, None] * 8
    return img


def check_bgr(img, h, w):
    assert img.dtype == np.uint8 and img.shape == (h, w, 3) and img.flags.c_contiguous


def test_colour_png_is_exact_bgr(tmp_path, rgb):
    path = tmp_path / "c.png"
    Image.fromarray(rgb).save(path)
    img = load_image(path)
    check_bgr(img, 41, 67)
    assert np.array_equal(img, rgb[..., ::-1])


def test_colour_jpeg_decodes_like_cv2_imdecode(tmp_path, rgb):
    path = tmp_path / "c.jpg"
    Image.fromarray(rgb).save(path, quality=90)
    img = load_image(path)
    check_bgr(img, 41, 67)
    assert np.array_equal(img, cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR))
    assert np.abs(img[..., ::-1].astype(int) - rgb).mean() < 6


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_grayscale_is_expanded_to_three_equal_channels(tmp_path, rgb, suffix):
    gray = cv2.cvtColor(rgb[..., ::-1], cv2.COLOR_BGR2GRAY)
    path = tmp_path / f"g{suffix}"
    Image.fromarray(gray, mode="L").save(path)
    img = load_image(path)
    check_bgr(img, 41, 67)
    assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])
    if suffix == ".png":
        assert np.array_equal(img[..., 0], gray)


def test_rgba_drops_alpha_without_blending(tmp_path, rgb):
    alpha = np.full(rgb.shape[:2], 10, dtype=np.uint8)  # almost transparent: blending would darken
    path = tmp_path / "a.png"
    Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA").save(path)
    img = load_image(path)
    check_bgr(img, 41, 67)
    assert np.array_equal(img, rgb[..., ::-1])


def test_cmyk_jpeg_is_converted_to_bgr(tmp_path, rgb):
    path = tmp_path / "k.jpg"
    Image.fromarray(rgb).convert("CMYK").save(path, quality=100)
    assert Image.open(path).mode == "CMYK"
    img = load_image(path)
    check_bgr(img, 41, 67)
    assert np.abs(img[..., ::-1].astype(int) - rgb).max() <= 3


def test_sixteen_bit_png_is_scaled_to_eight_bits(tmp_path):
    g16 = (np.arange(41 * 67).reshape(41, 67) * 23).astype(np.uint16)
    path = tmp_path / "g16.png"
    cv2.imwrite(str(path), g16)
    img = load_image(path)
    check_bgr(img, 41, 67)
    assert np.array_equal(img[..., 2], (g16 >> 8).astype(np.uint8))


@pytest.mark.parametrize("content", [None, b"", b"GIF89a but not really"])
def test_absent_empty_or_undecodable_files_raise_naming_the_file(tmp_path, content):
    path = tmp_path / "bad.jpg"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageReadError, match="bad.jpg"):
        load_image(path)
