"""Image fixtures made in code: every mode and defect the decoder must handle (no binaries in git)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def gradient(width=40, height=30) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), (x + y) % 256], axis=-1).astype(np.uint8)


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def rgb_png(width=40, height=30) -> bytes:
    return encode(Image.fromarray(gradient(width, height), "RGB"))


def jpeg(width=40, height=30) -> bytes:
    return encode(Image.fromarray(gradient(width, height), "RGB"), "JPEG", quality=95)


def grayscale_png() -> bytes:
    return encode(Image.fromarray(gradient()[..., 0], "L"))


def palette_png() -> bytes:
    return encode(Image.fromarray(gradient(), "RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=16))


def rgba_png() -> bytes:
    array = np.dstack([gradient(), np.full((30, 40), 0, np.uint8)])  # fully transparent
    return encode(Image.fromarray(array, "RGBA"))


def cmyk_jpeg() -> bytes:
    return encode(Image.fromarray(gradient(), "RGB").convert("CMYK"), "JPEG")


def sixteen_bit_png() -> bytes:
    array = (np.linspace(0, 65535, 40 * 30).reshape(30, 40)).astype(np.uint16)
    return encode(Image.fromarray(array))  # uint16 → mode I;16


def exif_rotated_jpeg() -> bytes:
    """Stored 40 wide × 30 high, with EXIF orientation 6 (rotate 90° clockwise to view): upright it is 30 × 40."""
    image = Image.fromarray(gradient(), "RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image, "JPEG", exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (20, 10), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def truncated_jpeg() -> bytes:
    data = jpeg(200, 150)
    return data[: len(data) // 2]


def truncated_png() -> bytes:
    data = rgb_png(200, 150)
    return data[: len(data) // 2]


def huge_header_png(width=100_000, height=100_000) -> bytes:
    """A valid PNG signature and IHDR claiming a huge image, with almost no pixel data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")
