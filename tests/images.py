"""Image fixtures made in code: every mode and defect the decoder must handle (no binaries in git), and
real pictures from scikit-image's wheel (public domain, no download) standing in for the classic names."""

from __future__ import annotations

import functools
import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# The names the tests use → a distinct skimage.data sample. The content photo is cropped to 4:3 (533×400,
# like the 1024×768 Tübingen photo the tests were written for), so a 64 px output is 64×48.
SAMPLES = {
    "tubingen.jpg": "coffee",  # photo: a cup of coffee, bold shapes and edges
    "starry_night.jpg": "immunohistochemistry",  # texture: stained tissue, a full colour histogram
    "the_scream.jpg": "hubble_deep_field",  # texture: stars and galaxies on black, NASA
    "composition_vii.jpg": "rocket",  # photo: a rocket on its launch pad, 3:2 like Composition VII
}


@functools.lru_cache(maxsize=None)
def sample(name: str) -> Image.Image:
    """The RGB picture standing in for `name` ("tubingen.jpg", …); a skimage.data name works too."""
    import skimage.data

    array = getattr(skimage.data, SAMPLES.get(name, name))()
    if name == "tubingen.jpg":
        array = array[:, 33:566]  # 600×400 → 533×400 (4:3), the cup kept whole
    return Image.fromarray(array).convert("RGB")


def sample_png(name: str, longer_side: int | None = None) -> bytes:
    """`sample(name)` as PNG bytes, shrunk so its longer side is at most `longer_side` pixels."""
    image = sample(name).copy()
    if longer_side:
        image.thumbnail((longer_side, longer_side))
    return encode(image)


def write_sample(folder: Path, name: str, longer_side: int | None = None) -> Path:
    """`sample_png(name)` written to folder/<stem>.png; returns the path."""
    path = Path(folder) / f"{Path(name).stem}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(sample_png(name, longer_side))
    return path


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
