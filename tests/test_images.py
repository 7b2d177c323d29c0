"""Decoding whatever users drop in: modes, orientation, animations, damage and bombs."""

import pytest
import torch
from PIL import Image

from stylecore import images
from stylecore.errors import BadImage

from . import images as fixtures


@pytest.mark.parametrize(
    "make",
    [fixtures.rgb_png, fixtures.jpeg, fixtures.grayscale_png, fixtures.palette_png, fixtures.rgba_png, fixtures.cmyk_jpeg, fixtures.sixteen_bit_png],
)
def test_every_mode_becomes_rgb(make):
    image = images.decode(make(), "x")
    assert image.mode == "RGB" and image.size == (40, 30)


def test_alpha_is_flattened_onto_white():
    image = images.decode(fixtures.rgba_png())
    assert image.getpixel((5, 5)) == (255, 255, 255)


def test_sixteen_bit_keeps_its_range():
    image = images.decode(fixtures.sixteen_bit_png())
    assert image.getpixel((0, 0))[0] == 0 and image.getpixel((39, 29))[0] == 255


def test_exif_orientation_is_applied():
    assert images.decode(fixtures.exif_rotated_jpeg()).size == (30, 40)


def test_animated_gif_gives_its_first_frame():
    image = images.decode(fixtures.animated_gif())
    assert image.getpixel((0, 0))[0] > 200 and image.getpixel((0, 0))[2] < 50


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty file"),
        (b"hello, I am a text file", "not an image"),
        (fixtures.truncated_jpeg(), "damaged"),
        (fixtures.truncated_png(), "damaged"),
        (fixtures.huge_header_png(), "limit of 100,000,000"),
        (fixtures.huge_header_png(12_000, 12_000), "12000×12000 pixels is over the limit"),
    ],
)
def test_bad_bytes_give_one_clear_line(data, reason):
    with pytest.raises(BadImage, match=reason) as caught:
        images.decode(data, "photos/x.jpg")
    message = str(caught.value)
    assert message.startswith("photos/x.jpg: ") and "\n" not in message


def test_resize_keeps_aspect_on_the_longer_side():
    image = Image.new("RGB", (400, 100))
    assert images.resize_longer_side(image, 200).size == (200, 50)
    assert images.resize_longer_side(Image.new("RGB", (100, 400)), 64).size == (16, 64)


def test_tensor_round_trip_and_png():
    tensor = images.load(fixtures.rgb_png(), 40)
    assert tensor.shape == (1, 3, 30, 40) and tensor.dtype == torch.float32
    assert 0.0 <= tensor.min() and tensor.max() <= 1.0
    png = images.encode_png(tensor)
    again = images.load(png, 40)
    assert torch.equal(again, tensor)  # 8-bit → float → 8-bit is exact
    decoded = Image.open(__import__("io").BytesIO(png))
    assert decoded.format == "PNG" and decoded.mode == "RGB"
